"""The parts of a `Graph`: feature and error nodes, edges, contexts, and an imported file's drawing.

Each part has its JSON form (``to_dict``; an edge's is written by
`Graph.to_json`) and reads it back strictly (``from_dict``): a value of the
wrong type, a non-finite number (NaN, an infinity, or ``1e400``, which JSON
parsers read as infinity) or a missing key is a ``ValueError`` naming the
node or edge and the field, so a damaged graph file is refused with a
sentence, never half-loaded.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from sparse_coding.nodes import (
    HOOK_ORDER,
    SITES,
    hook_position,
    parse_positioned_id,
    site_key,
    split_position,
)

# Where a site sits inside its block when the node carries no hook name. The
# resid default is hook_resid_pre: the default resid SAEs (res-jb) read there.
_DEFAULT_SITE_ORDER: dict[str, int] = {
    "resid": HOOK_ORDER["hook_resid_pre"],
    "attn": HOOK_ORDER["hook_attn_out"],
    "mlp": HOOK_ORDER["hook_mlp_out"],
    # trace.py's nodes: token embeddings before block 0, transcoder features where the MLP writes.
    "embed": -1,
    "tc": HOOK_ORDER["hook_mlp_out"],
    "clt": HOOK_ORDER["hook_mlp_out"],
}
MEASURED = ("activation", "attribution")  # node values kept per run


# ---------------------------------------------------------------- strict readers of JSON values


def loads_strict(json_text: str | bytes) -> Any:
    """JSON as graph files are read: NaN, Infinity and numbers too large for a float are refused."""
    return json.loads(json_text, parse_constant=_refuse_constant, parse_float=_finite_float)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"the number {name} is not finite")


def _finite_float(literal: str) -> float:
    return finite(float(literal), f"the number {literal[:40]}")


def finite(value: object, what: str = "a stored number") -> float:
    """A JSON number as a float; anything else, and NaN or an infinity, is a ValueError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} is {_shown(value)}, not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{what} is {_shown(value)}, not a finite number")
    return number


def _reader(kind: type, noun: str) -> Callable[[object, str], Any]:
    """`read(value, what)`: `value` if it is a `kind` (a bool is no int), else a ValueError naming `what`."""

    def read(value: object, what: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ValueError(f"{what} is {_shown(value)}, not {noun}")
        return value

    return read


integer = _reader(int, "an integer")
text = _reader(str, "a string")
mapping = _reader(dict, "an object")
sequence = _reader(list, "a list")


def _optional(read: Callable[[object, str], Any], value: object, what: str) -> Any:
    """`read(value, what)`, or None for None."""
    return None if value is None else read(value, what)


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _pairs(items: object, what: str) -> list[tuple[str, float]]:
    pairs = []
    for i, item in enumerate(sequence(items, what)):
        if len(sequence(item, f"{what}[{i}]")) != 2:
            raise ValueError(f"{what}[{i}] is {_shown(item)}, not a [token, value] pair")
        pairs.append((text(item[0], f"{what}[{i}] token"), finite(item[1], f"{what}[{i}] value")))
    return pairs


# ---------------------------------------------------------------- parts


@dataclass
class Context:
    """One top-activating context of a feature: tokens around its maximum."""

    tokens: list[str]
    activations: list[float]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.activations):
            raise ValueError(
                f"a context needs one activation per token; got {len(self.tokens)} "
                f"tokens and {len(self.activations)} activations"
            )

    @classmethod
    def from_dict(cls, data: object, what: str) -> Context:
        data = mapping(data, what)
        tokens = [text(t, f"{what} token") for t in sequence(data.get("tokens"), f"{what} tokens")]
        values = sequence(data.get("activations"), f"{what} activations")
        return cls(tokens, [finite(a, f"{what} activation") for a in values])


@dataclass
class Node:
    """A feature (or SAE error term) at one site and layer.

    ``activation`` and ``attribution`` are the means of ``runs`` (run id ->
    {"activation": a, "attribution": b}) once the node belongs to a stored
    graph; the annotation fields (contexts, logits, explanation) describe the
    feature itself and are filled from cached contexts, the unembedding, or
    Neuronpedia.
    """

    id: str
    site: str
    layer: int
    feature: int | None
    activation: float | None = None
    attribution: float | None = None
    hook: str | None = None
    neuronpedia_id: str | None = None
    contexts: list[Context] = field(default_factory=list)
    logits_up: list[tuple[str, float]] = field(default_factory=list)
    logits_down: list[tuple[str, float]] = field(default_factory=list)
    explanation: str | None = None
    runs: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_id(cls, node_id: str, **attrs: Any) -> Node:
        """Build a node whose site, layer and feature are parsed from its id (``@position`` allowed)."""
        parsed, _ = parse_positioned_id(node_id)
        return cls(id=node_id, site=parsed.site, layer=parsed.layer, feature=parsed.feature, **attrs)

    @property
    def position(self) -> int | None:
        """The token position of a positioned node (``resid_9.331@7`` -> 7); None for a summed node."""
        return split_position(self.id)[1]

    @property
    def site_key(self) -> str:
        """The node's site and layer, ``attn_4`` (`nodes.site_key`)."""
        return site_key(self.site, self.layer)

    @property
    def is_error(self) -> bool:
        """True for an SAE error node (it has no feature index)."""
        return self.feature is None

    def rank_key(self) -> tuple[int, int, int]:
        """(layer, order in block, site index): sorting by it gives forward order. Uses the hook when
        known (resid_pre and resid_post differ); sites that are not SAE sites (logits) sort last."""
        if self.site not in _DEFAULT_SITE_ORDER:
            return (1 << 30, 0, 0)
        layer, order = self.layer, _DEFAULT_SITE_ORDER[self.site]
        if self.hook:
            try:
                layer, order = hook_position(self.hook)
            except ValueError:
                pass  # an unknown hook name still ranks by site and layer
        return (layer, order, SITES.index(self.site) if self.site in SITES else len(SITES))

    def to_dict(self) -> dict[str, Any]:
        """The node as the JSON object of docs/design.md: annotations when not empty, ``n_runs`` and
        ``runs`` when assigned to runs."""
        keys = ("id", "site", "layer", "feature", *MEASURED, "hook", "neuronpedia_id")
        annotations = {
            "contexts": [{"tokens": c.tokens, "activations": c.activations} for c in self.contexts],
            "logits_up": [[t, v] for t, v in self.logits_up],
            "logits_down": [[t, v] for t, v in self.logits_down],
            "explanation": self.explanation,
        }
        data = {key: getattr(self, key) for key in keys}
        data |= {key: value for key, value in annotations.items() if value not in ([], None)}
        if self.runs:
            data |= {"n_runs": len(self.runs), "runs": self.runs}
        return data

    @classmethod
    def from_dict(cls, data: object) -> Node:
        """Inverse of ``to_dict``; a ValueError names the node and the field that is wrong."""
        data = mapping(data, "a node")
        node_id = text(data.get("id"), "a node's id")
        where = f"node {node_id}"
        runs = mapping(data.get("runs") or {}, f"{where} runs")
        return cls(
            id=node_id,
            site=text(data.get("site"), f"{where} site"),
            layer=integer(data.get("layer"), f"{where} layer"),
            feature=_optional(integer, data.get("feature"), f"{where} feature"),
            activation=_optional(finite, data.get("activation"), f"{where} activation"),
            attribution=_optional(finite, data.get("attribution"), f"{where} attribution"),
            hook=_optional(text, data.get("hook"), f"{where} hook"),
            neuronpedia_id=_optional(text, data.get("neuronpedia_id"), f"{where} neuronpedia_id"),
            contexts=[
                Context.from_dict(c, f"{where} context {i}")
                for i, c in enumerate(sequence(data.get("contexts", []), f"{where} contexts"))
            ],
            logits_up=_pairs(data.get("logits_up", []), f"{where} logits_up"),
            logits_down=_pairs(data.get("logits_down", []), f"{where} logits_down"),
            explanation=_optional(text, data.get("explanation"), f"{where} explanation"),
            runs={
                run: {
                    k: finite(v, f"{where} run {run} {k}") for k, v in mapping(values, f"{where} run").items()
                }
                for run, values in runs.items()
            },
        )

    def copy(self) -> Node:
        """A copy whose lists and run values are its own; their items are never mutated."""
        lists = {"contexts": list(self.contexts), "logits_up": list(self.logits_up)}
        runs = {run: dict(values) for run, values in self.runs.items()}
        return replace(self, **lists, logits_down=list(self.logits_down), runs=runs)

    def has_values_of_no_run(self) -> bool:
        """True when the node holds measured values that belong to no run yet."""
        return not self.runs and any(getattr(self, key) is not None for key in MEASURED)

    def merge(self, newer: Node) -> None:
        """Fold another measurement of the same node into this one, in place.

        Values assigned to runs join this node's runs, and the drawn values become
        the means over the runs; values of no run (the same run adding a node
        twice) replace the old ones. Identity fields from the newer node win;
        annotations are kept from whichever is richer (non-empty beats empty,
        the newer wins when both are non-empty).
        """
        if newer.id != self.id:
            raise ValueError(f"cannot merge node {newer.id!r} into {self.id!r}")
        for f in fields(self):
            value = getattr(newer, f.name)
            if f.name == "runs" or value is None or (isinstance(value, list) and not value):
                continue
            setattr(self, f.name, list(value) if isinstance(value, list) else value)
        if newer.runs:
            self.runs.update({run: dict(values) for run, values in newer.runs.items()})
            for key in MEASURED:
                measured = [values[key] for values in self.runs.values() if key in values]
                setattr(self, key, statistics.fmean(measured) if measured else None)


@dataclass
class Edge:
    """A causal effect of ``source`` on ``target`` (sign: raises or lowers); ``effect`` is the mean of
    ``runs`` (run id -> effect) once the edge belongs to a stored graph."""

    source: str
    target: str
    effect: float
    runs: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: object) -> Edge:
        """An edge's JSON object (`Graph.to_json` writes it); a ValueError names the edge and the field
        that is wrong."""
        data = mapping(data, "an edge")
        source = text(data.get("source"), "an edge's source")
        target = text(data.get("target"), "an edge's target")
        where = f"edge {source} -> {target}"
        runs = mapping(data.get("runs") or {}, f"{where} runs")
        return cls(
            source,
            target,
            finite(data.get("effect"), f"{where} effect"),
            {run: finite(value, f"{where} run {run}") for run, value in runs.items()},
        )

    def merge(self, other: Edge) -> None:
        """Add another run's values; values of no run (the same run) replace the old one."""
        if not other.runs:
            self.effect, self.runs = other.effect, {}
            return
        self.runs.update(other.runs)
        self.effect = statistics.fmean(self.runs.values())


@dataclass
class UserDrawing:
    """A DOT drawing's attributes of the graph, of each node, of each edge (`dot_parser` reads a file
    into one). A graph keeps what an imported ``.dot`` drew without a measurement, redrawn as it was:
    its graph attributes, its nodes whose names are no node ids, and its edges without ``effect``."""

    graph_attrs: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    edges: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.graph_attrs or self.nodes or self.edges)

    def update(self, other: UserDrawing) -> None:
        self.graph_attrs.update(other.graph_attrs)
        self.nodes.update({name: dict(attrs) for name, attrs in other.nodes.items()})
        self.edges.update({key: dict(attrs) for key, attrs in other.edges.items()})

    def to_dict(self) -> dict[str, Any]:
        return {
            "graph_attrs": self.graph_attrs,
            "nodes": self.nodes,
            "edges": [{"source": s, "target": t, "attrs": a} for (s, t), a in self.edges.items()],
        }

    @classmethod
    def from_dict(cls, data: object) -> UserDrawing:
        data = mapping(data, "user_drawing")
        return cls(
            graph_attrs=_strings(data.get("graph_attrs", {}), "user_drawing graph_attrs"),
            nodes={
                text(name, "a drawn node's name"): _strings(attrs, f"user_drawing node {name}")
                for name, attrs in mapping(data.get("nodes", {}), "user_drawing nodes").items()
            },
            edges={
                (
                    text(e.get("source"), "a drawn edge's source"),
                    text(e.get("target"), "a drawn edge's target"),
                ): (_strings(e.get("attrs"), "user_drawing edge attrs"))
                for e in (mapping(e, "user_drawing edge") for e in sequence(data.get("edges", []), "edges"))
            },
        )


def _strings(value: object, what: str) -> dict[str, str]:
    return {text(k, what): text(v, f"{what} {k}") for k, v in mapping(value, what).items()}
