"""The cognition graph: feature and error nodes joined by causal-effect edges.

One ``Graph`` type is built by every algorithm (pipe.py ablations, fast.py
attributions) and is independent of Graphviz: ``graph_files`` reads and writes
it, ``render`` draws it. Node ids follow the design contract (see
``sparse_coding.nodes``):

- feature node: ``{site}_{layer}.{index}``, e.g. ``resid_3.331``
- error node:   ``{site}_error_{layer}``, e.g. ``mlp_error_7``

Researchers trace circuits over many runs, so graphs *merge*: a new run's
nodes and edges are added to the stored graph, an edge measured again is
updated (never duplicated), and a node keeps its richest annotations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields, replace
from typing import Any

from sparse_coding.nodes import HOOK_ORDER, SITES, hook_position, parse_node_id

# Where a site sits inside its block when the node carries no hook name. The
# resid default is hook_resid_pre: the default resid SAEs (res-jb) read there.
_DEFAULT_SITE_ORDER: dict[str, int] = {
    "resid": HOOK_ORDER["hook_resid_pre"],
    "attn": HOOK_ORDER["hook_attn_out"],
    "mlp": HOOK_ORDER["hook_mlp_out"],
}


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


@dataclass
class Node:
    """A feature (or SAE error term) at one site and layer.

    Numeric attributes are measurements of the latest run; the annotation
    fields (contexts, logits, explanation) describe the feature itself and are
    filled from cached contexts, the unembedding, or Neuronpedia.
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

    @classmethod
    def from_id(cls, node_id: str, **attrs: Any) -> Node:
        """Build a node whose site, layer and feature are parsed from its id."""
        parsed = parse_node_id(node_id)
        return cls(
            id=node_id,
            site=parsed.site,
            layer=parsed.layer,
            feature=parsed.feature,
            **attrs,
        )

    @property
    def is_error(self) -> bool:
        """True for an SAE error node (it has no feature index)."""
        return self.feature is None

    def rank_key(self) -> tuple[int, int, int]:
        """(layer, order in block, site index): sorting by it gives forward order.

        Uses the hook when known (resid_pre and resid_post differ); sites that
        are not SAE sites (e.g. logits) sort after every layer.
        """
        if self.site not in _DEFAULT_SITE_ORDER:
            return (1 << 30, 0, 0)
        layer, order = self.layer, _DEFAULT_SITE_ORDER[self.site]
        if self.hook:
            try:
                layer, order = hook_position(self.hook)
            except ValueError:
                pass  # an unknown hook name still ranks by site and layer
        return (layer, order, SITES.index(self.site))

    def annotations(self) -> dict[str, Any]:
        """The non-empty annotation fields, as JSON-ready values."""
        data: dict[str, Any] = {}
        if self.contexts:
            data["contexts"] = [{"tokens": c.tokens, "activations": c.activations} for c in self.contexts]
        if self.logits_up:
            data["logits_up"] = [[t, v] for t, v in self.logits_up]
        if self.logits_down:
            data["logits_down"] = [[t, v] for t, v in self.logits_down]
        if self.explanation is not None:
            data["explanation"] = self.explanation
        return data

    def to_dict(self) -> dict[str, Any]:
        """The node as the JSON object of the design contract."""
        keys = ("id", "site", "layer", "feature", "activation", "attribution")
        data = {key: getattr(self, key) for key in (*keys, "hook", "neuronpedia_id")}
        return {**data, **self.annotations()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Node:
        """Inverse of ``to_dict``; raises KeyError/TypeError/ValueError on bad data."""
        contexts = data.get("contexts", [])
        return cls(
            id=str(data["id"]),
            site=str(data["site"]),
            layer=int(data["layer"]),
            feature=_int_or_none(data.get("feature")),
            activation=_float_or_none(data.get("activation")),
            attribution=_float_or_none(data.get("attribution")),
            hook=_str_or_none(data.get("hook")),
            neuronpedia_id=_str_or_none(data.get("neuronpedia_id")),
            contexts=[
                Context([str(t) for t in c["tokens"]], [float(a) for a in c["activations"]]) for c in contexts
            ],
            logits_up=_pairs(data.get("logits_up", [])),
            logits_down=_pairs(data.get("logits_down", [])),
            explanation=_str_or_none(data.get("explanation")),
        )

    def copy(self) -> Node:
        """A copy whose lists are its own; their items (str, float tuples, Context) are never mutated."""
        lists = {"contexts": list(self.contexts), "logits_up": list(self.logits_up)}
        return replace(self, **lists, logits_down=list(self.logits_down))

    def merge(self, newer: Node) -> None:
        """Fold a newer measurement of the same node into this one, in place.

        Numbers and identity fields from the newer run win when present;
        annotations are kept from whichever is richer (non-empty beats empty,
        the newer wins when both are non-empty).
        """
        if newer.id != self.id:
            raise ValueError(f"cannot merge node {newer.id!r} into {self.id!r}")
        for f in fields(self):
            value = getattr(newer, f.name)
            if value is None or (isinstance(value, list) and not value):
                continue
            setattr(self, f.name, list(value) if isinstance(value, list) else value)


@dataclass
class Edge:
    """A causal effect of ``source`` on ``target`` (sign: raises or lowers)."""

    source: str
    target: str
    effect: float


@dataclass
class Graph:
    """Nodes by id, edges by (source, target), and per-run metadata.

    ``metadata`` holds the latest run's info (prompt, model, SAE sources,
    config values) at the top level and every run's info in
    ``metadata["runs"]``; ``metadata["summary"]`` (e.g. "features explain ~73%
    of the effect") is drawn as a summary node.
    """

    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[tuple[str, str], Edge] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def add_node(self, node: Node) -> None:
        """Add a node, merging into an existing node of the same id."""
        if node.id in self.nodes:
            self.nodes[node.id].merge(node)
        else:
            self.nodes[node.id] = node.copy()

    def add_edge(self, source: str, target: str, effect: float) -> None:
        """Add or update the edge source -> target; an edge is never duplicated."""
        self.edges[(source, target)] = Edge(source, target, float(effect))

    def merge(self, other: Graph) -> None:
        """Grow this graph by a newer run's graph, in place.

        Nodes merge by id, edges are updated by (source, target), and the
        newer metadata wins at the top level while ``metadata["runs"]`` keeps
        the runs of both graphs, oldest first.
        """
        for node in other.nodes.values():
            self.add_node(node)
        for edge in other.edges.values():
            self.add_edge(edge.source, edge.target, edge.effect)
        self.metadata = _merge_metadata(self.metadata, other.metadata)

    def sorted_nodes(self) -> list[Node]:
        """Nodes in forward order (then by id): the canonical file order."""
        return sorted(self.nodes.values(), key=lambda n: (n.rank_key(), _id_key(n)))

    def sorted_edges(self) -> list[Edge]:
        """Edges ordered by their source's, then their target's, node order."""
        order = {node.id: i for i, node in enumerate(self.sorted_nodes())}
        missing = len(order)
        return sorted(
            self.edges.values(),
            key=lambda e: (
                order.get(e.source, missing),
                e.source,
                order.get(e.target, missing),
                e.target,
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``.json`` object of the design contract, in canonical order."""
        return {
            "nodes": [node.to_dict() for node in self.sorted_nodes()],
            "edges": [
                {"source": e.source, "target": e.target, "effect": e.effect} for e in self.sorted_edges()
            ],
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Graph:
        """Inverse of ``to_dict``; raises KeyError/TypeError/ValueError on bad data."""
        graph = cls(metadata=dict(data.get("metadata") or {}))
        for item in data["nodes"]:
            graph.add_node(Node.from_dict(item))
        for item in data["edges"]:
            graph.add_edge(str(item["source"]), str(item["target"]), float(item["effect"]))
        return graph


def _id_key(node: Node) -> tuple[int, int, str]:
    """Error nodes after features; features by index, so 9 sorts before 10."""
    if node.feature is None:
        return (1, 0, node.id)
    return (0, node.feature, node.id)


def _run_record(metadata: dict[str, Any]) -> dict[str, Any]:
    """One run's metadata without the accumulated fields."""
    return {k: v for k, v in metadata.items() if k != "runs"}


def _merge_metadata(older: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
    """Newer values win at the top level; runs of both are kept in order.

    A graph that has never been merged has no "runs" list: its own top-level
    fields count as its one run, so a first merge loses nothing.
    """
    runs: list[dict[str, Any]] = []
    for meta in (older, newer):
        if "runs" in meta:
            runs.extend(copy.deepcopy(meta["runs"]))
        elif _run_record(meta):
            runs.append(copy.deepcopy(_run_record(meta)))
    merged = copy.deepcopy(older)
    merged.update(copy.deepcopy(_run_record(newer)))
    merged["runs"] = runs
    return merged


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _pairs(items: Any) -> list[tuple[str, float]]:
    return [(str(token), float(value)) for token, value in items]
