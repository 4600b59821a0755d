"""What no graph file may hold: a non-finite or non-numeric value, an edge whose end is not a node.

The common path is one pass of `math.isfinite` over every number; only a
graph that fails it is walked again to name the first bad value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sparse_coding.graphs.elements import MEASURED, Edge, Node, finite

if TYPE_CHECKING:
    from sparse_coding.graphs.graph import Graph


def check_numbers(nodes: Iterable[Node], edges: Iterable[Edge]) -> None:
    """Raise the ValueError of `finite` for the first node or edge value that is no finite number."""
    for node in nodes:
        values = _node_values(node)
        if not _all_finite([value for _, value in values]):
            for what, value in values:
                finite(value, f"node {node.id} {what}")
    edges = list(edges)
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


def check_ends(graph: Graph) -> None:
    """Every edge joins two nodes of the graph."""
    for source, target in graph.edges:
        for end in (source, target):
            if end not in graph.nodes:
                raise ValueError(f"the edge {source} -> {target} names the node {end}, which the graph lacks")
