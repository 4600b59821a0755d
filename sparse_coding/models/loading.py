"""From a Config to a spliced model: the one loading path every script shares."""

import logging
import os
import time
from collections.abc import Iterable

import torch
from transformers import PreTrainedTokenizerBase

from sparse_coding.config import Config
from sparse_coding.errors import SAELoadError, SparseCodingError
from sparse_coding.models.gpt2 import load_model, resolve_device, resolve_dtype
from sparse_coding.models.sae_sources import fetch_files, resolve_source
from sparse_coding.models.saes import SAE, load_sae
from sparse_coding.progress import progress
from sparse_coding.splicing.splice import SplicedModel

logger = logging.getLogger(__name__)


def load_spliced_model(
    config: Config, sites: tuple[str, ...] | None = None, layers: range | None = None
) -> tuple[SplicedModel, PreTrainedTokenizerBase]:
    """Load MODEL_DIR and the SAEs of `sites` (default: every configured site).

    Only the layers of ACTS_LAYERS_SLICE (or `layers`) get SAEs. An SAE whose
    hook is not of the site it was configured for, or whose layer differs from
    the one asked for, is an error that names the config key.
    """
    device = resolve_device(config.DEVICE)
    model_dtype = resolve_dtype(config.DTYPE)
    model, tokenizer = load_model(config.MODEL_DIR, device, model_dtype)
    layers = layers if layers is not None else config.layer_range(model.config.n_layer)
    chosen = [site for site in config.sae_sources if sites is None or site in sites]
    pairs = [(site, layer) for site in chosen for layer in layers]
    saes = load_saes(config, pairs, device, resolve_dtype(config.SAE_DTYPE, model_dtype))
    mismatched = [sae.cfg.source for sae in saes if sae.cfg.prepend_bos != config.PREPEND_BOS]
    if mismatched:
        logger.warning(
            "PREPEND_BOS is %s, but %d SAE(s) were trained the other way (e.g. %s); activations at the "
            "first positions may differ from their dashboards",
            config.PREPEND_BOS,
            len(mismatched),
            mismatched[0],
        )
    return SplicedModel(model, saes), tokenizer


def load_saes(
    config: Config, sites: Iterable[tuple[str, int]], device: torch.device, dtype: torch.dtype
) -> list[SAE]:
    """Load the SAE of each (site, layer) of `sites`, in order, from the config's sources.

    Checks first that they fit the device (`check_memory`), then that each SAE
    reads the site and layer it was loaded for.

    Args:
        sites: (site, layer) pairs, e.g. ``[("resid", 9), ("attn", 10)]``; every
            site must have a source in `config.sae_sources`.
        dtype: the SAEs' dtype (SAE_DTYPE resolved against the model's).

    Raises:
        SparseCodingError: the SAEs would not fit the device.
        SAELoadError: an SAE reads another site's hook or another layer.
    """
    sources = [(site, layer, config.sae_sources[site]) for site, layer in sites]
    check_memory([(source, layer) for _, layer, source in sources], device, dtype)
    start = time.perf_counter()
    saes = [
        _checked(load_sae(source, layer, device=device, dtype=dtype), site, layer, source)
        for site, layer, source in progress(sources, desc="Loading SAEs", leave=False)
    ]
    logger.info("Loaded %d SAEs in %.1fs", len(saes), time.perf_counter() - start)
    return saes


def _checked(sae: SAE, site: str, layer: int, source: str) -> SAE:
    key = f"{site.upper()}_SAES"
    if sae.site != site:
        raise SAELoadError(
            f"{key} {source!r} layer {layer} reads {sae.hook_name}, a {sae.site} site; "
            f"{key} needs SAEs on {site} hooks"
        )
    if sae.layer != layer:
        raise SAELoadError(
            f"{key} {source!r} for layer {layer} reads {sae.hook_name} (layer {sae.layer}); "
            f"check the {{layer}} template"
        )
    return sae


# Working memory beyond the weights: activations, autograd graphs and batch
# buffers of a 12-token prompt stay under a few hundred MB per site on GPT-2
# small; a fixed margin per SAE keeps the estimate conservative.
ACTIVATION_MARGIN_BYTES = 64 * 2**20


def check_memory(saes: list[tuple[str, int]], device: torch.device, dtype: torch.dtype) -> None:
    """Stop before loading when the SAEs would not fit the device, saying what to change.

    Args:
        saes: (source, layer) of each SAE to load.

    The estimate is the SAE weight files' size at SAE_DTYPE plus a margin per
    SAE; free memory is the device's (CUDA) or the machine's available RAM.
    """
    files = [fetch_files(resolve_source(source, layer))[1] for source, layer in saes]
    stored = sum(path.stat().st_size for path in files)
    needed = stored * torch.finfo(dtype).bits // 32 + ACTIVATION_MARGIN_BYTES * len(files)
    free = _free_bytes(device)
    logger.info("SAEs need ~%.1f GiB at %s; %.1f GiB free on %s", needed / 2**30, dtype, free / 2**30, device)
    if free and needed > free:
        raise SparseCodingError(
            f"The {len(files)} SAEs for ACTS_LAYERS_SLICE layers {_span(saes)} need about "
            f"{needed / 2**30:.1f} GiB at {dtype}, but {device} has {free / 2**30:.1f} GiB free. "
            f"Set SAE_DTYPE to bfloat16 (halves it), narrow ACTS_LAYERS_SLICE, or unset a site "
            f"(ATTN_SAES/MLP_SAES)"
        )


def _span(saes: list[tuple[str, int]]) -> str:
    """'start:stop' of the layers of `saes` (ACTS_LAYERS_SLICE's when they fill it)."""
    layers = [layer for _, layer in saes]
    return f"{min(layers)}:{max(layers) + 1}"


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0
