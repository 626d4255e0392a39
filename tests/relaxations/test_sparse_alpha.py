"""Sparse alphas and betas (`BoundOptions.sparse_alpha`): alpha-CROWN keeps a ReLU's
slopes and beta-CROWN's multipliers only at the elements that can use them. The bounds
must be those of the dense form (the same optimisation, fewer numbers), and sound."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import GraphEvaluator
from relaxations import BoundOptions, Given, IntervalBounds, Precision, compute_bounds
from relaxations.alpha import WarmStart, optimise_alpha, unstable_index
from relaxations.compute import intermediate_bounds
from relaxations.crown import BackwardContext, rules_for
from tests.helpers import relu_mlp_onnx
from verifier import load_model


def _boxes(model, seed: int, B: int, radius: float) -> IntervalBounds:
    """B boxes of one radius around random centres: few neurons unstable, and not the
    same ones in every box (so the kept elements include some stable in one box)."""
    r = np.random.default_rng(seed)
    centre = torch.tensor(r.uniform(-1, 1, (B, *model.graph.input_shape)), dtype=torch.float32)
    return IntervalBounds(centre - radius, centre + radius)


def _splits(model, B: int, seed: int) -> dict:
    """Signs on three neurons of the first ReLU's input per box (some +1, some -1)."""
    z = next(n.inputs[0] for n in model.graph.nodes if n.op == "Relu")
    s = torch.zeros(B, *model.graph.shapes[z], dtype=torch.int8)
    g = torch.Generator().manual_seed(seed)
    for b in range(B):
        idx = torch.randperm(s[b].numel(), generator=g)[:3]
        s[b].view(-1)[idx] = torch.tensor([1, -1, 1], dtype=torch.int8)
    return {z: s}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("intermediate", [False, True])
def test_sparse_and_dense_give_the_same_bounds(tmp_path, seed: int, intermediate: bool) -> None:
    model = load_model(relu_mlp_onnx(tmp_path / "net.onnx", seed, widths=(4, 64, 64, 64, 3)))
    B = 3
    box = _boxes(model, seed, B, 0.04)
    ev = GraphEvaluator(model.graph, dtype=torch.float32)
    C = torch.eye(3).unsqueeze(0).expand(B, 3, 3)
    splits = _splits(model, B, seed)
    out = {}
    for sparse in (False, True):
        opts = BoundOptions(method="alpha-crown", sparse_alpha=sparse, keep_betas=True,
                            optimise_intermediate=intermediate, alpha_iterations=15)
        out[sparse] = compute_bounds(model.graph, box, C, opts, want_upper=False, ev=ev, given=Given(splits=splits))
    # the sparse form is really used: some ReLU keeps few of its elements
    ctx = BackwardContext(model.graph, ev, out[True].table, rules_for(model.graph))
    assert any(unstable_index(ctx, n) is not None for n in model.graph.nodes if n.op == "Relu")
    torch.testing.assert_close(out[True].lower, out[False].lower, rtol=1e-4, atol=1e-4)
    for k, v in out[False].alphas.items():        # returned dense, as before
        assert out[True].alphas[k].shape == v.shape
    for k, v in out[False].betas.items():
        assert out[True].betas[k].shape == v.shape
        torch.testing.assert_close(out[True].betas[k], v, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("seed", [2, 3])
def test_sparse_bounds_hold_on_samples(tmp_path, seed: int) -> None:
    model = load_model(relu_mlp_onnx(tmp_path / "net.onnx", seed, widths=(4, 64, 64, 3)))
    box = _boxes(model, seed, 2, 0.05)
    ev = GraphEvaluator(model.graph, dtype=torch.float32)
    C = torch.eye(3).unsqueeze(0).expand(2, 3, 3)
    res = compute_bounds(model.graph, box, C, BoundOptions(method="alpha-crown", sparse_alpha=True),
                         want_upper=False, ev=ev)
    g = torch.Generator().manual_seed(seed)
    for b in range(2):
        x = box.lower[b] + (box.upper[b] - box.lower[b]) * torch.rand(400, *model.graph.input_shape, generator=g)
        y = torch.stack([torch.as_tensor(model.run_onnxruntime(xi.numpy())).reshape(-1) for xi in x])
        assert bool((res.lower[b] <= y.min(0).values + 1e-5).all()), (res.lower[b], y.min(0).values)


def test_a_kept_element_stable_in_one_box_keeps_its_exact_line(tmp_path) -> None:
    """Started from slopes of 0.5 everywhere (a warm start from some parent), the sparse
    form must use them only where the element is unstable in that box: the first step's
    bound equals the dense form's (0.5 on a stable element would loosen it)."""
    model = load_model(relu_mlp_onnx(tmp_path / "net.onnx", 4, widths=(4, 64, 64, 3)))
    B = 3
    box = _boxes(model, 4, B, 0.04)
    ev = GraphEvaluator(model.graph, dtype=torch.float32)
    A = torch.eye(3).unsqueeze(0).expand(B, 3, 3).reshape(B, 3, *model.graph.output_shape)
    given = {n.name: torch.full((B, 3, *model.graph.shapes[n.inputs[0]]), 0.5)
             for n in model.graph.nodes if n.op == "Relu"}
    out = []
    for sparse in (False, True):
        opts = BoundOptions(method="alpha-crown", sparse_alpha=sparse, alpha_iterations=1)
        _, ctx, _ = intermediate_bounds(model.graph, ev, box, opts)
        out.append(optimise_alpha(ctx, box, A, opts, Precision.for_dtype(torch.float32), start=WarmStart(given)).lower)
    torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-5)
