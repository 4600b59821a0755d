"""Transcoder features as splice sites: edited by the same code as SAE features (`splice.edit_features`).

A transcoder feature read at layer S writes to MLP S's output (per-layer
transcoders) or to MLP T's output for every T >= S (a cross-layer
transcoder), so a set of transcoders is spliced as one site per (S, T): a
forward pre-hook on block S's ``ln_2`` keeps its input h_mid, whose features
the site reads in the same forward whatever x is, and a forward hook on MLP
T's output x calls the intervention; its decoder rows are W_dec[S -> T].

All sites of layer S share the key ``{kind}_{S}`` (``tc_3``, ``clt_3``), the
key of its feature ids, so an edit keyed by it reaches every output the
feature writes: ``mlp_out_T + (new - a) * W_dec[S -> T, i]``, the MLP's error
kept. The site ``(S, S)`` reads (`reads`): per-key bookkeeping happens there once.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sparse_coding.nodes import HOOK_ORDER, site_key
from sparse_coding.transcoders.replacement import layer_scale, transcoder_input

if TYPE_CHECKING:
    from sparse_coding.models.transformer import GPT2
    from sparse_coding.splicing.splice import Intervention, SiteCode
    from sparse_coding.transcoders.transcoder import TranscoderSet


class TranscoderSite:
    """Transcoder features read at layer `source`, where they write: MLP `target`'s output."""

    def __init__(
        self, transcoders: TranscoderSet, source: int, target: int, inputs: dict[int, Tensor], eps: float
    ) -> None:
        self.transcoders, self.layer, self.target = transcoders, source, target
        self.kind = transcoders.kind
        self.inputs, self.eps = inputs, eps  # h_mid of each source layer in the running forward

    @property
    def key(self) -> str:
        return site_key(self.kind, self.layer)

    @property
    def order(self) -> tuple[int, int]:
        return self.target, HOOK_ORDER["hook_mlp_out"]

    @property
    def reads(self) -> bool:
        """True for the site at the layer the features read (one per key)."""
        return self.target == self.layer

    @property
    def d_sae(self) -> int:
        return self.transcoders.d_sae

    @property
    def d_model(self) -> int:
        return self.transcoders.layers[self.target].cfg.d_out

    @property
    def dtype(self) -> torch.dtype:
        return self.transcoders.layers[self.layer].W_enc.dtype

    def register(self, model: GPT2, intervention: Intervention) -> list:
        """Hooks that call `intervention(self, mlp_out)` at MLP `target` (and keep `source`'s input)."""
        blocks = model.transformer.h
        handles: list = []
        if self.reads:
            keep = self.inputs.__setitem__
            handles.append(blocks[self.layer].ln_2.register_forward_pre_hook(
                lambda module, args: keep(self.layer, args[0])))  # fmt: skip
            handles.append(SimpleNamespace(remove=self.inputs.clear))  # removed: forget the kept inputs
        mlp = blocks[self.target].mlp
        handles.append(mlp.register_forward_hook(lambda module, args, out: intervention(self, out)))
        return handles

    def _encode(self, h: Tensor) -> Tensor:
        """Activations (..., d_sae) of the features on h_mid (..., d_model) of layer `source`."""
        x = transcoder_input(h, layer_scale(h, self.eps), self.transcoders.input_hook(self.layer))
        return self.transcoders.encode(self.layer, x)

    def feats(self, x: Tensor) -> Tensor:
        """Activations (batch, pos, d_sae) of the features, read from layer `source`'s input."""
        acts = self._encode(self.inputs[self.layer])
        if acts.shape[:-1] != x.shape[:-1]:
            raise RuntimeError(f"{self.key}: its input was kept for {tuple(acts.shape[:-1])}, not {x.shape}")
        return acts

    def feats_of(self, x: Tensor, features: Tensor) -> Tensor:
        """Activations (batch, pos, n) of the chosen `features`."""
        return self.feats(x)[..., features]

    def feats_at(self, x: Tensor, rows: Tensor, positions: Tensor, features: Tensor) -> Tensor:
        """Activations (n,): feature features[e] at (rows[e], positions[e]), each token encoded once."""
        tokens, token_index = (rows * x.shape[1] + positions).unique(return_inverse=True)
        acts = self._encode(self.inputs[self.layer].flatten(0, -2)[tokens])
        return acts[token_index, features]

    def decoder_scale(self, x: Tensor) -> Tensor:
        """(batch, pos, 1) ones: a transcoder's decoder rows enter the output unscaled."""
        return torch.ones(*x.shape[:-1], 1, dtype=self.dtype, device=x.device)

    def decode_rows(self, values: Tensor, features: Tensor) -> Tensor:
        """values[..., None] * W_dec[source -> target][features]: single features' contributions."""
        rows = self.transcoders.decoder_rows(self.layer, self.target, features)
        return (values.to(rows.dtype)[..., None] * rows).to(values.dtype)

    def decode(self, values: Tensor) -> Tensor:
        """values (..., d_sae) @ W_dec[source -> target], reading only the rows of non-zero columns."""
        columns = values.reshape(-1, values.shape[-1]).ne(0).any(0).nonzero()[:, 0]
        rows = self.transcoders.decoder_rows(self.layer, self.target, columns)
        return values[..., columns].to(rows.dtype) @ rows

    def code(self, x: Tensor) -> SiteCode:
        """The features and their (unit) decoder scale; no error term: transcoder circuits keep theirs."""
        from sparse_coding.splicing.splice import SiteCode

        feats = self.feats(x)
        return SiteCode(feats, torch.ones_like(feats[..., :1]), None)


def transcoder_sites(transcoders: TranscoderSet, model: GPT2) -> list[TranscoderSite]:
    """One site per (layer a feature reads, layer whose MLP output it writes), sharing one input store."""
    inputs: dict[int, Tensor] = {}
    return [
        TranscoderSite(transcoders, source, target, inputs, model.transformer.h[source].ln_2.eps)
        for source in transcoders.layers
        for target in transcoders.targets(source)
    ]
