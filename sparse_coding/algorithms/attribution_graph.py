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
    6. graph: topk, per down-node and upstream site the NUM_UP_NODES most
       positive and most negative feature edges plus the upstream error
       edges, pruned to what reaches the slice's last layer; threshold
       (Marks et al. 2024, section 3), the nodes of phase 3 and the edges
       with |mean| > EDGE_THRESHOLD whose both ends are such nodes; the
       features' share of total |attribution| as the summary.
"""

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sparse_coding.algorithms.attribution import SiteAttribution, node_attributions, timed
from sparse_coding.algorithms.attribution_edges import EdgeSet, edges
from sparse_coding.algorithms.attribution_exact import exact_effects, exact_error_effects
from sparse_coding.algorithms.circuit_selection import build_graph, site_layer
from sparse_coding.algorithms.metrics import Metric
from sparse_coding.algorithms.node_slots import SUMMED, NodeLayout, layout_for
from sparse_coding.config import DEFAULTS
from sparse_coding.config.schema import Baseline, NodePositions, Selection
from sparse_coding.graphs.graph import Graph
from sparse_coding.nodes import error_id, feature_id
from sparse_coding.pairs import ExampleBatch
from sparse_coding.splicing.splice import SplicedModel

logger = logging.getLogger(__name__)


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
    batched_edges: bool = True  # vmapped backwards per site (faster) or one per down-node (least memory)

    @property
    def gate(self) -> float | None:
        """Marks et al.'s per-entry gate on down-nodes' edges (SELECTION threshold), else None."""
        return self.node_threshold if self.selection == "threshold" else None


@dataclass
class NodeSummary:
    """One site's node attributions over all examples, per slot (`node_slots`)."""

    slots: Tensor  # (n,) sorted: the nodes measured at the site (errors first)
    mean: Tensor  # (n,) mean over examples
    std: Tensor  # (n,) population std over examples
    max_activation: Tensor  # (d_sae,) over every position
    position_activation: Tensor  # (n, d_sae) per node position (summed: n = 1, every position)
    last_activation: Tensor  # (n_examples, d_sae)

    def mean_of(self, slots: Tensor) -> Tensor:
        """The mean of each slot, 0 for a slot never measured."""
        return _lookup(self.slots, self.mean, slots)

    def std_of(self, slots: Tensor) -> Tensor:
        return _lookup(self.slots, self.std, slots)


def _lookup(keys: Tensor, values: Tensor, wanted: Tensor) -> Tensor:
    index = torch.searchsorted(keys, wanted).clamp(max=max(len(keys) - 1, 0))
    found = keys[index] == wanted if len(keys) else torch.zeros_like(wanted, dtype=torch.bool)
    return torch.where(found, values[index] if len(keys) else 0.0, torch.zeros((), dtype=values.dtype))


def gradient_graph(
    spliced: SplicedModel,
    batches: list[ExampleBatch],
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
    with timed(f"Node attributions ({n_examples} examples, {len(batches)} batches)"):
        per_batch = [_node_phase(spliced, batch, options, means) for batch in batches]
    summaries = summarize(per_batch, layout)
    down_nodes = choose_down_nodes(summaries, options, thresholds=thresholds, layout=layout)
    with timed("Edges"):
        edge_sets = mean_edges(
            [
                _edge_phase(spliced, b, a, down_nodes, options, layout)
                for b, a in zip(batches, per_batch, strict=True)
            ],
            n_examples,
        )
    graph = build_graph(spliced, summaries, edge_sets, options, layout)
    graph.metadata |= _metadata(summaries, down_nodes, options, n_examples, thresholds)
    if options.node_estimator == "exact":
        with timed("Exact node effects"):
            graph.metadata["exact"] = exact_check(spliced, batches, per_batch, summaries, down_nodes, options)
    return graph


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
    layout: NodeLayout,
) -> list[EdgeSet]:
    """Phase 4 for one batch: edges summed over its examples."""
    return edges(
        spliced,
        batch,
        attributions,
        down_nodes,
        batched=options.batched_edges,
        ig_steps=options.ig_steps,
        layout=layout,
        node_threshold=options.gate,
    )


def summarize(
    per_batch: list[dict[str, SiteAttribution]], layout: NodeLayout = SUMMED
) -> dict[str, NodeSummary]:
    """Phase 2: per site and node (slot), mean and std over every example of every batch."""
    summaries = {}
    for key in per_batch[0]:
        examples, slots, values = [], [], []
        offset = 0
        for attrs in per_batch:
            attr = attrs[key]
            lv = attr.leaves
            batch, n_pos = attr.error_entry_ie.shape
            positions = torch.arange(n_pos, device=lv.tokens.device)
            examples += [
                offset + lv.rows,
                offset + torch.arange(batch, device=lv.tokens.device).repeat_interleave(n_pos),
            ]
            slots += [
                layout.feature_slots(lv.features, lv.positions),
                layout.error_slots(positions).repeat(batch),
            ]
            values += [attr.entry_ie, attr.error_entry_ie.flatten()]
            offset += batch
        unique, column = torch.cat(slots).unique(return_inverse=True)
        table = (
            values[0]
            .new_zeros(offset, len(unique))
            .index_put((torch.cat(examples), column), torch.cat(values), accumulate=True)
        )  # (n_examples, n_slots)
        summaries[key] = NodeSummary(
            unique,
            table.mean(0),
            table.std(0, correction=0),
            torch.stack([attrs[key].max_activation for attrs in per_batch]).amax(0),
            _position_activation([attrs[key] for attrs in per_batch], layout),
            torch.cat([attrs[key].last_activation for attrs in per_batch]),
        )
    return summaries


def _position_activation(attributions: list[SiteAttribution], layout: NodeLayout) -> Tensor:
    """(layout.n, d_sae): the largest activation at each node position over every example."""
    if not layout.positioned:
        return torch.stack([a.max_activation for a in attributions]).amax(0)[None]
    return torch.stack([a.position_activation for a in attributions]).amax(0)


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
            over = summary.last_activation > thresholds[key].to(summary.last_activation)
            features = over.any(0).nonzero().flatten()
            last = torch.full_like(features, layout.n_positions - 1)
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


def mean_edges(per_batch: list[list[EdgeSet]], n_examples: int) -> list[EdgeSet]:
    """Phase 4: each edge's mean over examples; batches' columns (upstream nodes) are aligned first."""
    return [_aligned_sum(sets).scaled(1 / n_examples) for sets in zip(*per_batch, strict=True)]


def _aligned_sum(sets: tuple[EdgeSet, ...]) -> EdgeSet:
    """One site pair's edge sets of several batches added, over the union of their upstream nodes."""
    first = sets[0]
    columns = torch.cat([s.up_slots for s in sets]).unique()
    total = first.effects.new_zeros(first.effects.shape[0], len(columns))
    for s in sets:
        total[:, torch.searchsorted(columns, s.up_slots)] += s.effects
    return EdgeSet(first.down_site, first.down_slots, first.up_site, columns, total)


def fraction_explained(summaries: dict[str, NodeSummary]) -> float:
    """Features' share of total |mean attribution| over the nodes (errors explain the rest)."""
    features = sum(float(s.mean[s.slots >= 0].abs().sum()) for s in summaries.values())
    errors = sum(float(s.mean[s.slots < 0].abs().sum()) for s in summaries.values())
    return features / (features + errors) if features + errors > 0 else 0.0


def exact_check(
    spliced: SplicedModel,
    batches: list[ExampleBatch],
    per_batch: list[dict[str, SiteAttribution]],
    summaries: dict[str, NodeSummary],
    down_nodes: dict[str, Tensor],
    options: GraphOptions,
) -> dict:
    """Phase 5: exact mean effects of the down-nodes and every site's error node, and their
    correlation with the estimates."""
    n_examples = sum(len(batch) for batch in batches)
    down_nodes = {key: slots[slots >= 0] for key, slots in down_nodes.items()}  # summed: slot = feature
    keys = list(down_nodes)
    sums = [
        (
            exact_effects(spliced, b, a, down_nodes, metric=options.metric),
            exact_error_effects(spliced, b, a, keys, metric=options.metric),
        )
        for b, a in zip(batches, per_batch, strict=True)
    ]
    features = torch.cat([sum(f[key] for f, _ in sums) / n_examples for key in keys])
    errors = torch.stack([sum(e[key] for _, e in sums) / n_examples for key in keys])
    exact = torch.cat([features, errors.to(features)])
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
    ids = [feature_id(*site_layer(key), int(f)) for key, dims in down_nodes.items() for f in dims]
    ids += [error_id(*site_layer(key)) for key in keys]
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
