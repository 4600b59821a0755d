"""Read one layer of a published transcoder layout into one form (facts: docs/transcoders.md).

Four layouts, told apart by their files:

    saelens   cfg.json + sae_weights.safetensors       arena-demos-transcoder; SAELens "transcoder"
    dunefsky  sae.json + sae.safetensors + sae_info.json  jacobdunefsky/gpt2small-transcoders
    pickle    <name>.pt                                 pchlenski/gpt2-transcoders (original files)
    sparsify  cfg.json + sae.safetensors               EleutherAI gpt2-mntss-* (cross-layer if n_targets)

Every reader returns a `LayerWeights`: features f = act((x - b_in) @ W_enc + b_enc)
of the layer's input x (`input_hook`), decoded as `transcoder` says; a
cross-layer transcoder (sparsify's layout) stores at target layer T the
decoder blocks of every source layer 0..T.

Rows on demand (`SafetensorsRows`) are hand-written on purpose: a cross-layer
transcoder's decoders (3.9 GB for GPT-2 small) need not fit in memory, a graph
reads only the rows of its active features, and safetensors' own slice API
takes index lists in some versions and not in others. A .safetensors file is
an 8-byte little-endian header length, a JSON header (dtype, shape, byte
offsets per tensor) and the raw data, so a read-only NumPy memory map of one
tensor is the whole reader.

Dunefsky et al.'s original files are pickles of ``{"cfg": <their config
class>, "state_dict": ...}``; `load_pickled_state` opens them with torch's
weights-only unpickler, allowing only that config class, bound to an inert
stand-in that just receives the pickled attributes.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from sparse_coding.config.yaml_file import shown
from sparse_coding.errors import SAELoadError, TranscoderLoadError
from sparse_coding.models.sae_sources import normalize_cfg

# TransformerLens hook a transcoder reads -> how it is computed from the block's h_mid (docs/transcoders.md).
INPUT_HOOKS = {
    "ln2.hook_normalized": "(h_mid - mean) / sqrt(var + eps), ln_2 without gain and bias",
    "hook_resid_mid": "h_mid, the input of ln_2",
}
# Files that identify each folder layout, in the order they are tried.
FOLDER_LAYOUTS = {
    "saelens": ("cfg.json", "sae_weights.safetensors"),
    "dunefsky": ("sae.json", "sae.safetensors", "sae_info.json"),
    "sparsify": ("cfg.json", "sae.safetensors"),
}
# SAELens architecture -> the activation its transcoder classes apply.
SAELENS_TRANSCODERS = {
    "transcoder": "standard",
    "skip_transcoder": "standard",
    "jumprelu_transcoder": "jumprelu",
}
# sae_info.json sublayer names (Dunefsky's attribution tool) -> TransformerLens hook.
DUNEFSKY_SUBLAYERS = {"mlp_in": "ln2.hook_normalized", "mid": "hook_resid_mid"}
DUNEFSKY_ACTIVATIONS = {"relu": "relu", "top_k": "topk"}
# safetensors dtype -> (NumPy dtype of the stored bytes, torch dtype they mean).
_DTYPES = {
    "F64": (np.float64, torch.float64),
    "F32": (np.float32, torch.float32),
    "F16": (np.float16, torch.float16),
    "BF16": (np.uint16, torch.bfloat16),
}


class SafetensorsRows:
    """One 2-D tensor of a .safetensors file whose rows are read when indexed (memory-mapped)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path, self.name = Path(path), name
        header_len, header = _header(self.path)
        if name not in header:
            raise TranscoderLoadError(f"{self.path} has no tensor {name!r}; it holds {sorted(header)}")
        info = header[name]
        if info["dtype"] not in _DTYPES or len(info["shape"]) != 2:
            raise TranscoderLoadError(
                f"{self.path}: {name} is {info['dtype']} {info['shape']}; rows are read from 2-D "
                f"tensors of {', '.join(_DTYPES)}"
            )
        stored, self.dtype = _DTYPES[info["dtype"]]
        self.shape = tuple(info["shape"])
        start = 8 + header_len + info["data_offsets"][0]
        self._array = np.memmap(self.path, dtype=stored, mode="r", offset=start, shape=self.shape)

    def __getitem__(self, rows: Tensor) -> Tensor:
        """The rows at `rows` (n,), as a CPU tensor (n, width)."""
        picked = np.ascontiguousarray(self._array[rows.cpu().numpy()])
        tensor = torch.from_numpy(picked)
        return tensor.view(torch.bfloat16) if self.dtype == torch.bfloat16 else tensor


def _header(path: Path) -> tuple[int, dict[str, Any]]:
    """(length, contents) of a .safetensors file's JSON header."""
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            return length, json.loads(f.read(length))
    except (OSError, ValueError) as e:
        raise TranscoderLoadError(f"{path} is not a readable safetensors file: {e}") from e


def tensor_names(path: Path) -> dict[str, list[int]]:
    """Name -> shape of every tensor in a .safetensors file (from its header alone)."""
    return {name: info["shape"] for name, info in _header(path)[1].items() if name != "__metadata__"}


def load_tensors(path: Path, skip: str | None = None) -> dict[str, Tensor]:
    """The tensors of a .safetensors file on the CPU, all but `skip`."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys() if name != skip}
    except Exception as e:  # safetensors raises its own error types
        raise TranscoderLoadError(f"{path} is not a readable safetensors file: {e}") from e


class PickledConfig:
    """Stands in for Dunefsky et al.'s ``sae_training.config.LanguageModelSAERunnerConfig``:
    holds the pickled attributes, runs nothing."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


PickledConfig.__module__ = "sae_training.config"
PickledConfig.__qualname__ = PickledConfig.__name__ = "LanguageModelSAERunnerConfig"


def load_pickled_state(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(cfg attributes, state dict) of a ``{"cfg", "state_dict"}`` pickle, weights-only, on the CPU."""
    try:
        with torch.serialization.safe_globals([PickledConfig]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise TranscoderLoadError(
            f"{path} could not be read as Dunefsky et al.'s transcoder pickle with torch.load("
            f"weights_only=True): {str(e).splitlines()[0]}"
        ) from e
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        raise TranscoderLoadError(f"{path} holds no 'state_dict' mapping; expected {{'cfg', 'state_dict'}}")
    cfg = data.get("cfg")
    return (dict(vars(cfg)) if cfg is not None else {}), dict(data["state_dict"])


@dataclass(frozen=True)
class LayerConfig:
    """What one layer's transcoder file says about itself, in one form."""

    d_in: int
    d_sae: int
    d_out: int
    activation: str  # "relu" | "topk" | "jumprelu" (models.saes.ACTIVATIONS)
    k: int | None
    input_hook: str  # a key of INPUT_HOOKS
    n_sources: int  # decoder blocks stored with this layer: 1, or layer + 1 (cross-layer)


@dataclass
class LayerWeights:
    """One layer's weights; `W_dec` may be rows read on demand (`SafetensorsRows`)."""

    cfg: LayerConfig
    W_enc: Tensor  # (d_in, d_sae)
    b_enc: Tensor  # (d_sae,)
    b_in: Tensor | None  # (d_in,) subtracted from the input before encoding
    threshold: Tensor | None  # (d_sae,) JumpReLU
    W_dec: Tensor | SafetensorsRows  # (n_sources * d_sae, d_out)
    b_out: Tensor  # (d_out,)
    W_skip: Tensor | None  # (d_out, d_in)


def folder_layout(names: set[str]) -> str | None:
    """The layout whose files are all among `names`, else None."""
    return next((layout for layout, files in FOLDER_LAYOUTS.items() if set(files) <= names), None)


def read_layer(layout: str, files: dict[str, Path], layer: int, *, lazy: bool, where: str) -> LayerWeights:
    """Read one layer of `layout` from `files` (file name -> path); `where` names it in errors."""
    readers = {"saelens": _saelens, "dunefsky": _dunefsky, "sparsify": _sparsify, "pickle": _pickle}
    try:
        weights = readers[layout](files, layer, lazy)
    except (KeyError, TypeError, ValueError, SAELoadError) as e:
        raise TranscoderLoadError(f"Transcoder {where} ({layout} layout) is malformed: {e}") from e
    _check_shapes(weights, where)
    return weights


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TranscoderLoadError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(data, dict):
        raise TranscoderLoadError(f"{path} must hold a JSON object, got {shown(data)}")
    return data


def _hook_suffix(hook: str, layer: int, what: str) -> str:
    """The part of ``blocks.{layer}.X`` after the layer, checked against INPUT_HOOKS or hook_mlp_out."""
    prefix = f"blocks.{layer}."
    if not hook.startswith(prefix):
        raise TranscoderLoadError(f"its {what} {hook!r} is not in layer {layer} ('{prefix}...')")
    return hook.removeprefix(prefix)


def _input_hook(hook: str, layer: int) -> str:
    suffix = _hook_suffix(hook, layer, "input hook")
    if suffix not in INPUT_HOOKS:
        raise TranscoderLoadError(
            f"its input hook {hook!r} is not supported; supported: "
            f"{', '.join(f'blocks.{layer}.{name}' for name in INPUT_HOOKS)}"
        )
    return suffix


def _output_hook(hook: str, layer: int) -> None:
    if _hook_suffix(hook, layer, "output hook") != "hook_mlp_out":
        raise TranscoderLoadError(f"it writes {hook!r}; trace.py replaces MLPs: blocks.{layer}.hook_mlp_out")


def _tensors(path: Path, lazy: bool) -> dict[str, Tensor | SafetensorsRows]:
    """A weights file's tensors; with `lazy`, W_dec as rows read on demand."""
    tensors = load_tensors(path, skip="W_dec" if lazy else None)
    return tensors | {"W_dec": SafetensorsRows(path, "W_dec")} if lazy else tensors


def _saelens(files: dict[str, Path], layer: int, lazy: bool) -> LayerWeights:
    raw = _json(files["cfg.json"])
    architecture = str(raw.get("architecture") or "standard")
    is_transcoder = architecture in SAELENS_TRANSCODERS
    norm = normalize_cfg({**raw, "architecture": SAELENS_TRANSCODERS.get(architecture, architecture)}, "")
    if norm["normalize_activations"] != "none":
        raise TranscoderLoadError("normalize_activations must be 'none' for a transcoder")
    hook_out = raw.get("hook_name_out") or (raw.get("metadata") or {}).get("hook_name_out")
    if hook_out:
        _output_hook(str(hook_out), layer)
    tensors = _tensors(files["sae_weights.safetensors"], lazy)
    apply_b_in = norm["apply_b_dec_to_input"] and not is_transcoder
    out_bias = "b_dec_out" if raw.get("use_b_dec_out") else "b_dec"
    cfg = LayerConfig(
        norm["d_in"], norm["d_sae"], int(raw.get("d_out", norm["d_in"])), norm["activation"],
        norm["k"], _input_hook(norm["hook_name"], layer), 1,
    )  # fmt: skip
    threshold = tensors.get("threshold")
    if threshold is None and "log_threshold" in tensors:
        threshold = tensors["log_threshold"].exp()
    return LayerWeights(
        cfg, tensors["W_enc"], tensors["b_enc"], tensors["b_dec"] if apply_b_in else None, threshold,
        tensors["W_dec"], tensors[out_bias], tensors.get("W_skip"),
    )  # fmt: skip


def _dunefsky(files: dict[str, Path], layer: int, lazy: bool) -> LayerWeights:
    sae, info = _json(files["sae.json"]), _json(files["sae_info.json"])
    inp, out = info["input_layer"], info["output_layer"]
    if (
        inp["sublayer"] not in DUNEFSKY_SUBLAYERS
        or out["sublayer"] != "mlp_out"
        or {inp["layer"], out["layer"]} != {layer}
    ):
        raise TranscoderLoadError(
            f"sae_info.json reads {inp['layer']}/{inp['sublayer']} and writes "
            f"{out['layer']}/{out['sublayer']}; trace.py needs layer {layer}'s "
            f"{' or '.join(DUNEFSKY_SUBLAYERS)} -> mlp_out"
        )
    if sae.get("act_fn", "relu") not in DUNEFSKY_ACTIVATIONS:
        raise TranscoderLoadError(
            f"act_fn {sae.get('act_fn')!r}; supported: {', '.join(DUNEFSKY_ACTIVATIONS)}"
        )
    tensors = _tensors(files["sae.safetensors"], lazy)
    cfg = LayerConfig(
        int(sae["d_in"]), int(sae["num_features"]), int(sae.get("d_out") or sae["d_in"]),
        DUNEFSKY_ACTIVATIONS[sae.get("act_fn", "relu")], sae.get("top_k"),
        DUNEFSKY_SUBLAYERS[inp["sublayer"]], 1,
    )  # fmt: skip
    return LayerWeights(
        cfg, tensors["W_enc"], tensors["b_enc"], None, None, tensors["W_dec"],
        tensors["b_dec"], None,
    )  # fmt: skip


def _pickle(files: dict[str, Path], layer: int, lazy: bool) -> LayerWeights:
    path = next(iter(files.values()))
    raw, state = load_pickled_state(path)
    if raw and not raw.get("is_transcoder", True):
        raise TranscoderLoadError("its cfg says is_transcoder: false (an SAE, not a transcoder)")
    input_hook = _input_hook(str(raw.get("hook_point", f"blocks.{layer}.ln2.hook_normalized")), layer)
    _output_hook(str(raw.get("out_hook_point", f"blocks.{layer}.hook_mlp_out")), layer)
    d_in, d_sae = state["W_enc"].shape
    cfg = LayerConfig(d_in, d_sae, state["W_dec"].shape[1], "relu", None, input_hook, 1)
    return LayerWeights(
        cfg, state["W_enc"], state["b_enc"], state["b_dec"], None, state["W_dec"], state["b_dec_out"], None
    )


def _sparsify(files: dict[str, Path], layer: int, lazy: bool) -> LayerWeights:
    raw = _json(files["cfg.json"])
    if not raw.get("transcode"):
        raise TranscoderLoadError("cfg.json has transcode: false (a sparse autoencoder, not a transcoder)")
    if raw.get("activation", "topk") != "topk" or raw.get("normalize_io"):
        raise TranscoderLoadError(
            f"activation {raw.get('activation')!r}, normalize_io {raw.get('normalize_io')!r}; supported: "
            f"activation 'topk' without normalize_io"
        )
    cross_layer = int(raw.get("n_targets") or 0) > 0
    n_sources = int(raw.get("n_sources") or 1) if cross_layer else 1
    if cross_layer and n_sources != layer + 1:
        raise TranscoderLoadError(
            f"n_sources is {n_sources}; layer {layer} of a cross-layer set has {layer + 1}"
        )
    tensors = _tensors(files["sae.safetensors"], lazy)
    d_sae, d_in = tensors["encoder.weight"].shape
    cfg = LayerConfig(d_in, d_sae, int(raw["d_in"]), "topk", int(raw["k"]), "hook_resid_mid", n_sources)
    return LayerWeights(
        cfg, tensors["encoder.weight"].T, tensors["encoder.bias"], None, None,
        tensors["W_dec"], tensors["b_dec"], tensors.get("W_skip"),
    )  # fmt: skip


def _check_shapes(w: LayerWeights, where: str) -> None:
    """Every tensor's shape against the cfg (the decoder's rows: n_sources blocks of d_sae)."""
    c = w.cfg
    expected = {
        "W_enc": (w.W_enc, (c.d_in, c.d_sae)),
        "b_enc": (w.b_enc, (c.d_sae,)),
        "W_dec": (w.W_dec, (c.n_sources * c.d_sae, c.d_out)),
        "b_out": (w.b_out, (c.d_out,)),
        "b_in": (w.b_in, (c.d_in,)),
        "threshold": (w.threshold, (c.d_sae,)),
        "W_skip": (w.W_skip, (c.d_out, c.d_in)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise TranscoderLoadError(
                f"Transcoder {where}: {name} has shape {tuple(tensor.shape)}, but its cfg "
                f"(d_in={c.d_in}, d_sae={c.d_sae}, d_out={c.d_out}, {c.n_sources} decoder block(s)) "
                f"implies {shape}"
            )
    if c.activation == "jumprelu" and w.threshold is None:
        raise TranscoderLoadError(f"Transcoder {where} is JumpReLU but its weights have no threshold")
