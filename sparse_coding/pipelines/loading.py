"""From a Config to a spliced model: the one loading path every script shares.

Each script names the SAE sites it needs, either as whole sites over
ACTS_LAYERS_SLICE (pipe.py: resid; fast.py and hist.py: every configured site)
or as explicit (site, layer) pairs (val.py: its circuit's sites), and gets
MODEL_DIR with exactly those SAEs spliced.
"""

import logging
from collections.abc import Collection

from sparse_coding import distributed
from sparse_coding.config import Config
from sparse_coding.errors import ConfigError
from sparse_coding.models.gpt2 import load_model, resolve_device, resolve_dtype
from sparse_coding.models.loading import load_saes
from sparse_coding.nodes import site_key
from sparse_coding.phases import PhaseTimer
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def load_spliced_model(
    config: Config,
    sites: Collection[str] | None = None,
    *,
    pairs: Collection[tuple[str, int]] | None = None,
    source: str = "ACTS_LAYERS_SLICE",
    phases: PhaseTimer | None = None,
) -> tuple[SplicedModel, Tokenizer]:
    """MODEL_DIR with the SAEs of `pairs`, or of `sites` at every layer of ACTS_LAYERS_SLICE.

    Args:
        sites: sites to splice at every layer of the slice (default: every
            site with an SAE source); ignored when `pairs` is given.
        pairs: explicit (site, layer) pairs, e.g. ``[("resid", 9), ("attn", 10)]``;
            each site must have an SAE source.
        source: what asked for `pairs` (e.g. "VALIDATION_DIMS_PINNED"), named in errors.
        phases: times "model load" and "SAE load" when given.

    Raises:
        ConfigError: a pair's site has no SAE source.
        SAELoadError: an SAE reads another site or layer than it was loaded for.
        SparseCodingError: the model cannot be loaded or the SAEs would not fit.
    """
    if pairs is not None:
        check_sources(config, pairs, source)
    phases = phases or PhaseTimer()
    device = distributed.local_device(resolve_device(config.DEVICE))  # under torchrun: this rank's GPU
    model_dtype = resolve_dtype(config.DTYPE)
    with phases.phase("model load"):
        model, tokenizer = load_model(config.MODEL_DIR, device, model_dtype)
    if pairs is None:
        chosen = [site for site in config.sae_sources if sites is None or site in sites]
        pairs = [(site, layer) for site in chosen for layer in config.layer_range(model.config.n_layer)]
    with phases.phase("SAE load"):
        saes = load_saes(config.sae_sources, pairs, device, resolve_dtype(config.SAE_DTYPE, model_dtype))
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


def check_sources(config: Config, pairs: Collection[tuple[str, int]], source: str) -> None:
    """Every (site, layer) pair has an SAE source, else a ConfigError naming the unset keys."""
    unset = [
        f"{site.upper()}_SAES for {site_key(site, layer)!r}"
        for site, layer in pairs
        if site not in config.sae_sources
    ]
    if unset:
        raise ConfigError(f"{source} pins sites whose SAE key is unset: {', '.join(unset)}")
