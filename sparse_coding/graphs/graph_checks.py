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
        if not _all_finite(_numbers(node)):
            _name_bad_value(node)
    edges = list(edges)
    if not _all_finite([e.effect for e in edges] + [v for e in edges for v in e.runs.values()]):
        for edge in edges:
            for run, value in [("", edge.effect), *edge.runs.items()]:
                finite(value, f"edge {edge.source} -> {edge.target} {f'run {run}' if run else 'effect'}")


def _numbers(node: Node) -> list[Any]:
    """Every number a node holds."""
    values = [getattr(node, key) for key in MEASURED if getattr(node, key) is not None]
    values += [value for run_values in node.runs.values() for value in run_values.values()]
    values += [value for context in node.contexts for value in context.activations]
    return values + [value for _, value in node.logits_up + node.logits_down]


def _all_finite(values: list[Any]) -> bool:
    """Every value a finite int or float (fast; `_name_bad_value` says which one is not)."""
    try:
        return all(map(math.isfinite, values)) and not any(isinstance(v, bool) for v in values)
    except TypeError:
        return False


def _name_bad_value(node: Node) -> None:
    """Raise the ValueError of `finite` for the node's first value that is no finite number."""
    for key in MEASURED:
        if (value := getattr(node, key)) is not None:
            finite(value, f"node {node.id} {key}")
    for run, values in node.runs.items():
        for key, value in values.items():
            finite(value, f"node {node.id} run {run} {key}")
    for context in node.contexts:
        for value in context.activations:
            finite(value, f"node {node.id} context activation")
    for _, value in node.logits_up + node.logits_down:
        finite(value, f"node {node.id} logit value")


def check_ends(graph: Graph) -> None:
    """Every edge joins two nodes of the graph."""
    for source, target in graph.edges:
        for end in (source, target):
            if end not in graph.nodes:
                raise ValueError(f"the edge {source} -> {target} names the node {end}, which the graph lacks")
