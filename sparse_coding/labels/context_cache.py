"""The collected top contexts of SAE features (`ContextCache`), and their on-disk format.

A cache holds the features asked for so far (the nodes of the graphs
published), not every feature of every site, and grows with each run
(`merged`): row r of a site is feature ``features[r]``.

On disk (`contexts_cache`, one `sparse_coding.files.cache.Cache`, written
atomically): one ``<stem>.npz`` (compressed numpy). It holds, per site key K:
``K/features`` (n,) the features, ``K/act`` (n, k) float32 peak activation
(0 = no entry), ``K/seq`` and ``K/pos`` (n, k) int64 sequence index and peak
position, ``K/window`` (n, k, 2 VIEW + 1) float32 activations around the
peak; for the referenced sequences, ``seq_ids`` (m,) their stream indices,
``offsets`` (m + 1,) and ``tokens`` (total,) their concatenated token ids;
and ``header`` (uint8, UTF-8 JSON): ``format``, ``view``, ``per_feature``,
``sources`` (site key -> SAE source), ``fingerprint`` (model, every SAE's
source and weights file, the dataset's identity, the text settings; see
`sparse_coding.pipelines.publish.fingerprint`), ``meta`` and ``vocab`` (token
id -> string, for the ids used). A cache that `stale_reasons` finds
fault with (an edited corpus, other text settings, fewer contexts per
feature) starts over; a site whose SAE changed is dropped (`for_saes`); then
`sparse_coding.pipelines.publish.load_or_collect` collects what is missing.
"""

import io
import json
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sparse_coding.errors import DatasetError
from sparse_coding.files.cache import Cache, Stored, fingerprint_differences
from sparse_coding.graphs.graph import Context

FORMAT = 3
ARRAY_NAMES = ("features", "act", "seq", "pos", "window")


@dataclass
class ContextCache:
    """Top contexts per feature and site; `contexts` builds label contexts lazily."""

    view: int
    per_feature: int
    sources: dict[str, str] = field(default_factory=dict)
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # site key -> ARRAY_NAMES arrays
    sequences: dict[int, np.ndarray] = field(default_factory=dict)  # stream index -> token ids
    vocab: dict[int, str] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def contexts(self, site_key: str, feature: int, top_k: int) -> list[Context]:
        """The `top_k` strongest contexts of one feature, strongest first.

        A feature or site the cache does not hold has no contexts: [].
        """
        site = self.arrays.get(site_key)
        row = None if site is None else _row(site["features"], feature)
        if row is None:
            return []
        result = []
        for j in range(min(top_k, site["act"].shape[1])):
            if site["act"][row, j] <= 0:
                break
            ids = self.sequences[int(site["seq"][row, j])]
            start = int(site["pos"][row, j]) - self.view
            lo, hi = max(start, 0), min(start + 2 * self.view + 1, len(ids))
            tokens = [self.vocab[int(t)] for t in ids[lo:hi]]
            acts = site["window"][row, j, lo - start : hi - start].tolist()
            result.append(Context(tokens, acts))
        return result

    def to_bytes(self) -> bytes:
        """The ``.npz`` file's bytes: arrays and header."""
        seq_ids = np.array(sorted(self.sequences), dtype=np.int64)
        lengths = [len(self.sequences[int(i)]) for i in seq_ids]
        arrays = {f"{key}/{name}": value for key, site in self.arrays.items() for name, value in site.items()}
        arrays["seq_ids"] = seq_ids
        arrays["offsets"] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens = [self.sequences[int(i)] for i in seq_ids]
        arrays["tokens"] = np.concatenate(tokens).astype(np.int64) if tokens else np.zeros(0, np.int64)
        header = {
            "format": FORMAT,
            "view": self.view,
            "per_feature": self.per_feature,
            "sources": self.sources,
            "fingerprint": self.fingerprint,
            "meta": self.meta,
            "vocab": {str(k): v for k, v in self.vocab.items()},
        }
        arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, path: Path) -> "ContextCache":
        """Inverse of `to_bytes`; `path` names the file in errors.

        Raises:
            DatasetError: the bytes are not a cache of this format.
        """
        try:
            with np.load(io.BytesIO(data)) as npz:
                raw = {name: npz[name] for name in npz.files}
            header = json.loads(raw.pop("header").tobytes().decode("utf-8")) if "header" in raw else {}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise DatasetError(f"context cache {path} is not readable: {e}") from e
        found = header.get("format") if isinstance(header, dict) else None
        if found != FORMAT:
            raise DatasetError(
                f"context cache {path} has format {found!r}, expected {FORMAT}; delete it to recollect"
            )
        return cls(
            view=header["view"],
            per_feature=header["per_feature"],
            sources=header["sources"],
            arrays=_site_arrays(raw),
            sequences=_sequences(raw),
            vocab={int(k): v for k, v in header["vocab"].items()},
            fingerprint=header["fingerprint"],
            meta=header.get("meta", {}),
        )

    def stale_reasons(self, fingerprint: dict[str, Any], per_feature: int, view: int) -> list[str]:
        """Why none of this cache can serve a run with `fingerprint`, in words; [] when it can.

        SAEs are not among the reasons: a changed SAE invalidates its own site
        only (`for_saes`). It may hold more contexts per feature than asked.
        """
        reasons = fingerprint_differences(self.fingerprint | {"saes": {}}, fingerprint | {"saes": {}})
        if self.per_feature < per_feature:
            reasons.append(f"SEQ_PER_DIM_CAP was {self.per_feature}, now {per_feature}")
        if self.view != view:
            reasons.append(f"VIEW was {self.view}, now {view}")
        return reasons

    def missing(self, site_key: str, features: list[int]) -> list[int]:
        """The sorted distinct `features` of one site that the cache was never asked for."""
        held = self.arrays.get(site_key, {}).get("features", np.zeros(0, np.int64))
        return sorted(set(features) - set(held.tolist()))

    def for_saes(self, saes: dict[str, dict[str, Any]]) -> "ContextCache":
        """This cache without the sites whose SAE identity (`cache.sae_identity`) differs from `saes`."""
        held = self.fingerprint.get("saes", {})
        kept = {key: site for key, site in self.arrays.items() if held.get(key) == saes.get(key)}
        return replace(
            self,
            arrays=kept,
            sources={key: self.sources[key] for key in kept},
            fingerprint=self.fingerprint | {"saes": {key: held[key] for key in kept}},
        )

    def merged(self, other: "ContextCache") -> "ContextCache":
        """The union of two caches of the same text and settings (`other`'s rows win on overlap)."""
        arrays = dict(self.arrays)
        for key, site in other.arrays.items():
            arrays[key] = _merge_rows(self.arrays[key], site) if key in self.arrays else site
        referenced = {int(s) for site in arrays.values() for s in site["seq"][site["act"] > 0]}
        sequences = {i: ids for i, ids in (self.sequences | other.sequences).items() if i in referenced}
        saes = self.fingerprint.get("saes", {}) | other.fingerprint.get("saes", {})
        return replace(
            self,
            arrays=arrays,
            sources=self.sources | other.sources,
            sequences=sequences,
            vocab=self.vocab | other.vocab,
            fingerprint=other.fingerprint | {"saes": dict(sorted(saes.items()))},
        )


def _row(features: np.ndarray, feature: int) -> int | None:
    """Row of `feature` in a site's sorted `features`, None when absent."""
    row = int(np.searchsorted(features, feature))
    return row if row < len(features) and features[row] == feature else None


def _merge_rows(old: dict[str, np.ndarray], new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One site's rows of both, sorted by feature; `new`'s row of a feature in both wins."""
    keep = ~np.isin(old["features"], new["features"])
    joined = {name: np.concatenate([old[name][keep], new[name]]) for name in ARRAY_NAMES}
    order = np.argsort(joined["features"], kind="stable")
    return {name: value[order] for name, value in joined.items()}


def _site_arrays(raw: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for name, value in raw.items():
        if "/" in name:
            key, field_name = name.split("/", 1)
            arrays.setdefault(key, {})[field_name] = value
    return arrays


def _sequences(raw: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    offsets = raw["offsets"]
    return {int(seq): raw["tokens"][offsets[i] : offsets[i + 1]] for i, seq in enumerate(raw["seq_ids"])}


def contexts_cache(path: Path, key: dict[str, Any], *, per_feature: int, view: int, inside: Path) -> Cache:
    """The contexts cache file for a run whose fingerprint is `key` (see `ContextCache.stale_reasons`)."""

    def decode(data: bytes) -> tuple[dict[str, Any], ContextCache]:
        cache = ContextCache.from_bytes(data, path)
        return cache.fingerprint, cache

    def why_stale(stored: Stored[ContextCache], key: dict[str, Any]) -> list[str]:
        return stored.value.stale_reasons(key, per_feature, view)

    return Cache(path, key, lambda cache, key: cache.to_bytes(), decode, why_stale, inside)
