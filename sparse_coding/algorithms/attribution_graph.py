"""Turn node and edge attributions over many examples into the gradient cognition graph (fast.py's).

Nodes are summed over token positions (NODE_POSITIONS sum: ``resid_9.331``)
or kept per position (each: ``resid_9.331@7``, examples of one length), as
slots (`node_slots`).

Phases:
    1. node attributions per batch of examples (one forward and backward each);
    2. aggregation: per node, the mean and standard deviation over examples;
    3. down-nodes per site: SELECTION topk, the NUM_DOWN_NODES largest |mean|
       feature nodes and every error node (or the features over hist.py's
       cached thresholds at some example's last position); SELECTION
       threshold, Marks et al.'s nodes: every feature and error node with
       |mean| > NODE_THRESHOLD;
    4. edges per batch, then their mean over examples; with SELECTION
       threshold a down-node's edges are read only at the (example,
       position) entries whose own |IE| exceeds NODE_THRESHOLD, as
       Marks et al.'s code (saprmarks/feature-circuits, `get_circuit`) does;
    5. optionally (exact) the down-nodes' exact effects, and the correlation
       of the linear estimates with them;
    6. graph: the nodes and edges SELECTION keeps (`circuit_selection`), and
       the features' share of total |attribution| as the summary.

Phases 1-2, 4 and 5 fold each batch into running totals
(`attribution_totals`, `sharding.run_pass`): under torchrun each rank
computes its share of the batches and the totals are added over the ranks.
"""

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sparse_coding.algorithms.attribution import SiteAttribution, node_attributions, timed
from sparse_coding.algorithms.attribution_edges import edges
from sparse_coding.algorithms.attribution_exact import exact_effects, exact_error_effects
from sparse_coding.algorithms.attribution_totals import EdgeTotals, NodeSummary, NodeTotals
from sparse_coding.algorithms.circuit_selection import build_graph
from sparse_coding.algorithms.metrics import Metric
from sparse_coding.algorithms.node_slots import SUMMED, NodeLayout, layout_for
from sparse_coding.config import DEFAULTS
from sparse_coding.config.schema import Baseline, NodePositions, Selection
from sparse_coding.graphs.graph import Graph
from sparse_coding.nodes import error_id, feature_id, parse_site_key
from sparse_coding.runtime.sharding import Sums, run_pass
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.text.batches import TokenBatch

logger = logging.getLogger(__name__)

# Batches (per rank) whose phase 1 is kept for phases 4-5; a batch beyond them is computed again.
KEPT_BATCHES = 8


@dataclass(frozen=True)
class GraphOptions:
    """How fast.py's graph is estimated and selected: the config keys of the same names (valid values,
    as a Config holds them; `Config.options` builds one), defaults from the config's."""

    metric: Metric
    baseline: Baseline = DEFAULTS.BASELINE
    ig_steps: int = DEFAULTS.IG_STEPS
    selection: Selection = DEFAULTS.SELECTION
    num_down_nodes: int = DEFAULTS.NUM_DOWN_NODES
    num_up_nodes: int = DEFAULTS.NUM_UP_NODES
    node_threshold: float = DEFAULTS.NODE_THRESHOLD
    edge_threshold: float = DEFAULTS.EDGE_THRESHOLD
    node_estimator: str = DEFAULTS.NODE_ESTIMATOR  # "exact": also patch each down-node (summed nodes)
    node_positions: NodePositions = DEFAULTS.NODE_POSITIONS
    batched_edges: bool = True  # vmapped backwards per site, or one per down-node (least memory)

    @property
    def gate(self) -> float | None:
        """Marks et al.'s per-entry gate on down-nodes' edges (SELECTION threshold), else None."""
        return self.node_threshold if self.selection == "threshold" else None


def gradient_graph(
    spliced: SplicedModel,
    batches: list[TokenBatch],
    options: GraphOptions,
    *,
    means: dict[str, Tensor] | None = None,
    thresholds: dict[str, Tensor] | None = None,
) -> Graph:
    """The whole fast.py computation over batches of examples -> Graph.

    Args:
        means: per site key, (d_sae,) feature means (BASELINE mean).
        thresholds: per site key, activation thresholds that choose down-nodes
            (hist.py); sites without one use SELECTION.
    """
    n_examples = sum(len(batch) for batch in batches)
    layout = layout_for(options.node_positions, [int(n) for b in batches for n in b.attention_mask.sum(1)])
    attributions = _kept_attributions(spliced, options, means)
    with timed(f"Node attributions ({n_examples} examples, {len(batches)} batches)"):
        nodes = run_pass(
            "fast: nodes",
            batches,
            empty=lambda: NodeTotals.for_model(spliced, layout),
            add=lambda totals, i, batch: totals.add(attributions(i, batch)),
            desc="Node attributions",
            total=len(batches),
            leave=False,
        )
    summaries = nodes.summaries(spliced.device)
    down_nodes = choose_down_nodes(summaries, options, thresholds=thresholds, layout=layout)
    with timed("Edges"):
        edge_totals = run_pass(
            "fast: edges",
            batches,
            empty=EdgeTotals,
            add=lambda totals, i, batch: totals.add(
                edges(
                    spliced,
                    batch,
                    attributions(i, batch),
                    down_nodes,
                    batched=options.batched_edges,
                    ig_steps=options.ig_steps,
                    layout=layout,
                    node_threshold=options.gate,
                )
            ),
            desc="Edges of the examples",
            total=len(batches),
            leave=False,
        )
    graph = build_graph(spliced, summaries, edge_totals.means(n_examples, spliced.device), options, layout)
    graph.metadata |= _metadata(summaries, down_nodes, options, n_examples, thresholds)
    if options.node_estimator == "exact":
        with timed("Exact node effects"):
            graph.metadata["exact"] = exact_check(
                spliced, batches, attributions, summaries, down_nodes, options
            )
    return graph


def _kept_attributions(
    spliced: SplicedModel, options: GraphOptions, means: dict[str, Tensor] | None
) -> Callable[[int, TokenBatch], dict[str, SiteAttribution]]:
    """`attributions(index, batch)`: phase 1 of this rank's batch at `index`. The first KEPT_BATCHES
    are kept for phases 4 and 5; the others (and those done before a resumed run's checkpoint) are
    computed again there, so memory does not grow with the number of examples."""
    kept: dict[int, dict[str, SiteAttribution]] = {}

    def attributions(index: int, batch: TokenBatch) -> dict[str, SiteAttribution]:
        if index in kept:
            return kept[index]
        computed = node_attributions(
            spliced,
            batch,
            metric=options.metric,
            baseline=options.baseline,
            means=means,
            ig_steps=options.ig_steps,
        )
        if len(kept) < KEPT_BATCHES:
            kept[index] = computed
        return computed

    return attributions


def summarize(
    per_batch: list[dict[str, SiteAttribution]], layout: NodeLayout = SUMMED
) -> dict[str, NodeSummary]:
    """Phase 2 on one process's batches: per site and node (slot), mean and std over every example."""
    widths = {key: (a.feature_ie.shape[1], a.entry_ie.dtype) for key, a in per_batch[0].items()}
    totals = NodeTotals.empty(widths, layout)
    for attributions in per_batch:
        totals.add(attributions)
    return totals.summaries(next(iter(per_batch[0].values())).entry_ie.device)


def choose_down_nodes(
    summaries: dict[str, NodeSummary],
    options: GraphOptions,
    *,
    thresholds: dict[str, Tensor] | None = None,
    layout: NodeLayout = SUMMED,
) -> dict[str, Tensor]:
    """Phase 3: per site, the sorted slots of the down-nodes, by hist.py's thresholds, else by SELECTION."""
    chosen = {}
    for key, summary in summaries.items():
        scores, errors = summary.mean.abs(), summary.slots[summary.slots < 0]
        if options.selection == "threshold" and not (thresholds and key in thresholds):
            chosen[key] = summary.slots[scores > options.node_threshold]
            continue
        if thresholds is not None and key in thresholds:
            over = summary.max_last_activation > thresholds[key].to(summary.max_last_activation)
            features = over.nonzero().flatten()
            last = torch.full_like(features, layout.n - 1)
            picked = layout.feature_slots(features, last)
        else:
            feature_scores = torch.where(summary.slots >= 0, scores, torch.zeros_like(scores))
            top = feature_scores.topk(min(options.num_down_nodes, int((feature_scores > 0).sum()))).indices
            picked = summary.slots[top]
        chosen[key] = torch.cat([errors, picked]).unique()
    if thresholds:
        counts = ", ".join(
            f"{key}: {int((chosen[key] >= 0).sum())}" for key in summaries if key in thresholds
        )
        logger.info("Down-nodes from hist.py thresholds per site: %s", counts)
    return chosen


def fraction_explained(summaries: dict[str, NodeSummary]) -> float:
    """Features' share of total |mean attribution| over the nodes (errors explain the rest)."""
    features = sum(float(s.mean[s.slots >= 0].abs().sum()) for s in summaries.values())
    errors = sum(float(s.mean[s.slots < 0].abs().sum()) for s in summaries.values())
    return features / (features + errors) if features + errors > 0 else 0.0


def exact_check(
    spliced: SplicedModel,
    batches: list[TokenBatch],
    attributions: Callable[[int, TokenBatch], dict[str, SiteAttribution]],
    summaries: dict[str, NodeSummary],
    down_nodes: dict[str, Tensor],
    options: GraphOptions,
) -> dict:
    """Phase 5: exact mean effects of the down-nodes and every site's error node, and their
    correlation with the estimates. `attributions(index, batch)` gives a batch's phase 1."""
    n_examples = sum(len(batch) for batch in batches)
    down_nodes = {key: slots[slots >= 0] for key, slots in down_nodes.items()}  # summed: slot = feature
    keys = list(down_nodes)

    def add(sums: Sums, index: int, batch: TokenBatch) -> None:
        attrs = attributions(index, batch)
        features = exact_effects(spliced, batch, attrs, down_nodes, metric=options.metric)
        errors = exact_error_effects(spliced, batch, attrs, keys, metric=options.metric)
        for key in keys:
            sums.values["features"][key] += features[key].detach().cpu().double().numpy()
            sums.values["errors"][key] += float(errors[key])

    def empty() -> Sums:
        features = {key: np.zeros(len(down_nodes[key])) for key in keys}
        return Sums({"features": features, "errors": dict.fromkeys(keys, 0.0)})

    sums = run_pass(
        "fast: exact", batches, empty=empty, add=add, desc="Exact effects", total=len(batches)
    ).values
    features = torch.from_numpy(np.concatenate([sums["features"][key] for key in keys]) / n_examples).float()
    errors = torch.tensor([sums["errors"][key] / n_examples for key in keys])
    exact = torch.cat([features, errors.to(features)]).to(spliced.device)
    features = exact[: len(features)]
    feature_estimates = torch.cat([summaries[key].mean_of(f) for key, f in down_nodes.items()])
    error_estimates = torch.cat([summaries[key].mean_of(torch.tensor([-1])) for key in keys])
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
    ids = [feature_id(*parse_site_key(key), int(f)) for key, dims in down_nodes.items() for f in dims]
    ids += [error_id(*parse_site_key(key)) for key in keys]
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
        "node_positions": options.node_positions,
        "down_node_selection": "thresholds" if thresholds else _selection_text(options),
        "down_nodes_per_site": {key: int((slots >= 0).sum()) for key, slots in down_nodes.items()},
    }


def _selection_text(options: GraphOptions) -> str:
    if options.selection == "threshold":
        return (
            f"Marks et al.: nodes |mean attribution| > {options.node_threshold}, edges |mean effect| > "
            f"{options.edge_threshold} between such nodes"
        )
    return f"top {options.num_down_nodes} |mean attribution|; top {options.num_up_nodes} edges each sign"
