"""Keep freed memory for reuse instead of handing it back to the OS (glibc, CPU runs).

A batched CPU run allocates and frees many tensors of tens of MB (one
(tokens, d_sae) activation is 54 MB for 32 twelve-token examples and a 32768-
latent SAE). glibc serves blocks above its mmap threshold (at most 32 MB by
default) with fresh mmaps and unmaps them on free, so every such tensor is
zero-filled page by page on first touch, a large share of a batched CPU run's
compute (measured with `benchmarks/bench_sfc.py --slice 0:12`, docs/benchmarks.md).
Raising the mmap and trim thresholds keeps those
blocks in the heap for the next tensor. The price is that the process keeps
its peak memory until it exits; scripts accept it, and a notebook may call
this too. Elsewhere (not glibc, or CUDA tensors, which PyTorch caches
itself) it does nothing.
"""

import ctypes
import logging

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
LARGEST = 2**31 - 1


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; True when it took effect."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt  # glibc's soname; absent on macOS and musl
    except (OSError, AttributeError):
        return False
    done = bool(mallopt(M_MMAP_THRESHOLD, LARGEST)) and bool(mallopt(M_TRIM_THRESHOLD, LARGEST))
    logger.debug("glibc mmap/trim thresholds raised: %s", done)
    return done
