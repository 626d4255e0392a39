"""The bounding API (`relaxations.compute_bounds`): typed result, given parameters, the one
concretisation and the one row-proved rule."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models import GraphEvaluator, load_onnx
from relaxations import (BoundOptions, BoundResult, Given, IntervalBounds, Precision, compute_bounds, concretize,
                         rows_proved)
from tests.helpers import relu_mlp_onnx, sample_box


def _setup(tmp_path, seed: int = 0, widths=(3, 12, 12, 2)):
    graph = load_onnx(str(relu_mlp_onnx(tmp_path / "n.onnx", seed, widths)))
    x0 = torch.tensor(np.random.default_rng(seed).uniform(-0.5, 0.5, size=(2, 1, widths[0])))
    box = IntervalBounds(x0 - 0.4, x0 + 0.4)
    C = torch.tensor([[1.0, -1.0], [0.0, 1.0]], dtype=torch.float64)
    return graph, box, C


def _relu_names(graph) -> list[str]:
    return [n.name for n in graph.nodes if n.op == "Relu"]


def test_result_is_frozen_and_typed(tmp_path) -> None:
    graph, box, C = _setup(tmp_path)
    res = compute_bounds(graph, box, C, BoundOptions(method="alpha-crown", alpha_iterations=3, coefficients=True))
    assert isinstance(res, BoundResult) and not hasattr(res, "stats")
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.lower = res.lower  # type: ignore[misc]
    assert res.infeasible.shape == (2,) and not bool(res.infeasible.any())
    assert set(res.alphas) == set(_relu_names(graph)) and res.crown_linear is not None
    assert set(res.coefficients) == set(_relu_names(graph))
    assert bool((res.lower >= res.interval_lower).all()) and not res.lower.requires_grad


def test_given_default_alphas_reproduce_crown_and_any_given_value_stays_sound(tmp_path) -> None:
    graph, box, C = _setup(tmp_path, seed=1)
    crown = compute_bounds(graph, box, C, BoundOptions(method="crown"), want_upper=False)
    shapes = {n.name: graph.shapes[n.inputs[0]] for n in graph.nodes if n.op == "Relu"}
    nan = {k: torch.full((2, 2, *s[1:]), float("nan"), dtype=torch.float64) for k, s in shapes.items()}
    same = compute_bounds(graph, box, C, BoundOptions(method="crown"), want_upper=False, given=Given(alphas=nan))
    torch.testing.assert_close(same.lower, crown.lower)
    # Values outside [0, 1] are projected into range first: never an unsound bound.
    wild = {k: torch.full_like(v, 7.0) for k, v in nan.items()}
    res = compute_bounds(graph, box, C, BoundOptions(method="crown"), want_upper=False, given=Given(alphas=wild))
    assert all(bool(((a >= 0) & (a <= 1)).all()) for a in res.alphas.values())
    ev = GraphEvaluator(graph, dtype=torch.float64)
    for i in range(2):
        ys = ev(sample_box(box.lower[i:i + 1], box.upper[i:i + 1], 2000)).reshape(-1, 2)
        assert bool((ys @ C.T >= res.lower[i] - 1e-9).all())


def test_alpha_crown_started_from_given_alphas_is_at_least_their_bound(tmp_path) -> None:
    graph, box, C = _setup(tmp_path, seed=2)
    opt = compute_bounds(graph, box, C, BoundOptions(method="alpha-crown", alpha_iterations=10), want_upper=False)
    fixed = compute_bounds(graph, box, C, BoundOptions(method="crown"), want_upper=False,
                           given=Given(alphas=opt.alphas))
    assert bool((fixed.lower >= opt.lower - 1e-9).all())    # the alphas reproduce the bound they gave
    warm = compute_bounds(graph, box, C, BoundOptions(method="alpha-crown", alpha_iterations=3), want_upper=False,
                          given=Given(alphas=opt.alphas))
    assert bool((warm.lower >= fixed.lower - 1e-12).all())


def test_autograd_is_an_option(tmp_path) -> None:
    graph, box, C = _setup(tmp_path, seed=3)
    lo = box.lower.clone().requires_grad_(True)
    off = compute_bounds(graph, IntervalBounds(lo, box.upper), C, BoundOptions(method="crown"))
    assert not off.lower.requires_grad
    on = compute_bounds(graph, IntervalBounds(lo, box.upper), C, BoundOptions(method="crown", grad=True))
    on.lower.sum().backward()
    assert lo.grad is not None


def test_one_concretisation_handles_infinite_ends_and_widens_once() -> None:
    A = torch.tensor([[[1.0, 0.0, -2.0]]], dtype=torch.float64)
    b = IntervalBounds(torch.tensor([[-1.0, -torch.inf, 0.5]], dtype=torch.float64),
                       torch.tensor([[2.0, torch.inf, 1.0]], dtype=torch.float64))
    p = Precision(1e-3, 1e-4)
    v = concretize(A, b, p, bias=torch.tensor([[0.25]], dtype=torch.float64))
    exact, mass = -1.0 - 2.0 + 0.25, 2.0 + 2.0
    assert float(v) == pytest.approx(exact - p.margin(mass))
    finite = IntervalBounds(torch.tensor([[-1.0, 0.0, 0.5]], dtype=torch.float64),
                            torch.tensor([[2.0, 0.0, 1.0]], dtype=torch.float64))
    assert float(concretize(A, finite, p, bias=torch.tensor([[0.25]], dtype=torch.float64))) == pytest.approx(float(v))


def test_one_row_rule_for_numpy_and_torch() -> None:
    gap = np.array([[0.0, 0.0, 1e-9, -1e-9]])
    strict = np.array([True, False, False, True])
    expect = [[True, False, True, False]]
    assert rows_proved(gap, strict).tolist() == expect
    assert rows_proved(torch.tensor(gap), torch.tensor(strict)).tolist() == expect


def test_a_nan_end_under_a_used_coefficient_is_never_a_finite_bound() -> None:
    """A nan interval (inf - inf upstream) must not become 0: the bound stays nan, and a nan
    row is never proved. Under a zero coefficient it is ignored."""
    A = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    used = IntervalBounds(torch.tensor([[float("nan"), 0.0]], dtype=torch.float64),
                          torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    v = concretize(A, used, Precision())
    assert bool(torch.isnan(v).all()) and not bool(rows_proved(v, torch.tensor([True])).any())
    unused = IntervalBounds(torch.tensor([[0.5, float("nan")]], dtype=torch.float64),
                            torch.tensor([[1.0, float("nan")]], dtype=torch.float64))
    assert float(concretize(A, unused, Precision(0.0, 0.0))) == 0.5
