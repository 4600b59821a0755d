"""The cache of hist.py's thresholds: written by hist.py, read by fast.py (the maths is `thresholds`).

Cache (one `sparse_coding.files.cache.Cache`), under
`config.model_data_dir(MODEL_DIR)`, written atomically:
- `thresholds.safetensors`: one float32 (d_sae,) tensor per site key (`resid_9`).
- `thresholds.json`: what the thresholds depend on, the
  `cache.cache_fingerprint` (`model`; `saes`: per site key its source and
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
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from sparse_coding.algorithms.thresholds import ThresholdResult, cluster_hook_name
from sparse_coding.algorithms.top_percentile import samples_to_resolve
from sparse_coding.config import Config
from sparse_coding.errors import StorageError
from sparse_coding.files import storage
from sparse_coding.files.cache import Cache, Stored, cache_fingerprint, fingerprint_differences, sae_identity
from sparse_coding.runtime import distributed
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
    """Everything cached thresholds depend on (`cache.cache_fingerprint`), as JSON-ready values."""
    layer = config.layer_range(spliced.n_layers).start
    saes = {
        site.key: sae_identity(config.sae_sources.get(site.kind), site.sae.weights_path)
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
    return cache_fingerprint(model=config.MODEL_DIR, saes=saes, dataset=config.DATASET, settings=settings)


def thresholds_cache(config: Config, spliced: SplicedModel) -> Cache[dict[str, Tensor]]:
    """The thresholds file for this run: it serves when its key matches and it covers every spliced site."""

    def encode(values: dict[str, Tensor], metadata: dict[str, Any]) -> bytes:
        text = json.dumps(metadata, indent=2, sort_keys=True)
        return save(values, metadata={"thresholds_json": text})

    def why_stale(stored: Stored[dict[str, Tensor]], key: dict[str, Any]) -> list[str]:
        found = fingerprint_differences(stored.key, key)
        for site in spliced.sites:
            if site.key not in stored.value or site.key not in stored.key.get("saes", {}):
                found.append(f"no threshold for site {site.key}")
            elif (shape := tuple(stored.value[site.key].shape)) != (site.sae.d_sae,):
                found.append(f"{site.key} has {shape[0]} thresholds, its SAE {site.sae.d_sae} features")
        return found

    path = config.model_data_dir(config.MODEL_DIR) / THRESHOLDS_FILE
    return Cache(path, cache_key(config, spliced), encode, _decode, why_stale, inside=config.DATA_DIR)


def save_thresholds(config: Config, spliced: SplicedModel, result: ThresholdResult) -> Path:
    """Write thresholds.safetensors and thresholds.json atomically; returns the safetensors path."""
    store = thresholds_cache(config, spliced)
    store.key |= {
        "slice": config.ACTS_LAYERS_SLICE,
        "n_sequences": len(result.cut_positions),
        "n_tokens": int(result.cluster_sizes.sum()),
        "n_kept": result.n_kept,
        "cluster_sizes": result.cluster_sizes.tolist(),
        "percentile_resolved": result.n_kept >= samples_to_resolve(config.THRESHOLD_PERCENTILE),
        "world_size": distributed.world_size(),
    }
    store.save({key: value.float().contiguous().cpu() for key, value in result.thresholds.items()})
    text = json.dumps(store.key, indent=2, sort_keys=True) + "\n"  # for people; the header's copy is read
    storage.write_atomic(store.path.with_name(METADATA_FILE), text, inside=config.DATA_DIR)
    logger.info("Wrote thresholds for %d sites to %s", len(result.thresholds), store.path)
    return store.path


def load_thresholds(config: Config, spliced: SplicedModel) -> Thresholds | None:
    """Cached thresholds of every spliced site, or None (logged) when absent or stale (`thresholds_cache`)."""
    if config.DATASET is None:
        logger.info("DATASET is unset, so no dataset thresholds apply (hist.py computes them from DATASET)")
        return None
    store = thresholds_cache(config, spliced)
    try:
        stored = store.read()
    except (OSError, KeyError, ValueError, TypeError, AttributeError, SafetensorError, StorageError) as e:
        logger.warning("Ignoring cached thresholds %s: unreadable (%s); rerun hist.py", store.path, e)
        return None
    if stored is None:
        logger.info("No cached thresholds at %s; run hist.py to compute them", store.path)
        return None
    if differences := store.why_stale(stored, store.key):
        logger.warning("Ignoring stale thresholds %s (rerun hist.py): %s", store.path, "; ".join(differences))
        return None
    cached, values, path = stored.key, stored.value, store.path
    cluster = cached["cluster"]
    description = (
        f"{cached['percentile']}th-percentile thresholds from {cached['n_kept']} of {cached['n_sequences']} "
        f"sequences of {cached['dataset']['DATASET']} (cluster {cluster['KEEPER_CLUSTER_INDEX']} of "
        f"{cluster['NUM_CLUSTERS']} at {cluster['hook']}), cached in {path}"
    )
    return Thresholds({site.key: values[site.key].to(spliced.device) for site in spliced.sites}, description)


def _decode(data: bytes) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(the key in the safetensors header, the tensors)."""
    header_length = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + header_length]).get("__metadata__") or {}
    if "thresholds_json" not in metadata:
        raise ValueError("no thresholds_json metadata in its header")
    return json.loads(metadata["thresholds_json"]), load(data)
