"""Batch sizing and out-of-memory recovery: only allocation failures are retried (any
other error passes through, so no error can become a verdict), the batch halves down to
one domain and then gives up with "out of memory", grows back after clean rounds, and a
retried loop processes every item exactly once."""
from __future__ import annotations

import pytest
import torch

from bab import DomainBatch
from bab import memory
from bab.memory import (OUT_OF_MEMORY, SAFETY_SHARE, BatchSizer, OutOfMemory, free_memory_bytes, is_out_of_memory,
                        run_with_retry)


def _simulated_oom() -> BaseException:
    try:
        return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    except (AttributeError, TypeError):  # older torch: the class is missing or not constructible
        return RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.mark.parametrize("exc", [
    _simulated_oom(),
    MemoryError(),
    OutOfMemory("out of memory: a batch of 1 domain(s) does not fit"),
    RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 79.15 GiB total capacity)"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:114] data. DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
])
def test_allocation_failures_are_out_of_memory(exc: BaseException) -> None:
    assert is_out_of_memory(exc)


@pytest.mark.parametrize("exc", [
    RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x2)"),
    RuntimeError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("Expected all tensors to be on the same device, but found at least two devices"),
    ValueError("out of memory"),  # the phrase alone is not enough: only allocator errors count
    KeyboardInterrupt(),
    AssertionError(),
])
def test_other_errors_are_not_out_of_memory(exc: BaseException) -> None:
    assert not is_out_of_memory(exc)


def test_a_real_cpu_allocation_failure_is_recognised() -> None:
    try:
        torch.empty(2 ** 62, dtype=torch.uint8)
    except BaseException as exc:  # noqa: B902 - whatever this torch raises must classify as OOM
        assert is_out_of_memory(exc), repr(exc)
    else:
        pytest.fail("4 EiB were allocated: more than any address space holds, so this test's premise is gone")


def test_free_memory_is_known_on_cpu_and_never_raises() -> None:
    assert free_memory_bytes("cpu") > 0
    assert free_memory_bytes(torch.device("cpu")) > 0
    assert free_memory_bytes("not-a-device") == 0
    if not torch.cuda.is_available():
        assert free_memory_bytes("cuda") == 0


def test_initial_size_follows_free_memory() -> None:
    free = free_memory_bytes("cpu")
    sizer = BatchSizer(size=1000, max_size=4000)
    assert sizer.initial(0, "cpu") == 1000  # no estimate: the requested size
    per = int(free * SAFETY_SHARE) // 10  # ten domains fit
    assert BatchSizer(size=1000, max_size=4000).initial(per, "cpu") in range(9, 12)  # free memory moves a little
    assert BatchSizer(size=1000).initial(10 * free, "cpu") == 1  # nothing fits: one domain, then an honest OOM
    assert BatchSizer(size=1000).initial(1, "cpu") == 1000  # plenty of memory: never above the request


def test_halving_down_to_one_then_giving_up() -> None:
    sizer = BatchSizer(size=10)
    sizes = [sizer.size]
    while sizer.shrink():
        sizes.append(sizer.size)
    assert sizes == [10, 5, 2, 1] and sizer.ooms == 4  # the fourth error found it at one: give up
    assert not sizer.shrink() and sizer.size == 1


def test_growing_after_clean_rounds_up_to_the_cap() -> None:
    sizer = BatchSizer(size=4, max_size=20, grow_after=3)
    grown = [sizer.grow() for _ in range(3)]
    assert grown == [False, False, True] and sizer.size == 8
    for _ in range(3):
        sizer.grow()
    assert sizer.size == 16
    sizer.shrink()  # an out-of-memory restarts the count
    assert sizer.size == 8 and not sizer.grow() and not sizer.grow() and sizer.grow() and sizer.size == 16
    for _ in range(20):
        sizer.grow()
    assert sizer.size == 20  # the cap


def test_growth_waits_for_free_memory(monkeypatch) -> None:
    sizer = BatchSizer(size=8, max_size=64, grow_after=1)
    sizer.initial(1000, "cpu")
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: int(12 * 1000 / SAFETY_SHARE))  # 12 fit
    assert not sizer.grow() and sizer.size == 8
    monkeypatch.setattr(memory, "free_memory_bytes", lambda device: int(16 * 1000 / SAFETY_SHARE))
    assert sizer.grow() and sizer.size == 16


def _flaky(threshold: int, seen: list, calls: list):
    """A step that runs out of memory on batches larger than `threshold`."""
    def step(batch):
        calls.append(len(batch))
        if len(batch) > threshold:
            raise _simulated_oom()
        seen.extend(batch)
        return [2 * x for x in batch]
    return step


def test_retry_loop_processes_every_item_exactly_once() -> None:
    items = list(range(100))
    seen: list = []
    calls: list = []
    released: list = []
    sizer = BatchSizer(size=32, max_size=64, grow_after=2)
    queue, results = list(items), []
    while queue:  # the intended use: pop a batch, run it, push back what was not processed
        batch, queue = queue[:sizer.size], queue[sizer.size:]
        out, left = run_with_retry(_flaky(7, seen, calls), batch, sizer, release=lambda: released.append(1))
        results += out
        queue = left + queue
    assert sorted(seen) == items and len(seen) == len(items)
    assert sorted(results) == [2 * x for x in items]
    assert calls[:3] == [32, 16, 8] and calls[3] == 4  # halved until it fit
    assert sizer.ooms >= 3 and len(released) == sizer.ooms
    assert sum(c > 7 for c in calls) == sizer.ooms  # every failed call was retried, none lost
    assert 8 in calls[4:]  # after clean rounds it grew again, and halved again when that failed


def test_retry_halves_what_failed_not_a_larger_request() -> None:
    calls: list = []
    sizer = BatchSizer(size=64)
    out, left = run_with_retry(_flaky(2, [], calls), [1, 2, 3, 4, 5], sizer, release=lambda: None)
    assert calls == [5, 2] and out == [2, 4] and left == [3, 4, 5]


def test_one_domain_that_does_not_fit_is_out_of_memory_not_a_verdict() -> None:
    sizer = BatchSizer(size=4)
    with pytest.raises(OutOfMemory, match="out of memory") as info:
        run_with_retry(_flaky(0, [], []), [1, 2, 3, 4], sizer, release=lambda: None)
    assert info.value.reason == OUT_OF_MEMORY and info.value.left == [1, 2, 3, 4]


def test_other_errors_pass_through_unretried() -> None:
    calls: list = []

    def broken(batch):
        calls.append(len(batch))
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    sizer = BatchSizer(size=8)
    with pytest.raises(RuntimeError, match="shapes"):
        run_with_retry(broken, list(range(8)), sizer, release=lambda: None)
    assert calls == [8] and sizer.size == 8 and sizer.ooms == 0


def test_domain_batches_split_on_their_device() -> None:
    n, d = 6, 3
    lo = torch.arange(n * d, dtype=torch.float32).reshape(n, d)
    batch = DomainBatch(lo, lo + 1, torch.zeros(n, 2), torch.arange(n, dtype=torch.float32), torch.zeros(n, 2, d),
                        torch.zeros(n, 0, d), torch.zeros(n, 0))
    seen: list = []

    def step(b: DomainBatch):
        if len(b) > 2:
            raise _simulated_oom()
        seen.extend(b.score.tolist())
        return len(b)

    sizer = BatchSizer(size=8)
    done, left = run_with_retry(step, batch, sizer, release=lambda: None)
    assert done == 1 and isinstance(left, DomainBatch) and left.score.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert seen == [0.0] and sizer.size == 1  # 6 failed, 3 failed, 1 fit
