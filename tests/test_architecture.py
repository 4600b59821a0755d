"""The package's imports run one way: each layer imports only the layers before it.

Read from the folder names: the shared vocabulary (errors, node ids) -> files ->
config, runtime and text -> models and graphs -> transcoders -> splicing ->
algorithms, labels and sharing -> pipelines -> cli -> the front doors. The
check walks every module's import statements (ast, nothing is imported), so
a back-arrow fails here before it tangles the package.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sparse_coding"

# Units (a top-level module or a folder) in import order, lowest first. A unit
# may import itself and any unit of an earlier group, never a later one.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "nodes"),
    ("files",),
    ("config", "runtime", "text"),
    ("models", "graphs"),
    ("transcoders",),
    ("splicing",),
    ("algorithms", "labels", "sharing"),
    ("pipelines",),
    ("cli",),
    ("pipe", "fast", "val", "hist", "steer", "trace", "__main__", "demo"),
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
# Only these read the Config object: everything below takes explicit arguments.
CONFIG_READERS = {"pipelines", "cli", "pipe", "fast", "val", "hist", "steer", "trace", "__main__", "demo"}
CONFIG_NAMES = {"Config", "load_config", "config_from_dict"}


def unit_of(module: str) -> str:
    """'sparse_coding.graphs.render' -> 'graphs'."""
    return module.split(".")[1]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(path: Path) -> list[tuple[int, str, set[str]]]:
    """(line, imported sparse_coding module, names taken from it) of every import in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sparse_coding."):
            found.append((node.lineno, node.module, {alias.name for alias in node.names}))
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, alias.name, set())
                for alias in node.names
                if alias.name.startswith("sparse_coding.")
            ]
    return found


def modules() -> list[Path]:
    """Every module of the package except its lazy top-level `__init__` (string imports only)."""
    return [path for path in sorted(PACKAGE.rglob("*.py")) if path != PACKAGE / "__init__.py"]


def back_arrows(paths: list[Path], root: Path = PACKAGE) -> list[str]:
    """One line per import in `paths` (modules of the package at `root`) that breaks the order."""
    problems = []
    for path in paths:
        here = unit_of(module_name(path, root))
        for line, imported, names in package_imports(path):
            there = unit_of(imported)
            where = f"{path.relative_to(root.parent)}:{line} imports {imported}"
            if here not in RANK or there not in RANK:
                problems.append(f"{where}: {here if here not in RANK else there!r} has no place in LAYERS")
            elif there != here and RANK[there] >= RANK[here]:
                problems.append(f"{where}: {here} may not import {there}, which comes after it")
            elif imported == "sparse_coding.config" and names & CONFIG_NAMES and here not in CONFIG_READERS:
                problems.append(f"{where}: only pipelines and scripts read the Config")
    return problems


def test_no_import_runs_against_the_declared_layer_order():
    assert back_arrows(modules()) == []


def test_every_unit_of_the_package_has_a_place_in_the_order():
    units = {unit_of(module_name(path)) for path in modules()}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS"


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        ("graphs/render.py", "from sparse_coding.labels.contexts import SiteTopK", "may not import labels"),
        ("models/saes.py", "from sparse_coding.splicing.splice import Site", "may not import splicing"),
        ("algorithms/validation.py", "from sparse_coding.config import Config", "only pipelines"),
        ("text/corpus.py", "import sparse_coding.pipelines.inputs", "may not import pipelines"),
    ],
)
def test_the_check_fails_on_a_deliberate_back_arrow(tmp_path, module, line, expected):
    """A copy of one module with one added import is reported (the check can fail)."""
    copy = tmp_path / "sparse_coding" / module
    copy.parent.mkdir(parents=True)
    copy.write_text((PACKAGE / module).read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    problems = back_arrows([copy], root=tmp_path / "sparse_coding")
    assert len(problems) == 1 and expected in problems[0]


def test_algorithms_and_labels_never_print():
    """Pure layers report through logging and return values; only scripts print."""
    printing = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
        for path in modules()
        if unit_of(module_name(path)) not in CONFIG_READERS - {"pipelines"}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]
    assert printing == []


FRONT_DOORS = ("pipe", "fast", "val", "hist", "steer", "trace")


def test_every_front_door_is_the_same_few_lines_over_the_one_cli_entry():
    """Options, help and preflight live in sparse_coding/cli/<script>.py; a front door only finds the
    package (run as a file) and calls `cli.main` with its name."""
    bodies = {
        name: (PACKAGE / f"{name}.py")
        .read_text(encoding="utf-8")
        .split("\n", 1)[1]
        .replace(f'"{name}"', '"X"')
        for name in FRONT_DOORS
    }
    assert len(set(bodies.values())) == 1
    calls = [
        node
        for node in ast.walk(ast.parse(bodies["fast"]))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "main"
    ]
    assert len(calls) == 1 and "from sparse_coding.cli import main" in bodies["fast"]
    assert len([line for line in bodies["fast"].splitlines() if line.strip()]) <= 6
