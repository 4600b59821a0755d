"""Exact zero-ablations of many resid features at once, for the ablation graph.

A row is one (candidate feature, sequence) pair where the feature fires. Its
residual stream at layer L is the clean one minus the feature's decoded
contribution at every position (error term kept); rows run as a batch from
there. Three things keep that cheap and exact:

- rows where the feature never fires change nothing and are not run;
- a row is computed only from the first position its feature fires at; the
  positions before are unchanged, so it reuses their clean keys and values
  (`splicing.suffix`), and the last block computes only the read position;
- feature effects need only the blocks up to the next site, so the logit
  pass (the remaining blocks and the unembedding) runs separately, only for
  the candidates whose logit cells are wanted; when few are wanted, the
  blocks up to the next site compute only the read position at the last of
  them, and the logit pass redoes those blocks for its rows alone.

Baselines: an effect is clean minus ablated (positive: the feature raised the
quantity; see `graphs.conventions`), and the clean value comes from the same
numerical path as the ablated one: each chunk also runs one unablated *base
row* per (sequence, first changed position) among its rows, in the same
batch. Blocks run from a cached prefix on part of a sequence round
differently from Hugging Face's blocks over the whole of it (float32
softmax, other matrix shapes): ~2e-5 in float32 but ~0.2 in bfloat16 at
GPT-2's residual scale, noise that would become edges. Against its base
row, an ablation that changes nothing changes every effect by exactly 0.

Each chunk's dense effects, (m, d_sae) on the next layer's features and
(m, d_vocab) on the next-token log-probabilities, are reduced into the
layer's `LayerEffects` as soon as the chunk is done, so no layer keeps them all.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from sparse_coding.splicing.splice import Site, SplicedModel
from sparse_coding.splicing.suffix import PrefixCache, SparseEdit, Suffixes, block_keys_values, run_suffix
from sparse_coding.text.batches import TokenBatch

# Blocks computed before a resid site's stream: hook_resid_pre L is block L's
# input, hook_resid_post L its output (= block L+1's input).
STREAM_OFFSET = {"hook_resid_pre": 0, "hook_resid_post": 1}
# Bytes per (candidate, sequence) row and token, per d_model unit, for the
# blocks' activations (qkv, attention out, 4x MLP, residuals, with slack).
ROW_BYTES_PER_TOKEN_DIM = 4 * 24
CPU_ROW_BUDGET_BYTES = 1 << 30
# Devices with the sparse-dense product `mean_change` uses.
SPARSE_DEVICES = ("cpu", "cuda")
# How many of the largest effects a result keeps, to tell a user whose
# THRESHOLD_EXP drops every edge which value would keep this many.
LARGEST_KEPT = 100


@dataclass
class ResidLayer:
    """Clean quantities of one resid site."""

    site: Site
    stream: int  # blocks [0, stream) give this site's residual stream
    clean: Tensor  # (S, pos, d_model)
    feats: Tensor  # (S, pos, d_sae), zero at padding
    scale: Tensor  # (S, pos)


@dataclass
class CleanRun:
    """The clean run every ablation row starts from."""

    layers: list[ResidLayer]
    cache: PrefixCache  # clean keys and values of blocks from the first site on
    last: Tensor  # (S,) last real position of each sequence


def clean_run(spliced: SplicedModel, batch: TokenBatch, sites: list[Site]) -> CleanRun:
    """Every site's clean code and the keys and values of every block after the
    first site (what ablated rows reuse before their first change)."""
    mask = batch.attention_mask
    last = mask.sum(dim=1) - 1
    streams = {site.layer + STREAM_OFFSET[site.hook]: site for site in sites}
    layers = []
    cache = PrefixCache(min(streams), [], [])
    blocks = spliced.model.transformer.h
    with torch.inference_mode():
        hidden = spliced.run_blocks(spliced.embed(batch.input_ids), 0, cache.start, mask)
        for block in range(cache.start, spliced.n_layers + 1):
            if block in streams:
                site = streams[block]
                code = site.code(hidden)
                feats = code.feats * mask[..., None].to(code.feats.dtype)
                scale = code.scale[..., 0].to(code.feats.dtype)
                layers.append(ResidLayer(site, block, hidden, feats, scale))
            if block < spliced.n_layers:
                keys, values = block_keys_values(blocks[block], hidden)
                cache.keys.append(keys)
                cache.values.append(values)
                hidden = spliced.run_blocks(hidden, block, block + 1, mask)
    return CleanRun(layers, cache, last)


def rows_per_forward(spliced: SplicedModel, batch: TokenBatch, sites: list[Site]) -> int:
    """Rows per ablation forward that fit in a quarter of free memory (1 GiB on CPU)."""
    config = spliced.model.config
    n_pos = batch.input_ids.shape[1]
    per_row = ROW_BYTES_PER_TOKEN_DIM * n_pos * config.n_embd + 4 * n_pos * n_pos * config.n_head
    per_row += 3 * 4 * (config.vocab_size + max(site.sae.d_sae for site in sites))
    if spliced.device.type == "cuda":
        budget = torch.cuda.mem_get_info(spliced.device)[0] // 4
    else:
        budget = CPU_ROW_BUDGET_BYTES
    return max(1, budget // per_row)


class AblatedRows:
    """One chunk of a layer's candidates, ablated: their rows and base rows, run block by block.

    Rows are sorted by first changed position, the layout `Suffixes` needs.
    A base row (candidate -1) is a sequence left unablated from a position on.
    """

    def __init__(self, clean: CleanRun, layer: ResidLayer, chunk: Tensor) -> None:
        self.chunk = chunk
        self.cache, self.n_seq = clean.cache, len(clean.last)
        fires = layer.feats[:, :, chunk] > 0  # (S, pos, m)
        cand, seq = fires.any(dim=1).T.nonzero(as_tuple=True)
        first = fires[seq, :, cand].int().argmax(dim=1)  # where each row's stream first changes
        cand, seq, first, base = _with_base_rows(cand, seq, first, self.n_seq)
        first, order = first.sort(stable=True)
        self.cand, self.seq = cand[order], seq[order]
        rank = torch.empty_like(order).index_copy_(0, order, torch.arange(len(order), device=order.device))
        self.base = rank[base[order]]  # (rows,) the row holding each row's unablated copy
        self.at = layer.stream  # blocks [0, at) are applied to `hidden`
        self.suffixes: Suffixes | None = None  # stays None when no candidate fires anywhere
        self.hidden: Tensor | None = None  # flat (tokens, d_model) suffix streams
        self.edit: SparseEdit | None = None  # where `hidden` differs from the clean run, while at its layer
        if len(self.seq):
            self.suffixes = Suffixes(first, self.seq, clean.last[self.seq])
            at_token = (self.suffixes.seq, self.suffixes.pos)
            cand_at = self.cand[self.suffixes.row]
            features = chunk[cand_at.clamp(min=0)]
            values = layer.feats[(*at_token, features)] * layer.scale[at_token] * (cand_at >= 0)
            delta = layer.site.decode_rows(values, features)
            self.hidden = layer.clean[at_token] - delta.to(layer.clean.dtype)
            self.edit = SparseEdit(layer.clean, values != 0)

    def run_to_next(self, spliced: SplicedModel, next_layer: ResidLayer, *, keep_stream: bool) -> Tensor:
        """Blocks up to the next site; mean clean - ablated features (m, d_sae) there, last position.

        With `keep_stream`, every suffix token is carried to the next site, where
        the logit pass goes on from. Without, the last block computes only the
        read positions (about a sixth of the work elsewhere: keys and values),
        and the logit pass starts again from the ablated stream for the few
        candidates it wants.
        """
        if self.suffixes is None:  # no candidate fires anywhere: every effect is exactly 0
            return torch.zeros(len(self.chunk), next_layer.site.sae.d_sae, device=self.chunk.device)
        blocks = spliced.model.transformer.h[self.at : next_layer.stream]
        if keep_stream:
            self.hidden = run_suffix(blocks, self.hidden, self.suffixes, self.cache, self.at, edit=self.edit)
            self.at, self.edit = next_layer.stream, None
            read = self.hidden[self.suffixes.read]
        else:
            read = run_suffix(
                blocks, self.hidden, self.suffixes, self.cache, self.at, read=True, edit=self.edit
            )
        feats = next_layer.site.feats(read).float()
        return mean_change(feats, self.base, self.cand, len(self.chunk), self.n_seq)

    def logit_effects(self, spliced: SplicedModel, wanted: Tensor) -> Tensor:
        """Mean clean - ablated next-token log-probs (wanted candidates, vocab), running only their rows."""
        out_rows = wanted.nonzero()[:, 0]
        n_vocab = spliced.model.config.vocab_size
        ablated = self.cand >= 0
        keep = ablated & wanted[self.cand.clamp(min=0)]
        if self.suffixes is None or not keep.any():
            return torch.zeros(len(out_rows), n_vocab, device=wanted.device)
        keep = keep.index_fill(0, self.base[keep], True)  # and the base rows they compare with
        suffixes, hidden, edit = self.suffixes, self.hidden, self.edit
        if not keep.all():
            suffixes, tokens = suffixes.subset(keep)
            hidden, edit = hidden[tokens], edit and edit.subset(tokens)
        blocks = spliced.model.transformer.h[self.at :]
        final = run_suffix(blocks, hidden, suffixes, self.cache, self.at, read=True, edit=edit)
        logp = spliced.unembed(final).float().log_softmax(dim=-1)
        kept_index = torch.cumsum(keep, 0) - 1  # row -> row among the kept ones
        position = torch.cumsum(wanted, 0) - 1  # candidate index -> row of the output
        cand = self.cand[keep]
        out_cand = torch.where(cand >= 0, position[cand.clamp(min=0)], -1)
        return mean_change(logp, kept_index[self.base[keep]], out_cand, len(out_rows), self.n_seq)


def _with_base_rows(
    cand: Tensor, seq: Tensor, first: Tensor, n_seq: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rows plus one base row (candidate -1) per distinct (first, seq); and each row's base row index."""
    pairs, base = (first * n_seq + seq).unique(return_inverse=True)
    n_rows, n_base = len(cand), len(pairs)
    cand = torch.cat([cand, cand.new_full((n_base,), -1)])
    seq = torch.cat([seq, pairs % n_seq])
    first = torch.cat([first, pairs // n_seq])
    base = torch.cat([base, torch.arange(n_base, device=base.device)]) + n_rows
    return cand, seq, first, base


def mean_change(values: Tensor, base: Tensor, cand: Tensor, n_out: int, n_seq: int) -> Tensor:
    """(rows, width) read values -> (n_out, width): per candidate, the mean over all n_seq
    sequences of base row - ablated row (rows with cand -1 are base rows only).

    One sparse product: each ablated row adds +1/S times its base row and
    -1/S times itself to its candidate's output row, so `values` is read once,
    with no gathered copies. Devices without sparse kernels (MPS before torch 2.10) gather instead.
    """
    ablated = (cand >= 0).nonzero()[:, 0]
    if values.device.type not in SPARSE_DEVICES:
        change = values[base[ablated]] - values[ablated]
        out = torch.zeros(n_out, values.shape[1], device=values.device, dtype=values.dtype)
        return out.index_add_(0, cand[ablated], change, alpha=1 / n_seq)
    n = len(ablated)
    weights = torch.full((2 * n,), 1 / n_seq, device=values.device, dtype=values.dtype)
    weights[n:] = -1 / n_seq
    entries = torch.stack([cand[ablated].repeat(2), torch.cat([base[ablated], ablated])])
    mean = torch.sparse_coo_tensor(entries, weights, (n_out, len(values)), check_invariants=False)
    return torch.sparse.mm(mean, values)


@dataclass
class LayerEffects:
    """What a layer's candidates did, candidate-major."""

    candidates: Tensor  # (n,)
    edges: list[tuple[int, int, float]]  # (candidate, target feature, e)
    logits_up: list[list[tuple[int, float]]]  # per candidate: (token id, change); [] when not drawn
    logits_down: list[list[tuple[int, float]]]
    collected: float  # sum |e| over every feature effect measured
    plotted: float  # sum |e| over the edges kept
    any_effect: bool  # some feature or log-probability changed
    largest: Tensor  # (<= LARGEST_KEPT,) the largest |e| so far, descending

    @classmethod
    def none_yet(cls, candidates: Tensor) -> "LayerEffects":
        """Before the first chunk."""
        return cls(candidates, [], [], [], 0.0, 0.0, False, torch.zeros(0, device=candidates.device))


def record_edges(
    out: LayerEffects, chunk: Tensor, feature_effects: Tensor, threshold_exp: float | None
) -> tuple[Tensor, bool]:
    """Add a chunk's edges (|e| > 2**threshold_exp, or every non-zero e) and effect mass to `out`.

    Args:
        chunk: (m,) the chunk's candidates.
        feature_effects: (m, d_sae) clean - ablated next-layer features.

    Returns:
        Which candidates kept an edge (m,), and whether any feature changed at all.
    """
    magnitude = feature_effects.abs()
    keep = magnitude > 2.0**threshold_exp if threshold_exp is not None else magnitude > 0
    collected = float(magnitude.sum())
    out.collected += collected
    out.any_effect |= collected > 0
    out.plotted += float(magnitude[keep].sum())
    out.largest = largest_values(out.largest, magnitude.float())
    cand, target = keep.nonzero(as_tuple=True)
    values = feature_effects[cand, target].tolist()
    out.edges += list(zip(chunk[cand].tolist(), target.tolist(), values, strict=True))
    has_edge = torch.zeros(len(chunk), dtype=torch.bool, device=chunk.device)
    return has_edge.index_fill_(0, cand.unique(), True), collected > 0


def largest_values(largest: Tensor, magnitude: Tensor) -> Tensor:
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


def record_logits(out: LayerEffects, drawn: Tensor, logit_effects: Tensor, logit_tokens: int) -> None:
    """Add the most raised and lowered tokens of each drawn candidate to `out`; none for others.

    Args:
        drawn: (m,) bool, the chunk's candidates whose cells are wanted.
        logit_effects: (drawn ones, d_vocab) clean - ablated next-token log-probabilities.
        logit_tokens: tokens per side.
    """
    k = min(logit_tokens, logit_effects.shape[1])
    up, down = logit_effects.topk(k, dim=1), logit_effects.topk(k, dim=1, largest=False)
    up_ids, up_values, down_ids, down_values = (
        t.cpu() for t in (up.indices, up.values, down.indices, down.values)
    )
    out.any_effect |= k > 0 and bool((up_values[:, 0] > 0).any() or (down_values[:, 0] < 0).any())
    row = 0
    for is_drawn in drawn.tolist():
        if not is_drawn:
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
