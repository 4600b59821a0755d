"""Resumable runs: the dataset passes' partial state, saved every CHECKPOINT_EVERY batches.

A script that reads a dataset opens one `checkpointed` block around its
computation (`sparse_coding.pipelines.resume` builds it from the config).
Inside it, each pass over the data (`sparse_coding.sharding.run_pass`) saves
its reduced state (sums, candidate heaps, cluster statistics) and its
position in the data every CHECKPOINT_EVERY batches, and its final state when
it ends (passes shorter than that save nothing), so that a run killed at any
point loses at most that many batches of a pass: with ``--resume`` each
finished pass is read back and the interrupted one continues where its last
checkpoint stood.

The file is DATA_DIR/<model>/checkpoints/<script>.ckpt (``hist.ckpt``), one
per script, written by rank 0 alone, atomically (`storage.write_atomic`), so
a kill mid-write leaves the previous checkpoint. It holds ``format``,
``fingerprint`` (`storage.cache_fingerprint`: the model's and SAEs' files,
the dataset's identity, every config key but CHECKPOINT_EVERY, and the
script's inputs such as PAIRS_FILE or ``--from-graph``) and, per pass, its
``position`` (global batches done), ``done`` and ``state``. A checkpoint whose
fingerprint differs from the run's is refused, naming each difference. States
are pickled (torch.save): k-means is a scikit-learn object; a checkpoint is
the tool's own file in DATA_DIR, trusted like the config. The number of
processes is not part of it: a run checkpointed by 2 ranks resumes on 1 or 8
(the saved state is the reduction over every rank). A run that ends without
an error removes its checkpoint.
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

from sparse_coding import distributed, storage
from sparse_coding.errors import ConfigError

logger = logging.getLogger(__name__)

FORMAT = 1

_current: contextvars.ContextVar[RunCheckpoint | None] = contextvars.ContextVar("checkpoint", default=None)


class RunCheckpoint:
    """One run's checkpoint file: what rank 0 has saved so far, and saving more."""

    def __init__(self, path: Path, fingerprint: dict[str, Any], every: int, passes: dict[str, dict]) -> None:
        self.path = path
        self.fingerprint = fingerprint
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
        storage.write_atomic(
            self.path, _dumped({"format": FORMAT, "fingerprint": self.fingerprint, "passes": self.passes})
        )
        logger.debug("Checkpoint %s: %s at batch %d%s", self.path, name, position, " (done)" if done else "")


def _dumped(value: Any) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _loaded(data: bytes) -> Any:
    import torch

    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)


def current() -> RunCheckpoint | None:
    """The checkpoint of the `checkpointed` block this code runs in, if any."""
    return _current.get()


@contextlib.contextmanager
def checkpointed(
    path: Path, fingerprint: dict[str, Any], *, every: int, resume: bool
) -> Iterator[RunCheckpoint]:
    """Checkpoint the dataset passes run inside the block in `path`; on success, remove the checkpoint.

    Args:
        path: the checkpoint file (rank 0's).
        fingerprint: what the run's result depends on (`storage.cache_fingerprint`).
        every: CHECKPOINT_EVERY (0: save nothing).
        resume: continue from the checkpoint on disk (``--resume``), else start over.

    Raises:
        ConfigError: ``--resume`` and the checkpoint on disk is unreadable or
            was written by a run with other settings (each named).
    """
    passes, problem = _opened(path, fingerprint, resume) if distributed.is_main() else ({}, None)
    problem = distributed.broadcast(problem)
    if problem:
        raise ConfigError(problem)
    checkpoint = RunCheckpoint(path, fingerprint, every, passes)
    token = _current.set(checkpoint)
    try:
        yield checkpoint
    finally:
        _current.reset(token)
    if distributed.is_main() and path.exists():
        path.unlink()
        logger.info("Run finished; removed its checkpoint %s", path)


def _opened(path: Path, fingerprint: dict[str, Any], resume: bool) -> tuple[dict[str, dict], str | None]:
    """(the saved passes to resume, None), or ({}, why the checkpoint cannot be resumed)."""
    if not path.is_file():
        if resume:
            logger.info("--resume: no checkpoint at %s; starting from the beginning", path)
        return {}, None
    if not resume:
        logger.info("Starting over: %s holds an earlier run's checkpoint (--resume continues it)", path)
        return {}, None
    try:
        saved = _loaded(path.read_bytes())
        passes, cached = saved["passes"], saved["fingerprint"]
        found = saved["format"]
    except Exception as e:  # a foreign or damaged file: torch, pickle and zip raise many types
        return {}, f"checkpoint {path} cannot be read ({e}); run without --resume to start over"
    if found != FORMAT:
        return (
            {},
            f"checkpoint {path} has format {found!r}, this version writes {FORMAT}; run without --resume",
        )
    differences = storage.fingerprint_differences(cached, fingerprint)
    if differences:
        return {}, (
            f"checkpoint {path} was written by a run with other settings: {'; '.join(differences)}. "
            f"Restore them to resume, or run without --resume to start over (the checkpoint is then replaced)"
        )
    done = ", ".join(
        f"{name} " + ("done" if entry["done"] else f"at batch {entry['position']}")
        for name, entry in passes.items()
    )
    logger.info("Resuming from checkpoint %s: %s", path, done or "no pass saved yet")
    return passes, None
