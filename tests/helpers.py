"""Helpers for tests: sampling inside boxes and checking containment with tolerance."""
from __future__ import annotations

import numpy as np
import torch

from models import Graph, GraphEvaluator

__all__ = ["sample_box", "outputs_float64", "assert_inside", "relu_mlp_layers", "relu_mlp_onnx"]


def sample_box(lo: torch.Tensor, hi: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """n points in the box [lo, hi] (shape [1, *s]): uniform, plus random corners."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, *lo.shape[1:], generator=g, dtype=lo.dtype)
    corner = (torch.rand(n // 4, *lo.shape[1:], generator=g) < 0.5).to(lo.dtype)
    u = torch.cat([u, corner])
    return lo + (hi - lo) * u


def outputs_float64(graph: Graph, xs: torch.Tensor) -> torch.Tensor:
    ev = GraphEvaluator(graph, dtype=torch.float64)
    return ev(xs.double()).reshape(len(xs), -1)


def assert_inside(values: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, what: str,
                  rel: float = 1e-5) -> None:
    """values [N, S] within [lower, upper] ([S]) up to rel * scale."""
    values = values.double()
    lower, upper = lower.double().reshape(1, -1), upper.double().reshape(1, -1)
    scale = 1.0 + values.abs().max()
    below = (lower - values).max()
    above = (values - upper).max()
    assert float(below) <= rel * float(scale), f"{what}: sample below lower bound by {float(below):.3g}"
    assert float(above) <= rel * float(scale), f"{what}: sample above upper bound by {float(above):.3g}"
    assert not bool(torch.isnan(lower).any() or torch.isnan(upper).any()), f"{what}: NaN bound"


def relu_mlp_layers(r: np.random.Generator, widths, w_scale: float, b_scale: float, out: str = "Y"
                    ) -> tuple[list, dict]:
    """ONNX nodes and initialisers of a random ReLU MLP from input X: Gemm layers with
    weights ~ N(0, w_scale^2 / fan-in) and biases ~ b_scale N(0, 1), drawn layer by layer
    from `r`, ReLU between them; the last Gemm writes `out`."""
    from onnx import helper

    nodes, inits, prev = [], {}, "X"
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        inits[f"W{i}"] = (r.normal(size=(a, b)) * w_scale / np.sqrt(a)).astype(np.float32)
        inits[f"b{i}"] = (b_scale * r.normal(size=b)).astype(np.float32)
        last = i == len(widths) - 2
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [out if last else f"h{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
            prev = f"r{i}"
    return nodes, inits


def relu_mlp_onnx(path, seed: int, widths=(2, 16, 16, 1)):
    """Write a random ReLU MLP (`relu_mlp_layers` with weight scale 1.5, bias scale 0.3)
    as ONNX to `path`, input [1, widths[0]] named X, output [1, widths[-1]] named Y."""
    from tests.op_cases import make_model

    nodes, inits = relu_mlp_layers(np.random.default_rng(seed), widths, 1.5, 0.3)
    path.write_bytes(make_model(nodes, inits, (1, widths[0]), (1, widths[-1])).SerializeToString())
    return path


def assert_verdicts_bracket(model, spec_at, m: float, spread: float, cfg) -> None:
    """verify() answers unsat for the threshold m - spread and sat for m + spread, where
    m is the true minimum and spec_at(t) the property "output below t"; the sat's output
    lies below its threshold."""
    from verifier import verify

    below = verify(model, spec_at(m - spread), cfg)
    assert below.verdict == "unsat", (m, below.reason, below.stats)
    above = verify(model, spec_at(m + spread), cfg)
    assert above.verdict == "sat", (m, above.reason, above.stats)
    assert float(above.y[0]) <= m + spread


def assert_same_affine_step(got, want, A) -> None:
    """Two backward steps of one affine node (coefficients per input, bias, mass) agree,
    and so do their gradients with respect to the coefficients A (alpha-CROWN's steps and
    certified training differentiate through them)."""
    torch.testing.assert_close(got[0][0], want[0][0])
    assert got[0][1:] == [None] * (len(want[0]) - 1)
    torch.testing.assert_close(got[1], want[1])
    torch.testing.assert_close(got[2], want[2])
    R = torch.randn_like(got[0][0])
    g_got, = torch.autograd.grad((got[0][0] * R).sum() + got[1].sum(), A, retain_graph=True)
    g_want, = torch.autograd.grad((want[0][0] * R).sum() + want[1].sum(), A, retain_graph=True)
    torch.testing.assert_close(g_got, g_want)
