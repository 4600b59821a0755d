"""The cognition graph: feature and error nodes joined by causal-effect edges.

One ``Graph`` type is built by every algorithm (pipe.py ablations, fast.py
attributions) and is independent of Graphviz: ``graph_files`` reads and writes
it, ``render`` draws it. Node ids follow docs/design.md (see
``sparse_coding.nodes``):

- feature node: ``{site}_{layer}.{index}``, e.g. ``resid_3.331``
- error node:   ``{site}_error_{layer}``, e.g. ``mlp_error_7``

Researchers trace circuits over many runs, so graphs *merge*, and runs are
kept apart: every measured value (a node's ``activation`` and
``attribution``, an edge's ``effect``) is stored per run in ``runs`` (run id
-> value), and ``metadata["runs"]`` holds one record per run (id, time,
script, prompt or dataset, model, SAE sources, config). The value drawn and
used is the **mean over the runs that measured it** (``len(runs)`` of them).
A freshly computed graph has values but no runs yet; `Graph.add_run` ties
them to their run. An edge measured again is never duplicated or overwritten:
the new run's value joins the others.

Edges and nodes of an imported ``.dot`` that carry no measurement (a hand
drawn arrow without ``effect``, a note) are kept in ``user`` and redrawn as
they were.
"""

from __future__ import annotations

import copy
import math
import secrets
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from typing import Any

from sparse_coding.nodes import HOOK_ORDER, SITES, hook_position, parse_positioned_id, split_position

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
_RUNS_LISTED = 5  # runs named in the summary node; all are in the .json


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
        return cls(
            id=node_id,
            site=parsed.site,
            layer=parsed.layer,
            feature=parsed.feature,
            **attrs,
        )

    @property
    def position(self) -> int | None:
        """The token position of a positioned node (``resid_9.331@7`` -> 7); None for a summed node."""
        return split_position(self.id)[1]

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
        return (layer, order, SITES.index(self.site) if self.site in SITES else len(SITES))

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
        """The node as the JSON object of docs/design.md (plus ``n_runs`` and ``runs``)."""
        keys = ("id", "site", "layer", "feature", *MEASURED, "hook", "neuronpedia_id")
        data = {key: getattr(self, key) for key in keys} | self.annotations()
        if self.runs:
            data |= {"n_runs": len(self.runs), "runs": self.runs}
        return data

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
            runs={
                str(run): {str(k): float(v) for k, v in values.items()}
                for run, values in (data.get("runs") or {}).items()
            },
        )

    def copy(self) -> Node:
        """A copy whose lists and run values are its own; their items are never mutated."""
        lists = {"contexts": list(self.contexts), "logits_up": list(self.logits_up)}
        runs = {run: dict(values) for run, values in self.runs.items()}
        return replace(self, **lists, logits_down=list(self.logits_down), runs=runs)

    def untied(self) -> bool:
        """True when the node holds measured values that belong to no run yet."""
        return not self.runs and any(getattr(self, key) is not None for key in MEASURED)

    def tie(self, run_id: str) -> None:
        """Record the node's measured values as those of run `run_id`."""
        values = {key: value for key in MEASURED if (value := getattr(self, key)) is not None}
        self.runs = {run_id: values} if values else {}

    def merge(self, newer: Node) -> None:
        """Fold another measurement of the same node into this one, in place.

        Values tied to runs join this node's runs, and the drawn values become
        the means over the runs; untied values (the same run adding a node
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
    """A causal effect of ``source`` on ``target`` (sign: raises or lowers).

    ``effect`` is the mean of ``runs`` (run id -> effect) once the edge
    belongs to a stored graph.
    """

    source: str
    target: str
    effect: float
    runs: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{"source", "target", "effect"}`` plus ``n_runs`` and ``runs`` when tied to runs."""
        data: dict[str, Any] = {"source": self.source, "target": self.target, "effect": self.effect}
        if self.runs:
            data |= {"n_runs": len(self.runs), "runs": self.runs}
        return data

    def merge(self, other: Edge) -> None:
        """Add another run's values; untied values (the same run) replace the old one."""
        if not other.runs:
            self.effect, self.runs = other.effect, {}
            return
        self.runs.update(other.runs)
        self.effect = statistics.fmean(self.runs.values())


@dataclass
class UserDrawing:
    """What an imported ``.dot`` drew without a measurement: kept and redrawn as it was.

    Attributes:
        graph_attrs: graph attributes (e.g. ``label``).
        nodes: node name -> attributes, for names that are not node ids.
        edges: (source, target) -> attributes, for edges without ``effect``.
    """

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
    def from_dict(cls, data: dict[str, Any]) -> UserDrawing:
        return cls(
            graph_attrs={str(k): str(v) for k, v in data.get("graph_attrs", {}).items()},
            nodes={str(n): {str(k): str(v) for k, v in a.items()} for n, a in data.get("nodes", {}).items()},
            edges={
                (str(e["source"]), str(e["target"])): {str(k): str(v) for k, v in e["attrs"].items()}
                for e in data.get("edges", [])
            },
        )


@dataclass
class Graph:
    """Nodes by id, edges by (source, target), metadata, and an imported file's user drawing.

    A stored graph's ``metadata`` holds ``runs`` (one record per run, oldest
    first), and what describes the whole graph: ``model``, ``sae_sources``
    (site key -> source, over all runs) and ``summary`` (drawn as the summary
    node; it lists the runs). A freshly computed graph's metadata is its run's
    own (prompt, summary, ...) until `add_run` records it.
    """

    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[tuple[str, str], Edge] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    user: UserDrawing = field(default_factory=UserDrawing)

    def copy(self) -> Graph:
        """A copy that tying and merging leave the original alone: nodes as `Node.copy`, edges
        with their own run values, metadata and hand-drawn parts deep-copied (a deep copy of
        every edge took ~2 s on a 59k-edge graph)."""
        return Graph(
            nodes={key: node.copy() for key, node in self.nodes.items()},
            edges={key: Edge(e.source, e.target, e.effect, dict(e.runs)) for key, e in self.edges.items()},
            metadata=copy.deepcopy(self.metadata),
            user=copy.deepcopy(self.user),
        )

    def add_node(self, node: Node) -> None:
        """Add a node, merging into an existing node of the same id."""
        if node.id in self.nodes:
            self.nodes[node.id].merge(node)
        else:
            self.nodes[node.id] = node.copy()

    def add_edge(self, source: str, target: str, effect: float) -> None:
        """Add or update the edge source -> target; an edge is never duplicated."""
        self.edges[(source, target)] = Edge(source, target, float(effect))

    @property
    def runs(self) -> list[dict[str, Any]]:
        """The run records, oldest first ([] for a freshly computed graph)."""
        return self.metadata.get("runs", [])

    def add_run(self, record: dict[str, Any]) -> None:
        """Tie every value that belongs to no run yet to the run `record` (which has an ``id``).

        A freshly computed graph's metadata is replaced by its run list: put
        its fields into `record` first (see `run_record`).
        """
        if "runs" not in self.metadata:
            self.metadata = {"runs": []}
        for node in self.nodes.values():
            if node.untied():
                node.tie(record["id"])
        for edge in self.edges.values():
            if not edge.runs:
                edge.runs = {record["id"]: edge.effect}
        self.metadata["runs"].append(copy.deepcopy(record))
        self._describe()

    def untied(self) -> bool:
        """True when some node or edge value belongs to no run (a fresh or imported graph)."""
        return any(n.untied() for n in self.nodes.values()) or any(not e.runs for e in self.edges.values())

    def merge(self, other: Graph) -> None:
        """Grow this graph by another one, in place (both tied to their runs, see `add_run`).

        Nodes merge by id, an edge measured again gains the new run's value
        (drawn at the mean), runs are listed once each, oldest first, and the
        whole-graph metadata is recomputed.
        """
        for node in other.nodes.values():
            self.add_node(node)
        for key, edge in other.edges.items():
            if key in self.edges:
                self.edges[key].merge(edge)
            else:
                self.edges[key] = Edge(edge.source, edge.target, edge.effect, dict(edge.runs))
        self.user.update(other.user)
        known = {run.get("id") for run in self.runs}
        runs = self.metadata.setdefault("runs", [])
        runs += [copy.deepcopy(run) for run in other.runs if run.get("id") not in known]
        self._describe()

    def conflicts(self, run: dict[str, Any]) -> list[str]:
        """Why a run's values cannot be compared with this graph's (other model or SAE sources), in words."""
        found = []
        model = self.metadata.get("model")
        if model and run.get("model") and run["model"] != model:
            found.append(f"MODEL_DIR: the graph has {model!r}, this run {run['model']!r}")
        ours = self.metadata.get("sae_sources") or {}
        for key, source in sorted((run.get("sae_sources") or {}).items()):
            if key in ours and ours[key] != source:
                found.append(f"{key}: the graph's SAE is {ours[key]!r}, this run's {source!r}")
        return found

    def run_node_ids(self, run_id: str) -> set[str]:
        """Nodes measured by run `run_id`, or at an end of one of its edges."""
        ids = {node.id for node in self.nodes.values() if run_id in node.runs}
        for edge in self.edges.values():
            if run_id in edge.runs:
                ids |= {edge.source, edge.target}
        return ids & self.nodes.keys()

    def _describe(self) -> None:
        """Whole-graph metadata from the run records: model, every SAE source, the summary."""
        models = [run["model"] for run in self.runs if run.get("model")]
        if models:
            self.metadata["model"] = models[-1]
        sources: dict[str, str] = {}
        for run in self.runs:
            sources.update(run.get("sae_sources") or {})
        if sources:
            self.metadata["sae_sources"] = dict(sorted(sources.items()))
        self.metadata["summary"] = graph_summary(self.runs)

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
        """The ``.json`` object of docs/design.md, in canonical order."""
        data = {
            "nodes": [node.to_dict() for node in self.sorted_nodes()],
            "edges": [edge.to_dict() for edge in self.sorted_edges()],
            "metadata": self.metadata,
        }
        return data | ({"user_drawing": self.user.to_dict()} if self.user else {})

    def to_pandas(self, *, per_run: bool = False) -> tuple[Any, Any]:
        """(nodes, edges) as pandas DataFrames (needs ``pip install -e ".[analysis]"``).

        Nodes: id, site, layer, feature, position (None when summed), activation,
        attribution, hook, neuronpedia_id, explanation, n_runs; edges: source,
        target, effect, n_runs. With `per_run`, one row per run value instead
        (a ``run`` column; values measured by that run).
        """
        from sparse_coding.graphs.tables import graph_frames

        return graph_frames(self, per_run=per_run)

    def to_networkx(self) -> Any:
        """A networkx DiGraph: node attributes as in `to_pandas`, edge attributes ``effect`` and
        ``abs_effect`` (needs ``pip install -e ".[analysis]"``)."""
        from sparse_coding.graphs.tables import graph_networkx

        return graph_networkx(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Graph:
        """Inverse of ``to_dict``; raises KeyError/TypeError/ValueError on bad data."""
        graph = cls(metadata=dict(data.get("metadata") or {}))
        for item in data["nodes"]:
            graph.add_node(Node.from_dict(item))
        for item in data["edges"]:
            runs = {str(run): float(value) for run, value in (item.get("runs") or {}).items()}
            edge = Edge(str(item["source"]), str(item["target"]), finite(item["effect"]), runs)
            graph.edges[(edge.source, edge.target)] = edge
        graph.user = UserDrawing.from_dict(data.get("user_drawing") or {})
        return graph


def prompt_tokens(metadata: dict[str, Any]) -> list[str] | None:
    """The token strings of the prompt a graph was computed on (BOS first when prepended): a fresh
    graph's own ``prompt_tokens``, else its latest run's that has them; None if none does."""
    if metadata.get("prompt_tokens"):
        return list(metadata["prompt_tokens"])
    for run in reversed(metadata.get("runs") or []):
        if run.get("prompt_tokens"):
            return list(run["prompt_tokens"])
    return None


def new_run_id() -> str:
    """A run id that sorts by time and never repeats: ``20260101T120000Z-3fa2``."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


def run_record(metadata: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    """A run's record from a freshly computed graph's metadata: its fields plus ``id`` and ``time``."""
    record = {"id": run_id or new_run_id(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return record | copy.deepcopy({k: v for k, v in metadata.items() if k != "runs"})


def graph_summary(runs: list[dict[str, Any]]) -> str:
    """The summary node's text: one run's own summary, or how many runs of which script; then the runs."""
    scripts = Counter(str(run.get("script", "unknown")) for run in runs)
    counts = ", ".join(f"{script} x{n}" for script, n in sorted(scripts.items()))
    if len(runs) == 1:
        lines = [str(runs[0].get("summary", ""))]
    else:
        lines = [
            f"{len(runs)} runs ({counts}); a value measured by several runs is drawn at their mean "
            f"(count in its tooltip)"
        ]
    if len(runs) > _RUNS_LISTED:
        lines.append(f"{len(runs) - _RUNS_LISTED} earlier runs are listed in the .json")
    for run in runs[-_RUNS_LISTED:]:
        text = f"DATASET {run['dataset']!r}" if run.get("dataset") else f"PROMPT {run.get('prompt')!r}"
        own = f": {run.get('summary', '')}" if len(runs) > 1 else ""  # one run: its summary leads
        lines.append(f"run {run.get('id')} ({run.get('script', 'unknown')}, {text}){own}")
    return " | ".join(lines)


def _id_key(node: Node) -> tuple[int, int, str]:
    """Error nodes after features; features by index, so 9 sorts before 10."""
    if node.feature is None:
        return (1, 0, node.id)
    return (0, node.feature, node.id)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _pairs(items: Any) -> list[tuple[str, float]]:
    return [(str(token), float(value)) for token, value in items]


def finite(value: object) -> float:
    """A stored number as a float; inf and nan are no value a run writes (ValueError)."""
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise ValueError(f"non-finite number {value!r}")
    return number
