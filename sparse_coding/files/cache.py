"""One cache type for every value a run computes once and reuses: contexts, thresholds, Neuronpedia answers.

A `Cache` is one file holding a value and the key it was computed for (`cache_fingerprint`); it serves
a run only when `why_stale` finds nothing against this run's key, and says in words why not otherwise.
Callers save a cache after the run's own outputs are committed, so a failed run never replaces one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from sparse_coding.errors import SparseCodingError, StorageError
from sparse_coding.files.storage import check_inside, write_atomic

T = TypeVar("T")


@dataclass(frozen=True)
class Stored(Generic[T]):
    """A cache file's content: the key it was computed for, its value, its age in seconds."""

    key: dict[str, Any]
    value: T
    age_s: float


@dataclass(frozen=True)
class Lookup(Generic[T]):
    """What a cache gave: the value (None when absent, unreadable or stale) and why not, in words."""

    value: T | None
    problem: str = ""


def key_differences(stored: Stored[Any], key: Mapping[str, Any]) -> list[str]:
    """A cache is stale when its key differs from this run's (`fingerprint_differences`)."""
    return fingerprint_differences(stored.key, key)


@dataclass
class Cache(Generic[T]):
    """A value computed once and kept in one file, with the `key` this run's value would depend on
    (JSON-ready inputs and settings, see `cache_fingerprint`); every write stays `inside` (DATA_DIR)."""

    path: Path
    key: dict[str, Any]
    encode: Callable[[T, dict[str, Any]], bytes]  # (value, key) -> the file's bytes, the key inside them
    decode: Callable[[bytes], tuple[dict[str, Any], T]]  # -> (stored key, value); raises when damaged
    why_stale: Callable[[Stored[T], dict[str, Any]], list[str]] = key_differences  # [] when it serves
    inside: Path | None = None

    def read(self) -> Stored[T] | None:
        """What the file holds, fresh or not; None when there is no file (raises when it is damaged).

        Raises:
            StorageError: the file's folder leads outside `inside` (a link).
        """
        if self.inside is not None and self.path.parent.exists():
            check_inside(self.inside, self.path.parent)
        try:
            data = self.path.read_bytes()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        key, value = self.decode(data)
        return Stored(key, value, age)

    def load(self) -> Lookup[T]:
        """The cached value when it serves this run's key; else None and the reason."""
        try:
            stored = self.read()
        except StorageError as e:
            return Lookup(None, str(e))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, SparseCodingError) as e:
            return Lookup(None, f"unreadable ({e})")
        if stored is None:
            return Lookup(None, "absent")
        if reasons := self.why_stale(stored, self.key):
            return Lookup(None, "stale: " + "; ".join(reasons))
        return Lookup(stored.value)

    def save(self, value: T) -> None:
        """Write `value` with this run's key, atomically (raises StorageError)."""
        write_atomic(self.path, self.encode(value, self.key), inside=self.inside)


# ---------------------------------------------------------------- cache keys


def path_identity(path: Path) -> dict[str, Any]:
    """What tells a changed file from the same one: resolved path, size, mtime (of each file in a folder)."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        return {"path": str(path), "missing": True}
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    entries = [
        [str(p.relative_to(path)) if p != path else "", p.stat().st_size, p.stat().st_mtime_ns] for p in files
    ]
    return {"path": str(path), "files": entries}


def dataset_identity(dataset: str | None, *, revision: str | None = None) -> dict[str, Any] | None:
    """A local dataset by its files' identity, a hub dataset by name and revision; None without a dataset."""
    if dataset is None:
        return None
    if Path(dataset).expanduser().exists():
        return {"local": path_identity(Path(dataset))}
    return {"hub": dataset, "revision": revision}


def model_identity(model: str) -> dict[str, Any]:
    """A hub model by name; a local model folder also by its files' identity."""
    if Path(model).expanduser().is_dir():
        return {"name": model, "local": path_identity(Path(model))}
    return {"name": model}


def sae_identity(source: str | None, weights: Path | None) -> dict[str, Any]:
    """One SAE: its configured source and its weights file identity (a hub file resolves to its blob)."""
    return {"source": source, "weights": None if weights is None else path_identity(weights)}


def cache_fingerprint(
    *,
    model: str,
    saes: Mapping[str, dict[str, Any]],
    dataset: str | None,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything a cache depends on, JSON-ready: a cache serves a run whose fingerprint has no `differences`.

    Args:
        model: MODEL_DIR.
        saes: site key -> `sae_identity` of every SAE the cache holds values of.
        dataset: DATASET (a local path or a hub name); None for PROMPT.
        settings: named groups of every other value that shapes the cache
            (e.g. ``{"dataset": {...}, "cluster": {...}}``).
    """
    return {
        "model": model_identity(model),
        "saes": dict(sorted(saes.items())),
        "dataset_identity": dataset_identity(dataset),
        **settings,
    }


def fingerprint_differences(cached: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What keeps a cache from serving a run, in words ('dataset.MAX_SEQ_LEN was 64, now 32'); [] when none.

    SAEs are compared for the sites both hold: a cache may hold more sites,
    and the caller says which sites it lacks.
    """
    found: list[str] = []
    for name in sorted(current.keys() - {"saes"}):
        found += _changes(name, cached.get(name), current[name])
    cached_saes = cached.get("saes") or {}
    for key, sae in (current.get("saes") or {}).items():
        if key not in cached_saes:
            continue
        if cached_saes[key].get("source") != sae["source"]:
            found.append(f"{key} SAE was {cached_saes[key].get('source')!r}, now {sae['source']!r}")
        elif cached_saes[key].get("weights") != sae["weights"]:
            found.append(f"{key} SAE weights changed on disk ({(sae['weights'] or {}).get('path')})")
    return found


def _changes(name: str, old: Any, new: Any) -> list[str]:
    """'name.key was X, now Y' for each differing entry (dicts one level deep)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(old.keys() | new.keys())
        return [
            f"{name}.{k} was {old.get(k)!r}, now {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)
        ]
    return [] if old == new else [f"{name} was {old!r}, now {new!r}"]
