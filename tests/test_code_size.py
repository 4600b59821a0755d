"""The package stays readable in pieces: no module over 400 lines, no function over 60 (STYLE.md)."""

import ast
from pathlib import Path

import sparse_coding

PACKAGE = Path(sparse_coding.__file__).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, str]:
    """Relative path -> source of every package module."""
    paths = sorted(PACKAGE.rglob("*.py"))
    assert len(paths) > 50, f"found only {len(paths)} modules under {PACKAGE}"
    return {p.relative_to(PACKAGE).as_posix(): p.read_text() for p in paths}


def _long_functions(source: str) -> dict[str, int]:
    """Name -> lines (def to last line, decorators aside) of each function, method or nested
    function longer than MAX_FUNCTION_LINES."""
    long = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                long[node.name] = lines
    return long


def test_no_module_is_longer_than_400_lines():
    lines = {name: len(text.splitlines()) for name, text in _modules().items()}
    long = {name: n for name, n in lines.items() if n > MAX_MODULE_LINES}
    assert not long, f"split these modules (lines): {long}"


def test_no_function_is_longer_than_60_lines():
    long = {f"{name}:{f}": n for name, text in _modules().items() for f, n in _long_functions(text).items()}
    assert not long, f"give each step of these functions its own function (lines): {long}"


def test_a_function_of_61_lines_is_caught_wherever_it_is():
    """Against functions written out here: top level, async, a method, a nested one; 60 lines pass."""
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    source = (
        f"class A:\n    def method(self):\n{body}\n        return 1\n\n"  # 61 lines
        f"    def fits(self):\n{body}\n"  # 60 lines
        f"async def outer():\n    async def inner():\n{body}\n        return 1\n"  # inner 61, outer 62
    )
    assert _long_functions(source) == {"method": 61, "inner": 61, "outer": 62}
