"""Turn node and edge attributions over many examples into the gradient cognition graph (fast.py's).

Phases:
    1. node attributions per batch of examples (one forward and backward each);
    2. aggregation: per node, the mean and standard deviation over examples
       (positions summed within an example);
    3. down-nodes per site: SELECTION topk, the NUM_DOWN_NODES largest |mean|
       (or the features over hist.py's cached thresholds at some example's
       last position); SELECTION threshold, |mean| > NODE_THRESHOLD;
    4. edges per batch, then their mean over examples;
    5. optionally (exact) the down-nodes' exact effects, and the correlation
       of the linear estimates with them;
    6. graph: per down-node and upstream site the NUM_UP_NODES most positive
       and most negative feature edges plus the upstream error's edge (topk),
       or every edge with |mean| > EDGE_THRESHOLD (threshold); pruned to what
       reaches the slice's last layer; the features' share of total
       |attribution| as the summary.
"""

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sparse_coding.algorithms.attribution import SiteAttribution, node_attributions, timed
from sparse_coding.algorithms.attribution_edges import EdgeSet, edges
from sparse_coding.algorithms.attribution_exact import exact_effects, exact_error_effects
from sparse_coding.algorithms.attribution_totals import EdgeTotals, NodeSummary, NodeTotals
from sparse_coding.algorithms.metrics import Metric
from sparse_coding.errors import ConfigError
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.nodes import error_id, feature_id, parse_node_id
from sparse_coding.pairs import ExampleBatch
from sparse_coding.sharding import Sums, run_pass
from sparse_coding.splicing.splice import SplicedModel

logger = logging.getLogger(__name__)

SELECTIONS = ("topk", "threshold")
# Batches (per rank) whose phase 1 is kept for phases 4-5; a batch beyond them is computed again.
KEPT_BATCHES = 8


@dataclass(frozen=True)
class GraphOptions:
    """How fast.py's graph is estimated and selected (the config keys of the same names)."""

    metric: Metric
    baseline: str = "zero"
    ig_steps: int = 1
    selection: str = "topk"
    num_down_nodes: int = 5
    num_up_nodes: int = 5
    node_threshold: float | None = None
    edge_threshold: float | None = None
    exact: bool = False
    batched_edges: bool = True  # vmapped backwards per site (faster) or one per down-node (least memory)

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ConfigError(f"SELECTION {self.selection!r} is unknown; valid: {', '.join(SELECTIONS)}")
        if self.selection == "threshold" and (self.node_threshold is None or self.edge_threshold is None):
            raise ConfigError("SELECTION threshold needs NODE_THRESHOLD and EDGE_THRESHOLD")


def gradient_graph(
    spliced: SplicedModel,
    batches: list[ExampleBatch],
    options: GraphOptions,
    *,
    means: dict[str, Tensor] | None = None,
    thresholds: dict[str, Tensor] | None = None,
) -> Graph:
    """The whole fast.py computation over batches of examples -> Graph.

    Phases 1-2, 4 and 5 fold each batch into running totals
    (`attribution_totals`, `sharding.run_pass`): under torchrun each rank
    computes its share of the batches and the totals are added over the ranks.

    Args:
        means: per site key, (d_sae,) feature means (BASELINE mean).
        thresholds: per site key, activation thresholds that choose down-nodes
            (hist.py); sites without one use SELECTION.
    """
    n_examples = sum(len(batch) for batch in batches)
    attributions = _kept_attributions(spliced, options, means)
    with timed(f"Node attributions ({n_examples} examples, {len(batches)} batches)"):
        nodes = run_pass(
            "fast: nodes",
            batches,
            empty=lambda: NodeTotals.for_model(spliced),
            add=lambda totals, i, batch: totals.add(attributions(i, batch)),
            desc="Node attributions",
            total=len(batches),
            leave=False,
        )
    summaries = nodes.summaries(spliced.device)
    down_nodes = choose_down_nodes(summaries, options, thresholds=thresholds)
    with timed("Edges"):
        edge_totals = run_pass(
            "fast: edges",
            batches,
            empty=EdgeTotals,
            add=lambda totals, i, batch: totals.add(
                _edge_phase(spliced, batch, attributions(i, batch), down_nodes, options)
            ),
            desc="Edges of the examples",
            total=len(batches),
            leave=False,
        )
    edge_sets = edge_totals.means(n_examples, spliced.device)
    graph = build_graph(spliced, summaries, edge_sets, options)
    graph.metadata |= _metadata(summaries, down_nodes, options, n_examples, thresholds)
    graph.metadata["node_std"] = {node_id: _std(summaries, node_id) for node_id in graph.nodes}
    if options.exact:
        with timed("Exact node effects"):
            graph.metadata["exact"] = exact_check(
                spliced, batches, attributions, summaries, down_nodes, options
            )
    return graph


def _kept_attributions(
    spliced: SplicedModel, options: GraphOptions, means: dict[str, Tensor] | None
) -> Callable[[int, ExampleBatch], dict[str, SiteAttribution]]:
    """`attributions(index, batch)`: phase 1 of this rank's batch at `index`. The first KEPT_BATCHES
    are kept for phases 4 and 5; the others (and those done before a resumed run's checkpoint) are
    computed again there, so memory does not grow with the number of examples."""
    kept: dict[int, dict[str, SiteAttribution]] = {}

    def attributions(index: int, batch: ExampleBatch) -> dict[str, SiteAttribution]:
        if index in kept:
            return kept[index]
        computed = _node_phase(spliced, batch, options, means)
        if len(kept) < KEPT_BATCHES:
            kept[index] = computed
        return computed

    return attributions


def _node_phase(
    spliced: SplicedModel, batch: ExampleBatch, options: GraphOptions, means: dict[str, Tensor] | None
) -> dict[str, SiteAttribution]:
    """Phase 1 for one batch."""
    return node_attributions(
        spliced,
        batch,
        metric=options.metric,
        baseline=options.baseline,
        means=means,
        ig_steps=options.ig_steps,
    )


def _edge_phase(
    spliced: SplicedModel,
    batch: ExampleBatch,
    attributions: dict[str, SiteAttribution],
    down_nodes: dict[str, Tensor],
    options: GraphOptions,
) -> list[EdgeSet]:
    """Phase 4 for one batch: edges summed over its examples."""
    return edges(
        spliced, batch, attributions, down_nodes, batched=options.batched_edges, ig_steps=options.ig_steps
    )


def summarize(per_batch: list[dict[str, SiteAttribution]]) -> dict[str, NodeSummary]:
    """Phase 2 on one process's batches: per site, mean and std over every example of every batch."""
    totals = NodeTotals.empty_like(per_batch[0])
    for attributions in per_batch:
        totals.add(attributions)
    return totals.summaries(next(iter(per_batch[0].values())).feature_ie.device)


def choose_down_nodes(
    summaries: dict[str, NodeSummary], options: GraphOptions, *, thresholds: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Phase 3: per site, the down-node features by hist.py's thresholds, else by SELECTION."""
    chosen = {}
    for key, summary in summaries.items():
        scores = summary.mean.abs()
        if thresholds is not None and key in thresholds:
            over = summary.max_last_activation > thresholds[key].to(summary.max_last_activation)
            chosen[key] = over.nonzero().flatten()
        elif options.selection == "threshold":
            chosen[key] = (scores > options.node_threshold).nonzero().flatten()
        else:
            chosen[key] = (
                scores.topk(min(options.num_down_nodes, int((scores > 0).sum()))).indices.sort().values
            )
    if thresholds:
        counts = ", ".join(f"{key}: {len(chosen[key])}" for key in summaries if key in thresholds)
        logger.info("Down-nodes from hist.py thresholds per site: %s", counts)
    return chosen


def mean_edges(per_batch: list[list[EdgeSet]], n_examples: int) -> list[EdgeSet]:
    """Phase 4 on one process's batches: each edge's mean over examples, batches' columns aligned first."""
    totals = EdgeTotals()
    for sets in per_batch:
        totals.add(sets)
    return totals.means(n_examples, per_batch[0][0].effects.device)


def fraction_explained(summaries: dict[str, NodeSummary]) -> float:
    """Features' share of total |mean attribution| (errors explain the rest)."""
    features = sum(float(s.mean.abs().sum()) for s in summaries.values())
    errors = sum(abs(s.error_mean) for s in summaries.values())
    return features / (features + errors) if features + errors > 0 else 0.0


def exact_check(
    spliced: SplicedModel,
    batches: list[ExampleBatch],
    attributions: Callable[[int, ExampleBatch], dict[str, SiteAttribution]],
    summaries: dict[str, NodeSummary],
    down_nodes: dict[str, Tensor],
    options: GraphOptions,
) -> dict:
    """Phase 5: exact mean effects of the down-nodes and every site's error node, and their
    correlation with the estimates. `attributions(index, batch)` gives a batch's phase 1."""
    n_examples = sum(len(batch) for batch in batches)
    keys = list(down_nodes)

    def add(sums: Sums, index: int, batch: ExampleBatch) -> None:
        attrs = attributions(index, batch)
        features = exact_effects(spliced, batch, attrs, down_nodes, metric=options.metric)
        errors = exact_error_effects(spliced, batch, attrs, keys, metric=options.metric)
        for key in keys:
            sums.values["features"][key] += features[key].detach().cpu().double().numpy()
            sums.values["errors"][key] += float(errors[key])

    def empty() -> Sums:
        return Sums(
            {
                "features": {key: np.zeros(len(down_nodes[key])) for key in keys},
                "errors": dict.fromkeys(keys, 0.0),
            }
        )

    sums = run_pass(
        "fast: exact", batches, empty=empty, add=add, desc="Exact effects", total=len(batches)
    ).values
    features = torch.from_numpy(np.concatenate([sums["features"][key] for key in keys]) / n_examples).float()
    errors = torch.tensor([sums["errors"][key] / n_examples for key in keys])
    exact = torch.cat([features, errors.to(features)]).to(spliced.device)
    features = exact[: len(features)]
    feature_estimates = torch.cat([summaries[key].mean[f] for key, f in down_nodes.items()])
    error_estimates = feature_estimates.new_tensor([summaries[key].error_mean for key in keys])
    estimate = torch.cat([feature_estimates, error_estimates])
    correlation = _correlation(estimate, exact)
    logger.info(
        "Exact mode: %d nodes (%d features, %d errors), correlation of the estimates with the exact "
        "effects %.4f (features only %.4f)",
        len(exact),
        len(features),
        len(errors),
        correlation,
        _correlation(estimate[: len(features)], features),
    )
    ids = [feature_id(*_site_layer(key), int(f)) for key, dims in down_nodes.items() for f in dims]
    ids += [error_id(*_site_layer(key)) for key in keys]
    return {
        "correlation": None if math.isnan(correlation) else correlation,
        "effects": {node_id: float(v) for node_id, v in zip(ids, exact, strict=True)},
    }


def _correlation(estimate: Tensor, exact: Tensor) -> float:
    if len(exact) < 2:
        return math.nan
    return float(torch.corrcoef(torch.stack([estimate.float(), exact.float()]))[0, 1])


def _metadata(
    summaries: dict[str, NodeSummary],
    down_nodes: dict[str, Tensor],
    options: GraphOptions,
    n_examples: int,
    thresholds: dict[str, Tensor] | None,
) -> dict:
    share = fraction_explained(summaries)
    return {
        "fraction_explained": share,
        "summary": f"features explain ~{100 * share:.0f}% of the effect",
        "n_examples": n_examples,
        "metric": options.metric.name,
        "baseline": options.baseline,
        "ig_steps": options.ig_steps,
        "down_node_selection": "thresholds" if thresholds else _selection_text(options),
        "down_nodes_per_site": {key: len(features) for key, features in down_nodes.items()},
    }


def _selection_text(options: GraphOptions) -> str:
    if options.selection == "threshold":
        return (
            f"|mean attribution| > {options.node_threshold}; edges |mean effect| > {options.edge_threshold}"
        )
    return f"top {options.num_down_nodes} |mean attribution|; top {options.num_up_nodes} edges each sign"


def _std(summaries: dict[str, NodeSummary], node_id: str) -> float:
    parsed = parse_node_id(node_id)
    summary = summaries[f"{parsed.site}_{parsed.layer}"]
    return summary.error_std if parsed.feature is None else float(summary.std[parsed.feature])


def build_graph(
    spliced: SplicedModel,
    summaries: dict[str, NodeSummary],
    edge_sets: list[EdgeSet],
    options: GraphOptions,
) -> Graph:
    """Phase 6: kept edges, pruned to what reaches the last layer, with node attributes."""
    kept = [edge for edge_set in edge_sets for edge in _kept_edges(edge_set, options)]
    bottom_layer = max(site.layer for site in spliced.sites)
    bottom = {target for _, target, _ in kept if parse_node_id(target).layer == bottom_layer}
    reached, kept_edges = _trace_up(bottom, kept)
    graph = Graph()
    for node_id in sorted(reached):
        graph.add_node(_node(spliced, summaries, node_id))
    for source, target, effect in kept_edges:
        graph.add_edge(source, target, effect)
    return graph


def _kept_edges(edge_set: EdgeSet, options: GraphOptions) -> list[tuple[str, str, float]]:
    """The edges SELECTION keeps: per-sign top NUM_UP_NODES, or |effect| > EDGE_THRESHOLD."""
    if options.selection == "threshold":
        return _threshold_edges(edge_set, options.edge_threshold)
    return _top_edges(edge_set, options.num_up_nodes)


def _edge_ids(edge_set: EdgeSet) -> tuple[list[str], list[str]]:
    """Ids of the rows (down features, then the down error) and columns (up features, then the up error)."""
    down_site, down_layer = _site_layer(edge_set.down_site)
    up_site, up_layer = _site_layer(edge_set.up_site)
    down_ids = [feature_id(down_site, down_layer, int(f)) for f in edge_set.down_features]
    up_ids = [feature_id(up_site, up_layer, int(f)) for f in edge_set.up_features]
    return [*down_ids, error_id(down_site, down_layer)], [*up_ids, error_id(up_site, up_layer)]


def _threshold_edges(edge_set: EdgeSet, threshold: float) -> list[tuple[str, str, float]]:
    down_ids, up_ids = _edge_ids(edge_set)
    rows, cols = (edge_set.effects.abs() > threshold).nonzero(as_tuple=True)
    return [
        (up_ids[c], down_ids[r], float(edge_set.effects[r, c]))
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True)
    ]


def _top_edges(edge_set: EdgeSet, num_up_nodes: int) -> list[tuple[str, str, float]]:
    """The most positive and most negative feature edges per down-node, plus the error edge."""
    down_ids, up_ids = _edge_ids(edge_set)
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
            result.append((up_ids[-1], down_id, float(effects[-1])))
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


def _node(spliced: SplicedModel, summaries: dict[str, NodeSummary], node_id: str) -> Node:
    parsed = parse_node_id(node_id)
    site = spliced.by_key[f"{parsed.site}_{parsed.layer}"]
    summary = summaries[site.key]
    common = {"hook": site.sae.hook_name, "neuronpedia_id": site.sae.neuronpedia_id}
    if parsed.feature is None:
        return Node.from_id(node_id, attribution=summary.error_mean, **common)
    return Node.from_id(
        node_id,
        activation=float(summary.max_activation[parsed.feature]),
        attribution=float(summary.mean[parsed.feature]),
        **common,
    )
