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


def _chain_graph():
    """Conv -> Pad -> AveragePool -> Flatten -> Gemm from X [1, 1, 4, 4]: the affine tail of a CNN."""
    inits = {"W": _f(3, 1, 2, 2), "b": _f(3), "p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
             "G": _f(48, 5), "c": _f(5)}
    nodes = [helper.make_node("Conv", ["X", "W", "b"], ["c0"], kernel_shape=[2, 2]),
             helper.make_node("Pad", ["c0", "p"], ["p0"]),
             helper.make_node("AveragePool", ["p0"], ["a0"], kernel_shape=[2, 2], strides=[1, 1]),
             helper.make_node("Flatten", ["a0"], ["f0"]),
             helper.make_node("Gemm", ["f0", "G", "c"], ["Y"])]
    return graph_from_proto(make_model(nodes, inits, (1, 1, 4, 4), (1, 5)))


@pytest.mark.parametrize("target, way", [("c0", "forward: 27 outputs of 16 inputs"),
                                         ("Y", "reverse: 5 outputs of 16 inputs")])
def test_a_chain_is_one_matrix(target: str, way: str) -> None:
    """`segment_map` reads a chain of affine nodes as one sparse matrix, equal to the chain's
    forward at every point, whichever way (unit vectors in, or one backward pass per row)."""
    from models.affine import segment_map

    graph = _chain_graph()
    ev = GraphEvaluator(graph, dtype=torch.float64)
    upto = [n.name for n in graph.nodes].index(next(n.name for n in graph.nodes if n.outputs[0] == target))
    rows, cols, vals, b = segment_map(ev, graph.nodes[:upto + 1], [graph.input_name], target)
    n_out = int(np.prod(graph.shapes[target]))
    W = np.zeros((n_out, 16))
    np.add.at(W, (rows, cols), vals)
    x = torch.tensor(R.uniform(-1, 1, (7, 1, 1, 4, 4)))
    y = ev.forward_all(x.reshape(7, 1, 1, 4, 4))[target].reshape(7, -1).numpy()
    assert np.allclose(x.reshape(7, -1).numpy() @ W.T + b, y, rtol=1e-12, atol=1e-12), way
    if target == "c0":   # a 2x2 kernel: 4 inputs per output, the rest never written
        assert len(vals) == 27 * 4


def test_a_chain_that_is_not_affine_is_refused() -> None:
    from models.affine import segment_map

    nodes = [helper.make_node("Mul", ["X", "X"], ["m"]), helper.make_node("Neg", ["m"], ["Y"])]
    graph = graph_from_proto(make_model(nodes, {}, (1, 3), (1, 3)))
    with pytest.raises(NotAffine, match="not affine"):
        segment_map(GraphEvaluator(graph, dtype=torch.float64), graph.nodes, [graph.input_name], "Y")
