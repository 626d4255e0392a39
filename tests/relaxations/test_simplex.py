"""Softmax rows at the output sum to exactly 1 (`Graph.row_sums`, `output_simplices`),
and `simplex_lower` uses it: sound by sampling, the exact minimum over the box cut by the
simplex (against an LP), and it decides what bounding each output alone cannot."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper
from scipy.optimize import linprog

from models import graph_from_proto
from models.graph import output_simplices
from relaxations import BoundOptions, IntervalBounds, compute_bounds
from relaxations.bounds import Precision, simplex_lower
from tests.op_cases import make_model


def _softmax_net(after: list, out_shape, seed: int = 0):
    """X[1,4] -> Gemm -> Softmax(axis 1) -> `after` nodes -> Y."""
    r = np.random.default_rng(seed)
    nodes = [helper.make_node("Gemm", ["X", "W", "b"], ["h"]),
             helper.make_node("Softmax", ["h"], ["s" if after else "Y"], axis=1)] + after
    inits = {"W": r.normal(size=(4, 4)).astype(np.float32), "b": r.normal(size=4).astype(np.float32),
             "shape": np.array([2, 2], np.int64)}
    return graph_from_proto(make_model(nodes, inits, (1, 4), out_shape))


def test_softmax_rows_reach_the_output_through_order_keeping_ops() -> None:
    plain = _softmax_net([], (1, 4))
    assert output_simplices(plain).tolist() == [[0, 1, 2, 3]]
    reshaped = _softmax_net([helper.make_node("Reshape", ["s", "shape"], ["Y"])], (2, 2))
    assert output_simplices(reshaped).tolist() == [[0, 1, 2, 3]]
    moved = _softmax_net([helper.make_node("Transpose", ["s"], ["Y"], perm=[1, 0])], (4, 1))
    assert output_simplices(moved) is None   # a transpose moves elements: the fact is not carried


def test_simplex_lower_is_the_lp_minimum_and_sound_by_sampling() -> None:
    g = torch.Generator().manual_seed(3)
    groups = torch.tensor([[0, 1, 2], [3, 4, 5]])
    for _ in range(20):
        logits = torch.randn(2, 3, generator=g, dtype=torch.float64) * 2
        spread = torch.rand(2, 3, generator=g, dtype=torch.float64)
        # intervals of softmax over logits in [logits - spread, logits + spread]: exact ends
        lo = torch.softmax(logits - spread, -1).minimum(torch.softmax(logits + spread, -1)) * 0.9
        hi = (torch.softmax(logits - spread, -1).maximum(torch.softmax(logits + spread, -1)) * 1.1).clamp(max=1)
        lo, hi = lo.reshape(1, 6), hi.reshape(1, 6)
        c = torch.randn(1, 1, 6, generator=g, dtype=torch.float64)
        ours = simplex_lower(c, IntervalBounds(lo, hi), groups, Precision.none())[0, 0]
        res = linprog(c[0, 0].numpy(), A_eq=np.kron(np.eye(2), np.ones(3)), b_eq=[1, 1],
                      bounds=list(zip(lo[0].numpy(), hi[0].numpy())))
        if res.status == 0:
            assert float(ours) == pytest.approx(res.fun, abs=1e-9)
        # sampled softmax rows inside the intervals never go below it
        ys = torch.softmax(logits + (torch.rand(500, 2, 3, generator=g, dtype=torch.float64) * 2 - 1) * spread, -1)
        ys = ys.reshape(500, 6)
        inside = ((ys >= lo) & (ys <= hi)).all(-1)
        assert bool(((ys[inside] @ c[0, 0]) >= ours - 1e-12).all())


def test_two_softmax_outputs_never_sum_above_one() -> None:
    """'y0 + y1 > 1.01' over wide logits: each output alone reaches nearly 1, so the sum of
    their bounds cannot refute it; the row's sum does, with every method."""
    graph = _softmax_net([], (1, 4), seed=1)
    box = IntervalBounds(torch.full((1, 1, 4), -10.0), torch.full((1, 1, 4), 10.0))
    C = torch.tensor([[-1.0, -1.0, 0.0, 0.0]])                     # -(y0 + y1) >= -1 proves it
    for method in ("ibp", "crown", "alpha-crown"):
        lower = compute_bounds(graph, box, C, BoundOptions(method=method, alpha_iterations=5)).lower
        assert float(lower) >= -1.0 - 1e-4 and float(lower) > -1.01, method
        ys = torch.softmax(torch.rand(2000, 4) * 20 - 10, -1)
        assert bool((-(ys[:, 0] + ys[:, 1]) >= float(lower)).all())


def test_an_unbounded_entry_outside_the_groups_gives_no_bound() -> None:
    """Entry 2 lies in no simplex and is unbounded above with coefficient -1: the row has
    no lower bound, -inf (not a finite -3.4e38), with and without rounding margins."""
    box = IntervalBounds(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, torch.inf]]))
    A = torch.tensor([[[1.0, 1.0, -1.0]]])
    for precision in (Precision(), Precision.none()):
        assert simplex_lower(A, box, torch.tensor([[0, 1]]), precision).item() == -torch.inf
