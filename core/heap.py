"""The process heap (glibc's malloc): keeping a layer walk's peak memory the same at every layer.

glibc raises its mmap threshold each time a large mapped block is freed (up to 32 MiB), after which
a layer's large temporaries come from the heap, and what the heap can reuse varies: a streamed
walk's per-layer peak then spread over ~90 MB and a run's peak grew with its number of layers
(benchmarks/RESULTS.md section 8). Fixing the threshold before the model is built keeps every
large tensor in a mapping of its own, returned whole when freed. Elsewhere than glibc, nothing.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20  # at 4 MiB a run's peak grew again (RESULTS.md section 8)


@cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold (no more dynamic raising) for the rest of the process.

    Call it before the model is built: set once the heap already holds a model, the peaks spread
    as much as without it. Returns whether the threshold was set.
    """
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def give_back_memory() -> None:
    """Return the heap's free pages to the system (glibc's ``malloc_trim``), e.g. after a layer."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
