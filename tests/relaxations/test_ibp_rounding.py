"""Interval rounding margins end by end (`relaxations.ibp.sound_interval`).

A huge upper end must not drag a small lower end down (exp of a wide interval, then a
sum and a reciprocal), terms that cancel in an affine op must still be paid for, and a
product of two variable matrices (Gemm with its transposes, alpha and beta) must hold
on samples.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from models import GraphEvaluator, Node
from models.onnx_import import graph_from_proto
from relaxations import BoundOptions, IntervalBounds, compute_bounds
from relaxations.bounds import Precision
from relaxations.ibp import sound_interval
from relaxations.registry import rule_for
from tests.op_cases import make_model


def test_a_huge_upper_end_leaves_the_lower_end_alone() -> None:
    """X [1, 4] -> Exp -> ReduceSum -> Reciprocal: with inputs up to 50, exp reaches 5e21;
    a margin shared by both ends put the sum's lower end near -1e17 and the reciprocal's
    upper end at +inf."""
    nodes = [helper.make_node("Exp", ["X"], ["e"]),
             helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=1),
             helper.make_node("Reciprocal", ["s"], ["Y"])]
    graph = graph_from_proto(make_model(nodes, {"axes": np.array([1], dtype=np.int64)}, (1, 4), (1, 1)))
    box = IntervalBounds(torch.tensor([[[-1.0, 0.0, -2.0, 1.0]]]), torch.tensor([[[50.0, 1.0, 0.0, 2.0]]]))
    res = compute_bounds(graph, box, options=BoundOptions(method="ibp"))
    s = res.table["s"]
    exact_low = float(np.exp([-1.0, 0.0, -2.0, 1.0]).sum())
    assert exact_low * (1 - 1e-4) - 1e-5 <= float(s.lower) <= exact_low
    assert float(res.upper) <= 1 / exact_low * (1 + 1e-4) + 1e-5
    xs = box.lower + torch.rand(2000, 1, 4, generator=torch.Generator().manual_seed(0)) * box.width()
    y = GraphEvaluator(graph, dtype=torch.float32)(xs).reshape(-1)
    assert float(res.lower) <= float(y.min()) and float(res.upper) >= float(y.max())


def test_terms_that_cancel_are_paid_for() -> None:
    """Gemm [1, -1] at a point with both inputs near 1e6: the output is near 0, but its
    rounding is that of terms of 1e6, and the margin says so."""
    node = Node("g", "Gemm", ("x", "W"), ("y",), {}, 13)
    x = torch.tensor([[[1.0e6 + 3.0, 1.0e6]]]).reshape(1, 1, 2)
    W = torch.tensor([[1.0], [-1.0]])
    out = sound_interval(None, node, rule_for(node), [IntervalBounds(x, x), W], Precision())[0]
    assert float(out.lower) <= 3.0 - 1e-5 * 2e6 and float(out.upper) >= 3.0 + 1e-5 * 2e6


@pytest.mark.parametrize("transA,transB,alpha,beta", [(0, 0, 1.0, 1.0), (0, 1, 1.0, 1.0), (1, 1, -0.5, 2.0)])
def test_gemm_of_two_variable_factors_holds_on_samples(transA: int, transB: int, alpha: float, beta: float) -> None:
    """X [1, 12] is cut into A (3x2 or its transpose) and B (2x2); Gemm(A, B, C) with C a
    constant is expanded at import into Transposes, MatMul, Mul by alpha and Add of beta C
    (`models.passes.expand_gemm`), so CROWN relaxes it by McCormick planes; the bounds
    hold on samples, and CROWN's are no wider than IBP's. Gemm's own interval rule (kept
    for the interval) must follow the attributes too."""
    a_shape = (2, 3) if transA else (3, 2)
    nodes = [helper.make_node("Slice", ["X", "s0", "e0", "ax"], ["xa"]),
             helper.make_node("Slice", ["X", "s1", "e1", "ax"], ["xb"]),
             helper.make_node("Reshape", ["xa", "sa"], ["A"]),
             helper.make_node("Reshape", ["xb", "sb"], ["Bm"]),
             helper.make_node("Gemm", ["A", "Bm", "C"], ["G"], transA=transA, transB=transB, alpha=alpha, beta=beta),
             helper.make_node("Reshape", ["G", "so"], ["Y"])]
    i64 = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
    inits = {"s0": i64([0]), "e0": i64([6]), "s1": i64([6]), "e1": i64([10]), "ax": i64([1]),
             "sa": i64(a_shape), "sb": i64([2, 2]), "so": i64([1, 6]),
             "C": np.array([[0.5, -1.0]], dtype=np.float32)}
    proto = make_model(nodes, inits, (1, 12), (1, 6))
    graph = graph_from_proto(proto)
    x = np.random.default_rng(7).normal(size=(1, 12)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString()).run(None, {"X": x})[0]
    got = GraphEvaluator(graph, dtype=torch.float32)(torch.from_numpy(x).unsqueeze(0)).detach().numpy()
    np.testing.assert_allclose(got.reshape(-1), want.reshape(-1), rtol=1e-5, atol=1e-5)
    assert "Gemm" not in {n.op for n in graph.nodes} and "MatMul" in {n.op for n in graph.nodes}
    gen = torch.Generator().manual_seed(transA * 2 + transB)
    centre = torch.randn(1, 1, 12, generator=gen)
    box = IntervalBounds(centre - 0.4, centre + 0.4)
    xs = centre + 0.4 * (2 * torch.rand(3000, 1, 12, generator=gen) - 1)
    y = GraphEvaluator(graph, dtype=torch.float32)(xs).reshape(3000, -1)
    widths = {}
    for method in ("ibp", "crown"):
        res = compute_bounds(graph, box, options=BoundOptions(method=method))
        widths[method] = float((res.upper - res.lower).sum())
        assert bool((res.lower.reshape(-1) <= y.min(0).values).all()), method
        assert bool((res.upper.reshape(-1) >= y.max(0).values).all()), method
        # not the trivial bound: within a few widths of the sampled range
        assert bool(((res.upper - res.lower).reshape(-1) <= 4 * (y.max(0).values - y.min(0).values) + 1).all())
    assert widths["crown"] <= widths["ibp"] * (1 + 1e-5)


def test_gemm_interval_rule_follows_its_attributes() -> None:
    """The rule itself (it still bounds a Gemm that is not expanded): transB, alpha and
    beta C on a point box give the forward's value."""
    node = Node("g", "Gemm", ("a", "b", "c"), ("y",), {"transB": 1, "alpha": -0.5, "beta": 2.0}, 13)
    a = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]]])
    b = torch.tensor([[[2.0, 1.0], [-1.0, 4.0]]])
    c = torch.tensor([[0.5, -1.0]])
    out = rule_for(node).interval(node, [IntervalBounds(a, a), IntervalBounds(b, b), c])[0]
    want = -0.5 * a[0] @ b[0].T + 2.0 * c
    torch.testing.assert_close(out.lower[0], want, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.upper[0], want, atol=1e-4, rtol=0)
