"""Load the SAEs of chosen (site, layer) pairs, after checking from their cfg.json files that they fit."""

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from sparse_coding.errors import SAELoadError, SparseCodingError
from sparse_coding.models.memory import Pass, estimate
from sparse_coding.models.saes import SAE, SAEConfig, load_sae, read_sae_config
from sparse_coding.runtime.progress import progress

logger = logging.getLogger(__name__)


def read_configs(sources: Mapping[str, str], sites: Iterable[tuple[str, int]]) -> list[SAEConfig]:
    """The cfg.json of the SAE of each (site, layer) of `sites`, in order; no weights are read."""
    return [read_sae_config(sources[site], layer) for site, layer in sites]


def load_saes(
    sources: Mapping[str, str],
    sites: Iterable[tuple[str, int]],
    device: torch.device,
    dtype: torch.dtype,
    passes: Sequence[Pass] = (),
    d_vocab: int = 50257,
) -> list[SAE]:
    """Load the SAE of each (site, layer) of `sites`, in order, from `sources`.

    Checks first that they fit the device with the working set of `passes`
    (`check_memory`), then that each SAE reads the site and layer it was loaded for.

    Args:
        sources: site -> SAE source (a RESID_SAES/ATTN_SAES/MLP_SAES value).
        sites: (site, layer) pairs, e.g. ``[("resid", 9), ("attn", 10)]``; every
            site must have a source in `sources`.
        dtype: the SAEs' dtype (SAE_DTYPE resolved against the model's).
        passes: the batched passes the script makes (`pipelines.loading.script_passes`).
        d_vocab: the model's vocabulary (the passes' logits).

    Raises:
        SparseCodingError: the SAEs would not fit the device.
        SAELoadError: an SAE reads another site's hook or another layer.
    """
    sites = list(sites)
    cfgs = read_configs(sources, sites)
    check_memory(cfgs, [layer for _, layer in sites], device, dtype, passes, d_vocab)
    start = time.perf_counter()
    saes = [
        _checked(load_sae(sources[site], layer, device=device, dtype=dtype), site, layer, sources[site])
        for site, layer in progress(sites, desc="Loading SAEs", leave=False)
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


def check_memory(
    cfgs: Sequence[SAEConfig],
    layers: Sequence[int],
    device: torch.device,
    dtype: torch.dtype,
    passes: Sequence[Pass] = (),
    d_vocab: int = 50257,
) -> None:
    """Stop before loading when the SAEs would not fit the device, saying what to change.

    The estimate (`models.memory.estimate`) is the SAEs' weights at `dtype`
    plus the largest pass's working set; free memory is the device's (CUDA,
    after the model is loaded) or the machine's available RAM.
    """
    if not cfgs:
        return
    needed = estimate(cfgs, dtype, passes, d_vocab=d_vocab, device_type=device.type)
    free = _free_bytes(device)
    logger.info(
        "SAEs need ~%.2f GiB at %s (weights %.2f GiB, working set %.2f GiB); %.1f GiB free on %s",
        needed.total / 2**30,
        dtype,
        needed.weights / 2**30,
        needed.working / 2**30,
        free / 2**30,
        device,
    )
    if free and needed.total > free:
        raise SparseCodingError(
            f"The {len(cfgs)} SAEs for ACTS_LAYERS_SLICE layers {min(layers)}:{max(layers) + 1} need about "
            f"{needed.total / 2**30:.2f} GiB at {dtype} (weights {needed.weights / 2**30:.2f} GiB, working "
            f"set {needed.working / 2**30:.2f} GiB), but {device} has {free / 2**30:.2f} GiB free. "
            f"Set SAE_DTYPE to bfloat16 (halves the weights), narrow ACTS_LAYERS_SLICE, lower BATCH_SIZE, "
            f"or unset a site (ATTN_SAES/MLP_SAES)"
        )


def _free_bytes(device: torch.device) -> int:
    """Free bytes on `device`: CUDA's own count, else the machine's available RAM (0 if unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():  # MemAvailable counts the page cache the kernel would give back
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0
