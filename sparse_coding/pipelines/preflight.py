"""Checks that need only the config and the files, run before any model or SAE loads.

A run that cannot succeed should say so in its first second, not after
minutes of loading: an image extension dot cannot draw, an existing graph file
that cannot be read (read as strictly as the merge reads it: an edge to a
missing node, a non-finite number, runs of the wrong type), an output folder
that cannot be written or that a link leads out of DATA_DIR, a PAIRS_FILE that
is not JSON Lines text, a local MODEL_DIR that does not exist, and — offline
or without network — a model or SAE missing from the Hugging Face cache (one
message naming what to download and where the cache is, instead of a retry
per file).
"""

import json
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

from sparse_coding import storage
from sparse_coding.config import Config
from sparse_coding.errors import ConfigError, GraphFileError, SparseCodingError
from sparse_coding.graphs.graph_files import check_output_names, load_graph
from sparse_coding.models.sae_sources import CFG_FILE, WEIGHTS_FILE, resolve_source

logger = logging.getLogger(__name__)

# Seconds to wait for the hub before calling the network unreachable.
HUB_PROBE_TIMEOUT_S = 3.0


def preflight(
    config: Config,
    *,
    graph_files: tuple[str, str] | None = None,
    sites: Iterable[str] | None = None,
    sae_sites: Iterable[tuple[str, int]] | None = None,
    min_prompt_tokens: int = 0,
    examples: bool = False,
) -> None:
    """Fail now, with one message, on what would fail after loading.

    Args:
        graph_files: (dot name, image name) the script merges into, if any.
        sites: the sites whose SAEs the script loads at every layer of
            ACTS_LAYERS_SLICE (default: every configured site).
        sae_sites: instead, exactly the (site, layer) SAEs it loads.
        min_prompt_tokens: PROMPT's fewest tokens, BOS included (fast.py: 2).
        examples: the script reads PAIRS_FILE when it is set (fast.py, val.py).

    Raises:
        SparseCodingError: the first problem found, naming the key or file.
    """
    out_dir = config.model_data_dir(config.MODEL_DIR)
    check_writable(config.DATA_DIR, out_dir)
    if graph_files is not None:
        dot_name, image_name = graph_files
        check_output_names(out_dir / dot_name, out_dir / image_name)
        load_graph(out_dir / dot_name)
    if examples and config.PAIRS_FILE is not None:
        from sparse_coding.pairs import read_pairs_file  # imports torch: only runs that read pairs pay

        read_pairs_file(Path(config.PAIRS_FILE).expanduser(), config.NUM_EXAMPLES)
    model_dir = local_model_dir(config.MODEL_DIR)
    model_config = _model_config(config.MODEL_DIR, model_dir)
    if sae_sites is None and model_config is not None:
        layers = config.layer_range(int(model_config.get("n_layer", 0)))
        chosen = [site for site in config.sae_sources if sites is None or site in sites]
        sae_sites = [(site, layer) for site in chosen for layer in layers]
    check_hub_files(_hub_files(config, model_dir, sae_sites or []))
    if min_prompt_tokens:
        check_prompt_length(config, min_prompt_tokens)


def check_writable(data_dir: Path, out_dir: Path) -> None:
    """The run's output folder exists (or can be made), lies inside DATA_DIR (no link leads out) and
    takes a file."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise GraphFileError(
            f"The output folder {out_dir} (DATA_DIR/<model>) cannot be written: {e.strerror or e}; "
            f"set DATA_DIR to a folder you can write"
        ) from e
    storage.check_inside(data_dir, out_dir)


def local_model_dir(model_dir: str) -> Path | None:
    """MODEL_DIR as a local folder when it is meant as one (a path, not 'owner/name').

    Raises:
        ConfigError: it reads as a path but the folder or its config.json is missing.
    """
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
    """The model's config.json, if it is local or cached (for its layer count)."""
    from huggingface_hub import try_to_load_from_cache

    path = model_dir / "config.json" if model_dir else try_to_load_from_cache(model_id, "config.json")
    if not isinstance(path, (str, Path)):
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the loader reports it with its own message


def _hub_files(
    config: Config, model_dir: Path | None, sae_sites: Iterable[tuple[str, int]]
) -> dict[str, list[tuple[str, str]]]:
    """What -> (repo id, file) of every hub file the run needs."""
    files: dict[str, list[tuple[str, str]]] = {}
    if model_dir is None:
        files[f"model {config.MODEL_DIR}"] = [(config.MODEL_DIR, "config.json")]
    for site, layer in sae_sites:
        if site not in config.sae_sources:
            continue  # the loader names the unset key
        resolved = resolve_source(config.sae_sources[site], layer)
        if resolved.repo_id is not None:
            files[f"SAE {resolved.description}"] = [
                (resolved.repo_id, f"{resolved.folder}/{name}") for name in (CFG_FILE, WEIGHTS_FILE)
            ]
    return files


def check_hub_files(files: dict[str, list[tuple[str, str]]]) -> None:
    """Stop when a needed hub file is not cached and the hub cannot be asked (offline or unreachable)."""
    from huggingface_hub import constants, try_to_load_from_cache

    missing = [
        what
        for what, pairs in files.items()
        if not all(isinstance(try_to_load_from_cache(repo, name), str) for repo, name in pairs)
    ]
    if not missing:
        return
    if constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set"
    elif (problem := _hub_unreachable(constants.ENDPOINT)) is not None:
        why = f"the hub {constants.ENDPOINT} cannot be reached ({problem})"
    else:
        return
    repos = sorted({repo for what in missing for repo, _ in files[what]})
    raise SparseCodingError(
        f"{why}, and the Hugging Face cache {constants.HF_HUB_CACHE} lacks {len(missing)} of the "
        f"downloads this run needs: {'; '.join(missing)}. Download them where there is network "
        f"(e.g. `hf download {repos[0]}`{' ...' if len(repos) > 1 else ''}) into that cache "
        f"(HF_HUB_CACHE), then run again"
    )


def check_prompt_length(config: Config, min_tokens: int) -> None:
    """PROMPT has at least `min_tokens` tokens (BOS included), from the tokenizer alone."""
    from sparse_coding.tokenizer import load_tokenizer  # no torch: a short PROMPT fails at once

    try:
        tokenizer = load_tokenizer(config.MODEL_DIR)
    except (OSError, ValueError):
        return  # load_model reports an unloadable MODEL_DIR with its own message
    n_tokens = len(tokenizer(config.PROMPT, add_special_tokens=False)["input_ids"]) + int(config.PREPEND_BOS)
    if n_tokens < min_tokens:
        raise ConfigError(
            f"PROMPT {config.PROMPT[:80]!r} has {n_tokens} token(s), BOS included; fast.py explains the "
            f"prompt's last token from the tokens before it, so it needs at least {min_tokens}"
        )


def _hub_unreachable(endpoint: str) -> str | None:
    """None when the hub answers within HUB_PROBE_TIMEOUT_S, else why not."""
    import requests

    try:
        requests.head(endpoint, timeout=HUB_PROBE_TIMEOUT_S, allow_redirects=False)
    except requests.RequestException as e:
        return type(e).__name__
    return None
