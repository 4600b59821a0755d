"""Phase 6 of the gradient graph: which nodes and edges SELECTION keeps, and the Graph they make.

topk: per down-node and upstream site the NUM_UP_NODES most positive and most
negative feature edges plus the nonzero error edges, pruned to what reaches
the slice's last layer. threshold (Marks et al. 2024, section 3; their code's
`get_circuit` and `plot_circuit`): the nodes, features and errors alike, with
|mean IE| > NODE_THRESHOLD, and the edges with |mean effect| > EDGE_THRESHOLD
whose both ends are such nodes; no pruning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sparse_coding.algorithms.attribution_edges import EdgeSet
from sparse_coding.algorithms.node_slots import SUMMED, NodeLayout
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.splicing.splice import SplicedModel

if TYPE_CHECKING:
    from sparse_coding.algorithms.attribution_graph import GraphOptions, NodeSummary

Slot = tuple[str, int]  # (site key, slot): one node
KeptEdge = tuple[Slot, Slot, float]  # (upstream, downstream, effect)


def build_graph(
    spliced: SplicedModel,
    summaries: dict[str, NodeSummary],
    edge_sets: list[EdgeSet],
    options: GraphOptions,
    layout: NodeLayout = SUMMED,
) -> Graph:
    """Phase 6: kept nodes and edges (SELECTION's rule), with node attributes and each node's std."""
    if options.selection == "threshold":
        nodes = marks_nodes(summaries, options.node_threshold)
        kept = [edge for edge_set in edge_sets for edge in threshold_edges(edge_set, options.edge_threshold)]
        kept = [(up, down, value) for up, down, value in kept if up in nodes and down in nodes]
    else:
        kept = [edge for edge_set in edge_sets for edge in top_edges(edge_set, options.num_up_nodes)]
        bottom_layer = max(site.layer for site in spliced.sites)
        bottom = {down for _, down, _ in kept if spliced.by_key[down[0]].layer == bottom_layer}
        nodes, kept = trace_up(bottom, kept)
    graph = Graph()
    ids = {node: layout.node_id(*node) for node in nodes}
    for node in sorted(nodes):
        graph.add_node(_node(spliced, summaries[node[0]], layout, node, ids[node]))
    for up, down, effect in kept:
        graph.add_edge(ids[up], ids[down], effect)
    graph.metadata["node_std"] = {
        ids[node]: float(summaries[node[0]].std_of(torch.tensor([node[1]]))[0]) for node in sorted(nodes)
    }
    return graph


def marks_nodes(summaries: dict[str, NodeSummary], threshold: float) -> set[Slot]:
    """Every feature and error node with |mean attribution| > threshold (Marks et al.'s nodes)."""
    return {
        (key, int(slot))
        for key, summary in summaries.items()
        for slot in summary.slots[summary.mean.abs() > threshold].tolist()
    }


def threshold_edges(edge_set: EdgeSet, threshold: float) -> list[KeptEdge]:
    rows, cols = (edge_set.effects.abs() > threshold).nonzero(as_tuple=True)
    return [_edge(edge_set, r, c) for r, c in zip(rows.tolist(), cols.tolist(), strict=True)]


def _edge(edge_set: EdgeSet, row: int, col: int) -> KeptEdge:
    up = (edge_set.up_site, int(edge_set.up_slots[col]))
    down = (edge_set.down_site, int(edge_set.down_slots[row]))
    return up, down, float(edge_set.effects[row, col])


def top_edges(edge_set: EdgeSet, num_up_nodes: int) -> list[KeptEdge]:
    """The most positive and most negative feature edges per down-node, plus the nonzero error edges."""
    is_feature = edge_set.up_slots >= 0
    result = []
    for row in range(len(edge_set.down_slots)):
        effects = edge_set.effects[row]
        features = torch.where(is_feature, effects, torch.zeros_like(effects))
        chosen = {
            int(c)
            for side in (features.clamp(min=0), (-features).clamp(min=0))
            for c in side.topk(min(num_up_nodes, len(side))).indices
            if side[c] > 0
        }
        chosen |= {int(c) for c in ((~is_feature) & (effects != 0)).nonzero().flatten()}
        result += [_edge(edge_set, row, c) for c in sorted(chosen)]
    return result


def trace_up(bottom: set[Slot], edges: list[KeptEdge]) -> tuple[set[Slot], list[KeptEdge]]:
    """Nodes and edges with a path to a bottom node."""
    into: dict[Slot, list[KeptEdge]] = {}
    for edge in edges:
        into.setdefault(edge[1], []).append(edge)
    reached, frontier, kept = set(bottom), list(bottom), []
    while frontier:
        for edge in into.get(frontier.pop(), []):
            kept.append(edge)
            if edge[0] not in reached:
                reached.add(edge[0])
                frontier.append(edge[0])
    return reached, kept


def _node(spliced: SplicedModel, summary: NodeSummary, layout: NodeLayout, node: Slot, node_id: str) -> Node:
    """A node with its mean attribution and largest activation (at its position, when positioned)."""
    key, slot = node
    site = spliced.by_key[key]
    common = {"hook": site.sae.hook_name, "neuronpedia_id": site.sae.neuronpedia_id}
    attribution = float(summary.mean_of(torch.tensor([slot]))[0])
    if slot < 0:
        return Node.from_id(node_id, attribution=attribution, **common)
    activation = summary.position_activation[slot % layout.n, slot // layout.n]
    return Node.from_id(node_id, activation=float(activation), attribution=attribution, **common)
