"""The collected top contexts of SAE features, and their on-disk format.

Kept apart from `contexts` (the streaming collection) because this is what
pipe.py and fast.py read back: a `ContextCache` turns the stored arrays into
label contexts, and `save`/`load` are its file format, written atomically.

On disk (`save`/`load`): one ``<stem>.npz`` (compressed numpy), written
atomically by `sparse_coding.storage`, so arrays and header can never come
from two runs. It holds, per site key K: ``K/act`` (d_sae, k) float32
peak activation (0 = no entry), ``K/seq`` and ``K/pos`` (d_sae, k) int64
sequence index and peak position, ``K/window`` (d_sae, k, 2 VIEW + 1) float32
activations around the peak; for the referenced sequences, ``seq_ids`` (n,)
their stream indices, ``offsets`` (n + 1,) and ``tokens`` (total,) their
concatenated token ids; and ``header`` (uint8, UTF-8 JSON): ``format``,
``view``, ``per_feature``, ``sources`` (site key -> SAE source),
``fingerprint`` (`storage.cache_fingerprint`: model, every SAE's source and
weights file, the dataset's identity, the text settings; see
`contexts.fingerprint`) and ``vocab`` (token id -> string, for the ids used).
A cache that `stale_reasons` finds fault with (another SAE, an edited corpus,
fewer contexts per feature) is collected again by `contexts.load_or_collect`.
"""

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sparse_coding import storage
from sparse_coding.errors import DatasetError
from sparse_coding.graphs.graph import Context

logger = logging.getLogger(__name__)

FORMAT = 2


@dataclass
class ContextCache:
    """Top contexts per feature and site; `contexts` builds label contexts lazily."""

    view: int
    per_feature: int
    sources: dict[str, str]
    arrays: dict[str, dict[str, np.ndarray]]  # site key -> act/seq/pos/window
    sequences: dict[int, np.ndarray]  # stream index -> token ids
    vocab: dict[int, str]
    fingerprint: dict[str, Any] = field(default_factory=dict)
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
        """Write `<stem>.npz`, arrays and header in one file, atomically."""
        path = Path(path).with_suffix(".npz")
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
        storage.write_atomic(path, buffer.getvalue())
        logger.info("Saved contexts of %d sites to %s", len(self.arrays), path)

    @classmethod
    def load(cls, path: Path) -> "ContextCache":
        """Read a cache written by `save`.

        Raises:
            DatasetError: the file is missing, unreadable or of another format.
        """
        path = Path(path).with_suffix(".npz")
        try:
            with np.load(path) as npz:
                raw = {name: npz[name] for name in npz.files}
            header = json.loads(raw.pop("header").tobytes().decode("utf-8")) if "header" in raw else {}
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise DatasetError(f"context cache {path} is not readable: {e}") from e
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

    def stale_reasons(self, fingerprint: dict[str, Any], per_feature: int, view: int) -> list[str]:
        """Why this cache cannot answer for a run with `fingerprint`, in words; [] when it can.

        It may hold more sites than the run uses, and more contexts per feature.
        """
        reasons = [f"no contexts for site {key}" for key in fingerprint["saes"] if key not in self.arrays]
        reasons += storage.fingerprint_differences(self.fingerprint, fingerprint)
        if self.per_feature < per_feature:
            reasons.append(f"SEQ_PER_DIM_CAP was {self.per_feature}, now {per_feature}")
        if self.view != view:
            reasons.append(f"VIEW was {self.view}, now {view}")
        return reasons


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
