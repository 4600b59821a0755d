"""What a run downloads from the Hugging Face hub, with sizes, and the one offline check of it.

Offline (HF_HUB_OFFLINE) or without network, a run that lacks a download
stops before loading anything, with one message listing every download it
needs (the model's config, weights and tokenizer, and each SAE folder), how
big each is, the commands that fetch them, and the offline demo to try
meanwhile: an air-gapped user fetches everything in one round trip.

Sizes are data: GPT-2 small's hub weights file, and each known release's
``sae_weights.safetensors`` per layer computed from its float32 shapes
(2 d_in d_sae + d_sae + d_in numbers of 4 bytes, d_in = 768).
"""

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from sparse_coding.config import Config
from sparse_coding.errors import SparseCodingError
from sparse_coding.files.hub_files import why_hub_cannot_be_asked
from sparse_coding.models.sae_sources import CFG_FILE, WEIGHTS_FILE, resolve_source

logger = logging.getLogger(__name__)

MODEL_FILES = ("config.json", "tokenizer.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # one of them
MODEL_FETCH = ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors")
# Hub models whose facts are known before their config.json is cached: layers, MB to download.
KNOWN_MODELS = {"openai-community/gpt2": (12, 550), "gpt2": (12, 550)}
_MB = {24576: 151, 32768: 201, 131072: 806}  # sae_weights.safetensors by d_sae, d_in 768, float32
SAE_MB = {
    "gpt2-small-res-jb": _MB[24576],
    "gpt2-small-resid-post-v5-32k": _MB[32768],
    "gpt2-small-attn-out-v5-32k": _MB[32768],
    "gpt2-small-mlp-out-v5-32k": _MB[32768],
    "gpt2-small-resid-post-v5-128k": _MB[131072],
    "gpt2-small-attn-out-v5-128k": _MB[131072],
    "gpt2-small-mlp-out-v5-128k": _MB[131072],
}
DEMO_HINT = (
    "To try the tool offline meanwhile, run the demo, which needs no download: "
    "python3 sparse_coding/fast.py --config sparse_coding/config/demo_config.yaml (or: sparse-coding demo)"
)


class Download(NamedTuple):
    """One thing a run fetches from the hub: what it is, its repo, its files (any one of a tuple), the
    patterns `hf download --include` fetches it by (empty: a model, fetched by file name), size."""

    what: str
    repo_id: str
    files: tuple[str | tuple[str, ...], ...]
    includes: tuple[str, ...]
    mb: int | None


def model_download(model_id: str) -> Download:
    """MODEL_DIR as a hub download: config, weights and tokenizer."""
    mb = KNOWN_MODELS.get(model_id, (None, None))[1]
    return Download(f"model {model_id}", model_id, (*MODEL_FILES, WEIGHT_FILES), (), mb)


def sae_downloads(config: Config, sae_sites: Iterable[tuple[str, int]]) -> list[Download]:
    """The hub SAE folders of (site, layer) pairs; local ones and unset sites are not downloads."""
    downloads = []
    for site, layer in sae_sites:
        if site not in config.sae_sources:
            continue  # the loader names the unset key
        source = config.sae_sources[site]
        resolved = resolve_source(source, layer)
        if resolved.repo_id is not None:
            files = tuple(f"{resolved.folder}/{name}" for name in (CFG_FILE, WEIGHTS_FILE))
            downloads.append(
                Download(
                    f"SAE {resolved.description}",
                    resolved.repo_id,
                    files,
                    (f"{resolved.folder}/*",),
                    SAE_MB.get(source),
                )
            )
    return downloads


def _cached(download: Download) -> bool:
    from huggingface_hub import try_to_load_from_cache

    def one(name: str) -> bool:
        return isinstance(try_to_load_from_cache(download.repo_id, name), str)

    return all(any(map(one, name)) if isinstance(name, tuple) else one(name) for name in download.files)


def _size(mb: float) -> str:
    return f"{mb / 1000:.1f} GB" if mb >= 1000 else f"{mb:.0f} MB"


def _fetch_commands(missing: list[Download]) -> str:
    """`hf download` commands for `missing`: a model's files by name, SAE folders one command per repo."""
    folders: dict[str, list[str]] = {}
    commands = []
    for download in missing:
        if not download.includes:  # a model: its files, not every format the repo holds
            commands.append(f"hf download {download.repo_id} {' '.join(MODEL_FETCH)}")
        else:
            folders.setdefault(download.repo_id, []).extend(f"'{glob}'" for glob in download.includes)
    commands += [f"hf download {repo} --include {' '.join(globs)}" for repo, globs in folders.items()]
    return "; ".join(commands)


def missing_message(missing: list[Download], why: str, cache: str, unlisted: str = "") -> str:
    """The one message naming every missing download, its size, how to fetch them, and the demo."""
    known = [d.mb for d in missing if d.mb is not None]
    total = (
        f" (about {_size(sum(known))}{'' if len(known) == len(missing) else ' and more'})" if known else ""
    )
    items = "; ".join(f"{d.what}" + (f", ~{_size(d.mb)}" if d.mb is not None else "") for d in missing)
    return (
        f"{why}, and the Hugging Face cache {cache} lacks {len(missing)} of the downloads this run needs"
        f"{total}: {items}{unlisted}. Download them where there is network into that cache (HF_HUB_CACHE): "
        f"{_fetch_commands(missing)}; then run again. {DEMO_HINT}"
    )


def check_downloads(downloads: list[Download], unlisted: str = "") -> None:
    """Stop, listing every missing download, when the hub cannot be asked (offline or unreachable).

    Args:
        unlisted: words for downloads that cannot be listed yet (appended to the list).
    """
    from huggingface_hub import constants

    missing = [d for d in downloads if not _cached(d)]
    if not missing:
        return
    why = why_hub_cannot_be_asked()
    if why is None:
        total = sum(d.mb for d in missing if d.mb is not None)
        if total:
            logger.info(
                "Downloading %d items from the hub (about %s) into the cache", len(missing), _size(total)
            )
        return
    raise SparseCodingError(missing_message(missing, why, str(Path(constants.HF_HUB_CACHE)), unlisted))
