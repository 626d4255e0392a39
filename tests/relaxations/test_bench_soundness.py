"""Bounds over real VNN-COMP regions contain onnxruntime's outputs at sampled points.

One instance per benchmark model here (fast); `python -m verifier.bench.soundness
INSTANCES.csv` runs the same check over whole suites with 10,000 samples.
"""
from __future__ import annotations

import csv

import pytest

from tests.conftest import BENCH, needs_shared
from verifier.bench.soundness import check_instance
from verifier.config import BoundsConfig


def _first_instance_per_model() -> list[tuple[str, str, str]]:
    out = []
    if not BENCH.is_dir():
        return out
    for family in sorted(p for p in BENCH.iterdir() if (p / "instances.csv").is_file()):
        seen = set()
        with open(family / "instances.csv") as f:
            for row in csv.reader(f):
                if row and row[0] not in seen:
                    seen.add(row[0])
                    out.append((family.name, row[0].strip(), row[1].strip()))
    return out


INSTANCES = _first_instance_per_model()
# Big models: CROWN only (alpha-CROWN costs tens of seconds each on 2 cores).
BIG = ("sri_resnet", "oval21", "collins", "verivital", "eran")
HUGE = ("cgan",)  # CROWN takes minutes here on 2 cores: IBP only in the tests, CROWN in benchmarks


@needs_shared
@pytest.mark.parametrize("family,onnx_path,spec_path", INSTANCES,
                         ids=[f"{f}:{o.split('/')[-1]}" for f, o, _ in INSTANCES])
def test_bounds_contain_onnxruntime_samples(family: str, onnx_path: str, spec_path: str) -> None:
    big = any(b in family for b in BIG)
    huge = any(b in family for b in HUGE)
    methods = ("ibp",) if huge else ("ibp", "crown") if big else ("ibp", "crown", "alpha-crown")
    n = 500 if huge else 1000 if big else 4000
    # Plain alpha-CROWN: the optimised intermediate bounds (bounds()'s default) cost about
    # three times as much here; their soundness is sampled in test_alpha_intermediate.py.
    r = check_instance(BENCH / family / onnx_path, BENCH / family / spec_path, n, methods,
                       config=BoundsConfig(optimise_intermediate=False))
    for m in methods:
        assert r[f"{m}_violations"] == 0, (m, r)
