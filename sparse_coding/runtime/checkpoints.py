"""Resumable runs: the dataset passes' partial state, saved every CHECKPOINT_EVERY batches (what a
run promises: docs/design.md, "Several processes and resumed runs").

A script that reads a dataset opens one `checkpointed` block around its computation
(`sparse_coding.pipelines.resume`); each pass inside it (`sharding.run_pass`) saves its reduced
state and position, and its final state. The file is a `files.cache.Cache` written by rank 0
alone: ``format``, ``fingerprint`` (`cache.cache_fingerprint`) and per pass its ``position``,
``done`` and ``state``. States are pickled (torch.save: k-means is a scikit-learn object; the file
is the tool's own in DATA_DIR, trusted like the config).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparse_coding.errors import ConfigError
from sparse_coding.files.cache import Cache
from sparse_coding.runtime import distributed

logger = logging.getLogger(__name__)

FORMAT = 1

# The checkpoint of the `checkpointed` block this code runs in, if any.
current: contextvars.ContextVar[RunCheckpoint | None] = contextvars.ContextVar("checkpoint", default=None)


class RunCheckpoint:
    """One run's checkpoint file (a `cache.Cache` keyed by the run's fingerprint): what rank 0 has
    saved so far, and saving more."""

    def __init__(self, store: Cache[dict[str, dict]], every: int, passes: dict[str, dict]) -> None:
        self.store = store
        self.every = every  # CHECKPOINT_EVERY: 0 = never save
        self.passes = passes  # rank 0: pass name -> {"position", "done", "state"}; other ranks: {}
        self._names: Counter[str] = Counter()

    def pass_name(self, name: str) -> str:
        """A name for the next pass called `name` that is unique in the run (``name#2`` the second time)."""
        self._names[name] += 1
        count = self._names[name]
        return name if count == 1 else f"{name}#{count}"

    def restore(self, name: str) -> tuple[int, bool, Any]:
        """(position, done, state) of pass `name` as saved (0, False, None when it never was).

        Every rank learns the position; rank 0 gets the state, and so does
        every rank when the pass was done (its result is everyone's).
        """
        saved = self.passes.get(name) if distributed.is_main() else None
        position, done = distributed.broadcast((saved["position"], saved["done"]) if saved else (0, False))
        state = _loaded(saved["state"]) if saved else None
        if done:
            state = distributed.broadcast(state)
        return position, done, state

    def save(self, name: str, position: int, state: Any, *, done: bool = False) -> None:
        """Record pass `name`'s reduced `state` after `position` batches (rank 0 writes; no-op when off)."""
        if self.every <= 0 or not distributed.is_main():
            return
        # Serialized now: the pass goes on changing its state (and a finished pass's result) afterwards.
        self.passes[name] = {"position": position, "done": done, "state": _dumped(distributed.to_cpu(state))}
        self.store.save(self.passes)
        logger.debug("Checkpoint %s: %s at batch %d%s", self.store.path, name, position, " (done)" * done)


def checkpoint_file(path: Path, fingerprint: dict[str, Any], *, inside: Path | None = None) -> Cache[dict]:
    """The checkpoint file at `path` of a run whose result depends on `fingerprint`."""

    def encode(passes: dict[str, dict], key: dict[str, Any]) -> bytes:
        return _dumped({"format": FORMAT, "fingerprint": key, "passes": passes})

    def decode(data: bytes) -> tuple[dict[str, Any], dict[str, dict]]:
        saved = _loaded(data)
        if saved["format"] != FORMAT:
            raise ValueError(f"format {saved['format']!r}, this version writes {FORMAT}")
        return saved["fingerprint"], saved["passes"]

    return Cache(path, fingerprint, encode, decode, inside=inside)


def _dumped(value: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _loaded(data: bytes) -> Any:
    """What `_dumped` wrote; a foreign or damaged file is a ValueError (torch, pickle, zip raise others)."""
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(str(e)) from e


@contextlib.contextmanager
def checkpointed(store: Cache[dict[str, dict]], *, every: int, resume: bool) -> Iterator[RunCheckpoint]:
    """Checkpoint the dataset passes run inside the block in `store` (`checkpoint_file`, rank 0's)
    every `every` batches; on success, remove the file. With `resume` (``--resume``), continue from
    the file, a ConfigError when it is unreadable or was written with other settings (each named)."""
    passes, problem = _opened(store, resume) if distributed.is_main() else ({}, None)
    problem = distributed.broadcast(problem)
    if problem:
        raise ConfigError(problem)
    checkpoint = RunCheckpoint(store, every, passes)
    token = current.set(checkpoint)
    try:
        yield checkpoint
    finally:
        current.reset(token)
    if distributed.is_main() and store.path.exists():
        store.path.unlink()
        logger.info("Run finished; removed its checkpoint %s", store.path)


def _opened(store: Cache[dict[str, dict]], resume: bool) -> tuple[dict[str, dict], str | None]:
    """(the saved passes to resume, None), or ({}, why the checkpoint cannot be resumed)."""
    path = store.path
    if not resume:
        if path.is_file():
            logger.info("Starting over: %s holds an earlier run's checkpoint (--resume continues it)", path)
        return {}, None
    lookup = store.load()
    if lookup.problem == "absent":
        logger.info("--resume: no checkpoint at %s; starting from the beginning", path)
        return {}, None
    if lookup.value is None:
        return {}, (
            f"checkpoint {path} cannot be resumed, it is {lookup.problem}. Restore the settings it was "
            f"written with to resume, or run without --resume to start over (the checkpoint is then replaced)"
        )
    done = ", ".join(
        f"{name} " + ("done" if entry["done"] else f"at batch {entry['position']}")
        for name, entry in lookup.value.items()
    )
    logger.info("Resuming from checkpoint %s: %s", path, done or "no pass saved yet")
    return lookup.value, None
