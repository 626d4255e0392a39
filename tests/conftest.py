"""Shared test fixtures: where ../shared is, a skip marker for when it is absent, and
`device`, which runs a test on the CPU and on CUDA (`pytest -m gpu`: the CUDA cases only)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# The shared builders assert too (an LP or MILP minimum that failed): pytest's messages.
pytest.register_assert_rewrite("tests.builders")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BENCH = SHARED / "bench"
REFERENCE = SHARED / "reference"

needs_shared = pytest.mark.skipif(not BENCH.is_dir(), reason="../shared/bench (VNN-COMP instances) is not beside "
                                                              "the checkout; these tests read real benchmark files")

# Under pytest-xdist (`make test` runs two workers) each worker takes one thread: two
# workers of two threads each on a 2-core machine would fight over the cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

NO_CUDA = "no CUDA device on this machine (CI has none; benchmarks/gpu.sh runs these on a GPU)"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: the CUDA case of a `device` test (pytest -m gpu selects exactly these)")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason=NO_CUDA)])])
def device(request: pytest.FixtureRequest) -> str:
    """The torch device a test builds its tensors and config on: "cpu", then "cuda"."""
    return request.param
