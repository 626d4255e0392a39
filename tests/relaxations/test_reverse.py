"""Intervals tightened backward from split decisions (relaxations/reverse.py,
`BoundOptions.tighten_input`): every sampled point that meets a domain's decisions lies
in the box it gets, an empty domain holds no sampled point, the needle's distance neuron
split active confines the inputs to the needle's box, and bounds over the narrowed box
hold on samples."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models import GraphEvaluator
from relaxations import BoundOptions, Given, IntervalBounds, compute_bounds
from relaxations.compute import intermediate_bounds
from relaxations.crown import BackwardContext, rules_for
from relaxations.reverse import tightened_box
from tests.helpers import relu_mlp_onnx
from verifier import load_model
from verifier.bench.needles import HALF_WIDTH, build_net, to_onnx


def _relu_inputs(model) -> list[str]:
    return [n.inputs[0] for n in model.graph.nodes if n.op == "Relu"]


def _box_of(model, splits: dict, lo: float = -1.0, hi: float = 1.0):
    g = model.graph
    N = next(iter(splits.values())).shape[0]
    box = IntervalBounds(torch.full((N, *g.input_shape), lo), torch.full((N, *g.input_shape), hi))
    ev = GraphEvaluator(g)
    opts = BoundOptions(method="crown", intermediate="ibp")
    table, ctx, infeasible = intermediate_bounds(g, ev, box, opts, splits)
    ctx = BackwardContext(g, ev, table, rules_for(g))
    seeds = {z: (s != 0).reshape(s.shape[0], -1).any(0) for z, s in splits.items() if bool((s != 0).any())}
    return tightened_box(ctx, table, seeds), infeasible


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_points_meeting_the_decisions_stay_in_the_box(tmp_path, seed: int) -> None:
    model = load_model(relu_mlp_onnx(tmp_path / "net.onnx", seed, (2, 12, 12, 1)))
    zs = _relu_inputs(model)
    rng = np.random.default_rng(seed)
    N = 64
    splits = {}
    for z in zs:
        s = np.zeros((N, *model.graph.shapes[z]), np.int8)
        for n in range(N):                          # one or two decisions per layer and domain
            idx = rng.choice(s.shape[-1], size=rng.integers(1, 3), replace=False)
            s[n, 0, idx] = rng.choice([-1, 1], size=len(idx))
        splits[z] = torch.from_numpy(s)
    (box, empty), infeasible = _box_of(model, splits)
    g = np.linspace(-1, 1, 201)
    xs = torch.from_numpy(np.stack(np.meshgrid(g, g), -1).reshape(-1, 1, 2)).float()
    vals = GraphEvaluator(model.graph, dtype=torch.float64).forward_all(xs.double())
    narrowed = 0
    for n in range(N):
        meets = torch.ones(len(xs), dtype=torch.bool)
        for z in zs:
            sg = splits[z][n].reshape(1, -1).double()
            meets &= ((sg * vals[z].reshape(len(xs), -1)) >= 0).all(1)
        inside = ((xs[:, 0] >= box.lower[n, 0]) & (xs[:, 0] <= box.upper[n, 0])).all(1)
        assert not bool((meets & ~inside).any()), n
        if bool(empty[n]) or bool(infeasible[n]):
            assert not bool(meets.any()), n
        narrowed += bool(((box.upper[n] - box.lower[n]) < 1.9).any())
    assert narrowed, "no domain's box was narrowed: the test checks nothing"


def test_the_needles_distance_neuron_confines_the_inputs(tmp_path) -> None:
    """The needle's s = relu(1 - 256 |x - c|_1) split active: |x_i - c_i| <= 1/256 for
    every input, and no tighter (the points c +- w e_i are in the ball's closure)."""
    net, _ = build_net("mlp", 8, 0)
    path = tmp_path / "needle.onnx"
    path.write_bytes(to_onnx(net))
    model = load_model(path)
    z = next(n.inputs[0] for n in model.graph.nodes if n.op == "Relu" and model.graph.shapes[n.inputs[0]][-1] == 1)
    splits = {z: torch.ones(1, *model.graph.shapes[z], dtype=torch.int8)}
    (box, empty), _ = _box_of(model, splits, 0.0, 1.0)
    c = torch.from_numpy(np.asarray(net.centre, np.float32)).reshape(box.lower.shape)
    w = HALF_WIDTH
    assert not bool(empty.any())
    assert bool((box.lower <= torch.clamp(c - w, min=0)).all() and (box.upper >= torch.clamp(c + w, max=1)).all())
    assert bool(((box.upper - box.lower) <= 2 * w * 1.01).all())


def test_bounds_over_the_narrowed_box_hold_on_samples(tmp_path) -> None:
    model = load_model(relu_mlp_onnx(tmp_path / "net.onnx", 5, (2, 16, 16, 3)))
    zs = _relu_inputs(model)
    N = 16
    rng = np.random.default_rng(5)
    splits = {z: torch.zeros(N, *model.graph.shapes[z], dtype=torch.int8) for z in zs}
    for n in range(N):
        j = int(rng.integers(0, splits[zs[0]].shape[-1]))
        splits[zs[0]][n, 0, j] = int(rng.choice([-1, 1]))
    box = IntervalBounds(torch.full((N, 1, 2), -1.0), torch.full((N, 1, 2), 1.0))
    opts = dataclasses.replace(BoundOptions(method="alpha-crown", alpha_iterations=5), tighten_input=True)
    res = compute_bounds(model.graph, box, None, opts, want_upper=True, given=Given(splits=splits))
    g = np.linspace(-1, 1, 151)
    xs = torch.from_numpy(np.stack(np.meshgrid(g, g), -1).reshape(-1, 1, 2))
    vals = GraphEvaluator(model.graph, dtype=torch.float64).forward_all(xs)
    ys = vals[model.graph.output_name].reshape(len(xs), -1)
    for n in range(N):
        sg = splits[zs[0]][n].reshape(1, -1).double()
        meets = ((sg * vals[zs[0]].reshape(len(xs), -1)) >= 0).all(1)
        if not bool(meets.any()):
            continue
        inside = ((xs[:, 0] >= res.box.lower[n, 0].double()) & (xs[:, 0] <= res.box.upper[n, 0].double())).all(1)
        assert bool((meets <= inside).all())
        y = ys[meets]
        assert bool((y >= res.lower[n].double() - 1e-6).all()) and bool((y <= res.upper[n].double() + 1e-6).all())
