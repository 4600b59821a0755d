"""Checks that need only the config and the files, run before any model or SAE loads.

A run that cannot succeed should say so in its first second, not after
minutes of loading. An existing graph file is read as strictly as the merge
reads it; offline or without network, one message lists every download missing
from the Hugging Face cache, with its size (`downloads`), instead of a retry per file.
"""

import json
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

from sparse_coding.config import Config
from sparse_coding.config.yaml_file import shown
from sparse_coding.errors import ConfigError, GraphFileError
from sparse_coding.files import storage
from sparse_coding.graphs.graph_files import check_output_names, load_graph
from sparse_coding.models.bos import settle_prepend_bos
from sparse_coding.models.sae_sources import read_cfg, resolve_source
from sparse_coding.nodes import SITES
from sparse_coding.pipelines.downloads import (
    KNOWN_MODELS,
    Download,
    check_downloads,
    model_download,
    sae_downloads,
)
from sparse_coding.text.batches import text_ids

logger = logging.getLogger(__name__)


def preflight(
    config: Config,
    *,
    graph_files: tuple[str, str] | None = None,
    sites: Iterable[str] | None = None,
    sae_sites: Iterable[tuple[str, int]] | None = None,
    min_prompt_tokens: int = 0,
    prompt_key: str = "PROMPT",
    prompt_use: str = "fast.py explains the prompt's last token from the tokens before it",
    examples: bool = False,
    extra_downloads: Iterable[Download] = (),
    transcoders: bool = False,
) -> None:
    """Fail now, with one message, on what would fail after loading.

    Args:
        graph_files: (dot name, image name) the script merges into, if any.
        sites: the sites whose SAEs the script loads at every layer of
            ACTS_LAYERS_SLICE (default: every configured site).
        sae_sites: instead, exactly the (site, layer) SAEs it loads.
        min_prompt_tokens: the prompt's fewest tokens, BOS included (fast.py: 2); it is checked
            too against the model's context.
        prompt_key: the key holding the prompt the script explains (trace.py: TRACE_PROMPT when set),
            and `prompt_use` what it does with it, for the message.
        examples: the script reads PAIRS_FILE when it is set (fast.py, val.py).
        extra_downloads: hub downloads beyond the model and SAEs (trace.py's transcoders), listed
            in the same offline message.
        transcoders: the run splices TRANSCODERS: their BOS convention counts.
    """
    out_dir = config.model_data_dir(config.MODEL_DIR)
    check_writable(config.DATA_DIR, out_dir)
    if graph_files is not None:
        dot_name, image_name = graph_files
        check_output_names(out_dir / dot_name, out_dir / image_name)
        load_graph(out_dir / dot_name)
    if examples and config.PAIRS_FILE is not None:
        from sparse_coding.text.pairs import read_pairs_file  # imports torch: only runs that read pairs pay

        read_pairs_file(Path(config.PAIRS_FILE).expanduser(), config.NUM_EXAMPLES)
    model_dir = local_model_dir(config.MODEL_DIR)
    model_config = _model_config(config.MODEL_DIR, model_dir)
    unlisted = ""
    if sae_sites is None:
        sae_sites, unlisted = _slice_sae_sites(config, sites, model_config)
    sae_sites = list(sae_sites)
    downloads = [] if model_dir is not None else [model_download(config.MODEL_DIR)]
    check_downloads(downloads + sae_downloads(config, sae_sites) + list(extra_downloads), unlisted)
    prepend_bos = settled_prepend_bos(config, sae_sites, transcoders=transcoders)
    if min_prompt_tokens:
        check_prompt_length(config, min_prompt_tokens, prepend_bos, model_config, prompt_key, prompt_use)


def _slice_sae_sites(
    config: Config, sites: Iterable[str] | None, model_config: dict | None
) -> tuple[list[tuple[str, int]], str]:
    """The (site, layer) SAEs of `sites` over ACTS_LAYERS_SLICE, and what the offline message adds
    when the slice's layers are unknown before the model's config.json is cached."""
    chosen = [site for site in config.sae_sources if sites is None or site in sites]
    if not chosen and sites != ():
        keys = " and ".join(f"{site.upper()}_SAES" for site in (sites or SITES))
        raise ConfigError(
            f"{keys} {'is' if sites and len(sites) == 1 else 'are all'} unset: this script splices SAEs "
            f"there (a config with TRANSCODERS alone serves trace.py only); set an SAE source, e.g. "
            f"RESID_SAES: gpt2-small-res-jb"
        )
    layers = layers_before_loading(config, model_config)
    if layers is None and chosen:
        unlisted = (
            f"; and the {', '.join(chosen)} SAEs of ACTS_LAYERS_SLICE (listed once config.json is cached)"
        )
        return [], unlisted
    return [(site, layer) for site in chosen for layer in layers or []], ""


def check_writable(data_dir: Path, out_dir: Path) -> None:
    """The run's output folder exists (or can be made), lies inside DATA_DIR (no link leads out) and
    takes a file."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        storage.check_inside(data_dir, out_dir)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise GraphFileError(
            f"The output folder {out_dir} (DATA_DIR/<model>) cannot be written: {e.strerror or e}; "
            f"set DATA_DIR to a folder you can write"
        ) from e


def local_model_dir(model_dir: str) -> Path | None:
    """MODEL_DIR as a local folder when it is meant as one (a path, not 'owner/name'), which must
    hold a config.json."""
    path = Path(model_dir).expanduser()
    if not (model_dir.startswith(("/", ".", "~")) or model_dir.count("/") > 1 or path.exists()):
        return None
    if not path.is_dir():
        raise ConfigError(
            f"MODEL_DIR folder {path} not found; give an existing local folder (with config.json) "
            f"or a hub id such as 'openai-community/gpt2'"
        )
    if not (path / "config.json").is_file():
        raise ConfigError(f"MODEL_DIR folder {path} has no config.json; it must hold a Hugging Face model")
    return path


def _model_config(model_id: str, model_dir: Path | None) -> dict | None:
    """The model's config.json, if it is local or cached (for its layer count); a JSON value that is
    no object of settings with a usable n_layer is a ConfigError."""
    from huggingface_hub import try_to_load_from_cache

    path = model_dir / "config.json" if model_dir else try_to_load_from_cache(model_id, "config.json")
    if not isinstance(path, (str, Path)):
        return None
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the loader reports it with its own message
    n_layer = values.get("n_layer", 12) if isinstance(values, dict) else None
    if not isinstance(n_layer, int) or isinstance(n_layer, bool) or n_layer < 1:
        raise ConfigError(
            f"MODEL_DIR {model_id!r}: {path} holds {shown(values)}; a model's config.json is a JSON object "
            f"of settings such as n_layer (a positive integer), n_embd and vocab_size, as on the hub"
        )
    return values


def settled_prepend_bos(
    config: Config, sae_sites: Iterable[tuple[str, int]], *, transcoders: bool = False
) -> bool:
    """PREPEND_BOS as the run will use it, from the SAEs' cfg.json files alone (`models.bos`), and
    TRANSCODERS' convention when the run splices them.

    Raises:
        ConfigError: PREPEND_BOS is unset and the SAEs were trained both ways.
        SAELoadError: an SAE's cfg.json is missing or not an SAELens cfg.
    """
    trained = {}
    for site, layer in sae_sites:
        if site in config.sae_sources:
            resolved = resolve_source(config.sae_sources[site], layer)
            trained[resolved.description] = read_cfg(resolved)["prepend_bos"]
    if transcoders and config.TRANSCODERS:
        from sparse_coding.transcoders.sources import transcoders_bos  # imports torch

        trained |= transcoders_bos(config.TRANSCODERS)
    return settle_prepend_bos(config.PREPEND_BOS, trained)[0]


def model_layer_count(config: Config, model_config: dict | None = None) -> int | None:
    """MODEL_DIR's number of blocks before loading it: from its config.json (local or cached), or
    the table of known hub models; None when neither says."""
    if model_config is None:
        model_config = _model_config(config.MODEL_DIR, local_model_dir(config.MODEL_DIR))
    if model_config is not None:
        return int(model_config.get("n_layer", 12))
    return KNOWN_MODELS.get(config.MODEL_DIR, (None, None))[0]


def layers_before_loading(config: Config, model_config: dict | None = None) -> range | None:
    """The layers ACTS_LAYERS_SLICE selects, known before the model loads; None when not yet known."""
    n_layers = model_layer_count(config, model_config)
    return config.layer_range(n_layers) if n_layers is not None else _explicit_layers(config)


def _explicit_layers(config: Config) -> range | None:
    """The slice's layers when both its bounds are given and non-negative (no model needed)."""
    start, stop = (text.strip() for text in config.ACTS_LAYERS_SLICE.split(":")[:2])
    if start.isdigit() and stop.isdigit():
        return range(int(start), int(stop))
    return None


def check_prompt_length(
    config: Config,
    min_tokens: int,
    prepend_bos: bool,
    model_config: dict | None,
    prompt_key: str,
    prompt_use: str,
) -> None:
    """The prompt under `prompt_key` has at least `min_tokens` tokens (BOS included) and fits the
    model's context, from the tokenizer alone, once the tokenizer is known to belong to the model of
    `model_config` (its config.json); `prompt_use` says why it needs them."""
    from sparse_coding.text.tokenizer import check_tokenizer, load_tokenizer  # no torch: fails at once

    try:
        tokenizer = load_tokenizer(config.MODEL_DIR)
    except (OSError, ValueError):
        return  # load_model reports an unloadable MODEL_DIR with its own message
    vocab_size = (model_config or {}).get("vocab_size")
    if isinstance(vocab_size, int):
        bos_token_id = model_config.get("bos_token_id")
        bos_token_id = bos_token_id if isinstance(bos_token_id, int) else None
        check_tokenizer(tokenizer, config.MODEL_DIR, vocab_size=vocab_size, bos_token_id=bos_token_id)
    prompt = getattr(config, prompt_key)
    n_tokens = len(text_ids(tokenizer, prompt, prepend_bos=prepend_bos))
    if n_tokens < min_tokens:
        raise ConfigError(
            f"{prompt_key} {prompt[:80]!r} has {n_tokens} token(s), BOS included; {prompt_use}, so it "
            f"needs at least {min_tokens}"
        )
    context = (model_config or {}).get("n_positions")
    if isinstance(context, int) and n_tokens > context:
        raise ConfigError(
            f"{prompt_key} {prompt[:80]!r} has {n_tokens} tokens, BOS included, more than the model's "
            f"context of {context} positions; shorten it"
        )
