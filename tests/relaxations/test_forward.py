"""Forward-mode intermediate bounds: sound by sampling on every tensor, never looser
than IBP, exact on linear networks, and usable with activation splits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import GraphEvaluator
from relaxations import BoundOptions, Given, IntervalBounds, compute_bounds
from relaxations.compute import intermediate_bounds
from tests.builders import linear_gemm_net, relu_mlp_graph


def _box(seed: int, n: int, B: int = 16, dtype=torch.float32) -> IntervalBounds:
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(B, 1, n, generator=g, dtype=dtype) * 2 - 1
    w = torch.rand(B, 1, n, generator=g, dtype=dtype) * 0.5
    return IntervalBounds(c - w, c + w)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_intermediates_contain_samples(seed: int, dtype: torch.dtype) -> None:
    graph = relu_mlp_graph(seed, widths=(5, 16, 16, 16, 4))
    ev = GraphEvaluator(graph, dtype=dtype)
    box = _box(seed, 5, dtype=dtype)
    fwd, _, _ = intermediate_bounds(graph, ev, box, BoundOptions(method="crown", intermediate="forward"))
    ibp, _, _ = intermediate_bounds(graph, ev, box, BoundOptions(method="ibp"))
    xs = box.lower + (box.upper - box.lower) * torch.rand(400, *box.lower.shape, dtype=dtype)
    xs = torch.cat([xs, box.lower[None], box.upper[None]])
    for name, b in fwd.items():
        if name == graph.input_name:
            continue
        # Never looser than IBP but for rounding: a tighter input interval is widened by a
        # smaller margin, so an end may sit an ulp or so outside IBP's (both are sound).
        ulps = 8 * torch.finfo(dtype).eps * (1 + ibp[name].lower.abs().maximum(ibp[name].upper.abs()))
        assert (b.lower >= ibp[name].lower - ulps).all() and (b.upper <= ibp[name].upper + ulps).all()
    # Sampled outputs stay inside the final bounds computed on forward intermediates.
    res = compute_bounds(graph, box, None, BoundOptions(method="crown", intermediate="forward"), ev=ev)
    ys = torch.stack([ev(x) for x in xs]).reshape(len(xs), box.lower.shape[0], -1)
    assert (ys >= res.lower.unsqueeze(0)).all() and (ys <= res.upper.unsqueeze(0)).all()


def test_forward_is_exact_on_linear_networks() -> None:
    graph, W, b = linear_gemm_net(3)
    lo = np.array([-0.5, -0.2, 0.1, -1.0])
    hi = lo + np.array([0.3, 1.0, 0.5, 2.0])
    box = IntervalBounds(torch.tensor(lo).reshape(1, 1, 4), torch.tensor(hi).reshape(1, 1, 4))
    ev = GraphEvaluator(graph, dtype=torch.float64)
    table, _, _ = intermediate_bounds(graph, ev, box, BoundOptions(method="crown", intermediate="forward"))
    center, radius = (lo + hi) / 2, (hi - lo) / 2
    exact_lo = center @ W + b - radius @ np.abs(W)
    np.testing.assert_allclose(table[graph.output_name].lower[0, 0].numpy(), exact_lo, rtol=1e-9, atol=1e-9)
    assert (table[graph.output_name].lower[0, 0].numpy() <= exact_lo).all()


def test_forward_tighter_than_ibp_on_deep_relu_net() -> None:
    graph = relu_mlp_graph(7, widths=(5, 32, 32, 32, 32, 4))
    box = _box(7, 5, B=8, dtype=torch.float64)
    ev = GraphEvaluator(graph, dtype=torch.float64)
    fwd = compute_bounds(graph, box, None, BoundOptions(method="crown", intermediate="forward"), ev=ev)
    ibp = compute_bounds(graph, box, None, BoundOptions(method="crown", intermediate="ibp"), ev=ev)
    assert float((fwd.upper - fwd.lower).mean()) < float((ibp.upper - ibp.lower).mean())


def test_forward_with_activation_splits_is_sound() -> None:
    graph = relu_mlp_graph(11, widths=(5, 12, 12, 3))
    ev = GraphEvaluator(graph, dtype=torch.float64)
    box = _box(11, 5, B=1, dtype=torch.float64)
    relu_in = next(n.inputs[0] for n in graph.nodes if n.op == "Relu")
    shape = graph.shapes[relu_in]
    sign = torch.zeros(1, *shape, dtype=torch.int8)
    sign.view(-1)[0] = 1
    res = compute_bounds(graph, box, None, BoundOptions(method="crown", intermediate="forward"), ev=ev,
                         given=Given(splits={relu_in: sign}))
    g = torch.Generator().manual_seed(0)
    xs = box.lower + (box.upper - box.lower) * torch.rand(4000, *box.lower.shape, generator=g, dtype=torch.float64)
    pre = torch.stack([x[0, 0] for x in xs])
    # Keep samples on the split's side: the first neuron's pre-activation must be >= 0.
    W0 = ev.constants[graph.nodes[0].inputs[1]]
    b0 = ev.constants[graph.nodes[0].inputs[2]]
    keep = (pre @ W0[:, 0] + b0[0]) >= 0
    assert int(keep.sum()) > 100  # the box straddles the split neuron's zero for this seed
    ys = torch.stack([ev(x) for x in xs[keep]]).reshape(int(keep.sum()), -1)
    assert (ys >= res.lower).all() and (ys <= res.upper).all()
