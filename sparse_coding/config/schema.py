"""The config's schema: each key's type, range and one-line meaning live on its `Config` field (`key`).

A field's annotation is its type (``Literal[...]`` for a fixed set of values, ``X | None`` where
null unsets it). From the fields come the checks (`parse_value`), `--help`'s key lists
(`script_keys`) and the README's config table (`config_table`); tests hold the shipped YAML's
keys, order, defaults and comments to them.
"""

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml

from sparse_coding.config.yaml_file import shown
from sparse_coding.errors import ConfigError

NEURONPEDIA_URL = "https://www.neuronpedia.org"
SCRIPTS = ("pipe", "fast", "val", "hist", "steer", "trace")
Metric = Literal["cross_entropy", "logit_diff", "logprob"]
Baseline = Literal["zero", "patch", "mean"]
Selection = Literal["topk", "threshold"]
NodePositions = Literal["sum", "each"]
ErrorMode = Literal["keep", "ablate"]
DtypeName = Literal["float32", "float16", "bfloat16", "float64"]


class Between(NamedTuple):
    """A range of valid numbers, `low` to `high` inclusive (`low` excluded when `open_low`)."""

    low: float
    high: float = math.inf
    open_low: bool = False

    def holds(self, value: float) -> bool:
        return (self.low < value if self.open_low else self.low <= value) and value <= self.high

    def __str__(self) -> str:
        """What a value must be: 'lie in 1..100', 'lie in (0, 1]', 'be at least 0'."""
        if self.high == math.inf:
            return f"be more than {self.low:g}" if self.open_low else f"be at least {self.low:g}"
        if isinstance(self.low, int) and isinstance(self.high, int):
            return f"lie in {self.low}..{self.high}"
        return f"lie in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"


SHARE = Between(0, 1, open_low=True)  # a share of a total
Check = Callable[[str, Any, str], None]  # (key, value, where); raises ConfigError


def key(
    default: Any,
    scripts: str = "",
    *,
    doc: str,
    between: Between | None = None,
    check: Check | None = None,
    parse: Callable[[Any, str, str], Any] | None = None,
) -> Any:
    """A Config field: its default, the scripts it shapes (space separated, "" for all), one line
    saying what it means, its range, a check of the typed value and a parser for structured values."""
    metadata = {"meaning": doc, "scripts": tuple(scripts.split()) or SCRIPTS, "between": between}
    return dataclasses.field(default=default, metadata=metadata | {"check": check, "parse": parse})


def is_optional(annotation: Any) -> bool:
    """Whether a key's type is ``X | None``: null unsets it."""
    return typing.get_origin(annotation) in (types.UnionType, typing.Union) and None in _args(annotation)


def _args(annotation: Any) -> tuple[Any, ...]:
    return tuple(None if a is type(None) else a for a in typing.get_args(annotation))


def _base(annotation: Any) -> Any:
    """X of ``X | None``."""
    return next(a for a in _args(annotation) if a is not None) if is_optional(annotation) else annotation


def choices(annotation: Any) -> tuple[str, ...]:
    """The values of a ``Literal[...]`` key (optional or not); () for other keys."""
    base = _base(annotation)
    return typing.get_args(base) if typing.get_origin(base) is Literal else ()


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}


def parse_value(field: dataclasses.Field, value: Any, where: str) -> Any:
    """A set (non-null) YAML value of `field` as its type, within its range; ConfigError otherwise."""
    name, meta = field.name, field.metadata
    if meta["parse"] is not None:
        return meta["parse"](value, name, where)
    target, valid = _base(field.type), choices(field.type)
    if valid:
        if value not in valid:
            null = " or null" if is_optional(field.type) else ""
            raise ConfigError(f"Config key {name}{where} is {shown(value)}; valid: {', '.join(valid)}{null}")
        return value
    bad = ConfigError(f"Config key {name}{where} must be {_TYPE_NAMES[target]}, got {shown(value)}")
    if isinstance(value, bool) != (target is bool):
        raise bad
    if target in (str, Path) and not isinstance(value, str):
        raise ConfigError(
            f"Config key {name}{where} must be {_TYPE_NAMES[target]}, got {shown(value)} "
            f'({type(value).__name__}); quote it in YAML, e.g. {name}: "9:12"'
        )
    if target is int and not isinstance(value, int) or target is float and not isinstance(value, int | float):
        raise bad
    if target is float:
        if not math.isfinite(value):  # YAML's .nan and .inf: no key means them, and JSON cannot hold them
            raise ConfigError(f"Config key {name}{where} must be a finite number, got {shown(value)}")
        value = float(value)
    if meta["between"] is not None and not meta["between"].holds(value):
        raise ConfigError(f"Config key {name}{where} must {meta['between']}, got {shown(value)}")
    if meta["check"] is not None:
        meta["check"](name, value, where)
    return value


def script_keys(fields: tuple[dataclasses.Field, ...], script: str) -> list[str]:
    """The keys that shape `script`'s result beyond those every script reads, in the config's order
    (`--help` lists them)."""
    return [f.name for f in fields if script in f.metadata["scripts"] and f.metadata["scripts"] != SCRIPTS]


def yaml_text(value: Any) -> str:
    """A default as it is written in YAML (``'9:12'``, ``null``, ``[]``)."""
    if isinstance(value, Path | tuple):
        value = str(value) if isinstance(value, Path) else list(value)
    return yaml.safe_dump(value, default_flow_style=True, width=1000).removesuffix("\n...\n").strip()


def config_table(fields: tuple[dataclasses.Field, ...]) -> str:
    """The README's table of every key: default and meaning (and the choices), one row per key."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for f in fields:
        valid = ", ".join(f"`{c}`" for c in choices(f.type))
        meaning = f.metadata["meaning"].replace("|", "\\|") + (f"; one of {valid}" if valid else "")
        rows.append(f"| `{f.name}` | `{yaml_text(f.default)}` | {meaning} |")
    return "\n".join(rows)
