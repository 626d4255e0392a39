"""Verdicts on real VNN-COMP instances against ../shared/reference/expected.csv.

A quick, representative subset runs in `make test`; the whole suites are benchmarks
(`nncert bench`, BENCHMARKS.md). No wrong verdict is acceptable; unknown is allowed.
"""
from __future__ import annotations

import csv

import pytest

import vnnlib
from tests.conftest import BENCH, REFERENCE, needs_shared
from verifier import Config, load_model, verify

CASES = [
    ("2022_test", "test_nano.onnx", "test_nano.vnnlib"),
    ("2022_test", "test_tiny.onnx", "test_tiny.vnnlib"),
    ("2022_test", "test_small.onnx", "test_small.vnnlib"),
    ("2022_acasxu", "onnx/ACASXU_run2a_1_1_batch_2000.onnx", "vnnlib/prop_1.vnnlib"),
    ("2022_acasxu", "onnx/ACASXU_run2a_2_1_batch_2000.onnx", "vnnlib/prop_2.vnnlib"),
    ("2022_acasxu", "onnx/ACASXU_run2a_1_2_batch_2000.onnx", "vnnlib/prop_3.vnnlib"),
    ("2022_mnist_fc", "onnx/mnist-net_256x2.onnx", "vnnlib/prop_0_0.03.vnnlib"),
    ("2022_mnist_fc", "onnx/mnist-net_256x2.onnx", "vnnlib/prop_1_0.05.vnnlib"),
    ("2022_reach_prob_density", "onnx/vdp.onnx", "vnnlib/vdp_0.vnnlib"),
]


def _expected() -> dict:
    with open(REFERENCE / "expected.csv") as f:
        return {(r["family"], r["onnx"], r["vnnlib"]): r["expected"] for r in csv.DictReader(f)}


@needs_shared
@pytest.mark.parametrize("family,onnx_path,spec_path", CASES, ids=[f"{c[0]}:{c[1].split('/')[-1]}:{c[2].split('/')[-1]}"
                                                                 for c in CASES])
def test_no_wrong_verdict(family: str, onnx_path: str, spec_path: str) -> None:
    expected = _expected().get((family, onnx_path, spec_path))
    model = load_model(BENCH / family / onnx_path)
    spec = vnnlib.load(BENCH / family / spec_path, model.n_inputs, model.n_outputs)
    result = verify(model, spec, Config(timeout=30))
    if expected in ("sat", "unsat"):
        assert result.verdict in (expected, "unknown", "timeout"), (expected, result.verdict, result.reason)
    if result.verdict == "sat":
        assert spec.is_counterexample(result.x.astype(float), result.y)
        assert (model.run_onnxruntime(result.x) == result.y).all()
