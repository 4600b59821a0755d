"""The SAE: SAELens weights and semantics, and `load_sae`.

`SAE.encode` / `SAE.decode` follow SAELens exactly for the same folder, so
feature activations match the published dashboards:

    x_n   = (x - mu) / (std + eps)        if normalize_activations == "layer_norm"
    f     = act((x_n - b_dec * apply_b_dec_to_input) @ W_enc + b_enc)
    x_hat = (f @ W_dec + b_dec) * std + mu   (std = 1, mu = 0 without layer norm)

`act` is ReLU, TopK (top-k pre-activations, then ReLU) or JumpReLU. The
inputs are in the SAE's own convention (TransformerLens activations); the
splicer converts the Hugging Face model's activations into it.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparse_coding.errors import SAELoadError
from sparse_coding.models.sae_sources import WEIGHTS_FILE, fetch_file, read_cfg, resolve_source
from sparse_coding.models.weights import load_safetensors, safetensors_shapes
from sparse_coding.nodes import hook_position

logger = logging.getLogger(__name__)

LN_EPS = 1e-5
# decoder_sum multiplies densely once more than 1 / DENSE_DECODE_FRACTION of the activations are on.
DENSE_DECODE_FRACTION = 16
HOOK_SITES = {
    "hook_resid_pre": "resid",
    "hook_resid_mid": "resid",
    "hook_resid_post": "resid",
    "hook_attn_out": "attn",
    "hook_mlp_out": "mlp",
}


def _relu(pre: Tensor, sae: "SAE") -> Tensor:
    return torch.relu(pre)


def _topk(pre: Tensor, sae: "SAE") -> Tensor:
    top = pre.topk(sae.cfg.k, dim=-1)
    return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))


def _jumprelu(pre: Tensor, sae: "SAE") -> Tensor:
    return torch.relu(pre) * (pre > sae.threshold)


def decoder_sum(feats: Tensor, W_dec: Tensor) -> Tensor:
    """``feats @ W_dec`` (..., d_in), reading only the decoder rows of active features.

    SAE activations are sparse (tens of d_sae's tens of thousands per token),
    so summing their rows (one embedding bag) does a small fraction of the
    dense product's work, forward and backward, and equal to it up to float rounding.
    Gradients reach the active entries only, as the activations' own backward
    leaves them anyway. Dense inputs, and MPS (no embedding bag there), take
    the product.
    """
    flat = feats.reshape(-1, feats.shape[-1])
    if feats.device.type == "mps" or flat.numel() == 0:
        return feats.to(W_dec.dtype) @ W_dec
    rows, cols = flat.detach().nonzero(as_tuple=True)
    if len(rows) * DENSE_DECODE_FRACTION > flat.numel():
        return feats.to(W_dec.dtype) @ W_dec
    out = grouped_rows_sum(W_dec, cols, flat[rows, cols], rows, len(flat))
    return out.reshape(*feats.shape[:-1], W_dec.shape[-1])


def grouped_rows_sum(W: Tensor, index: Tensor, weights: Tensor, groups: Tensor, n_groups: int) -> Tensor:
    """(n_groups, W's width): per group g, the sum of weights[i] * W[index[i]] over the entries
    with groups[i] == g; `groups` must be sorted (as `nonzero` returns them). Differentiable in
    `weights`; one embedding bag, so no (entries, width) product is built."""
    if weights.device.type == "mps":
        rows = weights.to(W.dtype)[:, None] * W[index]
        return rows.new_zeros(n_groups, W.shape[-1]).index_add(0, groups, rows)
    offsets = torch.searchsorted(groups, torch.arange(n_groups, device=groups.device))
    return torch.nn.functional.embedding_bag(
        index, W, offsets, mode="sum", per_sample_weights=weights.to(W.dtype)
    )


ACTIVATIONS: dict[str, Callable[[Tensor, "SAE"], Tensor]] = {
    "relu": _relu,
    "topk": _topk,
    "jumprelu": _jumprelu,
}


@dataclass(frozen=True)
class SAEConfig:
    """What an SAE knows about itself (normalised from SAELens' cfg.json)."""

    d_in: int
    d_sae: int
    hook_name: str
    activation: str
    k: int | None
    normalize_activations: str
    apply_b_dec_to_input: bool
    prepend_bos: bool
    center_writing_weights: bool
    neuronpedia_id: str | None
    source: str


class SAE(nn.Module):
    """A sparse autoencoder with SAELens names and semantics."""

    def __init__(self, cfg: SAEConfig, weights: dict[str, Tensor]) -> None:
        super().__init__()
        if cfg.activation not in ACTIVATIONS:
            raise SAELoadError(f"SAE activation {cfg.activation!r} unknown; known: {', '.join(ACTIVATIONS)}")
        self.cfg = cfg
        self.W_enc = nn.Parameter(weights["W_enc"], requires_grad=False)  # (d_in, d_sae)
        self.b_enc = nn.Parameter(weights["b_enc"], requires_grad=False)  # (d_sae,)
        self.W_dec = nn.Parameter(weights["W_dec"], requires_grad=False)  # (d_sae, d_in)
        self.b_dec = nn.Parameter(weights["b_dec"], requires_grad=False)  # (d_in,)
        threshold = weights.get("threshold")
        self.threshold = None if threshold is None else nn.Parameter(threshold, requires_grad=False)
        self._ln_stats: tuple[Tensor, Tensor] | None = None
        self.weights_path: Path | None = None  # the file read, so caches can tell when it changes

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def hook_name(self) -> str:
        return self.cfg.hook_name

    @property
    def layer(self) -> int:
        return hook_position(self.cfg.hook_name)[0]

    @property
    def site(self) -> str:
        return HOOK_SITES[self.cfg.hook_name.rsplit(".", 1)[1]]

    @property
    def neuronpedia_id(self) -> str | None:
        return self.cfg.neuronpedia_id

    @property
    def input_dtype(self) -> torch.dtype:
        """The dtype inputs are centred and normalised in: at least float32, whatever the weights'.

        GPT-2's activations have outlier dimensions and shared offsets; centring
        and layer norm in bfloat16 lose the small dimensions against them, and
        TopK membership flips. The encoder product alone runs at the weights' dtype.
        """
        return torch.promote_types(self.W_enc.dtype, torch.float32)

    def normalize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(x_n, mu, std): SAELens' run-time input normalisation; identity without layer norm.
        Computed in `input_dtype`."""
        x = x.to(torch.promote_types(x.dtype, self.input_dtype))
        if self.cfg.normalize_activations != "layer_norm":
            return x, torch.zeros_like(x[..., :1]), torch.ones_like(x[..., :1])
        mu = x.mean(dim=-1, keepdim=True)
        centred = x - mu
        std = centred.std(dim=-1, keepdim=True)
        return centred / (std + LN_EPS), mu, std

    def pre_activations(self, x_n: Tensor, features: Tensor | slice | None = None) -> Tensor:
        """Encoder pre-activations (..., d_sae) of normalised inputs; (..., n) of `features` only
        (indices, or a slice: a view of the encoder, no gather)."""
        sae_in = self._sae_in(x_n)
        if features is None:  # the bias added inside the product: no second pass over (..., d_sae)
            return F.linear(sae_in, self.W_enc.T, self.b_enc)
        return sae_in @ self.W_enc[:, features] + self.b_enc[features]

    def entry_pre_activations(self, x_n: Tensor, tokens: Tensor, features: Tensor) -> Tensor:
        """Pre-activations (nnz,) of single entries: feature features[i] at flat token tokens[i]
        of normalised inputs (..., d_in); one encoder column per entry."""
        sae_in = self._sae_in(x_n).flatten(0, -2)
        return (sae_in[tokens] * self.W_enc[:, features].T).sum(-1) + self.b_enc[features]

    def _sae_in(self, x_n: Tensor) -> Tensor:
        """The encoder's input at the weights' dtype: b_dec subtracted at x_n's precision first."""
        return (x_n - self.b_dec * self.cfg.apply_b_dec_to_input).to(self.W_enc.dtype)

    def activate(self, pre: Tensor) -> Tensor:
        """The SAE's activation function applied to pre-activations."""
        return ACTIVATIONS[self.cfg.activation](pre, self)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations (..., d_sae), exactly as SAELens' `SAE.encode`.

        Like SAELens, a layer-norm SAE remembers this input's mean and scale so
        that `decode` restores them.
        """
        x_n, mu, std = self.normalize(x.to(self.input_dtype))
        self._ln_stats = (mu, std)
        return self.activate(self.pre_activations(x_n))

    def feature_pre_activations(self, x: Tensor, features: Tensor | slice) -> Tensor:
        """Pre-activations (..., n) of the chosen `features` of raw inputs: n encoder columns read.

        Every activation is at most ReLU of its pre-activation, so this bounds
        a TopK feature's value without the full-width encode.
        """
        x_n, _, _ = self.normalize(x.to(self.input_dtype))
        return self.pre_activations(x_n, features)

    def encode_features(self, x: Tensor, features: Tensor) -> Tensor:
        """Activations (..., n) of the chosen `features`, equal to `encode(x)[..., features]`.

        ReLU and JumpReLU act on each feature alone, so only the chosen encoder
        columns are read (the labels pass asks for a graph's few nodes out of
        tens of thousands); TopK compares all features, so it takes the full
        pre-activations, then reads only the chosen features' membership.
        """
        if self.cfg.activation == "topk" and len(features) * self.cfg.k > self.d_sae:
            return self.encode(x)[..., features]
        if self.cfg.activation == "topk":
            x_n, _, _ = self.normalize(x.to(self.input_dtype))
            pre = self.pre_activations(x_n)
            chosen = (pre.topk(self.cfg.k, dim=-1).indices[..., None] == features).any(dim=-2)
            return torch.relu(pre[..., features]) * chosen
        pre = self.feature_pre_activations(x, features)
        acts = torch.relu(pre)
        return acts * (pre > self.threshold[features]) if self.cfg.activation == "jumprelu" else acts

    def decode(self, feature_acts: Tensor) -> Tensor:
        """Reconstruction (..., d_in), exactly as SAELens' `SAE.decode`."""
        out = decoder_sum(feature_acts, self.W_dec) + self.b_dec
        if self.cfg.normalize_activations == "layer_norm":
            if self._ln_stats is None:
                raise RuntimeError("decode of a layer-norm SAE needs a preceding encode (as in SAELens)")
            mu, std = self._ln_stats
            out = out * std + mu
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def read_sae_config(source: str, layer: int) -> SAEConfig:
    """One layer's SAE (arguments as `load_sae`'s) as its cfg.json describes it; no weights are read.

    Raises:
        SAELoadError: the folder or its cfg.json is missing or not an SAELens cfg.
    """
    resolved = resolve_source(source, layer)
    norm = read_cfg(resolved)
    center = resolved.center_writing_weights
    if center is None:
        # TransformerLens' from_pretrained centres writing weights by default.
        center = True if norm["center_writing_weights"] is None else bool(norm["center_writing_weights"])
    return SAEConfig(
        **{k: v for k, v in norm.items() if k not in ("center_writing_weights", "neuronpedia_id")},
        center_writing_weights=center,
        neuronpedia_id=resolved.neuronpedia_id or norm["neuronpedia_id"],
        source=resolved.description,
    )


def load_sae(
    source: str,
    layer: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SAE:
    """Load one layer's SAE from a release name, hub template or local template.

    Args:
        source: any value valid for RESID_SAES / ATTN_SAES / MLP_SAES.
        layer: the model layer; fills ``{layer}``.
        device: where the weights live (default CPU).
        dtype: weight dtype (default: as stored); each tensor is cast on the CPU
            before it moves to `device`.

    Raises:
        SAELoadError: the files are missing, unreadable, or do not fit each other; a hub file is
            not cached and the hub cannot be asked (said at once, without retries).
    """
    cfg = read_sae_config(source, layer)
    weights_path = fetch_file(resolve_source(source, layer), WEIGHTS_FILE)
    sae = SAE(cfg, _read_weights(weights_path, cfg, torch.device(device or "cpu"), dtype))
    sae.weights_path = weights_path
    return sae


def weight_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """The tensors an SAE of `cfg` holds, by SAELens name, and their shapes."""
    shapes = {
        "W_enc": (cfg.d_in, cfg.d_sae),
        "b_enc": (cfg.d_sae,),
        "W_dec": (cfg.d_sae, cfg.d_in),
        "b_dec": (cfg.d_in,),
    }
    return shapes | ({"threshold": (cfg.d_sae,)} if cfg.activation == "jumprelu" else {})


def _read_weights(
    path: Path, cfg: SAEConfig, device: torch.device, dtype: torch.dtype | None
) -> dict[str, Tensor]:
    """The weight tensors, checked against the cfg from the file's header, then read one at a time
    (a stored `log_threshold` becomes `threshold`, as SAELens does)."""
    stored = safetensors_shapes(path, SAELoadError, f"SAE weights of {cfg.source}")
    expected = weight_shapes(cfg)
    renamed = (
        {"threshold": "log_threshold"} if "threshold" not in stored and "log_threshold" in stored else {}
    )
    for name, shape in expected.items():
        found = renamed.get(name, name)
        if found not in stored:
            raise SAELoadError(f"SAE weights {path} lack {name!r}; expected {sorted(expected)}")
        if stored[found] != shape:
            raise SAELoadError(
                f"SAE weights {path}: {found} has shape {stored[found]}, "
                f"but cfg.json (d_in={cfg.d_in}, d_sae={cfg.d_sae}) implies {shape}"
            )
    plain = [name for name in expected if name not in renamed]
    weights = load_safetensors(path, plain, device, dtype, SAELoadError)
    if renamed:
        log_threshold = load_safetensors(path, ["log_threshold"], torch.device("cpu"), None, SAELoadError)
        threshold = log_threshold["log_threshold"].exp()
        weights["threshold"] = (threshold if dtype is None else threshold.to(dtype)).to(device)
    return weights
