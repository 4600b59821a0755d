"""Reading a config file as YAML without surprises.

`read_yaml` turns every way a file can be unreadable into one ConfigError
naming the file: a folder or a missing path, bytes that are not UTF-8
(binary, UTF-16), a syntax error (with its line), a key given twice (YAML
would keep the last silently), anchors/aliases that expand beyond
MAX_EXPANDED_NODES (a 1 KB "billion laughs" file would otherwise expand to
gigabytes when walked), and nesting too deep to parse.
"""

import reprlib
from pathlib import Path
from typing import Any

import yaml

from sparse_coding.errors import ConfigError

# A config has ~50 keys of small values; this leaves room for long pin lists.
MAX_EXPANDED_NODES = 100_000

_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 80, 80, 6, 6, 3
shown = _short.repr  # a bounded repr for error messages: never the whole of a huge value


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key given twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:
                continue  # unhashable key: SafeLoader reports it
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {shown(key)} is given twice (first at line {first + 1}); keep one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """The parsed contents of a YAML config file; ConfigError for each failure the module names."""
    if path.is_dir():
        raise ConfigError(f"Config path {path} is a folder; pass --config PATH to a YAML file")
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist; pass --config PATH to a YAML file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"Config file {path} is not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x}; "
            f"binary, or saved as UTF-16?); save it as UTF-8"
        ) from e
    except OSError as e:
        raise ConfigError(f"Config file {path} cannot be read: {e.strerror or e}") from e
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"Config file {path} is not valid YAML{where}: {problem}") from e
    except RecursionError as e:
        raise ConfigError(
            f"Config file {path} nests too deeply to read; a config is a flat KEY: value list"
        ) from e
    if _expanded_size(raw, MAX_EXPANDED_NODES) < 0:
        raise ConfigError(
            f"Config file {path} expands to more than {MAX_EXPANDED_NODES} values (anchors and "
            f"aliases repeated inside each other?); write the values out"
        )
    return raw


def _expanded_size(value: Any, budget: int) -> int:
    """`budget` minus the values in `value` as if every alias were copied; negative when over."""
    stack = [value]
    while stack:
        budget -= 1
        if budget < 0:
            return budget
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return budget
