"""Bounds computed on each device (`device` fixture: cpu, and cuda where there is one):
sound by sampling, kept on the device they were asked for, equal to the CPU's, and as
sound as float32 through a convolution (where a GPU may quietly use TF32)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from models import GraphEvaluator, graph_from_proto
from relaxations import BoundOptions, IntervalBounds, compute_bounds
from tests.builders import relu_mlp_graph
from tests.helpers import assert_inside, outputs_float64, sample_box
from tests.op_cases import make_model


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_bounds_on_the_device_are_sound_and_match_the_cpu(device: str, method: str) -> None:
    graph = relu_mlp_graph(7, widths=(5, 24, 24, 4))
    x0 = torch.rand(3, 1, 5, generator=torch.Generator().manual_seed(7))
    C = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 1.0, 0.0, -1.0], [0.0, 0.0, 1.0, 0.0]])
    opts = BoundOptions(method=method, alpha_iterations=10)
    dev = torch.device(device)
    ev = GraphEvaluator(graph, dtype=torch.float32, device=dev)
    box = IntervalBounds((x0 - 0.25).to(dev), (x0 + 0.25).to(dev))
    res = compute_bounds(graph, box, C.to(dev), opts, ev=ev)
    assert res.lower.device.type == dev.type and res.upper.device.type == dev.type
    assert bool((res.lower <= res.upper).all())
    for b in range(len(x0)):
        lo, hi = (x0[b:b + 1] - 0.25), (x0[b:b + 1] + 0.25)
        ys = outputs_float64(graph, sample_box(lo, hi, 2000, seed=b)) @ C.double().T
        assert_inside(ys, res.lower[b].cpu(), res.upper[b].cpu(), f"{method} on {device}, box {b}")
    # The same on the CPU; alpha-CROWN's steps follow float32 gradients whose sums a GPU
    # orders differently, so its optimised slopes may end a little apart.
    ref = compute_bounds(graph, IntervalBounds(x0 - 0.25, x0 + 0.25), C, opts)
    tol = 1e-4 if method == "crown" else 1e-2
    torch.testing.assert_close(res.lower.cpu(), ref.lower, rtol=tol, atol=tol)
    torch.testing.assert_close(res.upper.cpu(), ref.upper, rtol=tol, atol=tol)


def _linear_conv_net():
    """Conv -> Flatten -> Gemm, no activation: CROWN's bound is the exact extremum, so a
    float32 bound on the device can be held to the float64 one on the CPU."""
    r = np.random.default_rng(3)
    inits = {"W": r.normal(size=(4, 2, 3, 3)).astype(np.float32), "b": r.normal(size=4).astype(np.float32),
             "W2": (r.normal(size=(4 * 5 * 5, 6)) / 10).astype(np.float32), "b2": r.normal(size=6).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["X", "W", "b"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["h"], ["f"]), helper.make_node("Gemm", ["f", "W2", "b2"], ["Y"])]
    return graph_from_proto(make_model(nodes, inits, (1, 2, 5, 5), (1, 6)))


def test_crown_through_a_convolution_keeps_float32_soundness_on_the_device(device: str) -> None:
    """On a GPU, cuDNN may run float32 convolutions in TF32 (10-bit mantissa; torch's
    default for cuDNN), an error far above the margins `Precision` adds for float32.
    The float32 bounds must still contain the exact (float64) ones."""
    graph = _linear_conv_net()
    x0 = torch.rand(2, 1, 2, 5, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    lo, hi = (x0 - 0.3).float(), (x0 + 0.3).float()  # the exact bound is taken over this very box
    exact = compute_bounds(graph, IntervalBounds(lo.double(), hi.double()), options=BoundOptions(method="crown"))
    dev = torch.device(device)
    box = IntervalBounds(lo.to(dev), hi.to(dev))
    ours = compute_bounds(graph, box, options=BoundOptions(method="crown"))
    lower, upper = ours.lower.cpu().double(), ours.upper.cpu().double()
    scale = 1e-9 * (1 + exact.upper.abs().max())
    assert bool((lower <= exact.lower + scale).all()), (lower - exact.lower).max()
    assert bool((upper >= exact.upper - scale).all()), (exact.upper - upper).max()
    torch.testing.assert_close(lower, exact.lower, rtol=1e-4, atol=1e-4)  # and not loose either
