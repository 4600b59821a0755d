"""The STEER and CURVE keys: interventions on features, named by node id, as typed values.

An intervention is ``{node: "resid_9.331", set: 0.0 | scale: 2.0 | add: 8.0, positions: all |
prompt | generated | [ints]}`` on an SAE or a transcoder feature (``tc_3.12``, ``clt_3.12``); a
node id may carry its position instead (``resid_9.331@7``). A response curve is ``{node, kind,
from, to, steps, watch: [node ids], answer: token, positions}``: the intervention ``kind``
(default ``scale``) at ``steps`` values from ``from`` to ``to``. What they do is defined in
docs/design.md ("Interventions"). Everything here is checked from the text alone; the SAE widths
and the prompt's length are checked by steer.py before the model loads, the transcoders' kind
and width once they are loaded.
"""

import math
from dataclasses import dataclass
from typing import Any

from sparse_coding.config.yaml_file import shown
from sparse_coding.errors import ConfigError
from sparse_coding.nodes import parse_node_id, site_key

KINDS = ("set", "scale", "add")
POSITION_WORDS = ("all", "prompt", "generated")
MAX_CURVE_STEPS = 10_000
STEER_EXAMPLE = '[{node: "resid_9.331", set: 0.0, positions: all}, {node: "mlp_10.5", add: 8.0}]'
CURVE_EXAMPLE = '{node: "mlp_0.4", from: 0.0, to: 1.0, steps: 11, watch: ["mlp_1.6"], answer: " hot"}'

Positions = str | tuple[int, ...]


@dataclass(frozen=True)
class FeatureEdit:
    """One intervention on one feature: new activation = factor * activation + offset (see `factors`)."""

    node: str  # feature node id without position, e.g. "resid_9.331"
    kind: str  # "set" | "scale" | "add"
    value: float
    positions: Positions = "all"

    @property
    def site_key(self) -> str:
        site, layer, _ = parse_node_id(self.node)
        return site_key(site, layer)

    @property
    def feature(self) -> int:
        return int(parse_node_id(self.node).feature)

    @property
    def factors(self) -> tuple[float, float]:
        """(factor, offset) with new activation = factor * activation + offset."""
        return kind_factors(self.kind, self.value)

    def as_config(self) -> dict[str, Any]:
        """As a STEER entry is written in a config (`parse_edit` reads it back)."""
        return {"node": self.node, self.kind: self.value, "positions": positions_value(self.positions)}

    def describe(self) -> str:
        """In words, e.g. 'resid_9.331 set to 0 at all positions'."""
        verb = {"set": "set to", "scale": "scaled by", "add": "plus"}[self.kind]
        where = positions_text(self.positions)
        what = f"{self.value:g} * its decoder row" if self.kind == "add" else f"{self.value:g}"
        return f"{self.node} {verb} {what} at {where}"


@dataclass(frozen=True)
class CurveSpec:
    """A response curve: `kind` swept over `steps` values from `start` to `stop` on one feature."""

    node: str
    kind: str = "scale"
    start: float = 0.0
    stop: float = 1.0
    steps: int = 11
    watch: tuple[str, ...] = ()
    answer: str | None = None
    positions: Positions = "all"

    @property
    def values(self) -> list[float]:
        """The swept values, evenly spaced, ends included."""
        span = self.stop - self.start
        return [self.start + span * i / (self.steps - 1) for i in range(self.steps)]

    def edit(self, value: float) -> FeatureEdit:
        return FeatureEdit(self.node, self.kind, value, self.positions)

    def as_config(self) -> dict[str, Any]:
        """As CURVE is written in a config (`parse_curve` reads it back)."""
        ends = {"from": self.start, "to": self.stop, "steps": self.steps, "watch": list(self.watch)}
        return {"node": self.node, "kind": self.kind, **ends, "answer": self.answer,
                "positions": positions_value(self.positions)}  # fmt: skip


def positions_value(positions: Positions) -> str | list[int]:
    """As positions are written in a config or a JSON file."""
    return positions if isinstance(positions, str) else list(positions)


def positions_text(positions: Positions) -> str:
    """Positions in words: 'every position', 'the prompt', 'the new tokens' or 'positions [3, 7]'."""
    words = {"all": "every position", "prompt": "the prompt", "generated": "the new tokens"}
    return words[positions] if isinstance(positions, str) else f"positions {list(positions)}"


def kind_factors(kind: str, value: Any) -> tuple[Any, Any]:
    """(factor, offset) of an intervention, new activation = factor * activation + offset, for a
    number or a tensor of values; `add` adds its value whether the feature fires or not."""
    zero = value * 0
    return {"set": (zero, value), "scale": (value, zero), "add": (zero + 1, value)}[kind]


def parse_feature_node(text: Any, where: str) -> tuple[str, int | None]:
    """(feature id, position or None) of ``resid_9.331`` or ``resid_9.331@7``; ConfigError otherwise."""
    if not isinstance(text, str):
        raise ConfigError(
            f"{where}: node must be a feature id string such as 'resid_9.331', got {shown(text)}"
        )
    node, _, position = text.strip().partition("@")
    try:
        parsed = parse_node_id(node)
    except ValueError as e:
        raise ConfigError(f"{where}: unknown node: {e}") from e
    if parsed.feature is None:
        raise ConfigError(
            f"{where}: {node!r} is an error node; only features ('{{site}}_{{layer}}.{{index}}', "
            f"e.g. 'resid_9.331' or the transcoder feature 'tc_3.12') can be set, scaled or steered"
        )
    if not position:
        return node, None
    if not position.isdigit():
        raise ConfigError(f"{where}: {text!r} has position {position!r}; write 'resid_9.331@7' (BOS = 0)")
    return node, int(position)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {shown(value)}")
    return float(value)


def _positions(value: Any, where: str, words: tuple[str, ...] = POSITION_WORDS) -> Positions:
    if isinstance(value, str) and value in words:
        return value
    ints = (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )
    if not ints:
        raise ConfigError(
            f"{where}: positions must be one of {', '.join(words)} or a non-empty list of token "
            f"indices (BOS = 0, -1 = the prompt's last token), got {shown(value)}"
        )
    return tuple(sorted(set(value)))


def _node_and_positions(entry: dict, where: str, words: tuple[str, ...]) -> tuple[str, Positions]:
    node, at = parse_feature_node(entry.get("node"), where)
    if at is not None and "positions" in entry:
        raise ConfigError(f"{where}: {entry['node']!r} names a position; drop 'positions' or the '@{at}'")
    positions = (at,) if at is not None else _positions(entry.get("positions", "all"), where, words)
    return node, positions


def _mapping(entry: Any, where: str, allowed: set[str], example: str) -> dict:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a mapping, e.g. {example}; got {shown(entry)}")
    unknown = sorted(map(str, set(entry) - allowed))
    if unknown:
        raise ConfigError(
            f"{where} has unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed))}"
        )
    return entry


def parse_edit(entry: Any, where: str) -> FeatureEdit:
    """One STEER entry as a FeatureEdit."""
    entry = _mapping(entry, where, {"node", "positions", *KINDS}, STEER_EXAMPLE)
    kinds = [kind for kind in KINDS if kind in entry]
    if len(kinds) != 1:
        raise ConfigError(
            f"{where} must give exactly one of set, scale, add (the intervention and its value), "
            f"got {', '.join(kinds) or 'none'}: {shown(entry)}"
        )
    node, positions = _node_and_positions(entry, where, POSITION_WORDS)
    return FeatureEdit(node, kinds[0], _number(entry[kinds[0]], f"{where}: {kinds[0]}"), positions)


def parse_steer(value: Any, key: str, where: str) -> tuple[FeatureEdit, ...]:
    """The STEER key: a list of interventions, each node at most once."""
    if not isinstance(value, list):
        raise ConfigError(f"Config key {key}{where} must be a list of interventions, e.g. {STEER_EXAMPLE}")
    edits = tuple(parse_edit(entry, f"Config key {key}{where}, entry {i}") for i, entry in enumerate(value))
    nodes = [edit.node for edit in edits]
    twice = sorted({node for node in nodes if nodes.count(node) > 1})
    if twice:
        raise ConfigError(f"Config key {key}{where} names {', '.join(twice)} twice; give each node one entry")
    return edits


def parse_curve(value: Any, key: str, where: str) -> CurveSpec:
    """The CURVE key: one node's intervention swept, the features watched, the answer token."""
    here = f"Config key {key}{where}"
    entry = _mapping(
        value, here, {"node", "kind", "from", "to", "steps", "watch", "answer", "positions"}, CURVE_EXAMPLE
    )
    node, positions = _node_and_positions(entry, here, ("all", "prompt"))
    kind = entry.get("kind", CurveSpec.kind)
    if kind not in KINDS:
        raise ConfigError(f"{here}: kind is {shown(kind)}; valid: {', '.join(KINDS)}")
    steps = entry.get("steps", CurveSpec.steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= MAX_CURVE_STEPS:
        raise ConfigError(f"{here}: steps must be an integer in 2..{MAX_CURVE_STEPS}, got {shown(steps)}")
    watch = entry.get("watch", [])
    if not isinstance(watch, list):
        raise ConfigError(
            f"{here}: watch must be a list of feature ids, e.g. ['mlp_1.6'], got {shown(watch)}"
        )
    watched = tuple(dict.fromkeys(parse_feature_node(w, f"{here}: watch")[0] for w in watch))
    answer = entry.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise ConfigError(f"{here}: answer must be a token's text, e.g. ' hot', got {shown(answer)}")
    if not watched and answer is None:
        raise ConfigError(f"{here} has neither watch nor answer: name what to read, e.g. {CURVE_EXAMPLE}")
    start = _number(entry.get("from", CurveSpec.start), f"{here}: from")
    stop = _number(entry.get("to", CurveSpec.stop), f"{here}: to")
    return CurveSpec(node, kind, start, stop, steps, watched, answer, positions)


def steer_commands(node_id: str) -> list[tuple[str, str]]:
    """What a viewer offers to copy for a feature node: the steer.py commands that ablate it and
    double it, and the STEER lines that ablate it; [] for error nodes and other ids.

    The commands use the default config (central_config.yaml); add ``--config PATH`` for another.
    """
    try:
        parse_feature_node(node_id, "node")
    except ConfigError:
        return []
    return [
        ("ablate", f"sparse-coding steer --node {node_id} --set 0"),
        ("double", f"sparse-coding steer --node {node_id} --scale 2"),
        ("config", f'STEER:\n  - {{node: "{node_id}", set: 0.0}}'),
    ]
