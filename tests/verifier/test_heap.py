"""verifier.heap: a verification process keeps its freed large blocks instead of
faulting fresh pages in for every round (glibc only)."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from verifier import heap

_ROUNDS = """
import resource, sys, torch
from verifier import heap
if sys.argv[1] == "keep":
    assert heap.keep_freed()
def rounds():
    for _ in range(20):
        x = torch.ones(16 * 2**20)     # 64 MB, above glibc's mmap threshold
        del x
rounds()                               # the first round faults its pages in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.system() != "Linux" or not heap.available(),
                    reason="the heap settings are glibc's (mallopt, malloc_trim)")
def test_kept_blocks_are_reused_without_page_faults() -> None:
    # 20 rounds of 64 MB are 320,000 pages when each is mapped afresh
    assert _faults("system") > 100_000
    assert _faults("keep") < 10_000

