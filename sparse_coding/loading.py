"""From a Config to a spliced model: the one loading path every script shares."""

import logging
import time

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from sparse_coding.config import Config
from sparse_coding.errors import SAELoadError
from sparse_coding.model import load_model, resolve_device, resolve_dtype
from sparse_coding.saes import SAE, load_sae
from sparse_coding.splice import SplicedModel

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
    sources = {site: src for site, src in config.sae_sources.items() if sites is None or site in sites}
    sae_dtype = resolve_dtype(config.SAE_DTYPE, model_dtype)
    start = time.perf_counter()
    saes = [
        _checked(load_sae(source, layer, device=device, dtype=sae_dtype), site, layer, source)
        for site, source in sources.items()
        for layer in tqdm(layers, desc=f"Loading {site} SAEs", leave=False)
    ]
    logger.info("Loaded %d SAEs in %.1fs", len(saes), time.perf_counter() - start)
    return SplicedModel(model, saes), tokenizer


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
