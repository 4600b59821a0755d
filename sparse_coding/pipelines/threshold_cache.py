"""The cache of hist.py's thresholds: written by hist.py, read by fast.py.

Kept apart from `thresholds` (the preclustering and percentile maths)
because it is file handling: what a cache depends on, atomic writes, and
telling a stale cache from a usable one in words.

Cache, under `config.model_data_dir(MODEL_DIR)`, written atomically by
`sparse_coding.storage`:
- `thresholds.safetensors`: one float32 (d_sae,) tensor per site key (`resid_9`).
- `thresholds.json`: what the thresholds depend on, the
  `storage.cache_fingerprint` (`model`; `saes`: per site key its source and
  weights file identity; `dataset_identity`: a local file's path, size and
  mtime, or a hub name and revision; `dataset`: DATASET, DATASET_CONFIG,
  DATASET_SPLIT, DATASET_TEXT_COLUMN, NUM_SEQUENCES_EVALED, MAX_SEQ_LEN,
  PREPEND_BOS; `cluster`: hook, NUM_CLUSTERS, KEEPER_CLUSTER_INDEX, SEED;
  `percentile`: THRESHOLD_PERCENTILE), plus `slice`, the counts
  (`n_sequences`, `n_tokens`, `n_kept`, `cluster_sizes`) and
  `percentile_resolved` (`samples_to_resolve`: whether n_kept was enough for
  the percentile to lie below the maximum) and `world_size` (processes that
  computed them) for people. The safetensors header
  holds the same JSON (`thresholds_json`), and that copy is the one read, so
  two files from different runs are never taken as one cache.
`load_thresholds` uses a cache only when the fingerprints agree and it covers
every spliced site (it may cover more).
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import Tensor

from sparse_coding import distributed, storage
from sparse_coding.algorithms.thresholds import ThresholdResult, cluster_hook_name, samples_to_resolve
from sparse_coding.config import Config
from sparse_coding.splicing.splice import SplicedModel

logger = logging.getLogger(__name__)

THRESHOLDS_FILE = "thresholds.safetensors"
METADATA_FILE = "thresholds.json"
DATASET_KEYS = ("DATASET", "DATASET_CONFIG", "DATASET_SPLIT", "DATASET_TEXT_COLUMN")


@dataclass(frozen=True)
class Thresholds:
    """Cached per-feature thresholds, as fast.py uses them."""

    values: dict[str, Tensor]  # site key -> (d_sae,) float32
    description: str  # which thresholds these are, for "which was used" messages


def cache_key(config: Config, spliced: SplicedModel) -> dict[str, Any]:
    """Everything cached thresholds depend on (`storage.cache_fingerprint`), as JSON-ready values."""
    layer = config.layer_range(spliced.n_layers).start
    saes = {
        site.key: storage.sae_identity(config.sae_sources.get(site.kind), site.sae.weights_path)
        for site in spliced.sites
    }
    keys = DATASET_KEYS + ("NUM_SEQUENCES_EVALED", "MAX_SEQ_LEN", "PREPEND_BOS")
    settings = {
        "dataset": {key: getattr(config, key) for key in keys},
        "cluster": {
            "hook": cluster_hook_name(spliced, layer),
            "NUM_CLUSTERS": config.NUM_CLUSTERS,
            "KEEPER_CLUSTER_INDEX": config.KEEPER_CLUSTER_INDEX,
            "SEED": config.SEED,
        },
        "percentile": config.THRESHOLD_PERCENTILE,
    }
    return storage.cache_fingerprint(
        model=config.MODEL_DIR, saes=saes, dataset=config.DATASET, settings=settings
    )


def save_thresholds(config: Config, spliced: SplicedModel, result: ThresholdResult) -> Path:
    """Write thresholds.safetensors and thresholds.json atomically; returns the safetensors path.

    The safetensors header carries the same JSON, so a pair of files from two
    different runs can never be mistaken for one cache.
    """
    directory = config.model_data_dir(config.MODEL_DIR)
    metadata = cache_key(config, spliced) | {
        "slice": config.ACTS_LAYERS_SLICE,
        "n_sequences": len(result.cut_positions),
        "n_tokens": int(result.cluster_sizes.sum()),
        "n_kept": result.n_kept,
        "cluster_sizes": result.cluster_sizes.tolist(),
        "percentile_resolved": result.n_kept >= samples_to_resolve(config.THRESHOLD_PERCENTILE),
        "world_size": distributed.world_size(),
    }
    text = json.dumps(metadata, indent=2, sort_keys=True)
    tensors = {key: value.float().contiguous().cpu() for key, value in result.thresholds.items()}
    path = directory / THRESHOLDS_FILE
    storage.write_atomic(path, save(tensors, metadata={"thresholds_json": text}))
    storage.write_atomic(directory / METADATA_FILE, text + "\n")  # for people; the header's copy is read
    logger.info("Wrote thresholds for %d sites to %s", len(tensors), path)
    return path


def load_thresholds(config: Config, spliced: SplicedModel) -> Thresholds | None:
    """Cached thresholds for every spliced site, or None (logged) when absent or stale.

    A cache is used only when the model, dataset settings, cluster settings and
    percentile match the current config, and it holds a threshold of the right
    width from the same SAE source for every site of `spliced` (it may hold more).
    """
    if config.DATASET is None:
        logger.info("DATASET is unset, so no dataset thresholds apply (hist.py computes them from DATASET)")
        return None
    path = config.model_data_dir(config.MODEL_DIR) / THRESHOLDS_FILE
    if not path.is_file():
        logger.info("No cached thresholds at %s; run hist.py to compute them", path)
        return None
    try:
        cached, values = _read_cache(path)
        differences = _differences(cached, cache_key(config, spliced), values, spliced)
    except (OSError, KeyError, ValueError, TypeError, AttributeError, SafetensorError) as e:
        logger.warning("Ignoring cached thresholds %s: unreadable (%s); rerun hist.py", path, e)
        return None
    if differences:
        logger.warning("Ignoring stale thresholds %s (rerun hist.py): %s", path, "; ".join(differences))
        return None
    cluster = cached["cluster"]
    description = (
        f"{cached['percentile']}th-percentile thresholds from {cached['n_kept']} of {cached['n_sequences']} "
        f"sequences of {cached['dataset']['DATASET']} (cluster {cluster['KEEPER_CLUSTER_INDEX']} of "
        f"{cluster['NUM_CLUSTERS']} at {cluster['hook']}), cached in {path}"
    )
    return Thresholds({site.key: values[site.key].to(spliced.device) for site in spliced.sites}, description)


def _read_cache(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata() or {}
        if "thresholds_json" not in metadata:
            raise ValueError("no thresholds_json metadata in its header")
        cached = json.loads(metadata["thresholds_json"])
    return cached, load_file(str(path))


def _differences(
    cached: dict[str, Any], current: dict[str, Any], values: dict[str, Tensor], spliced: SplicedModel
) -> list[str]:
    """What keeps a cache from serving this run, in words; empty when it fits."""
    found = storage.fingerprint_differences(cached, current)
    for site in spliced.sites:
        if site.key not in values or site.key not in cached.get("saes", {}):
            found.append(f"no threshold for site {site.key}")
        elif tuple(values[site.key].shape) != (site.sae.d_sae,):
            found.append(
                f"{site.key} has {values[site.key].shape[0]} thresholds, its SAE {site.sae.d_sae} features"
            )
    return found
