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
3. Batched ablations (`ablation_rows`, which describes the rows): feature
   effects at L+1, then logit effects for the drawn candidates only
   (first-layer candidates that keep no edge are never drawn).
4. Graph: edges, logit cells, node activations. The last slice layer has no
   L+1 SAE loaded (the slice names the SAEs the user chose), so its
   candidates get logit cells only.
"""

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from sparse_coding.algorithms.ablation_rows import (
    LARGEST_KEPT,
    STREAM_OFFSET,
    AblatedRows,
    CleanRun,
    LayerEffects,
    ResidLayer,
    clean_run,
    record_edges,
    record_logits,
    rows_per_forward,
)
from sparse_coding.config import DEFAULTS
from sparse_coding.errors import ConfigError, ExactlyZeroEffectError
from sparse_coding.graphs.graph import Graph, Node
from sparse_coding.nodes import feature_id, site_key
from sparse_coding.runtime.progress import progress
from sparse_coding.splicing.splice import Site, SplicedModel
from sparse_coding.text.batches import TokenBatch
from sparse_coding.text.tokenizer import Tokenizer
from sparse_coding.text.tokens import token_text

logger = logging.getLogger(__name__)


class AblationResult(NamedTuple):
    """The graph and the effect mass behind its summary."""

    graph: Graph
    collected: float  # sum |e| over every non-zero feature effect measured
    plotted: float  # sum |e| over the edges kept
    candidates: dict[int, list[int]]  # layer -> features ablated there
    largest_effects: list[float]  # the LARGEST_KEPT largest |e| measured, descending


@dataclass(frozen=True)
class _Ablations:
    """What every layer's ablations share: the model, its clean run and the user's options."""

    spliced: SplicedModel
    clean: CleanRun
    rows: int  # (candidate, sequence) rows per forward
    threshold_exp: float | None
    logit_tokens: int


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
    ablations = _Ablations(spliced, clean, rows, threshold_exp, logit_tokens)
    candidates = _first_candidates(clean.layers[0], thinning, pinned.get(sites[0].layer), seed)
    results = _ablate_layers(ablations, candidates, pinned)
    graph = _assemble(clean.layers, results, tokenizer, pinned)
    logger.info(
        "Ablation graph: %d nodes, %d edges in %.2fs",
        len(graph.nodes),
        len(graph.edges),
        time.perf_counter() - start,
    )
    return _result(graph, clean.layers, results)


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


def _next_candidates(effects: LayerEffects, pinned: int | None) -> Tensor:
    """Phase 2 for later layers: targets of an edge, plus the pinned feature."""
    targets = {target for _, target, _ in effects.edges}
    if pinned is not None:
        targets.add(pinned)
    return torch.tensor(sorted(targets), dtype=torch.long, device=effects.candidates.device)


def _ablate_layers(ablations: _Ablations, candidates: Tensor, pinned: dict[int, int]) -> list[LayerEffects]:
    """Phases 2 and 3, layer by layer: the first layer's `candidates`, then each layer's edge targets."""
    layers = ablations.clean.layers
    results = []
    for layer, next_layer in zip(layers, [*layers[1:], None], strict=True):
        first = not results
        effects = _ablate_layer(
            ablations, layer, next_layer, candidates, first=first, pinned=pinned.get(layer.site.layer)
        )
        if first and not effects.any_effect:
            raise _zero_effect_error(layer, pinned)
        results.append(effects)
        if next_layer is not None:
            candidates = _next_candidates(effects, pinned.get(next_layer.site.layer))
    return results


def _ablate_layer(
    ablations: _Ablations,
    layer: ResidLayer,
    next_layer: ResidLayer | None,
    candidates: Tensor,
    *,
    first: bool,
    pinned: int | None,
) -> LayerEffects:
    """Phase 3: ablate every candidate of `layer`, a chunk of rows per forward, into `next_layer`'s
    features (None for the last layer: logit cells only). Candidates of the `first` layer may go
    undrawn, except the `pinned` feature."""
    out = LayerEffects.none_yet(candidates)
    may_go_undrawn = first and next_layer is not None
    # The logit pass wants nearly every row, so ablated streams are carried on to it, unless a
    # threshold leaves most first-layer candidates undrawn: then it redoes the blocks for its few rows.
    carry_stream = not may_go_undrawn or ablations.threshold_exp is None
    for chunk in _chunks(candidates, ablations, layer.site.key):
        with torch.inference_mode():
            ablated = AblatedRows(ablations.clean, layer, chunk)
            drawn = torch.ones(len(chunk), dtype=torch.bool, device=chunk.device)
            if next_layer is not None:
                feature_effects = ablated.run_to_next(ablations.spliced, next_layer, keep_stream=carry_stream)
                has_edge, changed = record_edges(out, chunk, feature_effects, ablations.threshold_exp)
                if may_go_undrawn:
                    drawn = drawn_candidates(chunk, has_edge, changed, pinned)
            logit_effects = ablated.logit_effects(ablations.spliced, drawn)
        record_logits(out, drawn, logit_effects, ablations.logit_tokens)
    return out


def _chunks(candidates: Tensor, ablations: _Ablations, key: str) -> Iterator[Tensor]:
    """Slices of `candidates` whose (candidate, sequence) rows fit one forward, with a progress bar."""
    per_chunk = max(1, ablations.rows // len(ablations.clean.last))
    starts = range(0, len(candidates), per_chunk)
    for lo in progress(starts, desc=f"Ablating {key}", leave=False, disable=len(starts) < 2):
        yield candidates[lo : lo + per_chunk]


def drawn_candidates(chunk: Tensor, has_edge: Tensor, changed: bool, pinned: int | None) -> Tensor:
    """Which first-layer candidates (m,) are drawn, so need logit cells: those that keep an edge
    or are pinned; all of them when no candidate changed any feature, so that the zero-effect
    check sees every logit change."""
    if not changed:
        return torch.ones_like(has_edge)
    return has_edge if pinned is None else has_edge | (chunk == pinned)


def _result(graph: Graph, layers: list[ResidLayer], results: list[LayerEffects]) -> AblationResult:
    """The graph with the sums over every layer's effects."""
    ablated = {layer.site.layer: r.candidates.tolist() for layer, r in zip(layers, results, strict=True)}
    largest = torch.cat([r.largest for r in results]).sort(descending=True).values[:LARGEST_KEPT]
    collected = sum(r.collected for r in results)
    plotted = sum(r.plotted for r in results)
    return AblationResult(graph, collected, plotted, ablated, largest.tolist())


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
    results: list[LayerEffects],
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
