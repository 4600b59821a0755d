"""Several processes, one run: torch.distributed as the scripts use it under `torchrun` (what a run
promises: docs/design.md, "Several processes and resumed runs").

`session` joins torchrun's process group and leaves it at the end; without torchrun's variables (a
plain run, a notebook) every helper here sees one process: world size 1, rank 0, reductions return
their input. The collectives go through the CPU (gloo), tensors moved there first: what the dataset
passes (`sharding`) reduce is small beside the model's work, and ranks sharing one GPU (DEVICE
cuda:0) then need no NCCL communicator.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from sparse_coding.errors import ConfigError, SparseCodingError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 600.0
_FAILURE_KEY = "sparse_coding/failures"
_failure_store = None  # set by `session`


class DistributedError(SparseCodingError):
    """Another rank stopped (or timed out) while this one waited for it."""


def launched_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 when not launched by it); reads no torch."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def launched_rank() -> int:
    """RANK as torchrun sets it (0 when not launched by it); reads no torch."""
    return int(os.environ.get("RANK", "0") or 0) if launched_world_size() > 1 else 0


def _dist():
    """torch.distributed when a process group is up, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def world_size() -> int:
    """Processes in the run (1 without a process group)."""
    dist = _dist()
    return dist.get_world_size() if dist else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    dist = _dist()
    return dist.get_rank() if dist else 0


def is_main() -> bool:
    """Whether this process logs, writes files and takes locks: rank 0, or the only process."""
    return rank() == 0


@contextlib.contextmanager
def session(timeout_s: float | None = DEFAULT_TIMEOUT_S) -> Iterator[None]:
    """Join torchrun's process group for the block (when launched by it with WORLD_SIZE > 1).

    Args:
        timeout_s: how long a collective waits for the other ranks before it
            fails (`DistributedError`) instead of hanging; None: nothing to join.
    """
    if launched_world_size() <= 1 or timeout_s is None:
        yield
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():  # the caller's group (a notebook, a test driver)
        yield
        return
    # The reductions here move to the CPU (gloo: they are small); NCCL serves CUDA tensors, if any.
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and local < torch.cuda.device_count():
        torch.cuda.set_device(local)  # ranks sharing one GPU (DEVICE cuda:0) keep their DEVICE
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:
        raise DistributedError(
            f"could not join the other {launched_world_size() - 1} ranks at "
            f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} within {timeout_s:.0f} s "
            f"(torchrun's rendezvous; on several machines every one needs the same --rdzv-endpoint): {e}"
        ) from e
    global _failure_store
    _failure_store = _store_client()  # opened while every rank is up: without torchrun, rank 0 hosts it
    logger.info("%d ranks (%s), timeout %.0f s", dist.get_world_size(), backend, timeout_s)
    yield
    # Left only when every rank got here; a failing run just exits, since tearing the group
    # down would wait on the ranks that are still inside a collective.
    dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """`device`, with a CUDA device without an index made this rank's GPU (LOCAL_RANK) under torchrun.

    Raises:
        ConfigError: LOCAL_RANK names a GPU this machine does not have.
    """
    import torch

    if device.type != "cuda" or device.index is not None or launched_world_size() <= 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count()
    if local >= count:
        raise ConfigError(
            f"this is local rank {local} (LOCAL_RANK), but the machine has {count} GPU(s); start at most "
            f"{count} processes per machine (torchrun --nproc-per-node {count}), or set DEVICE to share one"
        )
    return torch.device("cuda", local)


# ---------------------------------------------------------------- collectives


def all_sum(values: T) -> T:
    """Every rank's `values` added up, in float64: the same nesting of dicts, lists, dataclasses,
    numpy arrays, tensors (returned on their own device and dtype), floats and ints."""
    return _all_reduce(values, "sum")


def all_max(values: T) -> T:
    """Every rank's `values` (as `all_sum` takes them) combined by element-wise maximum."""
    return _all_reduce(values, "max")


def _all_reduce(values: T, op: str) -> T:
    """`values`' leaves as one float64 vector, all-reduced by `op` ("sum", "max"), put back in place."""
    dist = _dist()
    if dist is None:
        return values
    import torch

    leaves: list[Any] = []
    map_leaves(values, leaves.append)
    flat = torch.cat([_as_float64(leaf).flatten() for leaf in leaves]) if leaves else torch.zeros(0)
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    _collective(f"all-reduce ({op})", dist.all_reduce, flat, op=reduce_op)
    reduced = iter(_split(flat, leaves))
    return map_leaves(values, lambda _: next(reduced))


def all_gather(value: T) -> list[T]:
    """Every rank's `value` (any picklable object; tensors go through the CPU), in rank order."""
    dist = _dist()
    if dist is None:
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    _collective("all-gather", dist.all_gather_object, gathered, to_cpu(value))
    return gathered


def gather(value: T) -> list[T] | None:
    """Every rank's `value` (any picklable object) on rank 0, in rank order; None on the other ranks."""
    dist = _dist()
    if dist is None:
        return [value]
    gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    _collective("gather", dist.gather_object, to_cpu(value), gathered, dst=0)
    return gathered


def broadcast(value: T) -> T:
    """Rank 0's `value` on every rank (any picklable object)."""
    dist = _dist()
    if dist is None:
        return value
    box = [to_cpu(value) if dist.get_rank() == 0 else None]
    _collective("broadcast", dist.broadcast_object_list, box, src=0)
    return box[0]


def _collective(what: str, call, *args, **kwargs) -> None:
    try:
        call(*args, **kwargs)
    except RuntimeError as e:  # DistBackendError and gloo's timeouts/closed connections are RuntimeErrors
        raise DistributedError(
            f"another rank stopped (its own message says why) or did not reach the {what} "
            f"within --timeout seconds ({e})"
        ) from e


def _as_float64(leaf: Any) -> torch.Tensor:
    import numpy as np
    import torch

    if isinstance(leaf, torch.Tensor):
        return leaf.detach().to("cpu", torch.float64)
    if isinstance(leaf, np.ndarray):
        return torch.from_numpy(np.asarray(leaf, dtype=np.float64))
    if isinstance(leaf, (bool, int, float)):
        return torch.tensor([float(leaf)], dtype=torch.float64)
    raise TypeError(f"cannot reduce a {type(leaf).__name__}")


def _split(flat: torch.Tensor, leaves: list[Any]) -> list[Any]:
    """The reduced leaves, each back in its own type, shape, dtype and device."""
    import numpy as np
    import torch

    sizes = [leaf.numel() if isinstance(leaf, torch.Tensor) else int(np.size(leaf)) for leaf in leaves]
    out = []
    for leaf, part in zip(leaves, flat.split(sizes), strict=True):
        if isinstance(leaf, torch.Tensor):
            out.append(part.reshape(leaf.shape).to(leaf.device, leaf.dtype))
        elif isinstance(leaf, np.ndarray):
            out.append(part.numpy().reshape(leaf.shape).astype(leaf.dtype, copy=False))
        elif isinstance(leaf, bool):
            out.append(bool(part.item()))
        elif isinstance(leaf, int):
            out.append(round(part.item()))
        else:
            out.append(part.item())
    return out


def map_leaves(value: Any, fn: Callable[[Any], Any]) -> Any:
    """`value` rebuilt with `fn` applied to each leaf: dicts, lists, tuples (NamedTuples too) and
    dataclasses (their init fields) are walked, in order; anything else is a leaf."""
    if isinstance(value, dict):
        return {key: map_leaves(item, fn) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple
        return type(value)(*(map_leaves(item, fn) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(map_leaves(item, fn) for item in value)
    if is_dataclass(value) and not isinstance(value, type):
        walked = {f.name: map_leaves(getattr(value, f.name), fn) for f in fields(value) if f.init}
        return replace(value, **walked)
    return fn(value)


def to_cpu(value: Any) -> Any:
    """`value` with every tensor in it on the CPU (see `move`)."""
    return move(value, "cpu")


def move(value: Any, device: torch.device | str) -> Any:
    """`value` with every tensor in it on `device` (walked as `map_leaves` walks it)."""
    import torch

    return map_leaves(value, lambda leaf: leaf.detach().to(device) if torch.is_tensor(leaf) else leaf)


# ---------------------------------------------------------------- failures


def first_failure() -> bool:
    """Whether this process should print the run's error: always without torchrun; under it, only
    the first rank to report one (counted in the rendezvous store, so N ranks failing alike print once)."""
    if launched_world_size() <= 1:
        return True
    try:
        # The session's store, else torchrun's own, which outlives every rank (none under another launcher).
        agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = _failure_store or (_store_client() if agent else None)
        if store is None:
            return True
        key = f"{_FAILURE_KEY}/{os.environ.get('TORCHELASTIC_RUN_ID', '')}"
        return store.add(f"{key}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", 1) == 1
    except Exception:  # no store to ask (it went down with its host): better twice than never
        return True


def _store_client():
    """A client of the rendezvous store at MASTER_ADDR:MASTER_PORT."""
    import torch.distributed as dist

    address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    return dist.TCPStore(address, port, is_master=False, timeout=datetime.timedelta(seconds=2))


def failure_prefix() -> str:
    """'(rank R of N) ' under torchrun, else ''."""
    size = launched_world_size()
    return f"(rank {launched_rank()} of {size}) " if size > 1 else ""
