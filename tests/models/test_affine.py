"""`models.affine_map`: an affine node's matrix read off its forward rule equals the
forward at every point, and a node that is not affine is refused, not linearised."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from models import GraphEvaluator, graph_from_proto
from models.affine import NotAffine, affine_map
from tests.op_cases import make_model

R = np.random.default_rng(0)


def _f(*shape):
    return R.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("nodes, inits, shape, out", [
    ([helper.make_node("Conv", ["X", "W", "b"], ["Y"], pads=[1, 1, 1, 1], strides=[2, 2])],
     {"W": _f(3, 2, 3, 3), "b": _f(3)}, (1, 2, 5, 5), (1, 3, 3, 3)),
    ([helper.make_node("BatchNormalization", ["X", "s", "bb", "m", "v"], ["Y"])],
     {"s": _f(2), "bb": _f(2), "m": _f(2), "v": np.abs(_f(2)) + 0.5}, (1, 2, 3, 3), (1, 2, 3, 3)),
    ([helper.make_node("Gemm", ["X", "W", "c"], ["Y"], transB=1, alpha=0.5)], {"W": _f(4, 6), "c": _f(4)},
     (1, 6), (1, 4)),
    ([helper.make_node("AveragePool", ["X"], ["Y"], kernel_shape=[2, 2])], {}, (1, 1, 4, 4), (1, 1, 3, 3)),
])
def test_the_matrix_is_the_forward(nodes, inits, shape, out) -> None:
    graph = graph_from_proto(make_model(nodes, inits, shape, out))
    ev = GraphEvaluator(graph, dtype=torch.float64)
    W, b = affine_map(ev, graph.nodes[0], [graph.input_name])
    x = torch.tensor(R.uniform(-1, 1, (5, *shape)))   # the evaluator batches over a leading axis
    y = ev(x).reshape(5, -1).numpy()
    assert np.allclose(x.reshape(5, -1).numpy() @ W.T + b, y, rtol=1e-12, atol=1e-12)


def test_a_node_that_is_not_affine_is_refused() -> None:
    graph = graph_from_proto(make_model([helper.make_node("Mul", ["X", "X"], ["Y"])], {}, (1, 3), (1, 3)))
    with pytest.raises(NotAffine, match="not affine"):
        affine_map(GraphEvaluator(graph, dtype=torch.float64), graph.nodes[0], [graph.input_name])
