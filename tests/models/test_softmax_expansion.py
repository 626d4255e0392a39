"""Softmax along an axis: expanded at import into y_i = 1 / (1 + sum_{j != i}
exp(x_j - x_i)) (`models.passes.expand_softmax`). The forward must match onnxruntime,
IBP must be softmax's exact interval (up to rounding allowances), every method must
hold on samples (exp overflowing included: those elements fall back to their interval),
and CROWN through the expansion must beat the interval rule it replaces."""
from __future__ import annotations

import numpy as np
import pytest

import models.passes
import torch
from onnx import helper

from models import GraphEvaluator
from relaxations import BoundOptions, IntervalBounds, compute_bounds
from relaxations.ops.softmax import softmax_bounds
from tests.op_cases import make_model
from verifier import load_model


def _model(tmp_path, opset: int, shape: tuple, axis=None, scale: float = 1.0):
    """X -> MatMul (last axis) -> Softmax(axis) -> MatMul -> Y [..., 3]."""
    n = shape[-1]
    r = np.random.default_rng(opset + n)
    inits = {"W1": (scale * r.normal(size=(n, n))).astype(np.float32), "W2": r.normal(size=(n, 3)).astype(np.float32)}
    attrs = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["h"]),
             helper.make_node("Softmax", ["h"], ["p"], **attrs),
             helper.make_node("MatMul", ["p", "W2"], ["Y"])]
    path = tmp_path / f"sm{opset}_{len(shape)}_{axis}.onnx"
    path.write_bytes(make_model(nodes, inits, shape, (*shape[:-1], 3), opset).SerializeToString())
    return path


@pytest.mark.parametrize("opset,shape,axis,expanded", [(13, (1, 5), None, True), (11, (1, 5), None, True),
                                                       (17, (1, 3, 4), -1, True), (17, (1, 3, 4), 1, True), (13, (1, 65), None, False),
                                                       (11, (1, 3, 4), 1, False)])
def test_softmax_loads_and_matches_onnxruntime(tmp_path, opset: int, shape: tuple, axis, expanded: bool) -> None:
    model = load_model(_model(tmp_path, opset, shape, axis, scale=3.0))
    assert ("Softmax" not in {n.op for n in model.graph.nodes}) == expanded
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    ours = GraphEvaluator(model.graph, dtype=torch.float32)(torch.tensor(x).unsqueeze(0)).detach().numpy()
    np.testing.assert_allclose(ours.reshape(-1), model.run_onnxruntime(x).reshape(-1), rtol=1e-4, atol=1e-5)


def test_ibp_of_the_expansion_is_softmax_exact_interval_widened(tmp_path) -> None:
    model = load_model(_model(tmp_path, 13, (1, 6)))
    centre = torch.randn(1, 1, 6, generator=torch.Generator().manual_seed(0))
    box = IntervalBounds(centre - 0.3, centre + 0.3)
    res = compute_bounds(model.graph, box, options=BoundOptions(method="ibp"))
    h = res.table["h"]
    lo, hi = softmax_bounds(h.lower, h.upper, -1)
    out = res.table[next(n.outputs[0] for n in model.graph.nodes if n.op == "Reciprocal")]
    # the same up to the float32 rounding allowance each of the ops adds, and outside it
    assert bool((out.lower <= lo).all() and (out.upper >= hi).all())
    torch.testing.assert_close(out.lower, lo, rtol=0.1, atol=1e-5)
    torch.testing.assert_close(out.upper, hi, rtol=0.05, atol=1e-5)


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
@pytest.mark.parametrize("radius,scale", [(0.05, 1.0), (1.0, 3.0), (5.0, 10.0)])
def test_softmax_bounds_hold_on_samples(tmp_path, method: str, radius: float, scale: float) -> None:
    """Small and very large logit ranges (exp(x_j - x_i) overflows float32 at the last)."""
    model = load_model(_model(tmp_path, 17, (1, 3, 4), -1, scale=scale))
    g = torch.Generator().manual_seed(3)
    centre = torch.randn(1, 1, 3, 4, generator=g)
    box = IntervalBounds(centre - radius, centre + radius)
    res = compute_bounds(model.graph, box, options=BoundOptions(method=method))
    x = centre + radius * (2 * torch.rand(4000, 1, 3, 4, generator=g) - 1)
    y = GraphEvaluator(model.graph, dtype=torch.float32)(x).reshape(4000, -1)
    assert bool((res.lower.reshape(-1) <= y.min(0).values + 1e-4).all())
    assert bool((res.upper.reshape(-1) >= y.max(0).values - 1e-4).all())
    if radius < 1:
        assert bool(torch.isfinite(res.lower).all() and torch.isfinite(res.upper).all())


def test_crown_through_the_expansion_beats_the_interval_rule(tmp_path, monkeypatch) -> None:
    """The same model loaded with the expansion and without it (the Softmax interval
    rule): at a small radius CROWN's output is much tighter through the expansion."""
    path = _model(tmp_path, 17, (1, 3, 4), -1, scale=1.0)
    expanded = load_model(path)
    monkeypatch.setattr(models.passes, "SOFTMAX_EXPANSION_MAX", 0)
    interval_only = load_model(path)
    assert "Softmax" in {n.op for n in interval_only.graph.nodes}
    centre = torch.randn(1, 1, 3, 4, generator=torch.Generator().manual_seed(5))
    box = IntervalBounds(centre - 0.05, centre + 0.05)
    width = {}
    for name, model in (("expanded", expanded), ("interval", interval_only)):
        res = compute_bounds(model.graph, box, options=BoundOptions(method="crown"))
        width[name] = float((res.upper - res.lower).sum())
    assert width["expanded"] < 0.6 * width["interval"], width


@pytest.mark.parametrize("opset", [13, 9])
def test_softmax_range_is_exact_even_where_exp_overflows(tmp_path, opset: int) -> None:
    """A lone softmax over logits in [-1000, 1000] (exp overflows): its outputs' bounds are
    [0, 1] with no rounding margin (the expansion ends in an exact Clip, and a row that picks
    one output is bounded by that output's interval end), so `y < 0` and `y > 1` are refuted."""
    path = tmp_path / f"lone{opset}.onnx"
    path.write_bytes(make_model([helper.make_node("Softmax", ["X"], ["Y"])], {}, (1, 3), (1, 3), opset)
                     .SerializeToString())
    model = load_model(path)
    assert model.graph.nodes[-1].op == "Clip"
    lo, hi = torch.full((1, 1, 3), -1000.0), torch.full((1, 1, 3), 1000.0)
    C = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 0, 1.0]])
    for method in ("ibp", "crown", "alpha-crown"):
        res = compute_bounds(model.graph, IntervalBounds(lo, hi), C=C, options=BoundOptions(method=method))
        assert res.lower[0].tolist() == [0.0, -1.0, 0.0], method
    ys = GraphEvaluator(model.graph)(torch.rand(500, 1, 3) * 2000 - 1000)
    assert bool(((ys >= 0) & (ys <= 1)).all())
