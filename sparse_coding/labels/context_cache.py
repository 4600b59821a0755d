"""The collected top contexts of SAE features, and their on-disk format.

Kept apart from `contexts` (the streaming collection) because this is what
pipe.py and fast.py read back: a `ContextCache` turns the stored arrays into
label contexts, and `save`/`load` are its file format, written atomically.

On disk (`save`/`load`): ``<stem>.npz`` (compressed numpy) and
``<stem>.json``. The npz holds, per site key K: ``K/act`` (d_sae, k) float32
peak activation (0 = no entry), ``K/seq`` and ``K/pos`` (d_sae, k) int64
sequence index and peak position, ``K/window`` (d_sae, k, 2 VIEW + 1) float32
activations around the peak; and, for the referenced sequences,
``seq_ids`` (n,) their stream indices, ``offsets`` (n + 1,) and ``tokens``
(total,) their concatenated token ids. The json holds ``format``, ``view``,
``per_feature``, ``sources`` (site key -> SAE source), ``fingerprint`` (what
text was read, see `contexts.fingerprint`) and ``vocab`` (token id -> string,
for the ids used). A cache whose sources or fingerprint differ from the run's
fails `covers`, and `contexts.load_or_collect` collects again.
"""

import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparse_coding.errors import DatasetError
from sparse_coding.graphs.graph import Context

logger = logging.getLogger(__name__)

FORMAT = 1


@dataclass
class ContextCache:
    """Top contexts per feature and site; `contexts` builds label contexts lazily."""

    view: int
    per_feature: int
    sources: dict[str, str]
    arrays: dict[str, dict[str, np.ndarray]]  # site key -> act/seq/pos/window
    sequences: dict[int, np.ndarray]  # stream index -> token ids
    vocab: dict[int, str]
    fingerprint: str = ""
    meta: dict = field(default_factory=dict)

    def contexts(self, site_key: str, feature: int, top_k: int) -> list[Context]:
        """The `top_k` strongest contexts of one feature, strongest first.

        A site the cache does not hold (e.g. attn/mlp when pipe.py collected
        resid only) has no contexts: [].
        """
        if site_key not in self.arrays:
            return []
        site = self.arrays[site_key]
        result = []
        for j in range(min(top_k, site["act"].shape[1])):
            if site["act"][feature, j] <= 0:
                break
            ids = self.sequences[int(site["seq"][feature, j])]
            start = int(site["pos"][feature, j]) - self.view
            lo, hi = max(start, 0), min(start + 2 * self.view + 1, len(ids))
            tokens = [self.vocab[int(t)] for t in ids[lo:hi]]
            acts = site["window"][feature, j, lo - start : hi - start].tolist()
            result.append(Context(tokens, acts))
        return result

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
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise DatasetError(f"context cache {path.with_suffix('.npz')} is not readable: {e}") from e
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

    def covers(self, sources: dict[str, str], fingerprint: str, per_feature: int, view: int) -> bool:
        """True when this cache answers for every site of `sources` on the same text."""
        same_sites = all(self.sources.get(key) == source for key, source in sources.items())
        fits = self.per_feature >= per_feature and self.view == view
        return same_sites and fits and self.fingerprint == fingerprint


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
