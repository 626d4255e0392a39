"""Shared test fixtures: where ../shared is, and a skip marker for when it is absent."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BENCH = SHARED / "bench"
REFERENCE = SHARED / "reference"

needs_shared = pytest.mark.skipif(not BENCH.is_dir(), reason="../shared/bench (VNN-COMP instances) is not beside "
                                                              "the checkout; these tests read real benchmark files")

torch.set_num_threads(min(2, torch.get_num_threads()))
