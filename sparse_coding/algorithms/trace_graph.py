"""trace.py's attribution graph (Ameisen et al. 2025, "Circuit Tracing"; decoderesearch/circuit-tracer).

Nodes: active transcoder features per (layer, position), MLP error nodes per
(layer, position), token embeddings per position, and the logits of the
likeliest next tokens. Edges: direct effects in the local replacement model
(attention patterns and layer-norm scales frozen at the clean run), exact
because that model is linear in its nodes (`trace_edges`).

Phases:
1. replacement: clean run, features, MLP errors (`transcoders.replacement.replace`);
2. logit targets: the likeliest next tokens after the last position until their
   probability reaches `logit_mass`, at most `max_logits`; each a direction
   W_U[token] - mean over tokens of W_U[token] (softmax ignores a shift);
3. edges: the logits' rows, then feature rows (batched backward passes); with
   more active features than `max_feature_nodes`, features are taken in order
   of their influence through the rows computed so far (circuit-tracer's
   ranking), the rest leave the graph;
4. pruning and scores (`algorithms.influence`).
"""

import logging
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from sparse_coding.algorithms.influence import (
    NodeCounts,
    Pruned,
    normalize_rows,
    partial_influence,
    prune,
    scores_of,
    total_influence,
)
from sparse_coding.algorithms.trace_edges import Sources, Targets, edge_rows, sources
from sparse_coding.config import DEFAULTS
from sparse_coding.models.transformer import GPT2
from sparse_coding.runtime.phases import PhaseTimer
from sparse_coding.transcoders.replacement import ActiveFeatures, Replacement, replace
from sparse_coding.transcoders.transcoder import TranscoderSet

logger = logging.getLogger(__name__)

# Feature rows computed between two re-rankings when the feature count is capped (batches).
RANK_EVERY_BATCHES = 4


@dataclass(frozen=True)
class TraceOptions:
    """Keyword options of `trace_graph`: the TRACE_* config keys of the same names (valid values;
    `Config.options` builds one), defaults from the config's."""

    node_threshold: float = DEFAULTS.TRACE_NODE_THRESHOLD
    edge_threshold: float = DEFAULTS.TRACE_EDGE_THRESHOLD
    logit_mass: float = DEFAULTS.TRACE_LOGIT_MASS
    max_logits: int = DEFAULTS.TRACE_MAX_LOGITS
    max_feature_nodes: int | None = DEFAULTS.TRACE_MAX_FEATURE_NODES
    batch_size: int = DEFAULTS.TRACE_BATCH_SIZE


class LogitTargets(NamedTuple):
    """The logit nodes: token ids (k,), probabilities (k,), directions (k, d_model)."""

    token_ids: Tensor
    probabilities: Tensor
    directions: Tensor


@dataclass
class TraceGraph:
    """An attribution graph: nodes in NodeCounts order, the full adjacency, pruning and scores."""

    replacement: Replacement
    features: ActiveFeatures  # the graph's feature nodes (a subset when capped), node order
    logits: LogitTargets
    adjacency: Tensor  # (n, n) A[target, source]
    counts: NodeCounts
    influence: Tensor  # (n,)
    pruned: Pruned
    replacement_score: float
    completeness_score: float
    kind: str  # "tc" | "clt"
    phases: dict[str, float] = field(default_factory=dict)


def logit_targets(model: GPT2, logits: Tensor, *, mass: float, max_logits: int) -> LogitTargets:
    """The likeliest next tokens after the last position until their probability reaches `mass`."""
    probs = logits.float().softmax(dim=-1)
    top = probs.topk(min(max_logits, len(probs)))
    count = min(int((top.values.cumsum(0) < mass).sum()) + 1, len(top.values))
    ids = top.indices[:count]
    unembed = model.lm_head.weight
    directions = unembed[ids] - unembed.mean(dim=0)
    return LogitTargets(ids, top.values[:count].to(logits.dtype), directions)


def trace_graph(
    model: GPT2,
    transcoders: TranscoderSet,
    input_ids: Tensor,
    *,
    bos_token_id: int | None,
    options: TraceOptions,
) -> TraceGraph:
    """The pruned attribution graph of one prompt (pos,) through the replacement model."""
    timer = PhaseTimer()
    with timer.phase("forward"):
        replacement = replace(model, transcoders, input_ids, bos_token_id=bos_token_id)
        logits = logit_targets(
            model, replacement.logits[-1], mass=options.logit_mass, max_logits=options.max_logits
        )
        srcs = sources(transcoders, replacement)
    logger.info("%d active features, %d logit nodes", len(replacement.features.layer), len(logits.token_ids))
    with timer.phase("edges"):
        adjacency, kept = _adjacency(model, transcoders, replacement, srcs, logits, options)
    with timer.phase("pruning"):
        n_layers, n_pos = replacement.errors.shape[:2]
        counts = NodeCounts(len(kept), n_layers * n_pos, n_pos, len(logits.token_ids))
        weights = torch.zeros(counts.total, dtype=adjacency.dtype)
        weights[-counts.logits :] = logits.probabilities.cpu().to(adjacency.dtype)
        normalized = normalize_rows(adjacency)
        influence = total_influence(normalized, weights)
        scores = scores_of(normalized, influence, weights, counts)
        del normalized
        shares = {"node_share": options.node_threshold, "edge_share": options.edge_threshold}
        pruned = prune(adjacency, weights, counts, **shares, influence=influence)
    features = ActiveFeatures(*(column[kept] for column in replacement.features))
    return TraceGraph(
        replacement,
        features,
        logits,
        adjacency,
        counts,
        influence,
        pruned,
        *scores,
        transcoders.kind,
        timer.seconds,
    )


def _adjacency(
    model: GPT2, transcoders: TranscoderSet, replacement: Replacement, srcs: Sources, logits: LogitTargets,
    options: TraceOptions,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(adjacency (n, n) in NodeCounts order, indices of the attributed features)."""
    f = replacement.features
    n_layers, n_pos = replacement.errors.shape[:2]
    n_logits, batch = len(logits.token_ids), options.batch_size
    layer = torch.full((n_logits,), n_layers, device=logits.directions.device)  # n_layers: the logits
    logit_targets = Targets(layer, torch.full_like(layer, n_pos - 1), logits.directions)
    logit_rows = edge_rows(model, transcoders, replacement, srcs, logit_targets, batch_size=batch)
    cap = len(f.layer) if options.max_feature_nodes is None else min(options.max_feature_nodes, len(f.layer))
    if cap == len(f.layer):
        kept = torch.arange(len(f.layer))
        targets = _feature_targets(transcoders, f, kept)
        feature_rows = edge_rows(model, transcoders, replacement, srcs, targets, batch_size=batch)
    else:
        kept, feature_rows = _ranked_rows(
            model, transcoders, replacement, srcs, logit_rows, logits, cap, options
        )
    n_sources = srcs.n_columns
    columns = torch.cat([kept, torch.arange(len(f.layer), n_sources)])
    size = len(kept) + n_sources - len(f.layer) + n_logits
    adjacency = torch.zeros(size, size, dtype=logit_rows.dtype)
    adjacency[: len(kept), : len(columns)] = feature_rows[:, columns]
    adjacency[-n_logits:, : len(columns)] = logit_rows[:, columns]
    return adjacency, kept


def _feature_targets(transcoders: TranscoderSet, f: ActiveFeatures, chosen: Tensor) -> Targets:
    """Targets of the features `chosen`: their layer, position and encoder column."""
    layers, index = f.layer[chosen], f.index[chosen]
    d_in = next(iter(transcoders.layers.values())).cfg.d_in
    vectors = f.activation.new_zeros(len(chosen), d_in)
    for layer, weights in transcoders.layers.items():
        here = layers == layer
        vectors[here] = weights.W_enc[:, index[here]].T.to(vectors.dtype)
    return Targets(layers, f.pos[chosen], vectors)


def _ranked_rows(
    model: GPT2, transcoders: TranscoderSet, replacement: Replacement, srcs: Sources, logit_rows: Tensor,
    logits: LogitTargets, cap: int, options: TraceOptions,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Rows of the `cap` features most influential through the rows computed so far, in rounds."""
    n_features = len(replacement.features.layer)
    n_columns = srcs.n_columns + len(logits.token_ids)
    weights = torch.zeros(n_columns, dtype=logit_rows.dtype)
    weights[srcs.n_columns :] = logits.probabilities.cpu().to(weights.dtype)
    rows = [torch.cat([logit_rows, logit_rows.new_zeros(len(logit_rows), len(logits.token_ids))], dim=1)]
    row_nodes = [torch.arange(srcs.n_columns, n_columns)]
    visited = torch.zeros(n_features, dtype=torch.bool)
    while int(visited.sum()) < cap:
        influence = partial_influence(torch.cat(rows), torch.cat(row_nodes), weights)[:n_features]
        ranked = torch.argsort(influence.masked_fill(visited, -1.0), descending=True)
        chosen = ranked[: min(RANK_EVERY_BATCHES * options.batch_size, cap - int(visited.sum()))]
        targets = _feature_targets(transcoders, replacement.features, chosen)
        new = edge_rows(model, transcoders, replacement, srcs, targets, batch_size=options.batch_size)
        rows.append(torch.cat([new, new.new_zeros(len(new), len(logits.token_ids))], dim=1))
        row_nodes.append(chosen)
        visited[chosen] = True
    kept = torch.cat(row_nodes[1:])
    order = torch.argsort(kept)
    return kept[order], torch.cat(rows[1:])[order, : srcs.n_columns]
