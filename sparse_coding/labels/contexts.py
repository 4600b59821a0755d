"""Top-activating contexts of chosen SAE features, collected in one streaming pass.

Only the features asked for are collected (a graph's nodes: a few dozen of
the tens of thousands per site), only their sites are encoded, and the
forward stops at the last asked site.

A feature's contexts are the SEQ_PER_DIM_CAP sequences where its activation
peaks highest: for each sequence its maximum over real (unpadded) tokens, then
the top sequences by that maximum. Each context shows VIEW tokens either side
of the peak with the feature's activation on every token, so labels can
shade them.

Per batch and site, the per-sequence maxima (batch, n) of the n asked
features and the windows around them join the running top-k (k, n) through
one stable sort over (running ∪ batch), so ties go to the earlier sequence.
Only (sequence index, position, activation, window) is kept per entry, and the
token ids of sequences some entry still references; the others are dropped
after every batch, so memory is bounded by the top-k (k * n entries per
site), never by the dataset's length.

What one batch costs at a site:
- ReLU and JumpReLU act on each feature alone: only the asked encoder columns
  are read (`SAE.encode_features`).
- TopK compares all features: an asked feature is on where fewer than k
  others have a larger pre-activation. Every token reads the n asked columns
  and a fixed 1/8 of the others (the probe). An asked feature is certainly 0
  where its pre-activation is <= 0 or below the probe's k-th largest (then k
  features beat it). Of the rest, a feature's value matters only within VIEW
  of a token where it could beat its running floor (the k-th peak so far):
  the windows of entries that may enter. Only those tokens read further, the
  other columns in chunks of 1/8, and each stops once every asked feature
  there has met k larger ones; only tokens where one is really on read the
  whole width. The floors rise as the stream goes on.

The result is a `sparse_coding.labels.context_cache.ContextCache` (its file
format and staleness rules are there).
"""

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sparse_coding.labels.context_cache import ContextCache
from sparse_coding.runtime import distributed
from sparse_coding.runtime.sharding import run_pass
from sparse_coding.splicing.splice import Site, SplicedModel
from sparse_coding.text.batches import TokenBatch
from sparse_coding.text.tokenizer import Tokenizer
from sparse_coding.text.tokens import token_text

logger = logging.getLogger(__name__)

# A TopK site's membership bound (the probe), and each further chunk, read 1 / PROBE_FRACTION of its encoder.
PROBE_FRACTION = 8


@dataclass
class SiteTopK:
    """Running top-k of one site's asked features: entry j of the r-th is [j, r] (act 0 = empty)."""

    features: Tensor  # (n,) the asked feature indices, sorted
    act: Tensor  # (k, n) peak activation
    seq: Tensor  # (k, n) stream index of the sequence
    pos: Tensor  # (k, n) position of the peak
    window: Tensor  # (k, n, 2 view + 1) activations around the peak (0 beyond the sequence)

    @classmethod
    def empty(cls, k: int, features: Tensor, view: int) -> "SiteTopK":
        zeros = torch.zeros(k, len(features), device=features.device)
        index = torch.full((k, len(features)), -1, dtype=torch.long, device=features.device)
        window = torch.zeros(k, len(features), 2 * view + 1, device=features.device)
        return cls(features, zeros, index, index.clone(), window)

    @property
    def view(self) -> int:
        return self.window.shape[-1] // 2

    def floor(self) -> Tensor:
        """(n,) the peak a sequence must beat to enter each feature's top-k."""
        return self.act[-1]

    def update(self, feats: Tensor, mask: Tensor, first_index: int) -> None:
        """Fold one batch's activations (batch, pos, n) of the asked features into the running top-k."""
        feats = feats.float() * mask[..., None]
        peak, pos = feats.max(dim=1)  # (batch, n)
        rows = torch.arange(len(peak), device=peak.device)[:, None] + first_index
        act = torch.cat([self.act, peak])
        # A stable sort, not topk: on ties the earlier sequence (kept first) wins.
        values, order = act.sort(dim=0, descending=True, stable=True)
        k = len(self.act)
        self.act, order = values[:k], order[:k]
        self.seq = torch.cat([self.seq, rows.expand_as(peak)]).gather(0, order)
        self.pos = torch.cat([self.pos, pos]).gather(0, order)
        window = torch.cat([self.window, _windows_at(feats, pos, mask.sum(dim=1), self.view)])
        self.window = window.gather(0, order[..., None].expand(-1, -1, window.shape[-1]))

    def arrays(self) -> dict[str, np.ndarray]:
        """Host arrays in the cache's layout: rows are features."""
        return {
            "features": self.features.cpu().numpy(),
            "act": self.act.T.float().cpu().numpy(),
            "seq": self.seq.T.cpu().numpy(),
            "pos": self.pos.T.cpu().numpy(),
            "window": self.window.transpose(0, 1).cpu().numpy(),
        }

    def referenced(self) -> Tensor:
        """Stream indices of the sequences some entry points to."""
        return self.seq[self.act > 0].unique()

    @classmethod
    def merged(cls, parts: list["SiteTopK"]) -> "SiteTopK":
        """The top-k of several partial top-ks of the same features (disjoint sequences), by the
        order `update` keeps: larger peak first, on ties the earlier sequence."""
        k = len(parts[0].act)
        act, seq = torch.cat([p.act for p in parts]), torch.cat([p.seq for p in parts])
        order = seq.argsort(dim=0, stable=True)  # earlier sequences first, then a stable sort by peak
        order = order.gather(0, act.gather(0, order).argsort(dim=0, descending=True, stable=True))[:k]
        window = torch.cat([p.window for p in parts])
        return cls(
            parts[0].features,
            act.gather(0, order),
            seq.gather(0, order),
            torch.cat([p.pos for p in parts]).gather(0, order),
            window.gather(0, order[..., None].expand(-1, -1, window.shape[-1])),
        )


def collect_contexts(
    spliced: SplicedModel,
    tokenizer: Tokenizer,
    batches: Iterable[TokenBatch],
    *,
    features: Mapping[str, list[int]] | None = None,
    per_feature: int,
    view: int,
    total: int | None = None,
) -> ContextCache:
    """Top `per_feature` contexts of the asked features.

    Args:
        spliced: the model with SAEs at the sites to collect.
        tokenizer: turns the kept token ids into strings.
        features: site key -> feature indices to collect (default: every
            feature of every spliced site); sites not named are not encoded.
        batches: right-padded batches (`corpus.iter_batches`); read once.
        per_feature: contexts kept per feature (SEQ_PER_DIM_CAP).
        view: tokens shown either side of the peak (VIEW).
        total: number of batches, for the progress bar (optional).
    """
    start = time.perf_counter()
    device = spliced.device
    if features is None:
        features = {site.key: list(range(site.sae.d_sae)) for site in spliced.sites}
    asked = {key: torch.tensor(sorted(set(dims)), device=device) for key, dims in features.items() if dims}
    if not asked:
        return to_cache({}, {}, {}, tokenizer, view, per_feature)

    def add(state: _ContextState, index: int, batch: TokenBatch) -> None:
        batch = distributed.move(batch, device)
        state.counts["tokens"] += int(batch.attention_mask.sum())
        _stream_batch(spliced, batch, state.tops, state.counts["reads"])
        _keep_referenced(state.sequences, batch, state.tops.values())

    def empty() -> _ContextState:
        fresh = {key: SiteTopK.empty(per_feature, dims, view) for key, dims in asked.items()}
        return _ContextState(fresh, {}, {"tokens": 0, "reads": {key: [0, 0] for key in asked}})

    state = run_pass(
        "contexts", batches, empty=empty, add=add, desc="Collecting contexts", total=total, device=device
    )
    sources = {key: spliced.by_key[key].sae.cfg.source for key in state.tops}
    cache = to_cache(state.tops, sources, state.sequences, tokenizer, view, per_feature)
    logger.info(
        "Collected contexts of %d features at %d sites from %d sequences in %.1fs",
        sum(len(top.features) for top in state.tops.values()),
        len(state.tops),
        len(state.sequences),
        time.perf_counter() - start,
    )
    _log_reads(spliced, state.counts)
    return cache


def to_cache(
    tops: Mapping[str, SiteTopK],
    sources: dict[str, str],
    sequences: dict[int, Tensor],
    tokenizer: Tokenizer,
    view: int,
    per_feature: int,
) -> ContextCache:
    """Collected top-ks (site key -> SiteTopK) as a ContextCache: host arrays, token strings."""
    token_ids = sorted(set().union(*(set(s.tolist()) for s in sequences.values())))
    return ContextCache(
        view=view,
        per_feature=per_feature,
        sources=sources,
        arrays={key: top.arrays() for key, top in tops.items()},
        sequences={i: ids.cpu().numpy() for i, ids in sequences.items()},
        vocab={i: token_text(tokenizer, i) for i in token_ids},
    )


def _log_reads(spliced: SplicedModel, counts: dict) -> None:
    """Per TopK site, how many tokens needed exact membership and how much of the encoder was read."""
    tokens = counts["tokens"]
    for key, (exact, columns) in counts["reads"].items():
        if spliced.by_key[key].sae.cfg.activation == "topk":
            logger.debug(
                "%s: %d of %d tokens needed exact TopK membership; encoder columns read: %.1f%% of a "
                "full-width encode of every token",
                key,
                exact,
                tokens,
                100 * columns / max(tokens * spliced.by_key[key].sae.d_sae, 1),
            )


@dataclass
class _ContextState:
    """The pass's running top-k per site, the token ids they reference, and what reading cost."""

    tops: dict[str, SiteTopK]
    sequences: dict[int, Tensor]  # stream index -> token ids
    counts: dict  # "tokens": real tokens read; "reads": site key -> [exact-membership tokens, columns]

    def reduce(self) -> "_ContextState":
        """Every rank's top-ks merged, with the sequences they still reference, on every rank."""
        parts = distributed.all_gather((self.tops, self.sequences))
        device = next(iter(self.tops.values())).act.device
        tops = {
            key: distributed.move(SiteTopK.merged([part[0][key] for part in parts]), device)
            for key in self.tops
        }
        needed = set(torch.cat([top.referenced() for top in tops.values()]).tolist())
        sequences = {i: ids.to(device) for part in parts for i, ids in part[1].items() if i in needed}
        return _ContextState(tops, sequences, distributed.all_sum(self.counts))


def _stream_batch(
    spliced: SplicedModel, batch: TokenBatch, tops: dict[str, SiteTopK], reads: dict[str, list[int]]
) -> None:
    """One forward up to the last asked site; each asked site's top-k takes this batch."""

    def read(site: Site, x: Tensor) -> Tensor:
        if site.key in tops:
            top = tops[site.key]
            feats, exact, columns = _asked_activations(site, x, top, batch.attention_mask)
            reads[site.key][0] += exact
            reads[site.key][1] += columns
            top.update(feats, batch.attention_mask, batch.first_index)
        return x

    stop = max(spliced.by_key[key].layer for key in tops) + 1
    hidden = spliced.embed(batch.input_ids)
    with torch.inference_mode(), spliced.intervene(read):
        spliced.run_blocks(hidden, 0, stop, batch.attention_mask)


def _asked_activations(site: Site, x: Tensor, top: SiteTopK, mask: Tensor) -> tuple[Tensor, int, int]:
    """(batch, pos, n) activations of the asked features, exact wherever they can reach the
    top-k; how many tokens needed exact TopK membership, and how many encoder columns were
    read in all (see the module docstring)."""
    asked, real = top.features, mask.bool()
    n_real = int(real.sum())
    if site.sae.cfg.activation != "topk":
        return site.feats_of(x, asked), 0, n_real * len(asked)
    if 4 * len(asked) > site.sae.d_sae:  # most columns asked: bounding them costs a full encode too
        return site.feats_of(x, asked), n_real, n_real * site.sae.d_sae
    k = site.sae.cfg.k
    pre = site.pre_of(x, asked)
    probe, *rest = _chunks(site.sae.d_sae, asked)
    probe_top = _chunk_top(site, x, probe, k)  # (batch, pos, k)
    uncertain = (pre > 0) & (pre >= probe_top[..., -1:])  # else ReLU or k probe features make it 0
    could_peak = uncertain & (pre > top.floor()) & real[..., None]  # (batch, pos, n)
    width = 2 * top.view + 1
    near = torch.nn.functional.max_pool1d(  # per feature: within VIEW of its own possible peak
        could_peak.transpose(1, 2).float(), width, stride=1, padding=top.view
    ).transpose(1, 2)
    exact = (uncertain & (near > 0)).any(dim=-1) & real
    feats = torch.zeros(*x.shape[:-1], len(asked), dtype=site.sae.W_enc.dtype, device=x.device)
    columns = n_real * (len(asked) + _width(probe))
    if exact.any():
        pre, unsettled = pre[exact], uncertain[exact]
        beaten = _count_above(probe_top[exact], pre, k) + _count_above(
            pre.topk(min(k, len(asked))).values, pre, k
        )
        feats[exact], read = _topk_membership(site, x[exact], pre, unsettled & (beaten < k), beaten, rest)
        columns += read
    return feats, int(exact.sum()), columns


def _topk_membership(
    site: Site, x: Tensor, pre: Tensor, unsettled: Tensor, beaten: Tensor, chunks: list["_Chunk"]
) -> tuple[Tensor, int]:
    """Exact TopK activations (m, n) of the asked features at m tokens, and the columns read.

    `beaten` (m, n) counts the larger pre-activations found so far (probe and asked features);
    `unsettled` marks the pairs still open; the other chunks are read only at tokens with an open
    pair (see the module docstring). Equal pre-activations at the k-th place (which TopK breaks
    arbitrarily) count as not beating.
    """
    k, read = site.sae.cfg.k, 0
    rows = unsettled.any(dim=-1).nonzero()[:, 0]
    for chunk in chunks:
        if len(rows) == 0:
            break
        beaten[rows] += _count_above(_chunk_top(site, x[rows], chunk, k), pre[rows], k)
        read += len(rows) * _width(chunk)
        unsettled[rows] &= beaten[rows] < k
        rows = rows[unsettled[rows].any(dim=-1)]
    return torch.relu(pre) * (beaten < k), read  # beaten < k: a pair that stayed open to the end


def _count_above(top_values: Tensor, thresholds: Tensor, k: int) -> Tensor:
    """(m, n): how many of each row's values exceed each threshold, capped at k; `top_values`
    (m, >= min(k, count)) are the row's largest, which is all a count capped at k needs."""
    return (top_values[..., :, None] > thresholds[..., None, :]).sum(dim=-2).clamp_(max=k)


# A contiguous range of encoder columns (a view of W_enc: no copy) and the asked features in it,
# counted from its start.
_Chunk = tuple[slice, Tensor]


def _chunks(d_sae: int, asked: Tensor) -> list[_Chunk]:
    """The encoder in ranges of d_sae / PROBE_FRACTION columns. The first is the probe: the
    k-th largest pre-activation of its features (the asked ones left out) is at most the
    token's TopK threshold, so an asked feature below it is certainly off."""
    width = max(d_sae // PROBE_FRACTION, 1)
    return [
        (slice(start, min(start + width, d_sae)), asked[(asked >= start) & (asked < start + width)] - start)
        for start in range(0, d_sae, width)
    ]


def _chunk_top(site: Site, x: Tensor, chunk: _Chunk, k: int) -> Tensor:
    """(..., min(k, width)) the largest pre-activations of the chunk's features that were not asked
    (-inf where fewer remain); asked features are compared with each other separately."""
    columns, asked_inside = chunk
    pre = site.pre_of(x, columns)
    pre[..., asked_inside] = float("-inf")
    return pre.topk(min(k, pre.shape[-1]), dim=-1).values


def _width(chunk: _Chunk) -> int:
    return chunk[0].stop - chunk[0].start


def _windows_at(feats: Tensor, pos: Tensor, lengths: Tensor, view: int) -> Tensor:
    """(batch, n, 2 view + 1) activations around each sequence's peak `pos` (batch, n)."""
    offsets = torch.arange(-view, view + 1, device=feats.device)
    positions = pos[..., None] + offsets  # (batch, n, width)
    valid = (positions >= 0) & (positions < lengths[:, None, None])
    index = positions.clamp(0, feats.shape[1] - 1).transpose(1, 2)  # (batch, width, n)
    return feats.gather(1, index).transpose(1, 2) * valid


def _keep_referenced(sequences: dict[int, Tensor], batch: TokenBatch, tops: Iterable[SiteTopK]) -> None:
    """Keep token ids of the sequences the top-ks still point to; drop the rest."""
    needed = set(torch.cat([top.referenced() for top in tops]).tolist())
    for row, (ids, mask) in enumerate(zip(batch.input_ids, batch.attention_mask, strict=True)):
        if batch.first_index + row in needed:
            sequences[batch.first_index + row] = ids[mask.bool()].clone()
    for index in set(sequences) - needed:
        del sequences[index]
