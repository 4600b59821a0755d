"""The cache of hist.py's thresholds: written by hist.py, read by fast.py.

Kept apart from `thresholds` (the preclustering and percentile maths)
because it is file handling: what a cache depends on, atomic writes, and
telling a stale cache from a usable one in words.

Cache, under `config.model_data_dir(MODEL_DIR)`:
- `thresholds.safetensors`: one float32 (d_sae,) tensor per site key (`resid_9`).
- `thresholds.json`: what the thresholds depend on (`model`, `sae_sources` per
  site key, `dataset`: DATASET, DATASET_CONFIG, DATASET_SPLIT,
  DATASET_TEXT_COLUMN, NUM_SEQUENCES_EVALED, MAX_SEQ_LEN, PREPEND_BOS and, for a
  local file, its resolved path, size and mtime; `cluster`: hook, NUM_CLUSTERS,
  KEEPER_CLUSTER_INDEX, SEED; `percentile`), plus `slice` and the counts
  (`n_sequences`, `n_tokens`, `n_kept`, `cluster_sizes`) for people. The
  safetensors header holds the same JSON (`thresholds_json`), and that copy is
  the one read, so two files from different runs are never taken as one cache.
`load_thresholds` uses a cache only when all the former match the current run
and it covers every spliced site (it may cover more).
"""

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from sparse_coding.algorithms.thresholds import PERCENTILE, ThresholdResult, cluster_hook_name
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
    """Everything cached thresholds depend on, as JSON-ready values."""
    layer = config.layer_range(spliced.n_layers).start
    return {
        "model": config.MODEL_DIR,
        "sae_sources": {site.key: config.sae_sources.get(site.kind) for site in spliced.sites},
        "dataset": _dataset_settings(config),
        "cluster": {
            "hook": cluster_hook_name(spliced, layer),
            "NUM_CLUSTERS": config.NUM_CLUSTERS,
            "KEEPER_CLUSTER_INDEX": config.KEEPER_CLUSTER_INDEX,
            "SEED": config.SEED,
        },
        "percentile": PERCENTILE,
    }


def save_thresholds(config: Config, spliced: SplicedModel, result: ThresholdResult) -> Path:
    """Write thresholds.safetensors and thresholds.json atomically; returns the safetensors path.

    The safetensors header carries the same JSON, so a pair of files from two
    different runs can never be mistaken for one cache.
    """
    directory = config.model_data_dir(config.MODEL_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = cache_key(config, spliced) | {
        "slice": config.ACTS_LAYERS_SLICE,
        "n_sequences": len(result.cut_positions),
        "n_tokens": int(result.cluster_sizes.sum()),
        "n_kept": result.n_kept,
        "cluster_sizes": result.cluster_sizes.tolist(),
    }
    text = json.dumps(metadata, indent=2, sort_keys=True)
    tensors = {key: value.float().contiguous().cpu() for key, value in result.thresholds.items()}
    path = directory / THRESHOLDS_FILE
    _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"thresholds_json": text}))
    _atomic_write(directory / METADATA_FILE, lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
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


def _dataset_settings(config: Config) -> dict[str, Any]:
    keys = DATASET_KEYS + ("NUM_SEQUENCES_EVALED", "MAX_SEQ_LEN", "PREPEND_BOS")
    settings: dict[str, Any] = {key: getattr(config, key) for key in keys}
    path = Path(config.DATASET).expanduser() if config.DATASET else None
    if path is not None and path.is_file():  # a local file can change under the same name
        stat = path.stat()
        settings["file"] = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return settings


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
    found: list[str] = []
    for name in ("model", "dataset", "cluster", "percentile"):
        found += _changes(name, cached.get(name), current[name])
    cached_sources = cached.get("sae_sources", {})
    for site in spliced.sites:
        if site.key not in values or site.key not in cached_sources:
            found.append(f"no threshold for site {site.key}")
        elif cached_sources[site.key] != current["sae_sources"][site.key]:
            found.append(
                f"{site.key} SAE was {cached_sources[site.key]!r}, now {current['sae_sources'][site.key]!r}"
            )
        elif tuple(values[site.key].shape) != (site.sae.d_sae,):
            found.append(
                f"{site.key} has {values[site.key].shape[0]} thresholds, its SAE {site.sae.d_sae} features"
            )
    return found


def _changes(name: str, old: Any, new: Any) -> list[str]:
    """'name.key was X, now Y' for each differing entry (dicts one level deep)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(old.keys() | new.keys())
        return [
            f"{name}.{k} was {old.get(k)!r}, now {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)
        ]
    return [] if old == new else [f"{name} was {old!r}, now {new!r}"]


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
