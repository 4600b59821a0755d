"""A set of transcoders replacing a model's MLPs: per-layer (`tc`) or cross-layer (`clt`).

Per layer L with a transcoder, features read the layer's input x_L
(`input_hook`: ``ln2.hook_normalized`` or ``hook_resid_mid``) and
layer T's MLP output is approximated as

    y_T = sum over S in sources(T) of f_S @ W_dec[S -> T] + b_out[T] (+ x_T @ W_skip[T].T)

with sources(T) = {T} for per-layer transcoders and {0..T} for a
cross-layer transcoder (each feature writes to its own and every later MLP
output). Layers without a transcoder keep their MLP: its whole output is the
error term. Encoding follows each layout's own formula (`layouts`).
"""

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from sparse_coding.errors import TranscoderLoadError
from sparse_coding.models.saes import ACTIVATIONS
from sparse_coding.transcoders.layouts import LayerWeights

KINDS = {"tc": "per-layer transcoders", "clt": "a cross-layer transcoder"}


class TranscoderSet:
    """The transcoders of one source, on one device and dtype (lazily read decoders stay on disk)."""

    def __init__(self, layers: Mapping[int, LayerWeights], n_layers: int, source: str) -> None:
        if not layers:
            raise TranscoderLoadError(f"TRANSCODERS {source!r} holds no layer of this {n_layers}-layer model")
        self.layers = dict(sorted(layers.items()))
        self.source = source
        self.files: dict[int, list[Path]] = {}  # layer -> the files it was read from (`load_transcoders`)
        self.kind = "clt" if any(w.cfg.n_sources > 1 for w in self.layers.values()) else "tc"
        self.d_sae = next(iter(self.layers.values())).cfg.d_sae
        for layer, weights in self.layers.items():
            expected = layer + 1 if self.kind == "clt" else 1
            if weights.cfg.d_sae != self.d_sae or weights.cfg.n_sources != expected:
                raise TranscoderLoadError(
                    f"TRANSCODERS {source!r}: layer {layer} has d_sae {weights.cfg.d_sae} and "
                    f"{weights.cfg.n_sources} decoder block(s); the set needs d_sae {self.d_sae} and "
                    f"{expected}"
                )
        if self.kind == "clt" and list(self.layers) != list(range(n_layers)):
            raise TranscoderLoadError(
                f"TRANSCODERS {source!r} is cross-layer but holds layers {list(self.layers)}; "
                f"it needs every layer 0..{n_layers - 1}"
            )

    def input_hook(self, layer: int) -> str:
        """The hook `layer`'s transcoder reads; without one, ``ln2.hook_normalized`` (the MLP input)."""
        return self.layers[layer].cfg.input_hook if layer in self.layers else "ln2.hook_normalized"

    def targets(self, source_layer: int) -> list[int]:
        """The layers whose MLP output a feature read at `source_layer` writes to."""
        if self.kind == "tc":
            return [source_layer]
        return [layer for layer in self.layers if layer >= source_layer]

    def pre_activations(self, layer: int, x: Tensor, features: Tensor | None = None) -> Tensor:
        """Encoder pre-activations (..., d_sae), or (..., n) of `features` only, of inputs x (..., d_in)."""
        w = self.layers[layer]
        x = x.to(w.W_enc.dtype)
        if w.b_in is not None:
            x = x - w.b_in
        if features is None:
            return x @ w.W_enc + w.b_enc
        return x @ w.W_enc[:, features] + w.b_enc[features]

    def encode(self, layer: int, x: Tensor) -> Tensor:
        """Feature activations (..., d_sae) of inputs x (..., d_in), by the layout's own formula."""
        w = self.layers[layer]
        return ACTIVATIONS[w.cfg.activation](self.pre_activations(layer, x), w)

    def decoder_rows(self, source_layer: int, target_layer: int, features: Tensor) -> Tensor:
        """W_dec[source -> target] rows (n, d_out) of `features` (n,), on the encoder's device and dtype."""
        w = self.layers[target_layer]
        block = source_layer - (0 if self.kind == "clt" else target_layer)
        stored_on = w.W_dec.device if isinstance(w.W_dec, Tensor) else "cpu"  # rows read from disk: CPU
        rows = w.W_dec[features.to(stored_on) + block * self.d_sae]
        return rows.to(device=w.W_enc.device, dtype=w.W_enc.dtype)

    def skip(self, target_layer: int) -> Tensor | None:
        """W_skip (d_out, d_in) of a layer, if any."""
        return self.layers[target_layer].W_skip if target_layer in self.layers else None

    def describe(self) -> str:
        """One line: which kind, how many layers and features."""
        return f"{KINDS[self.kind]} {self.source}: layers {list(self.layers)}, {self.d_sae} features each"

    @property
    def device(self) -> torch.device:
        return next(iter(self.layers.values())).W_enc.device
