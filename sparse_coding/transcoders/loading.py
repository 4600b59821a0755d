"""Load a TRANSCODERS source for a model, after checking that it fits the device.

Memory (GPT-2 small, float32): Dunefsky et al.'s per-layer transcoders are
151 MB per layer (1.8 GB for 12), half of it decoders; EleutherAI's
cross-layer transcoder is 4.5 GB, of which 3.9 GB are decoders. Decoders can
stay on disk and be read row by row for the active features only
(TRANSCODER_LAZY_DECODERS; by default a cross-layer set's are, a per-layer
set's are loaded), so a CLT graph needs about 0.6 GB of encoders.
"""

import json
import logging
import time

import torch

from sparse_coding.errors import TranscoderLoadError
from sparse_coding.models.loading import _free_bytes
from sparse_coding.runtime.progress import progress
from sparse_coding.transcoders.layouts import LayerWeights, read_layer, tensor_names
from sparse_coding.transcoders.sources import layer_files, release_layers, resolve_layer
from sparse_coding.transcoders.transcoder import TranscoderSet

logger = logging.getLogger(__name__)

# Working memory per transcoder layer beyond its weights (its active rows and products).
LAYER_MARGIN_BYTES = 64 * 2**20


def load_transcoders(
    source: str,
    *,
    n_layers: int,
    d_model: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    lazy_decoders: bool | None = None,
) -> TranscoderSet:
    """The transcoders of `source` (a TRANSCODERS value) for a model of `n_layers` blocks of width `d_model`.

    Args:
        lazy_decoders: read decoder rows from disk when needed (None: for cross-layer sets only).

    Raises:
        TranscoderLoadError: a file is missing or malformed, the widths do not match the model,
            or the weights would not fit the device.
    """
    start = time.perf_counter()
    resolved = {layer: resolve_layer(source, layer) for layer in release_layers(source, n_layers)}
    files = {layer: (where, *layer_files(where)) for layer, where in resolved.items()}
    cross_layer = any(_is_cross_layer(layout, paths) for _, layout, paths in files.values())
    lazy = cross_layer if lazy_decoders is None else lazy_decoders
    check_memory([paths for _, _, paths in files.values()], torch.device(device), dtype, lazy=lazy)
    read: dict[int, LayerWeights] = {}
    for layer, (resolved, layout, paths) in progress(files.items(), desc="Loading transcoders", leave=False):
        weights = read_layer(layout, paths, layer, lazy=lazy, where=resolved.description)
        _check_width(weights, d_model, resolved.description)
        read[layer] = _to(weights, torch.device(device), dtype)
    transcoders = TranscoderSet(read, n_layers, source)
    transcoders.files = {layer: sorted(files[layer][2].values()) for layer in read}
    missing = sorted(set(range(n_layers)) - set(read))
    if missing:
        logger.warning(
            "%s has no transcoder for layers %s: their MLPs stay whole (error nodes)", source, missing
        )
    logger.info("Loaded %s in %.1fs (decoders %s)", transcoders.describe(), time.perf_counter() - start,
                "read from disk when needed" if lazy else "in memory")  # fmt: skip
    return transcoders


def _is_cross_layer(layout: str, paths: dict) -> bool:
    return layout == "sparsify" and int(json.loads(paths["cfg.json"].read_text()).get("n_targets") or 0) > 0


def _check_width(weights: LayerWeights, d_model: int, where: str) -> None:
    if weights.cfg.d_in != d_model or weights.cfg.d_out != d_model:
        raise TranscoderLoadError(
            f"Transcoder {where} maps width {weights.cfg.d_in} to {weights.cfg.d_out}, but the model's "
            f"d_model is {d_model}; it belongs to another model"
        )


def _to(weights: LayerWeights, device: torch.device, dtype: torch.dtype) -> LayerWeights:
    """The weights on `device` at `dtype` (decoder rows read from disk are cast when read)."""
    moved = {
        name: value.to(device=device, dtype=dtype) if isinstance(value, torch.Tensor) else value
        for name, value in vars(weights).items()
    }
    return LayerWeights(**moved)


def check_memory(files: list[dict], device: torch.device, dtype: torch.dtype, *, lazy: bool) -> None:
    """Stop before loading when the transcoders would not fit, saying what to change.

    Counts every stored tensor at `dtype` (the decoders only when loaded, not `lazy`)
    plus a working margin per layer, against the device's free memory.
    """
    stored = sum(_stored_bytes(path, lazy) for paths in files for path in paths.values())
    needed = stored * torch.finfo(dtype).bits // 32 + LAYER_MARGIN_BYTES * len(files)
    free = _free_bytes(device)
    logger.info(
        "Transcoders need ~%.1f GiB at %s; %.1f GiB free on %s", needed / 2**30, dtype, free / 2**30, device
    )
    if free and needed > free:
        hint = "" if lazy else "set TRANSCODER_LAZY_DECODERS: true (decoders stay on disk), "
        raise TranscoderLoadError(
            f"The transcoders need about {needed / 2**30:.1f} GiB at {dtype}, but {device} has "
            f"{free / 2**30:.1f} GiB free; {hint}set SAE_DTYPE: bfloat16 (halves it), or use a smaller set"
        )


def _stored_bytes(path, lazy: bool) -> int:
    """Bytes of a weight file that loading keeps in memory (float32-equivalent)."""
    if path.suffix == ".json":
        return 0
    if path.suffix != ".safetensors" or not lazy:
        return path.stat().st_size
    decoder = tensor_names(path).get("W_dec", [0, 0])
    return max(path.stat().st_size - 4 * decoder[0] * decoder[1], 0)
