"""Two pieces of alpha-CROWN that general activation split leans on: constraints s*z >= s*c
dualised with multipliers (`Given.cuts`), and relaxations whose
alpha-independent part is prepared once per interval (`OpRule.prepare`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from models import GraphEvaluator, Node
from relaxations import BoundOptions, Given, IntervalBounds, Precision, compute_bounds
from relaxations.alpha import BetaTerms, WarmStart, optimise_alpha
from relaxations.compute import _batch_cuts, intermediate_bounds
from relaxations.registry import REGISTRY
from tests.helpers import relu_mlp_layers
from tests.op_cases import make_model
from verifier import load_model


def _tanh_net(tmp_path):
    nodes, inits = relu_mlp_layers(np.random.default_rng(11), (2, 10, 10, 1), 2.0, 0.5)
    nodes = [helper.make_node("Tanh", list(n.input), list(n.output)) if n.op_type == "Relu" else n for n in nodes]
    path = tmp_path / "tanh.onnx"
    path.write_bytes(make_model(nodes, inits, (1, 2), (1, 1)).SerializeToString())
    return load_model(path)


@pytest.mark.parametrize("side,point", [(1.0, -0.5), (-1.0, 0.5)])
def test_a_cut_enters_as_its_lagrangian(tmp_path, side: float, point: float) -> None:
    """With multiplier beta, the pass bounds f(x) - beta*s*(z(x) - c) from below at every x
    of the box (not only where the cut holds): the constant beta*s*c included. Here
    s*c < 0 and beta is large, so that a wrong sign of the constant shows at once."""
    model = _tanh_net(tmp_path)
    g = model.graph
    z = next(n.inputs[0] for n in g.nodes if n.op == "Tanh")
    ev = GraphEvaluator(g, dtype=torch.float64)
    box = IntervalBounds(-torch.ones(1, 1, 2, dtype=torch.float64), torch.ones(1, 1, 2, dtype=torch.float64))
    opts = BoundOptions(method="alpha-crown", alpha_iterations=1)
    _, ctx, _ = intermediate_bounds(g, ev, box, opts)
    s = torch.zeros(1, *g.shapes[z], dtype=torch.float64)
    s[..., 3] = side
    c = torch.where(s != 0, torch.full_like(s, point), torch.zeros_like(s))
    beta = 5.0 * s.abs().unsqueeze(1)
    A = torch.ones(1, 1, *g.output_shape, dtype=torch.float64)
    res = optimise_alpha(ctx, box, A, opts, Precision.for_dtype(torch.float64),
                         BetaTerms({}, _batch_cuts({"k": (z, s, c)}, torch.float64)),
                         start=WarmStart(None, {"k": beta}))
    xs = 2 * torch.rand(20000, 1, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 1
    vals = ev.forward_all(xs)
    lag = vals[g.output_name].reshape(len(xs)) - 5.0 * side * (vals[z].reshape(len(xs), -1)[:, 3] - point)
    lin = res.linear
    at = (lin.A.reshape(1, -1) * xs.reshape(len(xs), -1)).sum(1) + lin.bias.reshape(())
    assert bool((at <= lag + 1e-9).all()), float((at - lag).max())
    assert float(res.lower) <= float(lag.min())
    assert float((lag - at).min()) < 2 * 5.0 * abs(point)       # tight enough that the constant matters


@pytest.mark.parametrize("side", [1.0, -1.0])
def test_cut_bounds_hold_where_the_cut_does(tmp_path, side: float) -> None:
    model = _tanh_net(tmp_path)
    g = model.graph
    z = next(n.inputs[0] for n in g.nodes if n.op == "Tanh")        # the first hidden layer
    ev = GraphEvaluator(g, dtype=torch.float64)
    box = IntervalBounds(-torch.ones(1, 1, 2, dtype=torch.float64), torch.ones(1, 1, 2, dtype=torch.float64))
    opts = BoundOptions(method="alpha-crown", alpha_iterations=30)
    n = g.shapes[z][-1]
    s = torch.zeros(1, *g.shapes[z], dtype=torch.float64)
    s[..., :3] = side
    c = torch.where(s != 0, torch.full_like(s, 0.1), torch.zeros_like(s))
    cut = compute_bounds(g, box, None, opts, want_upper=False, ev=ev, given=Given(cuts={"k": (z, s, c)}))
    xs = 2 * torch.rand(20000, 1, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 1
    vals = ev.forward_all(xs)
    zv = vals[z].reshape(len(xs), n)[:, :3]
    inside = ((side * (zv - 0.1)) >= 0).all(1)
    assert int(inside.sum()) > 50
    y = vals[g.output_name].reshape(len(xs))
    assert float(cut.lower) <= float(y[inside].min()) + 1e-9


@pytest.mark.parametrize("op,attrs", [("Sigmoid", {}), ("Tanh", {}), ("Atan", {}), ("Erf", {}), ("Gelu", {}),
                                      ("Gelu", {"approximate": "tanh"})])
def test_prepared_relaxation_is_the_same(op: str, attrs: dict) -> None:
    rule = next(r for r in REGISTRY["", op] if r.prepare is not None)
    node = Node(name="n", op=op, inputs=("x",), outputs=("y",), attrs=attrs, opset=20 if op == "Gelu" else 13)
    g = torch.Generator().manual_seed(1)
    l = (torch.randn(4, 1, 50, generator=g) * 4)
    u = l + torch.rand(4, 1, 50, generator=g) * 6
    a = torch.rand(4, 3, 50, generator=g)
    plain = rule.relax(node, l, u, a, [None])
    prep = rule.relax(node, l, u, a, [None], prepared=rule.prepare(node, l, u, [None]))
    for f in ("lower_slope", "lower_bias", "upper_slope", "upper_bias"):
        assert torch.equal(getattr(plain, f), getattr(prep, f)), f
