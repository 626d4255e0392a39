"""The attack on regions cut by rows `A x <= b` (verifier/attack.py): its points are moved
onto the rows, and a candidate that misses one is repaired before it is replayed."""
from __future__ import annotations

import time

import numpy as np
import torch
from onnx import helper

from models import GraphEvaluator
from tests.op_cases import make_model
from verifier import load_model
from bab.problem import onto_rows
from verifier.attack import attack_disjunct, repaired
from verifier.config import AttackConfig
from vnnlib.spec import Disjunct, InputRegion, OutputConstraints

PAIRS, EPS = 32, 0.01


def _pairs_region() -> InputRegion:
    """[0, 1]^64 with |x_i - x_{i+32}| <= EPS for every i: 64 rows on disjoint pairs."""
    n = 2 * PAIRS
    A = np.zeros((n, n))
    for i in range(PAIRS):
        A[2 * i, i], A[2 * i, PAIRS + i] = 1.0, -1.0
        A[2 * i + 1, i], A[2 * i + 1, PAIRS + i] = -1.0, 1.0
    return InputRegion(np.zeros(n), np.ones(n), A=A, b=np.full(n, EPS))


def test_projection_meets_disjoint_rows_and_keeps_the_box() -> None:
    region = _pairs_region()
    A, b = torch.tensor(region.A), torch.tensor(region.b)
    lo, hi = torch.zeros(2 * PAIRS, dtype=torch.float64), torch.ones(2 * PAIRS, dtype=torch.float64)
    x = torch.rand(200, 2 * PAIRS, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert bool(((x @ A.T - b) > 0).any(1).all())          # every random point misses some row
    y = onto_rows(x, A, b, lo, hi)
    assert float((y @ A.T - b).max()) <= 1e-12 and bool(((y >= 0) & (y <= 1)).all())


def test_a_repaired_point_meets_general_rows_after_the_cast_to_float32() -> None:
    g = np.random.default_rng(1)
    A = g.standard_normal((12, 8))
    x0 = g.random(8)
    region = InputRegion(np.zeros(8), np.ones(8), A=A, b=A @ x0 + 0.01)   # x0 is inside
    out = [repaired(Disjunct(region, ()), g.random(8)) for _ in range(20)]
    assert all(p is not None for p in out)
    for p in out:
        x32 = p.astype(np.float32).astype(np.float64)
        assert region.contains(x32)
    empty = InputRegion(np.zeros(2), np.ones(2), A=np.array([[1.0, 1.0]]), b=np.array([-0.5]))
    assert repaired(Disjunct(empty, ()), np.array([0.5, 0.5])) is None


def test_the_attack_finds_a_point_only_the_rows_admit(tmp_path) -> None:
    """Y = sum_i (x_i - x_{i+32}) >= 0.3 with every pair within 0.01 (the maximum is 0.32):
    no random point of the box meets the 64 rows; the projected PGD reaches the corner."""
    W = np.concatenate([np.ones(PAIRS), -np.ones(PAIRS)]).astype(np.float32).reshape(-1, 1)
    path = tmp_path / "pairs.onnx"
    path.write_bytes(make_model([helper.make_node("MatMul", ["X", "W"], ["Y"])], {"W": W},
                                (1, 2 * PAIRS), (1, 1)).SerializeToString())
    model = load_model(path)
    region = _pairs_region()
    wanted = Disjunct(region, (OutputConstraints(np.array([[-1.0]]), np.array([-0.3]), np.array([False])),))
    found = attack_disjunct(model, GraphEvaluator(model.graph), wanted, AttackConfig(), time.monotonic() + 30)
    assert found is not None
    x, y = found
    assert region.contains(x.astype(np.float64)) and float(y.reshape(-1)[0]) >= 0.3
    beyond = Disjunct(region, (OutputConstraints(np.array([[-1.0]]), np.array([-0.33]), np.array([False])),))
    assert attack_disjunct(model, GraphEvaluator(model.graph), beyond, AttackConfig(), time.monotonic() + 30) is None
