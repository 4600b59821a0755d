"""Turn node and edge attributions into the gradient cognition graph (fast.py's graph).

Per down-node and upstream site it keeps the NUM_UP_NODES most positive and
most negative feature edges plus the upstream error's edge, prunes to what
reaches the slice's last layer (traced up from the bottom), and records the
features' share of total |attribution| as the summary.
"""

import logging

import torch

from sparse_coding.algorithms.attribution import (
    EdgeSet,
    SiteAttribution,
    choose_down_nodes,
    edges,
    node_attributions,
    split_prompt,
    timed,
)
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.nodes import error_id, feature_id, parse_node_id
from sparse_coding.splicing.splice import SplicedModel

logger = logging.getLogger(__name__)


def gradient_graph(
    spliced: SplicedModel,
    tokens: torch.Tensor,
    *,
    num_down_nodes: int,
    num_up_nodes: int,
    ig_steps: int = 1,
    thresholds: dict[str, torch.Tensor] | None = None,
    batched_edges: bool = True,
) -> Graph:
    """The whole fast.py computation for one prompt (1, pos) -> Graph.

    Args:
        thresholds: per site key, activation thresholds that choose down-nodes
            (hist.py); sites without one use the NUM_DOWN_NODES largest |IE|.
        batched_edges: vmapped backwards per site (True, faster) or one
            backward per down-node (False, least memory).
    """
    inputs, target = split_prompt(tokens.to(spliced.device))
    with timed("Node attributions"):
        attributions = node_attributions(spliced, inputs, target, ig_steps=ig_steps)
    down_nodes = choose_down_nodes(attributions, num_down_nodes=num_down_nodes, thresholds=thresholds)
    with timed("Edges"):
        edge_sets = edges(spliced, inputs, attributions, down_nodes, batched=batched_edges)
    graph = build_graph(spliced, attributions, edge_sets, num_up_nodes=num_up_nodes)
    graph.metadata["fraction_explained"] = fraction_explained(attributions)
    graph.metadata["summary"] = (
        f"features explain ~{100 * graph.metadata['fraction_explained']:.0f}% of the effect"
    )
    graph.metadata["down_node_selection"] = (
        "thresholds" if thresholds else f"top {num_down_nodes} |attribution|"
    )
    return graph


def fraction_explained(attributions: dict[str, SiteAttribution]) -> float:
    """Features' share of total |attribution| (errors explain the rest)."""
    features = sum(float(a.feature_ie.abs().sum()) for a in attributions.values())
    errors = sum(abs(a.error_ie) for a in attributions.values())
    return features / (features + errors) if features + errors > 0 else 0.0


def build_graph(
    spliced: SplicedModel,
    attributions: dict[str, SiteAttribution],
    edge_sets: list[EdgeSet],
    *,
    num_up_nodes: int,
) -> Graph:
    """Phase 5: kept edges, pruned to what reaches the last layer, with node attributes."""
    kept = [edge for edge_set in edge_sets for edge in _top_edges(edge_set, num_up_nodes)]
    bottom_layer = max(site.layer for site in spliced.sites)
    bottom = {target for _, target, _ in kept if parse_node_id(target).layer == bottom_layer}
    reached, kept_edges = _trace_up(bottom, kept)
    graph = Graph()
    for node_id in sorted(reached):
        graph.add_node(_node(spliced, attributions, node_id))
    for source, target, effect in kept_edges:
        graph.add_edge(source, target, effect)
    return graph


def _top_edges(edge_set: EdgeSet, num_up_nodes: int) -> list[tuple[str, str, float]]:
    """The most positive and most negative feature edges per down-node, plus the error edge."""
    down_site, down_layer = _site_layer(edge_set.down_site)
    up_site, up_layer = _site_layer(edge_set.up_site)
    down_ids = [feature_id(down_site, down_layer, int(f)) for f in edge_set.down_features]
    down_ids.append(error_id(down_site, down_layer))
    up_ids = [feature_id(up_site, up_layer, int(f)) for f in edge_set.up_features]
    result = []
    for row, down_id in enumerate(down_ids):
        effects = edge_set.effects[row]
        features = effects[:-1]
        positive = features.clamp(min=0)
        negative = (-features).clamp(min=0)
        chosen = {
            int(c)
            for side in (positive, negative)
            for c in side.topk(min(num_up_nodes, len(side))).indices
            if side[c] > 0
        }
        result += [(up_ids[c], down_id, float(features[c])) for c in sorted(chosen)]
        if effects[-1] != 0:
            result.append((error_id(up_site, up_layer), down_id, float(effects[-1])))
    return result


def _trace_up(
    bottom: set[str], edges_: list[tuple[str, str, float]]
) -> tuple[set[str], list[tuple[str, str, float]]]:
    """Nodes and edges with a path to a bottom node."""
    into: dict[str, list[tuple[str, str, float]]] = {}
    for edge in edges_:
        into.setdefault(edge[1], []).append(edge)
    reached, frontier, kept = set(bottom), list(bottom), []
    while frontier:
        for edge in into.get(frontier.pop(), []):
            kept.append(edge)
            if edge[0] not in reached:
                reached.add(edge[0])
                frontier.append(edge[0])
    return reached, kept


def _site_layer(key: str) -> tuple[str, int]:
    site, layer = key.rsplit("_", 1)
    return site, int(layer)


def _node(spliced: SplicedModel, attributions: dict[str, SiteAttribution], node_id: str) -> Node:
    parsed = parse_node_id(node_id)
    site = spliced.by_key[f"{parsed.site}_{parsed.layer}"]
    attr = attributions[site.key]
    common = {"hook": site.sae.hook_name, "neuronpedia_id": site.sae.neuronpedia_id}
    if parsed.feature is None:
        return Node.from_id(node_id, attribution=attr.error_ie, **common)
    return Node.from_id(
        node_id,
        activation=float(attr.max_activation[parsed.feature]),
        attribution=float(attr.feature_ie[parsed.feature]),
        **common,
    )
