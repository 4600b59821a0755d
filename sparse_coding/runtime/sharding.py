"""One pass over a stream of batches, split over the ranks of a run, reduced exactly, checkpointed:
docs/internals.md, "Dataset passes on several processes" (the rule, the checkpoints, the states).

Every rank walks the whole stream (tokenizing is cheap beside the model, and it keeps the batches
independent of the rank count) and computes the batches whose index modulo the world size is its
rank, each as a single process computes it; only their combining (`PassState.reduce`: float64
sums, gathered candidates merged by the single process's rule) depends on the rank count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sparse_coding.runtime import checkpoints, distributed
from sparse_coding.runtime.progress import progress

B = TypeVar("B")


class PassState(Protocol):
    def reduce(self) -> PassState:
        """Every rank's partial state combined (a collective); the whole is on rank 0 at least."""


S = TypeVar("S", bound=PassState)


def run_pass(
    name: str,
    batches: Iterable[B],
    *,
    empty: Callable[[], S],
    add: Callable[[S, int, B], None],
    desc: str,
    total: int | None = None,
    sync_every: int = 0,
    device: Any = None,
    leave: bool = True,
) -> S:
    """Fold this rank's share of `batches` into a state and reduce it over the ranks.

    Args:
        name: the pass's name in the run's checkpoint ("hist: clusters").
        batches: the whole stream, the same on every rank; read once.
        empty: a fresh state with nothing added.
        add: ``add(state, index, batch)`` folds the batch at `index` of the stream in.
        desc, total, leave: the progress bar (rank 0 only; `total` counts the whole stream).
        sync_every: also reduce after every this many batches (0: only at
            checkpoints and the end), for states that must not grow between.
        device: where a state read back from a checkpoint is put.

    Returns:
        The reduced state: whole on rank 0 (and wherever its `reduce` puts it).
    """
    checkpoint = checkpoints.current.get()
    key = checkpoint.pass_name(name) if checkpoint else name
    start, done, saved = checkpoint.restore(key) if checkpoint else (0, False, None)
    if done:
        return saved if device is None else distributed.move(saved, device)
    state = empty() if saved is None else (saved if device is None else distributed.move(saved, device))
    size, rank = distributed.world_size(), distributed.rank()
    every = checkpoint.every if checkpoint else 0
    end = start
    for index, batch in enumerate(progress(batches, total=total, desc=desc, unit="batch", leave=leave)):
        if index < start:
            continue
        if index % size == rank:
            add(state, index, batch)
        end = index + 1
        at_checkpoint = every > 0 and end % every == 0
        if at_checkpoint or (sync_every and end % sync_every == 0):
            state = state.reduce()
            if at_checkpoint:
                checkpoint.save(key, end, state)
            if rank != 0:
                state = empty()
    state = state.reduce()
    if checkpoint and end >= every:  # a pass shorter than CHECKPOINT_EVERY is redone, not saved
        checkpoint.save(key, end, state, done=True)
    return state


@dataclass
class Sums:
    """A pass state of running sums and counts: nested dicts of numpy arrays, floats and ints."""

    values: dict[str, Any]

    def reduce(self) -> Sums:
        """Every rank's sums added, in float64, on every rank."""
        return Sums(distributed.all_sum(self.values))
