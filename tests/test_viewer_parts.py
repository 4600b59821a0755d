"""The viewer's script parts: every file a part, inlined whole but for its comments, no name twice.

The page's behaviour is tested in a browser (test_viewer.py); these tests check how viewer.py puts
the parts together, against references written here (a regex over each file's whole text).
"""

import re
from importlib import resources
from pathlib import Path

from sparse_coding.graphs.viewer import SCRIPT_PARTS, viewer_page, viewer_script

GRAPHS = resources.files("sparse_coding.graphs")
BLOCK_COMMENT = re.compile(r"^[ \t]*/\*.*?\*/[ \t]*$\n?", re.S | re.M)
LINE_COMMENT = re.compile(r"^[ \t]*//.*$\n?", re.M)


def part(name: str) -> str:
    return GRAPHS.joinpath(name).read_text(encoding="utf-8")


def test_every_viewer_script_file_is_a_part_and_is_installed():
    files = {p.name for p in GRAPHS.iterdir() if re.fullmatch(r"viewer.*\.js", p.name)}
    assert set(SCRIPT_PARTS) == files and len(SCRIPT_PARTS) == len(files)
    assert SCRIPT_PARTS[-1] == "viewer.js" and "window.scGraphViewer =" in part("viewer.js")
    setup = (Path(__file__).parents[1] / "setup.py").read_text(encoding="utf-8")
    assert '"graphs/viewer*.js"' in setup


def test_the_script_is_each_parts_code_in_order_without_its_comments():
    expected = []
    for name in SCRIPT_PARTS:
        code = LINE_COMMENT.sub("", BLOCK_COMMENT.sub("", part(name)))
        expected += [line for line in code.splitlines() if line.strip()]
    script = viewer_script().splitlines()
    assert script[:2] == ["(() => {", '"use strict";'] and script[-1] == "})();"
    assert script[2:-1] == expected
    assert not [line for line in expected if line.lstrip().startswith(("/*", "*", "//"))]


def test_the_parts_write_no_string_across_lines():
    """Dropping whole comment lines is safe only if no string (template literal) spans lines."""
    for name in SCRIPT_PARTS:
        for number, line in enumerate(part(name).splitlines(), 1):
            assert line.count("`") % 2 == 0, f"{name}:{number}: {line}"


def test_no_top_level_name_is_declared_in_two_parts():
    declared: dict[str, str] = {}
    for name in SCRIPT_PARTS:
        for line in part(name).splitlines():
            names = re.findall(r"^(?:class|function)\s+(\w+)", line)
            if line.startswith(("const ", "let ")):
                names += re.findall(r"(?:^(?:const|let)\s+|,\s*)([A-Za-z_]\w*)\s*=(?!=)", line)
            for symbol in names:
                assert symbol not in declared, f"{symbol} is declared in {declared[symbol]} and {name}"
                declared[symbol] = name
    assert {"Viewer", "ViewState", "Camera", "Painter", "SidePanel", "forwardLayout", "el"} <= set(declared)


def test_the_page_inlines_the_script_once():
    from sparse_coding.graphs.graph import Graph

    page = viewer_page(Graph(metadata={"script": "pipe.py"}))
    assert page.count(viewer_script()) == 1 and page.count("<script>") == 1
