"""Ablation cognition graph: which resid features at layer L drive which at L+1.

Math. For resid SAE sites at consecutive layers L, L+1 of ACTS_LAYERS_SLICE,
sequences s = 1..S and the last real position t_s of each, zero-ablating
feature i of layer L at every position, error term kept, is

    x'_L = x_L - f_i(x_L) * scale * W_dec[i]      (scale: layer-norm std, else 1)

and the edge i -> j is the mean over sequences of the last-position change,
clean minus ablated (positive: i raises j; `graphs.conventions`),

    e(i -> j) = 1/S * sum_s [ a^{L+1}_j(x_{L+1,s})[t_s] - a^{L+1}_j(x'_{L+1,s})[t_s] ],

kept when |e| > 2**THRESHOLD_EXP (every non-zero e when unset). Node i's
logit cells are the LOGIT_TOKENS most up- and down-weighted next tokens,
1/S * sum_s [log p(. | s) - log p'(. | s)] at t_s (up: i raises the token's
log-probability, as in the seed tool's "logits most upweighted by that
dimension"). Clean values come from the same numerical path as ablated ones
(`ablation_rows`), so an ablation that changes nothing gives exactly 0.

Reference: the ablation graphs of Cunningham et al. 2023, "Sparse
Autoencoders Find Highly Interpretable Features in Language Models" (sec. 5),
with the error term kept as in Marks et al. 2024.

Phases:
1. Clean pass (`ablation_rows.clean_run`): the residual stream at every
   slice site, its SAE code, and the keys and values of every later block.
2. Candidates: layer L's features active anywhere (thinned to
   INIT_THINNING_FACTOR, or the pinned one); inactive ones change nothing,
   exactly, and are skipped. Later layers: the features that received an
   edge, plus a pinned one.
3. Batched ablations (`ablation_rows.AblatedRows`): ablations are a batch
   dimension, one row per (candidate, sequence) pair where the candidate is
   active, plus unablated base rows to compare with. Rows run from the
   cached stream at L through the blocks up to
   L+1 only (feature effects, read at the last position), then on to the
   logits. First-layer candidates that keep no edge are never drawn, so
   their rows skip the logit pass.
4. Graph: edges, logit cells, node activations. The last slice layer has no
   L+1 SAE loaded (the slice names the SAEs the user chose), so its
   candidates get logit cells only.
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from sparse_coding.algorithms.ablation_rows import (
    STREAM_OFFSET,
    AblatedRows,
    CleanRun,
    ResidLayer,
    clean_run,
    rows_per_forward,
)
from sparse_coding.config import DEFAULTS
from sparse_coding.corpus import TokenBatch
from sparse_coding.errors import ConfigError, ExactlyZeroEffectError
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.nodes import feature_id, site_key
from sparse_coding.progress import progress
from sparse_coding.splicing.splice import Site, SplicedModel
from sparse_coding.tokenizer import Tokenizer
from sparse_coding.tokens import token_text

logger = logging.getLogger(__name__)


# How many of the largest effects a result keeps, to tell a user whose
# THRESHOLD_EXP drops every edge which value would keep this many.
LARGEST_KEPT = 100


class AblationResult(NamedTuple):
    """The graph and the effect mass behind its summary."""

    graph: Graph
    collected: float  # sum |e| over every non-zero feature effect measured
    plotted: float  # sum |e| over the edges kept
    candidates: dict[int, list[int]]  # layer -> features ablated there
    largest_effects: list[float]  # the LARGEST_KEPT largest |e| measured, descending


@dataclass
class _Effects:
    """What a layer's candidates did (phase 3), candidate-major."""

    candidates: Tensor  # (n,)
    edges: list[tuple[int, int, float]]  # (candidate, target feature, e)
    logits_up: list[list[tuple[int, float]]]  # per candidate: (token id, change)
    logits_down: list[list[tuple[int, float]]]
    collected: float
    plotted: float
    any_effect: bool
    largest: Tensor  # (<= LARGEST_KEPT,) the largest |e| so far, descending


def ablation_graph(
    spliced: SplicedModel,
    batch: TokenBatch,
    *,
    tokenizer: Tokenizer,
    layers: Sequence[int],
    thinning: float = DEFAULTS.INIT_THINNING_FACTOR,
    pinned: dict[int, int] | None = None,
    threshold_exp: float | None = None,
    logit_tokens: int = DEFAULTS.LOGIT_TOKENS,
    seed: int = DEFAULTS.SEED,
    max_rows: int | None = None,
) -> AblationResult:
    """Trace a circuit down the resid SAEs of `layers` by batched zero-ablations.

    Args:
        spliced: model with resid SAEs at every layer of `layers`.
        batch: the interpreted sequences, right-padded.
        tokenizer: names the logit-cell tokens.
        layers: consecutive layers, first to last (ACTS_LAYERS_SLICE).
        thinning: fraction of the first layer's active features ablated.
        pinned: layer -> feature ablated there (replaces the first layer's
            candidates, joins later layers').
        threshold_exp: keep edges with |e| > 2**threshold_exp; None keeps
            every non-zero one.
        logit_tokens: most up- / down-weighted next tokens per node.
        seed: seeds the thinning.
        max_rows: ablation rows per forward; default from available memory.

    Raises:
        ConfigError: a pinned feature is outside its SAE or layer range, or a
            resid SAE reads a hook this algorithm does not support.
        ExactlyZeroEffectError: the first layer's ablations changed nothing.
    """
    pinned = pinned or {}
    sites = [_resid_site(spliced, layer) for layer in layers]
    _check_pins(pinned, sites)
    start = time.perf_counter()
    clean = clean_run(spliced, batch, sites)
    logger.info("Clean pass over %d sequences in %.2fs", len(clean.last), time.perf_counter() - start)
    rows = max_rows or rows_per_forward(spliced, batch, sites)
    clean_layers = clean.layers
    candidates = _first_candidates(clean_layers[0], thinning, pinned.get(sites[0].layer), seed)
    results = []
    for index, layer in enumerate(clean_layers):
        next_layer = clean_layers[index + 1] if index + 1 < len(clean_layers) else None
        # Only the first layer's candidates may go undrawn (no edge kept, not pinned);
        # later candidates are edge targets or pinned, so all of them get logit cells.
        drawn_only = index == 0 and next_layer is not None
        pin = pinned.get(layer.site.layer) if drawn_only else None
        effects = _ablate_layer(
            spliced, clean, layer, next_layer, candidates, logit_tokens, threshold_exp, rows, drawn_only, pin
        )
        if index == 0 and not effects.any_effect:
            raise _zero_effect_error(layer, pinned)
        results.append(effects)
        if next_layer is not None:
            candidates = _next_candidates(effects, pinned.get(next_layer.site.layer))
    graph = _assemble(clean_layers, results, tokenizer, pinned)
    collected = sum(r.collected for r in results)
    plotted = sum(r.plotted for r in results)
    logger.info(
        "Ablation graph: %d nodes, %d edges in %.2fs",
        len(graph.nodes),
        len(graph.edges),
        time.perf_counter() - start,
    )
    ablated = {
        layer.site.layer: r.candidates.tolist() for layer, r in zip(clean_layers, results, strict=True)
    }
    largest = torch.cat([r.largest for r in results]).sort(descending=True).values[:LARGEST_KEPT]
    return AblationResult(graph, collected, plotted, ablated, largest.tolist())


def _resid_site(spliced: SplicedModel, layer: int) -> Site:
    site = spliced.by_key.get(site_key("resid", layer))
    if site is None:
        raise ConfigError(
            f"pipe.py needs a resid SAE at layer {layer} (RESID_SAES); "
            f"spliced sites: {sorted(spliced.by_key)}"
        )
    if site.hook not in STREAM_OFFSET:
        raise ConfigError(
            f"RESID_SAES {site.sae.cfg.source!r} reads {site.sae.hook_name}; pipe.py ablates on the "
            f"residual stream between blocks, so it supports {' and '.join(STREAM_OFFSET)} SAEs only"
        )
    return site


def _check_pins(pinned: dict[int, int], sites: list[Site]) -> None:
    by_layer = {site.layer: site for site in sites}
    for layer, feature in pinned.items():
        if layer not in by_layer:
            raise ConfigError(
                f"DIMS_PINNED pins layer {layer}, outside ACTS_LAYERS_SLICE; valid layers: {sorted(by_layer)}"
            )
        d_sae = by_layer[layer].sae.d_sae
        if not 0 <= feature < d_sae:
            raise ConfigError(
                f"DIMS_PINNED pins feature {feature} at layer {layer}, but that resid SAE has "
                f"{d_sae} features; valid: 0..{d_sae - 1}"
            )


def _first_candidates(layer: ResidLayer, thinning: float, pinned: int | None, seed: int) -> Tensor:
    """Phase 2: the first layer's active features, thinned, or the pinned one."""
    device = layer.feats.device
    if pinned is not None:
        return torch.tensor([pinned], device=device)
    active = (layer.feats > 0).flatten(0, 1).any(dim=0).nonzero()[:, 0]
    keep = max(1, round(thinning * len(active))) if len(active) else 0
    order = torch.randperm(len(active), generator=torch.Generator().manual_seed(seed))[:keep]
    logger.info("Layer %d: %d active features, ablating %d", layer.site.layer, len(active), keep)
    return active[order.to(device)].sort().values


def _next_candidates(effects: _Effects, pinned: int | None) -> Tensor:
    """Phase 2 for later layers: targets of an edge, plus the pinned feature."""
    targets = {target for _, target, _ in effects.edges}
    if pinned is not None:
        targets.add(pinned)
    return torch.tensor(sorted(targets), dtype=torch.long, device=effects.candidates.device)


def _ablate_layer(
    spliced: SplicedModel,
    clean: CleanRun,
    layer: ResidLayer,
    next_layer: "ResidLayer | None",
    candidates: Tensor,
    logit_tokens: int,
    threshold_exp: float | None,
    rows: int,
    drawn_only: bool,
    pinned: int | None,
) -> _Effects:
    """Phase 3: every candidate of one layer, `rows` (candidate, sequence) rows per forward.

    With `drawn_only`, logit cells are computed only for candidates that keep
    an edge or are pinned (the others are not drawn), unless no candidate of
    the chunk changed any feature: then all, so that the zero-effect check
    stays exact.
    """
    out = _Effects(candidates, [], [], [], 0.0, 0.0, False, torch.zeros(0, device=candidates.device))
    # The logit pass wants nearly every row unless a threshold leaves most first-layer
    # candidates undrawn; only then is redoing its blocks for the few cheaper than carrying all.
    keep_stream = not drawn_only or threshold_exp is None
    per_chunk = max(1, rows // len(clean.last))
    chunks = range(0, len(candidates), per_chunk)
    for lo in progress(
        chunks,
        desc=f"Ablating {layer.site.key}",
        leave=False,
        disable=len(chunks) < 2,
    ):
        chunk = candidates[lo : lo + per_chunk]
        with torch.inference_mode():
            ablated = AblatedRows(clean, layer, chunk)
            wanted = torch.ones(len(chunk), dtype=torch.bool, device=chunk.device)
            if next_layer is not None:
                feat_eff = ablated.run_to_next(spliced, next_layer, keep_stream)
                has_edge, changed = _record_edges(out, chunk, feat_eff, threshold_exp)
                if drawn_only and changed:
                    wanted = has_edge if pinned is None else has_edge | (chunk == pinned)
            logit_eff = ablated.logit_effects(spliced, wanted)
        _record_logits(out, wanted, logit_eff, logit_tokens)
    return out


def _record_edges(
    out: _Effects, chunk: Tensor, feat_eff: Tensor, threshold_exp: float | None
) -> tuple[Tensor, bool]:
    """Phase 4 per chunk: threshold edges, drop the dense effects.

    Returns which candidates kept an edge (m,) and whether any feature changed at all.
    """
    magnitude = feat_eff.abs()
    keep = magnitude > 2.0**threshold_exp if threshold_exp is not None else magnitude > 0
    collected = float(magnitude.sum())
    out.collected += collected
    out.any_effect |= collected > 0
    out.plotted += float(magnitude[keep].sum())
    out.largest = _largest(out.largest, magnitude.float())
    cand, target = keep.nonzero(as_tuple=True)
    values = feat_eff[cand, target].tolist()
    out.edges += list(zip(chunk[cand].tolist(), target.tolist(), values, strict=True))
    has_edge = torch.zeros(len(chunk), dtype=torch.bool, device=chunk.device)
    return has_edge.index_fill_(0, cand.unique(), True), collected > 0


def _largest(largest: Tensor, magnitude: Tensor) -> Tensor:
    """The LARGEST_KEPT largest values of `largest` (descending) and `magnitude` (m, width), descending.

    A top-k over all m x width values is slow on a CPU. Each row's
    maximum is a distinct value, so at least LARGEST_KEPT values are >= the
    LARGEST_KEPT-th largest of the row maxima and `largest`; only those are sorted.
    """
    pool = torch.cat([largest, magnitude.amax(dim=1)])
    if len(pool) >= LARGEST_KEPT:
        bound = pool.topk(LARGEST_KEPT).values[-1]
        largest, magnitude = largest[largest >= bound], magnitude[magnitude >= bound]
    seen = torch.cat([largest, magnitude.flatten()])
    return seen.topk(min(LARGEST_KEPT, len(seen))).values


def _record_logits(out: _Effects, wanted: Tensor, logit_eff: Tensor, logit_tokens: int) -> None:
    """Phase 4 per chunk: the most raised and lowered tokens of each wanted candidate; none for others."""
    k = min(logit_tokens, logit_eff.shape[1])
    up, down = logit_eff.topk(k, dim=1), logit_eff.topk(k, dim=1, largest=False)
    # One device-to-host copy per chunk, not four per candidate.
    up_ids, up_values, down_ids, down_values = (
        t.cpu() for t in (up.indices, up.values, down.indices, down.values)
    )
    out.any_effect |= k > 0 and bool((up_values[:, 0] > 0).any() or (down_values[:, 0] < 0).any())
    row = 0
    for is_wanted in wanted.tolist():
        if not is_wanted:
            out.logits_up.append([])
            out.logits_down.append([])
            continue
        out.logits_up.append(_cells(up_ids[row], up_values[row], raised=True))
        out.logits_down.append(_cells(down_ids[row], down_values[row], raised=False))
        row += 1


def _cells(ids: Tensor, values: Tensor, raised: bool) -> list[tuple[int, float]]:
    """(token id, change) pairs that moved the stated way."""
    pairs = zip(ids.tolist(), values.tolist(), strict=True)
    return [(i, v) for i, v in pairs if (v > 0 if raised else v < 0)]


def _zero_effect_error(layer: ResidLayer, pinned: dict[int, int]) -> ExactlyZeroEffectError:
    key = layer.site.key
    if layer.site.layer in pinned:
        feature = pinned[layer.site.layer]
        return ExactlyZeroEffectError(
            f"Ablating the pinned feature {key}.{feature} (DIMS_PINNED {layer.site.layer}: {feature}) "
            f"changed nothing: it is inactive at every position of the interpreted sequences. "
            f"Check DIMS_PINNED for layer {layer.site.layer}, or pin a feature that fires on PROMPT"
        )
    return ExactlyZeroEffectError(
        f"No feature of {key} (the first layer of ACTS_LAYERS_SLICE) changed anything when ablated: "
        f"none is active on the interpreted sequences. Check layer {layer.site.layer} and its RESID_SAES "
        f"source, or pin a feature there with DIMS_PINNED"
    )


def _assemble(
    layers: list[ResidLayer],
    results: list[_Effects],
    tokenizer: Tokenizer,
    pinned: dict[int, int],
) -> Graph:
    """Phase 4: edges, then every drawn node with its activation and logit cells.

    Drawn: ends of an edge, pinned features, and the last layer's candidates.
    """
    graph = Graph()
    drawn: set[tuple[int, int]] = set()
    for index, effects in enumerate(results):
        src, dst = layers[index].site.layer, layers[index].site.layer + 1
        sources = {c: feature_id("resid", src, c) for c in {c for c, _, _ in effects.edges}}
        targets = {t: feature_id("resid", dst, t) for t in {t for _, t, _ in effects.edges}}
        for cand, target, value in effects.edges:
            graph.add_edge(sources[cand], targets[target], value)
        drawn.update((index, c) for c in sources)
        drawn.update((index + 1, t) for t in targets)
    drawn.update((len(layers) - 1, c) for c in results[-1].candidates.tolist())
    drawn.update((i, pinned[lay.site.layer]) for i, lay in enumerate(layers) if lay.site.layer in pinned)
    cells = {
        (i, c): (r.logits_up[j], r.logits_down[j])
        for i, r in enumerate(results)
        for j, c in enumerate(r.candidates.tolist())
    }
    max_acts = [layer.feats.amax(dim=(0, 1)).tolist() for layer in layers]  # one device sync per layer
    for index, feature in sorted(drawn):
        graph.add_node(
            _node(layers[index], feature, max_acts[index][feature], cells.get((index, feature)), tokenizer)
        )
    return graph


def _node(layer: ResidLayer, feature: int, activation: float, cells, tokenizer: Tokenizer) -> Node:
    up, down = cells if cells is not None else ([], [])
    return Node.from_id(
        feature_id("resid", layer.site.layer, feature),
        activation=activation,
        hook=layer.site.sae.hook_name,
        neuronpedia_id=layer.site.sae.neuronpedia_id,
        logits_up=[(token_text(tokenizer, i), v) for i, v in up],
        logits_down=[(token_text(tokenizer, i), v) for i, v in down],
    )
