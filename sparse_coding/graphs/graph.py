"""The cognition graph: feature and error nodes joined by causal-effect edges, and its ``.json`` form.

One ``Graph`` type is built by every algorithm and serialises itself
(``to_json``/``from_json``, the canonical file `graph_files` writes);
``render`` draws it and ``viewer`` shows it. Node ids follow docs/design.md
(``sparse_coding.nodes``): ``resid_3.331`` for a feature, ``mlp_error_7`` for
an error node.

Graphs *merge* across runs, and runs are kept apart: every measured value (a
node's ``activation`` and ``attribution``, an edge's ``effect``) is stored per
run in ``runs`` (run id -> value), and the value drawn and used is the **mean
over the runs that measured it**.

The ``.json`` is read strictly (`elements`) and checked before writing
(`check`), so it always reads back.
"""

from __future__ import annotations

import copy
import json
import math
import re
import secrets
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

from sparse_coding.graphs.elements import (
    MEASURED,
    Context,
    Edge,
    Node,
    UserDrawing,
    finite,
    loads_strict,
    mapping,
    sequence,
    text,
)

__all__ = [
    "MEASURED",
    "Context",
    "Edge",
    "Graph",
    "Node",
    "UserDrawing",
    "finite",
    "loads_strict",
    "prompt_tokens",
    "run_record",
]

_RUNS_LISTED = 5  # runs named in the summary node; all are in the .json
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=str).encode


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
        """A copy that merging leaves the original alone (edges, never mutated, are not deep-copied)."""
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
        """Assign every value that belongs to no run yet to the run `record` (which has an ``id``).

        A freshly computed graph's metadata is replaced by its run list: put its fields into
        `record` first (`run_record`)."""
        if "runs" not in self.metadata:
            self.metadata = {"runs": []}
        for node in self.nodes.values():
            if node.has_values_of_no_run():
                node.runs = {record["id"]: {k: v for k in MEASURED if (v := getattr(node, k)) is not None}}
        for edge in self.edges.values():
            if not edge.runs:
                edge.runs = {record["id"]: edge.effect}
        self.metadata["runs"].append(copy.deepcopy(record))
        self._describe()

    def has_values_of_no_run(self) -> bool:
        """True when some node or edge value belongs to no run (a fresh or imported graph)."""
        nodes = any(n.has_values_of_no_run() for n in self.nodes.values())
        return nodes or any(not e.runs for e in self.edges.values())

    def merge(self, other: Graph) -> None:
        """Grow this graph by another one, in place (both assigned to their runs, see `add_run`): an edge
        measured again gains the new run's value, never duplicated; runs are listed once, oldest first."""
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
        """Why a run's values cannot be compared with this graph's (other model or SAE sources; for trace.py,
        another prompt, since its node ids name token positions), in words."""
        found = []
        model = self.metadata.get("model")
        if model and run.get("model") and run["model"] != model:
            found.append(f"MODEL_DIR: the graph has {model!r}, this run {run['model']!r}")
        ours = self.metadata.get("sae_sources") or {}
        for key, source in sorted((run.get("sae_sources") or {}).items()):
            if key in ours and ours[key] != source:
                found.append(f"{key}: the graph's SAE is {ours[key]!r}, this run's {source!r}")
        if run.get("script") == "trace.py" and run.get("prompt_tokens"):
            traced = [r.get("prompt_tokens") for r in self.runs if r.get("script") == "trace.py"]
            theirs = [tokens for tokens in traced if tokens]
            if theirs and theirs[-1] != run["prompt_tokens"]:
                found.append(
                    f"trace.py's nodes name token positions (@N): the graph's prompt is the tokens "
                    f"{theirs[-1]!r}, this run's {run['prompt_tokens']!r}"
                )
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
        sources = {key: source for run in self.runs for key, source in (run.get("sae_sources") or {}).items()}
        if sources:
            self.metadata["sae_sources"] = dict(sorted(sources.items()))
        self.metadata["summary"] = graph_summary(self.runs)

    def sorted_nodes(self) -> list[Node]:
        """Nodes in forward order (then by id): the canonical file order."""
        return sorted(self.nodes.values(), key=lambda n: (n.rank_key(), _id_key(n)))

    def sorted_edges(self, order: dict[str, int] | None = None) -> list[Edge]:
        """Edges ordered by their source's, then their target's, node order (`order`: node id ->
        position in `sorted_nodes`, when the caller has it); ends that are no node sort last, by id."""
        order = order or {node.id: i for i, node in enumerate(self.sorted_nodes())}
        n = len(order) + 1
        if all(s in order and t in order for s, t in self.edges):  # one int per edge: the fast key
            return sorted(self.edges.values(), key=lambda e: order[e.source] * n + order[e.target])
        return sorted(
            self.edges.values(),
            key=lambda e: (order.get(e.source, n), e.source, order.get(e.target, n), e.target),
        )

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
    def from_dict(cls, data: object) -> Graph:
        """The graph of a parsed ``.json``, read strictly: a ValueError names the node, edge, run or field."""
        data = mapping(data, "the file")
        graph = cls(metadata=dict(mapping(data.get("metadata") or {}, "metadata")))
        for i, run in enumerate(sequence(graph.metadata.get("runs", []), "metadata.runs")):
            text(mapping(run, f"metadata.runs[{i}]").get("id"), f"metadata.runs[{i}].id")
        for item in sequence(data.get("nodes"), "nodes"):
            graph.add_node(Node.from_dict(item))
        for item in sequence(data.get("edges"), "edges"):
            edge = Edge.from_dict(item)
            graph.edges[(edge.source, edge.target)] = edge
        graph.user = UserDrawing.from_dict(data.get("user_drawing") or {})
        _check_ends(graph)
        return graph

    def check(self) -> None:
        """Raise ValueError naming the first value no graph file may hold (see `from_dict`)."""
        _check_numbers(self)
        _check_ends(self)

    def to_json(self, header: Mapping[str, Any] | None = None) -> str:
        """The graph's ``.json`` text (docs/design.md), in canonical order: `header` keys first, then nodes
        and edges one per line; a non-finite number is a ValueError (`check` names where)."""
        records = {
            "nodes": [_ENCODE(node.to_dict()) for node in self.sorted_nodes()],
            "edges": _edge_lines(self.sorted_edges()),
        }
        data = dict(header or {}) | {"nodes": None, "edges": None, "metadata": self.metadata}
        if self.user:
            data["user_drawing"] = self.user.to_dict()
        members = []
        for key, value in data.items():
            lines = records.get(key)
            body = _ENCODE(value) if lines is None else "[\n" + ",\n".join(lines) + "\n]" if lines else "[]"
            members.append(f"{encode_basestring(key)}: {body}")
        json_text = "{\n" + ",\n".join(members) + "\n}\n"
        return _SURROGATE_RE.sub(lambda m: f"\\u{ord(m[0]):04x}", json_text)

    @classmethod
    def from_json(cls, json_text: str | bytes) -> Graph:
        """Inverse of ``to_json``; raises ValueError naming what is wrong (header keys are ignored)."""
        return cls.from_dict(loads_strict(json_text))


def _edge_lines(edges: list[Edge]) -> list[str]:
    """Each edge's JSON object, ``{"source", "target", "effect"}`` plus ``n_runs`` and ``runs`` when
    assigned to runs, written out for these few keys."""
    number, quoted, lines = float.__repr__, {}, []  # node and run ids, each quoted once
    for edge in edges:
        source = quoted.get(edge.source) or quoted.setdefault(edge.source, encode_basestring(edge.source))
        target = quoted.get(edge.target) or quoted.setdefault(edge.target, encode_basestring(edge.target))
        effect_text = number(float(edge.effect))  # a run's value is often the effect itself: written once
        head = f'{{"source":{source},"target":{target},"effect":{effect_text}'
        if not edge.runs:
            lines.append(head + "}")
            continue
        runs = [
            f"{quoted.get(run) or quoted.setdefault(run, encode_basestring(run))}:"
            f"{effect_text if value is edge.effect else number(float(value))}"
            for run, value in edge.runs.items()
        ]
        lines.append(f'{head},"n_runs":{len(runs)},"runs":{{{",".join(runs)}}}}}')
    return lines


def prompt_tokens(metadata: dict[str, Any]) -> list[str] | None:
    """The token strings of the prompt a graph was computed on (BOS first when prepended): a fresh
    graph's own ``prompt_tokens``, else its latest run's that has them; None if none does."""
    for record in (metadata, *reversed(metadata.get("runs") or [])):
        if record.get("prompt_tokens"):
            return list(record["prompt_tokens"])
    return None


def run_record(metadata: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    """A run's record from a freshly computed graph's metadata: its fields plus ``id`` (by default one
    that sorts by time and never repeats: ``20260101T120000Z-3fa2``) and ``time``."""
    run_id = run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)
    record = {"id": run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
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
    return (1, 0, node.id) if node.feature is None else (0, node.feature, node.id)


def _check_numbers(graph: Graph) -> None:
    """Raise the ValueError of `finite` for the first node or edge value that is no finite number."""
    for node in graph.nodes.values():
        values = _node_values(node)
        if not _all_finite([value for _, value in values]):
            for what, value in values:
                finite(value, f"node {node.id} {what}")
    edges = graph.edges.values()
    if not _all_finite([e.effect for e in edges] + [v for e in edges for v in e.runs.values()]):
        for edge in edges:
            for run, value in [("", edge.effect), *edge.runs.items()]:
                finite(value, f"edge {edge.source} -> {edge.target} {f'run {run}' if run else 'effect'}")


def _node_values(node: Node) -> list[tuple[str, Any]]:
    """(what, value) for every number a node holds."""
    values = [(key, getattr(node, key)) for key in MEASURED if getattr(node, key) is not None]
    values += [
        (f"run {run} {key}", v) for run, run_values in node.runs.items() for key, v in run_values.items()
    ]
    values += [("context activation", v) for context in node.contexts for v in context.activations]
    return values + [("logit value", v) for _, v in node.logits_up + node.logits_down]


def _all_finite(values: list[Any]) -> bool:
    """Every value a finite int or float (fast; `finite` says which one is not)."""
    try:
        return all(map(math.isfinite, values)) and not any(isinstance(v, bool) for v in values)
    except TypeError:
        return False


def _check_ends(graph: Graph) -> None:
    """Every edge joins two nodes of the graph."""
    for source, target in graph.edges:
        for end in (source, target):
            if end not in graph.nodes:
                raise ValueError(f"the edge {source} -> {target} names the node {end}, which the graph lacks")
