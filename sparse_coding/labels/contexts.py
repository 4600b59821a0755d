"""Top-activating contexts of chosen SAE features, collected in one streaming pass.

Only the features asked for are collected (a graph's nodes: a few dozen of
the tens of thousands per site), only their sites are encoded, and for ReLU
and JumpReLU SAEs only their encoder columns are read; the forward stops at
the last asked site.

A feature's contexts are the SEQ_PER_DIM_CAP sequences where its activation
peaks highest: for each sequence its maximum over real (unpadded) tokens, then
the top sequences by that maximum. Each context shows VIEW tokens either side
of the peak with the feature's activation on every token, so labels can
shade them.

Phases (`collect_contexts`):
1. Stream: per batch and site, the per-sequence maxima (batch, n) of the n
   asked features join the running top-k (k, n) through one stable sort over
   (running ∪ batch), so ties go to the earlier sequence. Only (sequence index,
   position, activation) is kept per entry, and the token ids of sequences
   some entry still references; the others are dropped after every batch, so
   memory is bounded by the top-k (k * n entries per site), never by the
   dataset's length.
2. Windows: the referenced sequences are run once more, batched, to read each
   entry's window activations; tokens become strings once.

The collected contexts are a `sparse_coding.labels.context_cache.ContextCache`,
which also holds their on-disk format. A cache whose SAE sources or
fingerprint (see `sparse_coding.pipelines.publish`) differ from the run's is
stale and is collected again.
"""

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from sparse_coding.corpus import TokenBatch
from sparse_coding.labels.context_cache import ContextCache
from sparse_coding.progress import progress
from sparse_coding.splicing.splice import Site, SplicedModel
from sparse_coding.tokens import token_text

logger = logging.getLogger(__name__)



@dataclass
class SiteTopK:
    """Running top-k of one site's asked features: entry j of the r-th is [j, r] (act 0 = empty)."""

    features: Tensor  # (n,) the asked feature indices, sorted
    act: Tensor  # (k, n) peak activation
    seq: Tensor  # (k, n) stream index of the sequence
    pos: Tensor  # (k, n) position of the peak

    @classmethod
    def empty(cls, k: int, features: Tensor) -> "SiteTopK":
        zeros = torch.zeros(k, len(features), device=features.device)
        index = torch.full((k, len(features)), -1, dtype=torch.long, device=features.device)
        return cls(features, zeros, index, index.clone())

    def update(self, feats: Tensor, mask: Tensor, first_index: int) -> None:
        """Fold one batch's activations (batch, pos, n) of the asked features into the running top-k."""
        feats = feats.float() * mask[..., None]
        peak, pos = feats.max(dim=1)  # (batch, d_sae)
        rows = torch.arange(len(peak), device=peak.device)[:, None] + first_index
        act = torch.cat([self.act, peak])
        # A stable sort, not topk: on ties the earlier sequence (kept first) wins.
        values, order = act.sort(dim=0, descending=True, stable=True)
        k = len(self.act)
        self.act, order = values[:k], order[:k]
        self.seq = torch.cat([self.seq, rows.expand_as(peak)]).gather(0, order)
        self.pos = torch.cat([self.pos, pos]).gather(0, order)

    def referenced(self) -> Tensor:
        """Stream indices of the sequences some entry points to."""
        return self.seq[self.act > 0].unique()


def collect_contexts(
    spliced: SplicedModel,
    tokenizer: PreTrainedTokenizerBase,
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

    Returns:
        A ContextCache over the asked features.
    """
    start = time.perf_counter()
    device = spliced.device
    if features is None:
        features = {site.key: list(range(site.sae.d_sae)) for site in spliced.sites}
    tops = {
        key: SiteTopK.empty(per_feature, torch.tensor(sorted(set(dims)), dtype=torch.long, device=device))
        for key, dims in features.items()
        if dims
    }
    sequences: dict[int, Tensor] = {}
    batch_size = 1
    if not tops:
        return ContextCache(view, per_feature, sources={}, arrays={}, sequences={}, vocab={})
    for batch in progress(batches, desc="Collecting contexts", total=total, unit="batch"):
        batch = TokenBatch(
            batch.input_ids.to(device),
            batch.attention_mask.to(device),
            batch.first_index,
        )
        batch_size = max(batch_size, len(batch.input_ids))
        _for_each_site(spliced, batch, tops, functools.partial(_update_top, tops, batch))
        _keep_referenced(sequences, batch, tops)
    windows = _windows(spliced, sequences, tops, view, batch_size)
    cache = ContextCache(
        view=view,
        per_feature=per_feature,
        sources={key: spliced.by_key[key].sae.cfg.source for key in tops},
        arrays={key: _to_numpy(top, windows[key]) for key, top in tops.items()},
        sequences={i: ids.cpu().numpy() for i, ids in sequences.items()},
        vocab=_vocab(tokenizer, sequences.values()),
    )
    logger.info(
        "Collected contexts of %d features at %d sites from %d sequences in %.1fs",
        sum(len(top.features) for top in tops.values()),
        len(tops),
        len(sequences),
        time.perf_counter() - start,
    )
    return cache


def _for_each_site(
    spliced: SplicedModel,
    batch: TokenBatch,
    tops: dict[str, SiteTopK],
    consume: Callable[[Site, Tensor], None],
) -> None:
    """One forward up to the last asked site; `consume(site, feats)` sees each asked
    site's activations (batch, pos, n) of its asked features once."""

    def read(site: Site, x: Tensor) -> Tensor:
        if site.key in tops:
            consume(site, site.feats_of(x, tops[site.key].features))
        return x

    stop = max(spliced.by_key[key].layer for key in tops) + 1
    hidden = spliced.embed(batch.input_ids)
    with torch.inference_mode(), spliced.intervene(read):
        spliced.run_blocks(hidden, 0, stop, batch.attention_mask)


def _update_top(tops: dict[str, SiteTopK], batch: TokenBatch, site: Site, feats: Tensor) -> None:
    tops[site.key].update(feats, batch.attention_mask, batch.first_index)


def _keep_referenced(sequences: dict[int, Tensor], batch: TokenBatch, tops: dict[str, SiteTopK]) -> None:
    """Keep token ids of the sequences the top-k still points to; drop the rest."""
    needed = set(torch.cat([top.referenced() for top in tops.values()]).tolist())
    for row, (ids, mask) in enumerate(zip(batch.input_ids, batch.attention_mask, strict=True)):
        if batch.first_index + row in needed:
            sequences[batch.first_index + row] = ids[mask.bool()].clone()
    for index in set(sequences) - needed:
        del sequences[index]


def _windows(
    spliced: SplicedModel,
    sequences: dict[int, Tensor],
    tops: dict[str, SiteTopK],
    view: int,
    batch_size: int,
) -> dict[str, Tensor]:
    """Activations (d_sae, k, 2 view + 1) around every entry's peak, by re-running its sequence."""
    device = spliced.device
    seq_ids = sorted(sequences)
    windows = {key: torch.zeros(*top.act.T.shape, 2 * view + 1, device=device) for key, top in tops.items()}
    offsets = torch.arange(-view, view + 1, device=device)
    for lo in range(0, len(seq_ids), batch_size):
        chunk = seq_ids[lo : lo + batch_size]
        batch = _pad([sequences[i] for i in chunk], device)
        chunk_ids = torch.tensor(chunk, device=device)

        fill = functools.partial(_fill_windows, windows, tops, chunk_ids, offsets, batch)
        _for_each_site(spliced, batch, tops, fill)
    return windows


def _fill_windows(
    windows: dict[str, Tensor],
    tops: dict[str, SiteTopK],
    chunk_ids: Tensor,
    offsets: Tensor,
    batch: TokenBatch,
    site: Site,
    feats: Tensor,
) -> None:
    """Write one site's windows of the entries whose sequence is in this chunk."""
    window, top = windows[site.key], tops[site.key]
    act, seq, pos = top.act.T, top.seq.T, top.pos.T  # (d_sae, k)
    hit = (act > 0) & torch.isin(seq, chunk_ids)
    feature, rank = hit.nonzero(as_tuple=True)
    rows = torch.searchsorted(chunk_ids, seq[feature, rank])
    positions = pos[feature, rank][:, None] + offsets  # (n, 2 view + 1)
    valid = (positions >= 0) & (positions < batch.lengths[rows][:, None])
    values = feats[rows[:, None], positions.clamp(0, feats.shape[1] - 1), feature[:, None]].float()
    window[feature, rank] = values * valid


def _pad(sequences: list[Tensor], device: torch.device) -> TokenBatch:
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)], mask[row, : len(seq)] = seq, 1
    return TokenBatch(ids, mask, 0)


def _to_numpy(top: SiteTopK, window: Tensor) -> dict[str, np.ndarray]:
    return {
        "features": top.features.cpu().numpy(),
        "act": top.act.T.float().cpu().numpy(),
        "seq": top.seq.T.cpu().numpy(),
        "pos": top.pos.T.cpu().numpy(),
        "window": window.cpu().numpy(),
    }


def _vocab(tokenizer: PreTrainedTokenizerBase, sequences: Iterable[Tensor]) -> dict[int, str]:
    ids = sorted(set().union(*(set(s.tolist()) for s in sequences)))
    return {i: token_text(tokenizer, i) for i in ids}
