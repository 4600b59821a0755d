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

(A[t, s]: positive = s raises t.) Many targets share one backward pass, as
circuit-tracer injects a batch of rows: the pass is the frozen model's
transposed map, written out block by block (`replacement.*_adjoint`): the
gradient at M[T] is the residual stream's gradient after block T, so each
layer's contractions happen on the way down, and nothing is stored. Hand
written rather than autograd's batched backward (vmap), which measured three
times the matrix products' own cost here; the tests check every edge against
autograd's Jacobian of the frozen forward. Targets are batched by position,
deepest layer first: a target joins the sweep at its own layer, and the sweep
runs only the positions up to the batch's last.

Columns follow `algorithms.influence.NodeCounts`: features, error nodes
(layer-major), token embeddings, logits (which are no sources).
"""

import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from sparse_coding.models.transformer import GPT2
from sparse_coding.runtime.progress import progress
from sparse_coding.transcoders.replacement import (
    Frozen,
    Replacement,
    attention_adjoint,
    input_adjoint,
    layer_norm_adjoint,
)
from sparse_coding.transcoders.transcoder import TranscoderSet

logger = logging.getLogger(__name__)

# Target rows computed and batched backward passes run, for benchmarks.
COUNTS = {"rows": 0, "passes": 0}


class Targets(NamedTuple):
    """Rows to compute: each reads layer `layer` (n_layers = the logits) at `pos`; each (m,) / (m, d)."""

    layer: Tensor
    pos: Tensor
    vector: Tensor  # gradient injected at the target's input (encoder column, logit direction)


@dataclass
class Sources:
    """Every source node's vectors, laid out for batched contraction (columns as NodeCounts)."""

    # target layer T -> (pos, max_n, d) scaled rows, (pos, max_n) cols
    decoders: dict[int, tuple[Tensor, Tensor]]
    errors: Tensor  # (n_layers, pos, d)
    embeds: Tensor  # (pos, d)
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
    return Sources(decoders, replacement.errors, replacement.embeds, len(f.layer))


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
    n_layers = srcs.errors.shape[0]
    order = torch.argsort(targets.pos * (n_layers + 1) + n_layers - targets.layer, stable=True)
    rows = torch.zeros(len(order), srcs.n_columns, dtype=replacement.embeds.dtype)
    starts = range(0, len(order), batch_size)
    for start in progress(starts, desc="Edges (batched backward passes)", leave=False):
        chosen = order[start : start + batch_size]
        chosen = chosen[torch.argsort(targets.layer[chosen], descending=True, stable=True)]
        rows[chosen] = _sweep(model, transcoders, replacement.frozen, srcs, targets.layer[chosen],
                              targets.pos[chosen], targets.vector[chosen]).cpu()  # fmt: skip
    logger.info("%d edge rows in %d batched backward passes", len(order), len(starts))
    COUNTS["rows"] += len(order)
    COUNTS["passes"] += len(starts)
    return rows


def _sweep(
    model: GPT2, transcoders: TranscoderSet, frozen: Frozen, srcs: Sources, layers: Tensor, pos: Tensor,
    vectors: Tensor,
) -> Tensor:  # fmt: skip
    """Rows (b, n_columns) of targets sorted by layer, deepest first (n_layers: logits): one backward
    sweep from the top, each target joining at its layer's transcoder input."""
    n_layers, n_pos, d_model = srcs.errors.shape
    n = int(pos.max()) + 1
    injected = vectors.new_zeros(len(pos), n, d_model)
    injected[torch.arange(len(pos)), pos] = vectors.to(injected.dtype)
    rows = vectors.new_zeros(len(pos), srcs.n_columns)
    grad = torch.zeros_like(injected)  # gradient at the residual stream, rows in order
    logits = int((layers == n_layers).sum())
    ln_f = model.transformer.ln_f
    grad[:logits] = layer_norm_adjoint(injected[:logits], frozen.lnf[:n], ln_f.weight)
    for layer in range(min(int(layers.max()), n_layers - 1), -1, -1):
        above, here = int((layers > layer).sum()), int((layers >= layer).sum())
        _contract(rows[:above], grad[:above], srcs, layer, n)  # the MLP output's gradient is the stream's
        skip = transcoders.skip(layer)
        into_x = grad[:here] @ skip if skip is not None else torch.zeros_like(grad[:here])
        into_x[above:] += injected[above:here]  # the targets read at this layer join here
        hook = transcoders.input_hook(layer)
        mid = grad[:here]  # a view: updated in place, as the stream's gradient before block `layer`
        mid += input_adjoint(into_x, frozen.ln2[layer, :n], hook)
        block = model.transformer.h[layer]
        attn = attention_adjoint(block.attn, mid, frozen.patterns[layer, :, :n, :n])
        mid += layer_norm_adjoint(attn, frozen.ln1[layer, :n], block.ln_1.weight)
    first_embed = srcs.n_features + n_layers * n_pos
    rows[:, first_embed : first_embed + n] = torch.einsum("bpd,pd->bp", grad, srcs.embeds[:n])
    return rows


def _contract(rows: Tensor, grad: Tensor, srcs: Sources, layer: int, n: int) -> None:
    """Add the direct effects through MLP output `layer` (gradient `grad` (b, n, d)) to `rows`:
    its error nodes' and the features that write there."""
    if not len(rows):
        return
    n_pos = srcs.errors.shape[1]
    first = srcs.n_features + layer * n_pos
    rows[:, first : first + n] = torch.einsum("bpd,pd->bp", grad, srcs.errors[layer, :n])
    if layer in srcs.decoders:
        decoded, cols = srcs.decoders[layer]
        effects = torch.einsum("bpd,pnd->bpn", grad, decoded[:n])  # (b, n, max_n)
        keep = cols[:n] >= 0
        rows.index_add_(1, cols[:n][keep], effects[:, keep])
