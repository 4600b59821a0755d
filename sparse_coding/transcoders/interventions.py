"""Interventions on transcoder features in the running model, error terms kept.

DESIGN.md's `{node, set | scale | add, positions}` for transcoder features
(`tc_{layer}.{index}`, `clt_{layer}.{index}`): while `transcoder_interventions`
is active, every forward of the model re-encodes the edited features from the
layer's current input (x_L, the transcoder's input hook) and adds their
change through the decoders to the MLP outputs they write:

    mlp_out_T  <-  mlp_out_T + sum over edited f read at S of (new_f - old_f) * W_dec[S -> T, f]

for T = S (per-layer) or every T >= S (cross-layer). The MLP output is the
transcoders' reconstruction plus its error, so this is the reconstruction of
the edited features plus the unchanged error: errors are kept, the model's
attention runs as usual, and no edit (or an empty list) leaves the model
exactly as it is (no hook is installed). `set` clamps the activation to
`value`, `scale` multiplies it, `add` adds `value` to it (i.e. adds
value * W_dec[f]); `positions` are indices into each forward's sequence
(None: every position, e.g. every generated token).
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor

from sparse_coding.models.transformer import GPT2
from sparse_coding.transcoders.replacement import layer_scale, transcoder_input
from sparse_coding.transcoders.transcoder import TranscoderSet

OPS = ("set", "scale", "add")


class FeatureEdit(NamedTuple):
    """One intervention: feature `feature` read at `layer`, `op` with `value`, at `positions`."""

    layer: int
    feature: int
    op: str  # one of OPS
    value: float
    positions: Sequence[int] | None = None


def edited_activations(old: Tensor, edits: Sequence[FeatureEdit]) -> Tensor:
    """New activations (..., pos, n) of the edited features from their current ones (same shape)."""
    new = old.clone()
    n_pos = old.shape[-2]
    for i, edit in enumerate(edits):
        if edit.positions is not None and any(not 0 <= p < n_pos for p in edit.positions):
            raise ValueError(f"positions {list(edit.positions)} reach beyond the sequence's {n_pos} tokens")
        where = slice(None) if edit.positions is None else torch.as_tensor(edit.positions, device=old.device)
        current = new[..., where, i]
        if edit.op == "set":
            new[..., where, i] = torch.full_like(current, edit.value)
        elif edit.op == "scale":
            new[..., where, i] = current * edit.value
        elif edit.op == "add":
            new[..., where, i] = current + edit.value
        else:
            raise ValueError(f"intervention op {edit.op!r}; valid: {', '.join(OPS)}")
    return new


def check_edits(transcoders: TranscoderSet, edits: Sequence[FeatureEdit]) -> None:
    """ValueError naming the first edit whose layer has no transcoder, feature is out of range, or op
    is unknown."""
    for edit in edits:
        if edit.layer not in transcoders.layers:
            raise ValueError(
                f"{edit}: layer {edit.layer} has no transcoder; layers: {list(transcoders.layers)}"
            )
        if not 0 <= edit.feature < transcoders.d_sae:
            raise ValueError(f"{edit}: feature {edit.feature} is beyond the {transcoders.d_sae} features")
        if edit.op not in OPS:
            raise ValueError(f"{edit}: op {edit.op!r}; valid: {', '.join(OPS)}")


@contextmanager
def transcoder_interventions(
    model: GPT2, transcoders: TranscoderSet, edits: Sequence[FeatureEdit]
) -> Iterator[None]:
    """Run `model` with `edits` applied to transcoder features (module docstring); restored in `finally`.

    Raises:
        ValueError: an edit names a layer without transcoder, a feature beyond its width, or an unknown op.
    """
    check_edits(transcoders, edits)
    by_layer: dict[int, list[FeatureEdit]] = {}
    for edit in edits:
        by_layer.setdefault(edit.layer, []).append(edit)
    pending: dict[int, Tensor] = {}
    h_mid: dict[int, Tensor] = {}
    handles = []
    blocks = model.transformer.h
    try:
        if by_layer:
            handles.append(blocks[0].register_forward_pre_hook(lambda module, args: pending.clear()))
        for layer, block in enumerate(blocks):
            if layer in by_layer:
                handles.append(block.ln_2.register_forward_pre_hook(_remember(h_mid, layer)))
            if any(layer in transcoders.targets(s) for s in by_layer):
                handles.append(block.mlp.register_forward_hook(
                    _edit_output(transcoders, by_layer, h_mid, pending, layer, block.ln_2.eps)))  # fmt: skip
        yield
    finally:
        for handle in handles:
            handle.remove()


def _remember(store: dict[int, Tensor], layer: int):
    def hook(module, args):
        store[layer] = args[0]

    return hook


def _edit_output(transcoders, by_layer, h_mid, pending, layer, eps):
    """Forward hook on MLP `layer`: add the decoded changes of edits read at `layer` and below."""

    def hook(module, args, out):
        if layer in by_layer:
            _queue(transcoders, by_layer[layer], h_mid.pop(layer), layer, eps, pending)
        delta = pending.pop(layer, None)
        return out if delta is None else out + delta.to(out.dtype)

    return hook


def _queue(transcoders: TranscoderSet, edits, h: Tensor, layer: int, eps: float, pending: dict) -> None:
    """Encode the edited features at `layer`, and queue their decoded change for every layer they write."""
    x = transcoder_input(h, layer_scale(h, eps), transcoders.input_hook(layer))
    features = torch.tensor([edit.feature for edit in edits], device=h.device)
    old = transcoders.encode(layer, x)[..., features]  # (..., pos, n)
    change = edited_activations(old, edits) - old
    for target in transcoders.targets(layer):
        rows = transcoders.decoder_rows(layer, target, features)  # (n, d)
        delta = change.to(rows.dtype) @ rows
        pending[target] = pending[target] + delta if target in pending else delta
