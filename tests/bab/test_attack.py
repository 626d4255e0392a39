"""`bab.attack` inside a region cut by rows beyond its box (VNN-LIB 2.0 coupled inputs):
the in-search attack keeps its points on the rows, where a counterexample must lie; and
the joint point of a conjunction's rows, where the bad set is a slab between them."""
from __future__ import annotations

import numpy as np
import torch
from onnx import helper

from bab.attack import domain_pgd, joint_minimisers, minimiser_candidates
from bab.problem import Problem, into_region, onto_rows, violations
from models import GraphEvaluator
from tests.op_cases import make_model
from verifier import load_model

BAND = 0.01


def _band_problem(tmp_path) -> Problem:
    """y = 3 x0 - x1 over [0, 1]^2 cut by |x0 - x1| <= BAND; the spec's bad set is y >= 2.
    The box's best point (1, 0) is off the band; on it, y >= 2 holds only near (1, 1)."""
    model = make_model([helper.make_node("Gemm", ["X", "W", "b"], ["Y"], transB=1)],
                       {"W": np.array([[3.0, -1.0]], np.float32), "b": np.zeros(1, np.float32)}, (1, 2), (1, 1))
    path = tmp_path / "line.onnx"
    path.write_bytes(model.SerializeToString())
    m = load_model(path)
    return Problem(m.graph, GraphEvaluator(m.graph), torch.zeros(1, 2), torch.ones(1, 2), C=torch.tensor([[-1.0]]),
                   d=torch.tensor([-2.0]), strict=torch.tensor([False]), owner=torch.tensor([0]), n_conj=1,
                   region_a=torch.tensor([[1.0, -1.0], [-1.0, 1.0]]), region_c=torch.full((2,), -BAND))


def _on_rows(p: Problem, x: torch.Tensor) -> bool:
    return bool(((x.reshape(len(x), -1) @ p.region_a.T + p.region_c) <= 1e-6).all())


def test_pgd_stays_on_the_rows_and_finds_the_counterexample_there(tmp_path) -> None:
    p = _band_problem(tmp_path)
    x0 = torch.rand(16, 2, generator=torch.Generator().manual_seed(0))
    lo, hi = p.lower.expand(16, 2), p.upper.expand(16, 2)
    best, best_x = domain_pgd(p, lo, hi, into_region(p, x0), steps=30)
    assert _on_rows(p, best_x)
    i = int(torch.argmin(best))
    assert float(best[i]) <= 0 and float(violations(p, best_x[i:i + 1])[0]) <= 0   # y >= 2 on the band


def test_candidates_from_minimisers_off_the_rows_are_moved_onto_them(tmp_path) -> None:
    p = _band_problem(tmp_path)
    mins = torch.tensor([[1.0, 0.0], [0.2, 0.9], [0.5, 0.5]])      # the first two miss the band
    pts, obj = minimiser_candidates(p, mins, focus=2, steps=10)
    assert _on_rows(p, pts) and bool(torch.isfinite(obj).all())


def test_a_point_keeps_to_the_box_it_is_given() -> None:
    A, b = torch.tensor([[1.0, 1.0]]), torch.tensor([1.0])
    lo, hi = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.4, 1.0]])
    y = onto_rows(torch.tensor([[0.4, 1.0]]), A, b, lo, hi, sweeps=20)
    assert float(y[0, 0]) <= 0.4 and float((y @ A.T - b).max()) <= 1e-6


def _slab_problem(tmp_path) -> Problem:
    """y = x0 + x1 over [0, 1]^2; one conjunction of two rows, 1.6 <= y <= 1.7: a thin slab
    that holds no corner of the box and not its centre."""
    model = make_model([helper.make_node("Gemm", ["X", "W", "b"], ["Y"], transB=1)],
                       {"W": np.array([[1.0, 1.0]], np.float32), "b": np.zeros(1, np.float32)}, (1, 2), (1, 1))
    path = tmp_path / "sum.onnx"
    path.write_bytes(model.SerializeToString())
    m = load_model(path)
    return Problem(m.graph, GraphEvaluator(m.graph), torch.zeros(1, 1, 2), torch.ones(1, 1, 2),
                   C=torch.tensor([[-1.0], [1.0]]), d=torch.tensor([-1.6, 1.7]), strict=torch.tensor([False, False]),
                   owner=torch.tensor([0, 0]), n_conj=1)


def test_the_joint_point_meets_every_row_of_a_conjunction_where_each_row_s_own_minimiser_misses(tmp_path) -> None:
    p = _slab_problem(tmp_path)
    lo, hi = p.lower, p.upper
    A, bias = p.C.reshape(1, 2, 1) * torch.ones(1, 2, 2), torch.zeros(1, 2)    # C y exactly, y = x0 + x1
    corners = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])               # each row's minimiser, the centre
    assert bool((violations(p, corners.reshape(3, 1, 2)) > 0).all())
    x = joint_minimisers(p, lo, hi, A, bias, steps=10)
    assert float(violations(p, x.reshape(1, 1, 2))[0]) <= 0
    assert bool(((x >= lo.reshape(1, 2)) & (x <= hi.reshape(1, 2))).all())
    centre = joint_minimisers(p, lo, hi, A, bias, steps=1)
    assert float(violations(p, centre.reshape(1, 1, 2))[0]) > 0


def test_input_split_bounds_hand_the_joint_point_to_the_search(tmp_path) -> None:
    from bab.input_split import _bound
    from relaxations import BoundOptions

    p = _slab_problem(tmp_path)
    for steps, found in ((0, False), (10, True)):
        *_, mins, _ = _bound(p, p.lower, p.upper, BoundOptions(method="crown"), joint_steps=steps)
        pts = into_region(p, mins.reshape(-1, 1, 2))
        assert (float(violations(p, pts).min()) <= 0) is found, steps
