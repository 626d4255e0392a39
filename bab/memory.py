"""Batch sizing and out-of-memory recovery for branch and bound.

The batch of domains bounded together is sized from the device's free memory; an
out-of-memory error halves it and the step is retried on the first half, the rest going
back to the domain store. Running out of memory is never a verdict: when even one domain
does not fit, `run_with_retry` raises `OutOfMemory`, which a search turns into
`unknown` with the reason "out of memory". Any other exception passes through untouched.

Intended use in a search loop (domains popped in batches, the unprocessed part pushed
back; `step` must not change any state before it returns, so a retry is safe):

    sizer = BatchSizer(size=config_batch_size, max_size=8 * config_batch_size)
    sizer.initial(bytes_per_domain_estimate, device)
    try:
        while len(domains):
            batch, rest = domains.pop_worst(sizer.size)
            children, left = run_with_retry(step, batch, sizer)      # left: not processed
            domains = rest.concat(left).concat(children)
    except OutOfMemory as exc:
        return Outcome("unknown", stats={"reason": exc.reason})

Imports torch only: nothing of ours.
"""
from __future__ import annotations

import dataclasses
import gc
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, Union

import torch

__all__ = ["is_out_of_memory", "free_memory_bytes", "release_memory", "BatchSizer", "OutOfMemory",
           "run_with_retry", "SAFETY_SHARE", "OUT_OF_MEMORY"]

OUT_OF_MEMORY = "out of memory"

# The share of the free memory that the first batch may plan to use. The per-domain
# estimate counts the tensors a bound pass keeps, not its transient peak (backward
# coefficients of every layer at once, alpha gradients, the children made from the
# batch), and the caching allocator fragments; other processes may share the device.
# Half leaves room for all of that; an error that still happens halves the batch.
SAFETY_SHARE = 0.5

# Phrases of allocation failures in RuntimeError messages (torch's allocators and the
# CUDA libraries that allocate their own workspace). Anything else is a real error.
_OOM_PHRASES = ("out of memory", "can't allocate memory", "defaultcpuallocator",
                "cublas_status_alloc_failed", "cudnn_status_alloc_failed")


def _oom_types() -> tuple[type, ...]:
    found = [MemoryError]
    for owner in (torch, getattr(torch, "cuda", None)):
        t = getattr(owner, "OutOfMemoryError", None)
        if isinstance(t, type) and issubclass(t, BaseException):
            found.append(t)
    return tuple(found)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says that an allocation failed (then a smaller batch may succeed).

    True for torch.OutOfMemoryError / torch.cuda.OutOfMemoryError, MemoryError (and so
    `OutOfMemory`), and a RuntimeError whose message says the allocator could not
    allocate. False for everything else, so the caller re-raises it.
    """
    if isinstance(exc, _oom_types()):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(p in text for p in _OOM_PHRASES)
    return False


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_memory_bytes(device: Union[torch.device, str]) -> int:
    """Bytes that new tensors on `device` can still take; never raises (0 if unknown).

    CUDA: the driver's free memory plus what torch's caching allocator holds unused
    (reserved but not allocated; it serves new tensors without asking the driver).
    CPU (and others): MemAvailable from /proc/meminfo, else available pages x page size.
    """
    try:
        dev = torch.device(device)
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            cached = torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
            return int(free) + max(0, int(cached))
    except Exception:  # a device torch cannot query: say nothing is known
        return 0
    available = _meminfo_available()
    if available is not None:
        return available
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def release_memory(device: Union[torch.device, str, None] = None) -> None:
    """Hand back what a failed step left: unreachable tensors, then (CUDA) the cache."""
    gc.collect()
    try:
        if torch.device(device or "cpu").type == "cuda" and torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # releasing is best effort: the retry itself tells whether it worked
        pass


class OutOfMemory(MemoryError):
    """Even a batch of `min_size` domains did not fit: the search must stop with the
    non-verdict reason `OUT_OF_MEMORY`. `left` holds the batch that was not processed."""

    reason = OUT_OF_MEMORY

    def __init__(self, message: str, left: Any = None) -> None:
        super().__init__(message)
        self.left = left


@dataclass
class BatchSizer:
    """The number of domains per batch: set from free memory, halved on out-of-memory,
    doubled (up to `max_size`) after `grow_after` rounds in a row without one, while
    the free memory allows.

    `size` is the requested size (the config's batch size) until `initial` lowers it to
    what the memory holds; `max_size` is the cap that growing respects.
    """

    size: int = 256
    min_size: int = 1
    max_size: int = 2 ** 20
    grow_after: int = 4          # rounds without out-of-memory before the size doubles
    device: str = "cpu"
    bytes_per_domain: int = 0    # estimate; 0: unknown (growth is then limited by max_size only)
    clean_rounds: int = 0        # rounds since the last out-of-memory or growth
    ooms: int = 0                # out-of-memory errors seen

    def __post_init__(self) -> None:
        if not 1 <= self.min_size <= self.max_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got {self.min_size} and {self.max_size}")
        self.size = self._clamp(self.size)

    def _clamp(self, n: int) -> int:
        return max(self.min_size, min(self.max_size, int(n)))

    def _fits(self) -> int:
        """How many domains `SAFETY_SHARE` of the free memory holds (`max_size` when the
        per-domain estimate is unknown)."""
        if self.bytes_per_domain <= 0:
            return self.max_size
        return int(free_memory_bytes(self.device) * SAFETY_SHARE) // self.bytes_per_domain

    def initial(self, bytes_per_domain_estimate: int, device: Union[torch.device, str]) -> int:
        """Size the first batch: the requested size, lowered to what `SAFETY_SHARE` of the
        free memory holds at `bytes_per_domain_estimate` each (never below `min_size`)."""
        self.device = str(device)
        self.bytes_per_domain = max(0, int(bytes_per_domain_estimate))
        self.size = self._clamp(min(self.size, self._fits()))
        self.clean_rounds = 0
        return self.size

    def shrink(self) -> bool:
        """Halve after an out-of-memory error; False when already at `min_size` (give up)."""
        self.ooms += 1
        self.clean_rounds = 0
        if self.size <= self.min_size:
            return False
        self.size = self._clamp(self.size // 2)
        return True

    def grow(self) -> bool:
        """Record a round without out-of-memory; double after `grow_after` of them when
        below the cap and the free memory holds twice the batch. True when it grew."""
        self.clean_rounds += 1
        if self.clean_rounds < self.grow_after or self.size >= self.max_size:
            return False
        target = self._clamp(2 * self.size)
        if self._fits() < target:
            return False
        self.size, self.clean_rounds = target, 0
        return True


B = TypeVar("B")
R = TypeVar("R")


def _split(batch: Any, k: int) -> tuple[Any, Any]:
    """The first k items and the rest: by slicing (lists, tensors), else by `take` with
    index tensors on the batch's device (DomainBatch)."""
    if hasattr(type(batch), "__getitem__"):
        return batch[:k], batch[k:]
    tensors = [getattr(batch, f.name) for f in dataclasses.fields(batch)] if dataclasses.is_dataclass(batch) else []
    device = next((t.device for t in tensors if isinstance(t, torch.Tensor)), None)
    idx = torch.arange(len(batch), device=device)
    return batch.take(idx[:k]), batch.take(idx[k:])


def run_with_retry(fn: Callable[[B], R], batch: B, sizer: BatchSizer,
                   release: Optional[Callable[[], None]] = None,
                   split: Callable[[B, int], tuple[B, B]] = _split) -> tuple[R, B]:
    """`fn` on the first `sizer.size` items of `batch`; on out-of-memory, release the
    memory, halve the size and retry on a smaller first part.

    Returns (fn's result, the items not processed), for the caller to put back. A clean
    round counts towards growing (`sizer.grow()`). Raises `OutOfMemory` (with the whole
    batch as `left`) when the size is already `min_size`; re-raises any other error.
    `fn` must be retry-safe: a call that fails must leave no state changed. `release`
    defaults to `release_memory(sizer.device)`; `split(batch, k)` gives the first k items
    and the rest (default: slicing, or `take` with index tensors as DomainBatch has).
    """
    while True:
        head, tail = split(batch, min(sizer.size, len(batch)))  # type: ignore[arg-type]
        failed: Optional[str] = None
        try:
            result = fn(head)
        except BaseException as exc:  # noqa: B902 - only allocation failures are kept
            if not is_out_of_memory(exc):
                raise
            failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if failed is None:
            sizer.grow()
            return result, tail
        # Outside the except block: the traceback (and the tensors its frames hold) is gone.
        tried = len(head)  # type: ignore[arg-type]
        del head, tail
        sizer.size = max(sizer.min_size, min(sizer.size, tried))  # halve what failed, not a larger size
        (release or (lambda: release_memory(sizer.device)))()
        if not sizer.shrink():
            raise OutOfMemory(f"{OUT_OF_MEMORY}: a batch of {sizer.size} domain(s) does not fit on "
                              f"{sizer.device} ({failed})", left=batch)
