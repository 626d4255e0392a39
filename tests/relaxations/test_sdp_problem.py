"""The SDP relaxation's problem data: dual matrix, weak duality, stable-neuron reduction."""
from __future__ import annotations

import numpy as np
import pytest

from relaxations.sdp import (
    Multipliers,
    NotReluMlp,
    build_problem,
    certified_bound,
    dual_matrix,
    dual_operator,
    mlp_forward,
    nonneg_mask,
    relu_mlp_from_graph,
)


def _net(seed: int, sizes=(3, 6, 5, 2)):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(sizes[k + 1], sizes[k])) / np.sqrt(sizes[k]) * 1.5 for k in range(len(sizes) - 1)]
    bs = [rng.normal(size=s) * 0.5 for s in sizes[1:]]
    return ws, bs


def _ibp(ws, bs, lo, hi):
    pl, pu = [], []
    for w, b in zip(ws[:-1], bs[:-1]):
        c, r = (lo + hi) / 2, (hi - lo) / 2
        l, u = w @ c + b - np.abs(w) @ r, w @ c + b + np.abs(w) @ r
        pl.append(l)
        pu.append(u)
        lo, hi = np.maximum(l, 0), np.maximum(u, 0)
    return pl, pu


def _lifted(problem, x):
    v = np.asarray(x, dtype=np.float64)
    for a, b in zip(problem.maps, problem.shifts):
        v = np.concatenate([v, np.maximum(a @ v + b, 0.0)])
    return np.concatenate([[1.0], v])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dual_matrix_matches_sparse_operator(seed):
    ws, bs = _net(seed)
    lo, hi = -np.ones(3), np.ones(3)
    p = build_problem(ws, bs, np.array([1.0, -2.0]), lo, hi, *_ibp(ws, bs, lo, hi))
    y = np.random.default_rng(seed).normal(size=p.n_multipliers())
    m = dual_matrix(p, Multipliers.unpack(p, y))
    mc, b = dual_operator(p)
    assert np.allclose(m, (mc.toarray().reshape(-1) + b @ y).reshape(p.dim, p.dim), atol=1e-12)
    assert np.allclose(m, m.T)


@pytest.mark.parametrize("seed", [0, 3])
def test_weak_duality_identity_and_reduction_at_real_points(seed):
    """<M,P> + t + sum y_i <A_i,P> = c^T f(x) for P = v v^T of a real point; the rows
    hold (>= 0, = 0) there, and the reduced objective is the network's output."""
    ws, bs = _net(seed)
    lo, hi = -np.ones(3), np.ones(3)
    c = np.array([0.5, -1.0])
    p = build_problem(ws, bs, c, lo, hi, *_ibp(ws, bs, lo, hi))
    rng = np.random.default_rng(seed)
    mc, b = dual_operator(p)
    mask = nonneg_mask(p)
    for x in rng.uniform(-1, 1, size=(20, 3)):
        v = _lifted(p, x)
        f = float(c @ mlp_forward(ws, bs, x))
        assert abs(p.objective_linear @ v[1:] + p.objective_const - f) < 1e-9
        P = np.outer(v, v)
        g = -(b.T @ P.reshape(-1))  # <A_i, P>; g[0] is t's row (= P_00)
        assert g[1:][mask[1:]].min() > -1e-9 and np.abs(g[1:][~mask[1:]]).max() < 1e-9
        y = np.abs(rng.normal(size=p.n_multipliers()))
        m = dual_matrix(p, Multipliers.unpack(p, y))
        assert abs(np.sum(m * P) + y[0] + y[1:] @ g[1:] - f) < 1e-8


def test_certified_bound_valid_for_arbitrary_multipliers():
    ws, bs = _net(5)
    lo, hi = -np.ones(3), np.ones(3)
    c = np.array([1.0, 1.0])
    p = build_problem(ws, bs, c, lo, hi, *_ibp(ws, bs, lo, hi))
    xs = np.random.default_rng(0).uniform(-1, 1, size=(20000, 3))
    true_min = float((mlp_forward(ws, bs, xs) @ c).min())
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.normal(size=p.n_multipliers())  # signs wrong on purpose: certified_bound projects
        bound, _, _ = certified_bound(p, Multipliers.unpack(p, y))
        assert bound <= true_min + 1e-9


def test_extractor_roundtrip_and_refusal():
    from onnx import TensorProto, helper, numpy_helper

    from models import graph_from_proto
    from verifier.sdp import graph_from_weights

    ws, bs = _net(0)
    ws = [w.astype(np.float32).astype(np.float64) for w in ws]
    bs = [b.astype(np.float32).astype(np.float64) for b in bs]
    w2, b2 = relu_mlp_from_graph(graph_from_weights(ws, bs))
    assert all(np.allclose(a, b) for a, b in zip(ws + bs, w2 + b2))
    nodes = [helper.make_node("Gemm", ["X", "W", "b"], ["h"], transB=1), helper.make_node("Sigmoid", ["h"], ["z"]),
             helper.make_node("Gemm", ["z", "W2", "b2"], ["Y"], transB=1)]
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in
             [(ws[0], "W"), (bs[0], "b"), (np.ones((2, 6)), "W2"), (np.zeros(2), "b2")]]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2])], initializer=inits)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    with pytest.raises(NotReluMlp, match="Sigmoid"):
        relu_mlp_from_graph(graph_from_proto(proto))


def test_a_small_cnn_lowers_to_the_mlp_it_computes() -> None:
    """Conv, BatchNormalization and Flatten are affine in the previous tensor: the lowering
    reads their matrices off the forward, so the SDP takes a small CNN as a dense MLP; a
    MaxPool (not affine) is refused by name."""
    import torch
    from onnx import helper

    from models import GraphEvaluator, graph_from_proto
    from tests.op_cases import make_model

    r = np.random.default_rng(3)
    f = lambda *s: r.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = {"W": f(3, 1, 3, 3), "c": f(3), "s": f(3), "bb": f(3), "m": f(3), "v": np.abs(f(3)) + 0.5,
             "W2": f(2, 27), "c2": f(2)}
    body = [helper.make_node("Conv", ["X", "W", "c"], ["h"], strides=[2, 2]),
            helper.make_node("BatchNormalization", ["h", "s", "bb", "m", "v"], ["n"]),
            helper.make_node("Relu", ["n"], ["r"])]
    tail = [helper.make_node("Flatten", ["r"], ["fl"]), helper.make_node("Gemm", ["fl", "W2", "c2"], ["Y"], transB=1)]
    graph = graph_from_proto(make_model(body + tail, inits, (1, 1, 7, 7), (1, 2)))
    ws, bs = relu_mlp_from_graph(graph)
    assert [w.shape for w in ws] == [(27, 49), (2, 27)]
    x = r.uniform(-1, 1, (20, 49))
    y = GraphEvaluator(graph, dtype=torch.float64)(torch.tensor(x).reshape(20, 1, 1, 7, 7)).reshape(20, -1).numpy()
    assert np.allclose(mlp_forward(ws, bs, x), y, rtol=1e-10, atol=1e-10)
    pooled = body + [helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3]),
                     helper.make_node("Flatten", ["p"], ["fl"]),
                     helper.make_node("Gemm", ["fl", "W2", "c2"], ["Y"], transB=1)]
    inits["W2"] = f(2, 3)
    with pytest.raises(NotReluMlp, match="MaxPool"):
        relu_mlp_from_graph(graph_from_proto(make_model(pooled, inits, (1, 1, 7, 7), (1, 2))))
