"""CROWN's defining properties: exact on linear networks, never looser than IBP,
alpha-CROWN never looser than CROWN, hand-computed relaxations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from models import GraphEvaluator, graph_from_proto
from relaxations import BoundOptions, IntervalBounds, compute_bounds
from tests.builders import linear_gemm_net, relu_mlp_graph
from tests.op_cases import make_model


@pytest.mark.parametrize("seed", range(5))
def test_crown_is_exact_on_linear_networks(seed: int) -> None:
    graph, W, b = linear_gemm_net(seed)
    r = np.random.default_rng(100 + seed)
    lo = r.uniform(-1, 0, size=4)
    hi = lo + r.uniform(0, 2, size=4)
    res = compute_bounds(graph, IntervalBounds(torch.tensor(lo).reshape(1, 1, 4), torch.tensor(hi).reshape(1, 1, 4)),
                         options=BoundOptions(method="crown"))
    center, radius = (lo + hi) / 2, (hi - lo) / 2
    exact_lo = center @ W + b - radius @ np.abs(W)
    exact_hi = center @ W + b + radius @ np.abs(W)
    np.testing.assert_allclose(res.lower[0].numpy(), exact_lo, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.upper[0].numpy(), exact_hi, rtol=1e-9, atol=1e-9)
    assert (res.lower[0].numpy() <= exact_lo).all() and (res.upper[0].numpy() >= exact_hi).all()


@pytest.mark.parametrize("seed", range(4))
def test_crown_tighter_than_ibp_and_alpha_never_looser_than_crown(seed: int) -> None:
    graph = relu_mlp_graph(seed)
    x0 = torch.rand(3, 1, 5, generator=torch.Generator().manual_seed(seed))
    box = IntervalBounds(x0 - 0.3, x0 + 0.3)
    C = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 1.0, 0.0, -1.0]])
    # CROWN is intersected with the box bound C @ [output], so it is never looser than
    # that; IBP with C folded into the last layer can beat CROWN on some rows.
    ibp = compute_bounds(graph, box, C, BoundOptions(method="ibp", fold=False))
    crown = compute_bounds(graph, box, C, BoundOptions(method="crown"))
    alpha = compute_bounds(graph, box, C, BoundOptions(method="alpha-crown", alpha_iterations=30))
    assert bool((crown.lower >= ibp.lower - 1e-9).all()) and bool((crown.upper <= ibp.upper + 1e-9).all())
    assert float((crown.upper - crown.lower).mean()) < float((ibp.upper - ibp.lower).mean())
    assert bool((alpha.lower >= crown.lower - 1e-9).all()) and bool((alpha.upper <= crown.upper + 1e-9).all())


def test_single_relu_by_hand() -> None:
    """y = relu(x) on [-1, 3]: upper chord 0.75 x + 0.75 gives max 3; CROWN lower picks
    slope 1 (u > -l), so min is -1 (the interval bound 0 is tighter and wins)."""
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], {}, (1, 1), (1, 1))
    graph = graph_from_proto(model)
    box = IntervalBounds(torch.tensor([[[-1.0]]], dtype=torch.float64), torch.tensor([[[3.0]]], dtype=torch.float64))
    res = compute_bounds(graph, box, torch.tensor([[1.0], [-1.0]]), BoundOptions(method="crown"))
    # row 0: relu(x) in [0, 3]; row 1: -relu(x) in [-3, 0]
    np.testing.assert_allclose(res.lower[0].numpy(), [0.0, -3.0], atol=1e-9)
    np.testing.assert_allclose(res.upper[0].numpy(), [3.0, 0.0], atol=1e-9)


def test_difference_of_relus_by_hand() -> None:
    """y = relu(x) - relu(x) = 0 on [-1, 3]: box IBP gives [-3, 3]; CROWN, and IBP with
    the output folded back through the Sub, add the two coefficients of the shared
    tensor before bounding it, so they are exact: [0, 0]."""
    model = make_model([helper.make_node("Relu", ["X"], ["a"]), helper.make_node("Sub", ["a", "a"], ["Y"])],
                       {}, (1, 1), (1, 1))
    graph = graph_from_proto(model)
    box = IntervalBounds(torch.tensor([[[-1.0]]], dtype=torch.float64), torch.tensor([[[3.0]]], dtype=torch.float64))
    ibp = compute_bounds(graph, box, options=BoundOptions(method="ibp", fold=False))
    folded = compute_bounds(graph, box, options=BoundOptions(method="ibp"))
    crown = compute_bounds(graph, box, options=BoundOptions(method="crown"))
    assert float(ibp.lower) == pytest.approx(-3.0)
    assert float(folded.lower) == pytest.approx(0.0, abs=1e-9)
    assert float(folded.upper) == pytest.approx(0.0, abs=1e-9)
    assert float(crown.lower) == pytest.approx(0.0, abs=1e-9)
    assert float(crown.upper) == pytest.approx(0.0, abs=1e-9)


def test_batched_boxes_match_single_boxes() -> None:
    graph = relu_mlp_graph(7)
    x0 = torch.rand(4, 1, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    box = IntervalBounds(x0 - 0.2, x0 + 0.2)
    together = compute_bounds(graph, box, options=BoundOptions(method="crown"))
    for i in range(4):
        alone = compute_bounds(graph, IntervalBounds(box.lower[i:i + 1], box.upper[i:i + 1]),
                               options=BoundOptions(method="crown"))
        torch.testing.assert_close(together.lower[i], alone.lower[0])
        torch.testing.assert_close(together.upper[i], alone.upper[0])


def test_float32_bounds_are_widened_outward() -> None:
    graph, W, b = linear_gemm_net(3)
    lo = torch.zeros(1, 1, 4)
    hi = torch.ones(1, 1, 4)
    r32 = compute_bounds(graph, IntervalBounds(lo, hi), options=BoundOptions(method="crown"))
    r64 = compute_bounds(graph, IntervalBounds(lo.double(), hi.double()), options=BoundOptions(method="crown"))
    assert bool((r32.lower.double() < r64.lower).all()) and bool((r32.upper.double() > r64.upper).all())


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_an_overflowing_element_is_bounded_by_its_interval(method: str) -> None:
    """X [1, 3] -> Exp -> Gemm -> Y: x2 reaches 100, where exp overflows float32 and no
    finite line exists. CROWN bounds that element by its interval (+inf above) and keeps
    its lines for the others: Y0 reads e0 and e1 only and stays tight; Y1 reads e2 and
    has no finite upper bound. Before, the pass raised (an internal error)."""
    W = np.array([[1.0, 0.0], [-2.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    nodes = [helper.make_node("Exp", ["X"], ["e"]), helper.make_node("Gemm", ["e", "W"], ["Y"])]
    graph = graph_from_proto(make_model(nodes, {"W": W}, (1, 3), (1, 2)))
    box = IntervalBounds(torch.tensor([[[0.0, 0.0, 0.0]]]), torch.tensor([[[1.0, 0.5, 100.0]]]))
    res = compute_bounds(graph, box, options=BoundOptions(method=method))
    xs = box.lower + torch.rand(5000, 1, 3, generator=torch.Generator().manual_seed(0)) * box.width()
    y0 = torch.exp(xs[:, 0, 0]) - 2 * torch.exp(xs[:, 0, 1])
    assert float(res.lower[0, 0]) <= float(y0.min()) and float(res.upper[0, 0]) >= float(y0.max())
    assert float(res.upper[0, 0]) - float(res.lower[0, 0]) < 1.2 * (np.e - 1 + 2 * (np.exp(0.5) - 1))
    assert float(res.lower[0, 1]) <= 1.0 and res.upper[0, 1] == torch.inf


@pytest.mark.parametrize("seed", range(3))
def test_crown_on_every_element_narrows_the_stable_ones_and_holds_samples(seed: int) -> None:
    """`crown_every_element` tightens the stable neurons' intervals too (local Lipschitz
    reads them all): every interval inside the default's, some strictly, samples inside."""
    graph = relu_mlp_graph(seed, (5, 24, 24, 24, 4))
    x0 = torch.rand(2, 1, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    box = IntervalBounds(x0 - 0.05, x0 + 0.05)
    plain = compute_bounds(graph, box, options=BoundOptions(method="crown"))
    every = compute_bounds(graph, box, options=BoundOptions(method="crown", crown_every_element=True))
    X = x0 + (torch.rand(2000, 2, 1, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) - 0.5) * 0.1
    values = {graph.input_name: X.reshape(-1, 1, 5)}
    ev = GraphEvaluator(graph, dtype=torch.float64)
    for node in graph.nodes:
        for name, v in zip(node.outputs, ev.run_node(node, values)):
            values[name] = v
    narrower = 0
    for node in graph.nodes:
        name = node.outputs[0]
        p, e = plain.table[name], every.table[name]
        assert bool((e.lower >= p.lower - 1e-9).all() and (e.upper <= p.upper + 1e-9).all()), name
        narrower += int((e.lower > p.lower + 1e-6).sum() + (e.upper < p.upper - 1e-6).sum())
        v = values[name].reshape(2000, 2, *e.lower.shape[1:])
        assert bool((v >= e.lower - 1e-9).all() and (v <= e.upper + 1e-9).all()), name
    assert narrower > 0
