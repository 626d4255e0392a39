"""IBP with the specification folded into the trailing affine ops (compute_bounds, method "ibp").

The folded bound passes C back exactly through Gemm / Add / Sub / Flatten / Conv and
concretises at the first op that needs a relaxation. It must be sound (checked by
sampling, in float64, against the float32 bound), never looser than the box bound
C @ [output], strictly tighter for margins with correlated rows, exact on linear
networks, and differentiable.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

from models import GraphEvaluator, graph_from_proto
from models.from_torch import graph_from_module
from relaxations import BoundOptions, IntervalBounds, compute_bounds
from tests.helpers import relu_mlp_layers
from tests.op_cases import make_model

torch.set_num_threads(1)


def _mlp(seed: int, widths=(5, 16, 12, 6)):
    """Gemm/Relu layers, the last one followed by Add and Sub of constants (affine too)."""
    r = np.random.default_rng(seed)
    nodes, inits = relu_mlp_layers(r, widths, 1.0, 0.1, out="g")
    inits["c_add"] = r.normal(size=(1, widths[-1])).astype(np.float32)
    inits["c_sub"] = r.normal(size=(1, widths[-1])).astype(np.float32)
    nodes.append(helper.make_node("Add", ["g", "c_add"], ["s"]))
    nodes.append(helper.make_node("Sub", ["s", "c_sub"], ["Y"]))
    return graph_from_proto(make_model(nodes, inits, (1, widths[0]), (1, widths[-1])))


def _cnn(seed: int) -> tuple[nn.Module, object]:
    """conv-relu-conv-flatten-linear: the fold goes back through Linear, Flatten and a Conv."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=1), nn.Flatten(),
                        nn.Linear(4 * 2 * 2, 5)).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, graph_from_module(net, (1, 1, 6, 6))


def _box(graph, seed: int, B: int, eps: float, dtype=torch.float32) -> IntervalBounds:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(B, *graph.input_shape, generator=g, dtype=dtype)
    return IntervalBounds(x0 - eps, x0 + eps)


def _random_C(n_out: int, S: int, seed: int) -> torch.Tensor:
    C = torch.randn(S, n_out, generator=torch.Generator().manual_seed(seed))
    C[0] = 0.0
    C[0, 0], C[0, 1] = 1.0, -1.0                       # a margin row
    return C


def _box_lower(res, C: torch.Tensor, graph) -> torch.Tensor:
    """C @ [output] from the interval of the output, in float64 with no widening."""
    out = res.table[graph.output_name]
    lo = out.lower.reshape(out.lower.shape[0], -1).double()
    hi = out.upper.reshape(out.upper.shape[0], -1).double()
    Cd = C.double()
    return lo @ Cd.clamp(min=0).T + hi @ Cd.clamp(max=0).T


def _samples(graph, box: IntervalBounds, C: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """C @ f(x) [n, B, S] at n points of each box (corners half the time), in float64."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = box.lower.double(), box.upper.double()
    u = torch.rand(n, *lo.shape, generator=g, dtype=torch.float64)
    u[: n // 2] = (u[: n // 2] > 0.5).double()
    x = lo + (hi - lo) * u
    ev = GraphEvaluator(graph, dtype=torch.float64)
    with torch.no_grad():
        y = ev(x.reshape(-1, *graph.input_shape)).reshape(n, lo.shape[0], -1)
    return y @ C.double().T


def _check_sound_and_not_looser(graph, box: IntervalBounds, C: torch.Tensor, seed: int) -> None:
    with torch.no_grad():
        folded = compute_bounds(graph, box, C, BoundOptions(method="ibp"))
        plain = compute_bounds(graph, box, C, BoundOptions(method="ibp", fold=False))
    vals = _samples(graph, box, C, 2000, seed)
    assert bool((vals >= folded.lower.double().unsqueeze(0)).all()), "folded lower bound above a sample"
    assert bool((vals <= folded.upper.double().unsqueeze(0)).all()), "folded upper bound below a sample"
    assert bool((folded.lower >= plain.lower).all()) and bool((folded.upper <= plain.upper).all())


@pytest.mark.parametrize("seed", range(6))
def test_folded_ibp_is_sound_and_never_looser_on_mlps(seed: int) -> None:
    graph = _mlp(seed)
    box = _box(graph, seed, B=4, eps=0.1 + 0.1 * seed)
    _check_sound_and_not_looser(graph, box, _random_C(graph.output_size, 5, seed), seed)


@pytest.mark.parametrize("seed", range(3))
def test_folded_ibp_is_sound_and_never_looser_on_a_cnn(seed: int) -> None:
    _, graph = _cnn(seed)
    box = _box(graph, seed, B=3, eps=0.05 * (seed + 1))
    _check_sound_and_not_looser(graph, box, _random_C(graph.output_size, 6, seed), 10 + seed)


def test_margin_with_correlated_rows_is_strictly_tighter_than_the_box() -> None:
    """y_0 - y_1 with W's rows 0 and 1 nearly equal: the box bound counts the shared
    hidden units twice (|W_0| + |W_1|), the folded bound sees W_0 - W_1 (today's code
    applied C to the box of the logits and gave exactly the box bound)."""
    r = np.random.default_rng(3)
    W0 = (r.normal(size=(4, 8)) / 2).astype(np.float32)
    W1 = r.normal(size=(8, 3)).astype(np.float32)
    W1[:, 1] = W1[:, 0] + 0.01 * r.normal(size=8).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["X", "W0", "b0"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W1", "b1"], ["Y"])]
    inits = {"W0": W0, "b0": np.zeros(8, np.float32), "W1": W1, "b1": np.zeros(3, np.float32)}
    graph = graph_from_proto(make_model(nodes, inits, (1, 4), (1, 3)))
    box = _box(graph, 0, B=2, eps=0.2)
    C = torch.tensor([[1.0, -1.0, 0.0]])
    res = compute_bounds(graph, box, C, BoundOptions(method="ibp"))
    box_lb = _box_lower(res, C, graph)
    assert bool((res.lower.double() > box_lb + 0.5 * box_lb.abs()).all()), (res.lower, box_lb)
    vals = _samples(graph, box, C, 2000, 0)
    assert bool((vals >= res.lower.double().unsqueeze(0)).all())


def _linear_net(seed: int, widths=(4, 7, 5, 3)):
    r = np.random.default_rng(seed)
    nodes, inits, prev = [], {}, "X"
    W, b = np.eye(widths[0]), np.zeros(widths[0])
    for i, (a, c) in enumerate(zip(widths[:-1], widths[1:])):
        inits[f"W{i}"] = r.normal(size=(a, c)).astype(np.float32)
        inits[f"b{i}"] = r.normal(size=c).astype(np.float32)
        out = "Y" if i == len(widths) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [out]))
        prev = out
        W, b = W @ inits[f"W{i}"].astype(np.float64), b @ inits[f"W{i}"].astype(np.float64) + inits[f"b{i}"]
    return graph_from_proto(make_model(nodes, inits, (1, widths[0]), (1, widths[-1]))), W, b


@pytest.mark.parametrize("seed", range(4))
def test_folded_ibp_is_exact_on_linear_networks(seed: int) -> None:
    graph, W, b = _linear_net(seed)
    box = _box(graph, seed, B=3, eps=0.5, dtype=torch.float64)
    C = torch.tensor([[1.0, -1.0, 0.0], [0.5, 2.0, -1.5]], dtype=torch.float64)
    res = compute_bounds(graph, box, C, BoundOptions(method="ibp"))
    lo, hi = box.lower.reshape(3, -1).numpy(), box.upper.reshape(3, -1).numpy()
    M = W @ C.numpy().T                                  # input -> C y, [n_in, S]
    exact = ((lo + hi) / 2) @ M + b @ C.numpy().T - ((hi - lo) / 2) @ np.abs(M)
    np.testing.assert_allclose(res.lower.numpy(), exact, rtol=1e-9, atol=1e-9)
    assert (res.lower.numpy() <= exact).all()
    # in float32 it stays below the true minimum (outward widening covers the rounding)
    res32 = compute_bounds(graph, IntervalBounds(box.lower.float(), box.upper.float()), C.float(),
                           BoundOptions(method="ibp"))
    assert (res32.lower.double().numpy() <= exact).all()
    np.testing.assert_allclose(res32.lower.double().numpy(), exact, rtol=1e-3, atol=1e-3)


def test_folded_ibp_is_differentiable_and_gradients_reach_the_last_layer() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3))
    graph = graph_from_module(net, (1, 6))
    x0 = torch.rand(4, 1, 6)
    C = torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]])
    box = IntervalBounds(x0 - 0.1, x0 + 0.1)
    off = compute_bounds(graph, box, C, BoundOptions(method="ibp"), want_upper=False)
    assert not off.lower.requires_grad  # autograd is an option of the bounding API, off by default
    res = compute_bounds(graph, box, C, BoundOptions(method="ibp", grad=True), want_upper=False)
    res.lower.sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_one_A_shared_by_the_batch_is_concretised_as_if_repeated() -> None:
    """interval_terms and ball_terms of A [1, S, n] against B intervals (certified training's
    shared specification) equal those of A repeated B times: with finite ends by matrix
    products, with an infinite end element by element (0 * inf counts as 0)."""
    from relaxations.bounds import BallBox, ball_terms, interval_terms

    g = torch.Generator().manual_seed(5)
    A = torch.randn(1, 4, 6, generator=g, dtype=torch.float64)
    A[0, 1, 2] = 0.0
    lo = torch.randn(3, 6, generator=g, dtype=torch.float64)
    hi = lo + torch.rand(3, 6, generator=g, dtype=torch.float64)
    for lower in (lo, torch.where(torch.arange(6) == 2, torch.tensor(-torch.inf, dtype=torch.float64), lo)):
        box = IntervalBounds(lower, hi)
        for want_mass in (True, False):
            shared, repeated = interval_terms(A, box, want_mass), interval_terms(A.expand(3, -1, -1), box, want_mass)
            torch.testing.assert_close(shared[0], repeated[0])
            if want_mass:
                torch.testing.assert_close(shared[1], repeated[1])
    ball = BallBox(lo, hi, (lo + hi) / 2, torch.full((3,), 0.3, dtype=torch.float64))
    shared, repeated = ball_terms(A, ball), ball_terms(A.expand(3, -1, -1), ball)
    torch.testing.assert_close(shared[0], repeated[0])
    torch.testing.assert_close(shared[1], repeated[1])
