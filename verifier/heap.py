"""The C heap of a verification process: keep freed blocks for reuse (glibc only).

Why: the bound passes of branch and bound allocate and free tensors of tens to hundreds
of MB in every round. glibc serves a block that large by a fresh `mmap` and unmaps it
on free, so every round faults its pages in again, and on CNNs with large feature maps
the kernel's page zeroing can take a large share of a run's CPU time (BENCHMARKS.md,
"The heap keeps its freed blocks", has the figures). With mmap off for the main arena and no trimming of the heap's top,
a freed block is reused by the next round as it is.

The cost is memory held after its peak: the process keeps what it freed until
`release()`, which the bench worker calls between instances (its peak per instance is
measured from there). Only the processes that verify call `keep_freed()`: the CLI's
budgeted commands and the bench worker; importing nncert as a library changes nothing.
A training script may call it once at its start (the certified-training example does):
certified training frees and reallocates its bound tensors at every step in the same way,
a few MB each on small nets (README, certified training). Elsewhere (musl, macOS,
Windows) both are no-ops.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Optional

__all__ = ["available", "keep_freed", "release"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NEVER_TRIM = 2**31 - 1   # bytes of free space at the heap's top before glibc returns it: int max


@functools.lru_cache(maxsize=1)
def _glibc() -> Optional[ctypes.CDLL]:
    """glibc's C library, or None when the process runs on another libc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it)
        libc.mallopt  # noqa: B018
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def available() -> bool:
    """Whether this process runs on glibc, whose heap these settings are for."""
    return _glibc() is not None


def keep_freed() -> bool:
    """Serve large blocks from the heap and never trim it; True when glibc took both settings."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _NEVER_TRIM))


def release() -> None:
    """Give the heap's free memory back to the system (between two verification tasks)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
