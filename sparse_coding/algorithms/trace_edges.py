"""Edges of a transcoder attribution graph: direct effects in the frozen replacement model.

The frozen forward (`transcoders.replacement.frozen_forward`) is linear in the
token embeddings E and the MLP outputs M. So for a target t (a feature's
pre-activation, whose gradient at its layer's transcoder input is its encoder
column; or a logit minus the mean logit, whose gradient at the final stream
is the unembedding row minus the mean row), one backward pass gives its
gradient g_t at every E[p] and M[T, p], and every direct effect follows:

    feature s (layer S, position p, activation a) -> t:
                            sum over T in targets(S) of g_t(M[T, p]) . a W_dec[S -> T, s]
    error node (T, p) -> t: g_t(M[T, p]) . error[T, p]
    token embedding p -> t: g_t(E[p]) . W_E[token_p]

(A[t, s]: positive = s raises t.) Many targets share one backward pass: the
cotangents of a batch go through `torch.autograd.grad(..., is_grads_batched=True)`
(a vmap over the backward), as circuit-tracer injects a batch of rows. Targets
are grouped by layer and sorted by position, so a batch's pass runs only the
blocks below its layer and the positions up to its last target (causal).

Columns follow `algorithms.influence.NodeCounts`: features, error nodes
(layer-major), token embeddings, logits (which are no sources).
"""

import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from sparse_coding.models.transformer import GPT2
from sparse_coding.progress import progress
from sparse_coding.transcoders.replacement import Replacement, frozen_forward, mlp_leaves
from sparse_coding.transcoders.transcoder import TranscoderSet

logger = logging.getLogger(__name__)


class Targets(NamedTuple):
    """Rows to compute: each reads layer `layer` (n_layers = the logits) at `pos`; each (m,) / (m, d)."""

    layer: Tensor
    pos: Tensor
    vector: Tensor  # gradient injected at the target's input (encoder column, logit direction)


@dataclass
class Sources:
    """Every source node's vectors, laid out for batched contraction (columns as NodeCounts)."""

    decoders: dict[
        int, tuple[Tensor, Tensor]
    ]  # target layer T -> (pos, max_n, d) scaled rows, (pos, max_n) cols
    errors: Tensor  # (n_layers, pos, d)
    embeds: Tensor  # (pos, d)
    leaves: Tensor  # (n_layers, pos, d) the frozen forward's MLP inputs at the clean run
    n_features: int

    @property
    def n_columns(self) -> int:
        n_layers, n_pos, _ = self.errors.shape
        return self.n_features + (n_layers + 1) * n_pos


def sources(transcoders: TranscoderSet, replacement: Replacement) -> Sources:
    """The source vectors of a replacement run: scaled decoder rows per target layer, errors, embeddings."""
    f = replacement.features
    n_pos, d_model = replacement.embeds.shape
    decoders = {}
    for target in transcoders.layers:
        parts = [
            (torch.nonzero(f.layer == s).flatten(), s)
            for s in transcoders.layers
            if target in transcoders.targets(s)
        ]
        columns = torch.cat([cols for cols, _ in parts])
        rows = torch.cat([transcoders.decoder_rows(s, target, f.index[cols]) for cols, s in parts])
        rows = (rows * f.activation[columns, None].to(rows.dtype)).to(replacement.embeds.dtype)
        decoders[target] = _by_position(rows, columns, f.pos[columns], n_pos, d_model)
    leaves = mlp_leaves(replacement, transcoders)
    return Sources(decoders, replacement.errors, replacement.embeds, leaves, len(f.layer))


def _by_position(
    rows: Tensor, columns: Tensor, pos: Tensor, n_pos: int, d_model: int
) -> tuple[Tensor, Tensor]:
    """Rows (n, d) grouped by position into (n_pos, max_n, d), zero-padded; their columns (-1 = pad)."""
    counts = torch.bincount(pos, minlength=n_pos)
    width = int(counts.max()) if len(pos) else 0
    order = torch.argsort(pos, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(pos), device=pos.device) - starts[pos[order]]
    padded = rows.new_zeros(n_pos, width, d_model)
    padded[pos[order], slot] = rows[order]
    cols = torch.full((n_pos, width), -1, dtype=torch.long, device=pos.device)
    cols[pos[order], slot] = columns[order]
    return padded, cols


def edge_rows(
    model: GPT2, transcoders: TranscoderSet, replacement: Replacement, srcs: Sources, targets: Targets,
    *, batch_size: int,
) -> Tensor:  # fmt: skip
    """The rows (m, n_columns) of direct effects on `targets`, `batch_size` targets per backward pass."""
    order = torch.argsort(targets.layer * (replacement.embeds.shape[0] + 1) + targets.pos, stable=True)
    rows = torch.zeros(len(order), srcs.n_columns, dtype=replacement.embeds.dtype)
    batches = _batches(targets.layer[order], batch_size)
    for start, stop in progress(batches, desc="Edges (batched backward passes)", leave=False):
        chosen = order[start:stop]
        layer = int(targets.layer[chosen[0]])
        rows[chosen] = _batch_rows(model, transcoders, replacement, srcs, layer, targets.pos[chosen],
                                   targets.vector[chosen]).cpu()  # fmt: skip
    logger.info("%d edge rows in %d batched backward passes", len(order), len(batches))
    return rows


def _batches(layers: Tensor, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) spans of at most `batch_size` consecutive targets of one layer."""
    spans, start = [], 0
    bounds = torch.nonzero(layers[1:] != layers[:-1]).flatten().tolist()
    for end in [*(b + 1 for b in bounds), len(layers)]:
        spans += [(s, min(s + batch_size, end)) for s in range(start, end, batch_size)]
        start = end
    return spans


def _batch_rows(
    model: GPT2, transcoders: TranscoderSet, replacement: Replacement, srcs: Sources, layer: int,
    pos: Tensor, vectors: Tensor,
) -> Tensor:  # fmt: skip
    """Rows (b, n_columns) of targets all reading `layer` (n_layers: the logits) at positions `pos`."""
    n = int(pos.max()) + 1
    n_layers, n_pos, _ = srcs.errors.shape
    read = None if layer == n_layers else layer
    embeds = srcs.embeds[:n].detach().requires_grad_()
    # One leaf per layer: slices of one stacked leaf would each fill a whole-stack gradient backward.
    leaves = [srcs.leaves[t, :n].detach().requires_grad_() for t in range(layer)]
    cotangents = vectors.new_zeros(len(pos), n, vectors.shape[-1])
    cotangents[torch.arange(len(pos)), pos] = vectors.to(cotangents.dtype)
    with torch.enable_grad():
        out = frozen_forward(model, transcoders, replacement.frozen, embeds, leaves, read_layer=read)
        g_embeds, *g_layers = torch.autograd.grad(out, [embeds, *leaves], cotangents, is_grads_batched=True)
    g_leaves = (
        torch.stack(g_layers, dim=1) if g_layers else embeds.new_zeros(len(pos), 0, n, embeds.shape[-1])
    )
    rows = vectors.new_zeros(len(pos), srcs.n_columns)
    first_error = srcs.n_features
    errors = (g_leaves * srcs.errors[:layer, :n]).sum(-1)  # (b, layer, n)
    error_cols = first_error + torch.arange(layer)[:, None] * n_pos + torch.arange(n)[None, :]
    rows[:, error_cols.flatten()] = errors.flatten(1)
    embed_cols = first_error + n_layers * n_pos + torch.arange(n)
    rows[:, embed_cols] = (g_embeds * srcs.embeds[:n]).sum(-1)
    for target in range(layer):
        if target in srcs.decoders:
            decoded, cols = srcs.decoders[target]
            effects = torch.einsum("bpd,pnd->bpn", g_leaves[:, target], decoded[:n])  # (b, n, max_n)
            keep = cols[:n] >= 0
            rows.index_add_(1, cols[:n][keep], effects[:, keep])
    return rows
