"""The collected top contexts of SAE features, and their on-disk format.

Kept apart from `contexts` (the streaming collection) because this is what
pipe.py and fast.py read back: a `ContextCache` turns the stored arrays into
label contexts, and `save`/`load` are its file format, written atomically.

A cache holds the features that were asked for (the nodes of the graphs
published so far), not every feature of every site, and grows with each run
(`merged`): row r of a site is feature ``features[r]``.

On disk (`save`/`load`): ``<stem>.npz`` (compressed numpy) and
``<stem>.json``. The npz holds, per site key K: ``K/features`` (n,) int64
sorted feature indices, ``K/act`` (n, k) float32 peak activation (0 = no
entry), ``K/seq`` and ``K/pos`` (n, k) int64 sequence index and peak
position, ``K/window`` (n, k, 2 VIEW + 1) float32 activations around the
peak; and, for the referenced sequences,
``seq_ids`` (n,) their stream indices, ``offsets`` (n + 1,) and ``tokens``
(total,) their concatenated token ids. The json holds ``format``, ``view``,
``per_feature``, ``sources`` (site key -> SAE source), ``fingerprint`` (what
text was read, see `contexts.fingerprint`) and ``vocab`` (token id -> string,
for the ids used). A cache whose fingerprint or settings differ from the run's
fails `covers`; a site whose SAE source changed is dropped (`for_sources`);
`sparse_coding.pipelines.publish.load_or_collect` then collects what is missing.
"""

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from sparse_coding.errors import DatasetError
from sparse_coding.graphs.graph import Context

logger = logging.getLogger(__name__)

FORMAT = 2
ARRAY_NAMES = ("features", "act", "seq", "pos", "window")


@dataclass
class ContextCache:
    """Top contexts per feature and site; `contexts` builds label contexts lazily."""

    view: int
    per_feature: int
    sources: dict[str, str]
    arrays: dict[str, dict[str, np.ndarray]]  # site key -> features/act/seq/pos/window
    sequences: dict[int, np.ndarray]  # stream index -> token ids
    vocab: dict[int, str]
    fingerprint: str = ""
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

    def missing(self, site_key: str, features: list[int]) -> list[int]:
        """The sorted distinct `features` of one site that the cache was never asked for."""
        held = self.arrays.get(site_key, {}).get("features", np.zeros(0, np.int64))
        return sorted(set(features) - set(held.tolist()))

    def for_sources(self, sources: dict[str, str]) -> "ContextCache":
        """This cache without the sites whose SAE source differs from `sources` (site key -> source)."""
        kept = {key: site for key, site in self.arrays.items() if self.sources.get(key) == sources.get(key)}
        return replace(self, arrays=kept, sources={key: self.sources[key] for key in kept})

    def merged(self, other: "ContextCache") -> "ContextCache":
        """The union of two caches of the same text and settings (`other`'s rows win on overlap)."""
        arrays = dict(self.arrays)
        for key, site in other.arrays.items():
            arrays[key] = _merge_rows(self.arrays[key], site) if key in self.arrays else site
        referenced = {int(s) for site in arrays.values() for s in site["seq"][site["act"] > 0]}
        sequences = {i: ids for i, ids in (self.sequences | other.sequences).items() if i in referenced}
        return replace(
            self,
            arrays=arrays,
            sources=self.sources | other.sources,
            sequences=sequences,
            vocab=self.vocab | other.vocab,
        )

    def save(self, path: Path) -> None:
        """Write `<stem>.npz` and `<stem>.json` atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
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
        with _atomic(path.with_suffix(".npz")) as tmp:
            np.savez_compressed(tmp, **arrays)
        with _atomic(path.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(header), encoding="utf-8")
        logger.info(
            "Saved contexts of %d sites to %s",
            len(self.arrays),
            path.with_suffix(".npz"),
        )

    @classmethod
    def load(cls, path: Path) -> "ContextCache":
        """Read a cache written by `save`.

        Raises:
            DatasetError: the files are missing, unreadable or of another format.
        """
        path = Path(path)
        try:
            header = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            with np.load(path.with_suffix(".npz")) as npz:
                raw = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, KeyError) as e:
            raise DatasetError(f"context cache {path.with_suffix('.npz')} is not readable: {e}") from e
        if header.get("format") != FORMAT:
            raise DatasetError(
                f"context cache {path} has format {header.get('format')!r}, expected {FORMAT}; "
                f"delete it to recollect"
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

    def covers(self, fingerprint: str, per_feature: int, view: int) -> bool:
        """True when this cache was collected from the same text with enough contexts per feature."""
        return self.fingerprint == fingerprint and self.per_feature >= per_feature and self.view == view


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


class _atomic:
    """Context manager yielding a temp path that replaces `target` on success."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        fd, name = tempfile.mkstemp(
            dir=self.target.parent,
            prefix=f".{self.target.name}.",
            suffix=self.target.suffix,
        )
        os.close(fd)
        self.tmp = Path(name)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.target)
        else:
            self.tmp.unlink(missing_ok=True)
