"""Load the SAEs of chosen (site, layer) pairs, after checking that they fit the device."""

import logging
import os
import time
from collections.abc import Iterable, Mapping

import torch

from sparse_coding.errors import SAELoadError, SparseCodingError
from sparse_coding.models.sae_sources import fetch_files, resolve_source
from sparse_coding.models.saes import SAE, load_sae
from sparse_coding.progress import progress

logger = logging.getLogger(__name__)


def load_saes(
    sources: Mapping[str, str], sites: Iterable[tuple[str, int]], device: torch.device, dtype: torch.dtype
) -> list[SAE]:
    """Load the SAE of each (site, layer) of `sites`, in order, from `sources`.

    Checks first that they fit the device (`check_memory`), then that each SAE
    reads the site and layer it was loaded for.

    Args:
        sources: site -> SAE source (a RESID_SAES/ATTN_SAES/MLP_SAES value).
        sites: (site, layer) pairs, e.g. ``[("resid", 9), ("attn", 10)]``; every
            site must have a source in `sources`.
        dtype: the SAEs' dtype (SAE_DTYPE resolved against the model's).

    Raises:
        SparseCodingError: the SAEs would not fit the device.
        SAELoadError: an SAE reads another site's hook or another layer.
    """
    chosen = [(site, layer, sources[site]) for site, layer in sites]
    check_memory([(source, layer) for _, layer, source in chosen], device, dtype)
    start = time.perf_counter()
    saes = [
        _checked(load_sae(source, layer, device=device, dtype=dtype), site, layer, source)
        for site, layer, source in progress(chosen, desc="Loading SAEs", leave=False)
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
