"""From a Config to a spliced model: the one loading path every script shares, with exactly the
SAEs (and TRANSCODERS) a script names spliced."""

import dataclasses
import logging
from collections.abc import Collection

import torch

from sparse_coding.config import Config
from sparse_coding.errors import ConfigError
from sparse_coding.models.bos import settle_prepend_bos, warn_bos_mismatch
from sparse_coding.models.gpt2 import load_model, resolve_device, resolve_dtype
from sparse_coding.models.loading import load_saes, read_configs
from sparse_coding.models.memory import Pass
from sparse_coding.models.transformer import GPT2
from sparse_coding.nodes import site_key
from sparse_coding.runtime import distributed
from sparse_coding.runtime.phases import PhaseTimer
from sparse_coding.splicing.splice import SplicedModel
from sparse_coding.text.batches import text_ids
from sparse_coding.text.tokenizer import Tokenizer
from sparse_coding.transcoders.loading import load_transcoders
from sparse_coding.transcoders.sources import transcoders_bos
from sparse_coding.transcoders.transcoder import TranscoderSet

logger = logging.getLogger(__name__)


def load_spliced_model(
    config: Config,
    sites: Collection[str] | None = None,
    *,
    pairs: Collection[tuple[str, int]] | None = None,
    source: str = "ACTS_LAYERS_SLICE",
    phases: PhaseTimer | None = None,
    script: str | None = None,
    transcoders: bool = False,
) -> tuple[SplicedModel, Tokenizer]:
    """MODEL_DIR with the SAEs of `pairs`, or of `sites` at every layer of ACTS_LAYERS_SLICE.

    The SAEs' cfg.json files are read first: they settle PREPEND_BOS
    (`spliced.prepend_bos`; see `settled`) and the memory check, both before
    any SAE weight is read.

    Args:
        sites: sites to splice at every layer of the slice (default: every
            site with an SAE source); ignored when `pairs` is given.
        pairs: explicit (site, layer) pairs, e.g. ``[("resid", 9), ("attn", 10)]``;
            each site must have an SAE source.
        source: what asked for `pairs` (e.g. "VALIDATION_DIMS_PINNED"), named in errors.
        script: "fast", "pipe", "val" or "hist": whose batched passes the memory
            check counts (`script_passes`); None: DATASET batches.
        transcoders: also splice TRANSCODERS (their BOS convention joins the SAEs').

    Raises:
        ConfigError: a pair's site has no SAE source, or PREPEND_BOS is unset and the SAEs disagree.
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
        trained = {cfg.source: cfg.prepend_bos for cfg in read_configs(config.sae_sources, pairs)}
        if transcoders:
            trained |= transcoders_bos(config.TRANSCODERS)
        prepend_bos, mismatched = settle_prepend_bos(config.PREPEND_BOS, trained)
        warn_bos_mismatch(prepend_bos, mismatched)
        prompt_tokens = len(text_ids(tokenizer, config.PROMPT, prepend_bos=prepend_bos))
        passes = script_passes(config, script, prompt_tokens)
        sae_dtype = resolve_dtype(config.SAE_DTYPE, model_dtype)
        saes = load_saes(config.sae_sources, pairs, device, sae_dtype, passes, model.config.vocab_size)
    spliced_transcoders = None
    if transcoders:
        with phases.phase("transcoder load"):
            spliced_transcoders = load_config_transcoders(config, model, device, sae_dtype)
    return SplicedModel(model, saes, prepend_bos, spliced_transcoders), tokenizer


def load_config_transcoders(
    config: Config, model: GPT2, device: torch.device, dtype: torch.dtype
) -> TranscoderSet:
    """TRANSCODERS for `model`, on `device` at `dtype` (decoders as TRANSCODER_LAZY_DECODERS says)."""
    if not config.TRANSCODERS:
        raise ConfigError("TRANSCODERS is unset; transcoder features (tc_..., clt_...) need it")
    return load_transcoders(
        config.TRANSCODERS, n_layers=model.config.n_layer, d_model=model.config.n_embd, device=device,
        dtype=dtype, lazy_decoders=config.TRANSCODER_LAZY_DECODERS,
    )  # fmt: skip


def settled(config: Config, spliced: SplicedModel) -> Config:
    """`config` with PREPEND_BOS as the run uses it (an unset key takes the SAEs' convention), so
    that tokenizing, caches and the graph's metadata all see one value."""
    return dataclasses.replace(config, PREPEND_BOS=spliced.prepend_bos)


def check_sources(config: Config, pairs: Collection[tuple[str, int]], source: str) -> None:
    """Every (site, layer) pair has an SAE source, else a ConfigError naming the unset keys."""
    unset = [
        f"{site.upper()}_SAES for {site_key(site, layer)!r}"
        for site, layer in pairs
        if site not in config.sae_sources
    ]
    if unset:
        raise ConfigError(f"{source} pins sites whose SAE key is unset: {', '.join(unset)}")


def script_passes(config: Config, script: str | None, prompt_tokens: int) -> list[Pass]:
    """The batched passes `script` ("fast", "pipe", "val", "hist"; None: a notebook's encode of
    DATASET batches) makes with `config`, for the memory check (`models.memory`); `prompt_tokens`:
    PROMPT's tokens, BOS included."""
    dataset = Pass("encode", config.BATCH_SIZE, config.MAX_SEQ_LEN)
    labels = [Pass("labels", config.BATCH_SIZE, config.MAX_SEQ_LEN)] if config.DATASET else []
    if script == "fast":
        n_examples = config.NUM_EXAMPLES if config.PAIRS_FILE else 1
        positions = config.MAX_SEQ_LEN if config.PAIRS_FILE else prompt_tokens
        means = [dataset] if config.BASELINE == "mean" else []
        return [Pass("attribution", min(config.BATCH_SIZE, n_examples), positions), *labels, *means]
    if script == "pipe":
        rows, limit = config.NUM_SEQUENCES_INTERPED, config.MAX_SEQ_INTERPED_LEN
        positions = limit if config.interp_source == "dataset" else max(prompt_tokens, 1)
        return [Pass("encode", rows, positions), Pass("ablation", 0, 0), *labels]
    if script == "val":
        return [Pass("validation", config.BATCH_SIZE, config.MAX_SEQ_LEN)]
    return [dataset]
