"""A script run's checkpoint, from the config: where it lives and what must match to resume it."""

from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sparse_coding.config import Config
from sparse_coding.files import cache
from sparse_coding.runtime.checkpoints import RunCheckpoint, checkpoint_file, checkpointed
from sparse_coding.splicing.splice import SplicedModel

# Keys that do not shape a run's result: changing them between a kill and --resume is fine.
UNSHAPING_KEYS = ("CHECKPOINT_EVERY",)


def run_checkpoint(
    config: Config,
    script: str,
    spliced: SplicedModel,
    *,
    resume: bool,
    inputs: Mapping[str, Any] | None = None,
) -> AbstractContextManager[RunCheckpoint]:
    """The `runtime.checkpoints.checkpointed` block of one run of `script` ("hist.py") on `spliced`, saved
    every CHECKPOINT_EVERY batches and resumed only by a run of the same `run_fingerprint`.

    Args:
        resume: continue from the checkpoint on disk (``--resume``), else start over.
        inputs: the script's other inputs (files it reads, command-line choices), JSON-ready.
    """
    fingerprint = run_fingerprint(config, spliced, script, inputs or {})
    store = checkpoint_file(checkpoint_path(config, script), fingerprint, inside=config.DATA_DIR)
    return checkpointed(store, every=config.CHECKPOINT_EVERY, resume=resume)


def checkpoint_path(config: Config, script: str) -> Path:
    """DATA_DIR/<model>/checkpoints/<script stem>.ckpt."""
    return config.model_data_dir(config.MODEL_DIR) / "checkpoints" / f"{Path(script).stem}.ckpt"


def run_fingerprint(
    config: Config, spliced: SplicedModel, script: str, inputs: Mapping[str, Any]
) -> dict[str, Any]:
    """What a run's result depends on (`cache.cache_fingerprint`), to tell a checkpoint's run apart."""
    saes = {site.key: site_identity(site) for site in spliced.sites}
    keys = {key: value for key, value in config.to_metadata().items() if key not in UNSHAPING_KEYS}
    return cache.cache_fingerprint(
        model=config.MODEL_DIR,
        saes=saes,
        dataset=config.DATASET,
        settings={"script": script, "config": keys, "inputs": dict(inputs), "sites": sorted(saes)},
    )


def site_identity(site: Any) -> dict[str, Any]:
    """An SAE site by its source and weights file; a transcoder site by its source and its layer's files."""
    sae = getattr(site, "sae", None)
    if sae is None:
        files = site.transcoders.files.get(site.layer, [])
        folder = str(files[0].parent) if files else None
        weights = {"path": folder, "files": [cache.path_identity(path) for path in files]}
        return {"source": site.transcoders.source, "weights": weights}
    return cache.sae_identity(sae.cfg.source, sae.weights_path)


def file_input(path: str | Path | None) -> dict[str, Any] | None:
    """A file a run reads, by its identity (`cache.path_identity`); None when unset."""
    return None if path is None else cache.path_identity(Path(path))
