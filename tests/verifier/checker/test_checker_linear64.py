"""The checker's elementwise and convolution layers against their dense matrices.

`verifier.checker.linear64` applies BatchNorm / constant Mul-Div-Add-Sub as a vector
and a Conv as a loop over kernel offsets. Here the dense matrices the checker used to
build are rebuilt from the definitions (independently of the checker's code), and the
two must agree: forward, transpose, |.|, positive and negative parts, and the whole
IBP / CROWN re-derivation of `bounds64`. Sampled points must stay inside the bounds.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from verifier.checker.bounds64 import interval_table, row_lower_bounds
from verifier.checker.linear64 import apply, apply_t, dense_matrix
from verifier.checker.onnx_net import LINEAR_KINDS, Layer, Network, read_network

REL = 1e-12


def _model(nodes: list, inits: dict, x_shape: list[int], y_shape: list[int]) -> bytes:
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              [numpy_helper.from_array(v, n) for n, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()


def _conv_dense(K: np.ndarray, in_shape: tuple[int, int, int], strides, pads, dilations
                ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The convolution's matrix from the ONNX definition, one weight at a time."""
    Co, C, kh, kw = K.shape
    _, H, W = in_shape
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dilations, pads
    Ho = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    M = np.zeros((Co, Ho, Wo, C, H, W))
    for o in range(Co):
        for y in range(Ho):
            for x in range(Wo):
                for c in range(C):
                    for i in range(kh):
                        for j in range(kw):
                            r, q = y * sh - pt + i * dh, x * sw - pl + j * dw
                            if 0 <= r < H and 0 <= q < W:
                                M[o, y, x, c, r, q] += K[o, c, i, j]
    return M.reshape(Co * Ho * Wo, C * H * W), (Co, Ho, Wo)


def _old_dense(layer: Layer) -> np.ndarray:
    """What the checker's reader used to store for the node: an explicit matrix."""
    if layer.kind == "scale":
        return np.diag(layer.s)
    if layer.kind == "conv":
        g = layer.conv
        return _conv_dense(g.K, g.in_shape, g.strides, g.pads, g.dilations)[0]
    return layer.W


def _dense_net(net: Network) -> Network:
    """The same network with every linear node as an `affine` node on its dense matrix."""
    layers = tuple(dataclasses.replace(l, kind="affine", W=_old_dense(l), s=None, conv=None)
                   if l.kind in LINEAR_KINDS else l for l in net.layers)
    return dataclasses.replace(net, layers=layers)


def _close(got: np.ndarray, want: np.ndarray, mass: np.ndarray) -> None:
    """got == want up to REL times the sum of absolute terms (summation order differs)."""
    assert got.shape == want.shape
    assert np.all(np.abs(got - want) <= REL * mass + 1e-300), np.max(np.abs(got - want) / (mass + 1e-300))


GEOMETRIES = [  # (C, H, W, Co, kh, kw, strides, pads, dilations)
    (2, 6, 6, 3, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1)),
    (3, 8, 7, 4, 4, 4, (2, 2), (1, 1, 1, 1), (1, 1)),  # the oval21 CIFAR geometry, smaller
    (2, 9, 8, 3, 3, 2, (2, 3), (1, 0, 2, 1), (1, 1)),  # asymmetric pads, unequal strides
    (1, 9, 9, 2, 3, 3, (1, 2), (2, 2, 0, 1), (2, 3)),  # dilations
    (2, 5, 5, 2, 2, 2, (3, 3), (0, 0, 0, 0), (1, 1)),  # stride larger than the kernel: unread rows
]


@pytest.mark.parametrize("geom", GEOMETRIES)
def test_conv_matches_its_dense_matrix_and_onnxruntime(geom) -> None:
    C, H, W, Co, kh, kw, strides, pads, dil = geom
    rng = np.random.default_rng(sum(geom[:6]))
    K, kb = rng.standard_normal((Co, C, kh, kw)), rng.standard_normal(Co)
    M, (_, Ho, Wo) = _conv_dense(K, (C, H, W), strides, pads, dil)
    data = _model([helper.make_node("Conv", ["x", "K", "kb"], ["y"], strides=list(strides), pads=list(pads),
                                    dilations=list(dil))],
                  {"K": K.astype(np.float32), "kb": kb.astype(np.float32)}, [1, C, H, W], [1, Co, Ho, Wo])
    net = read_network(data)
    (layer,) = net.layers
    assert layer.kind == "conv" and layer.conv.out_shape == (Co, Ho, Wo)
    K = layer.conv.K  # the float32 weights, as the reader holds them
    M = _conv_dense(K, (C, H, W), strides, pads, dil)[0]
    x = rng.standard_normal((5, C * H * W))
    a = rng.standard_normal((7, Co * Ho * Wo))
    _close(apply(layer, x), x @ M.T, np.abs(x) @ np.abs(M).T)
    _close(apply_t(layer, a), a @ M, np.abs(a) @ np.abs(M))
    for part, f in (("abs", np.abs), ("pos", lambda w: np.maximum(w, 0)), ("neg", lambda w: np.minimum(w, 0))):
        _close(apply(layer, x, part), x @ f(M).T, np.abs(x) @ np.abs(M).T)
    assert np.array_equal(dense_matrix(layer, C * H * W), M)
    sess = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    x32 = x[:1].astype(np.float32)
    y = sess.run(None, {"x": x32.reshape(1, C, H, W)})[0].reshape(-1)
    assert np.allclose(apply(layer, x32.astype(np.float64))[0] + layer.b, y, atol=1e-4)


def _scale_model(rng: np.random.Generator) -> tuple[bytes, tuple[int, ...]]:
    """Normalisation (Sub, Div), BatchNormalization, Mul, Add and constant-minus-variable Sub."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = {"m": f(1, 2, 1, 1), "sd": np.abs(f(1, 2, 1, 1)) + 0.5, "g": f(2), "b": f(2), "mu": f(2),
             "v": np.abs(f(2)) + 0.5, "k": f(2, 3, 4), "c": f(4), "d": f(1)}
    nodes = [helper.make_node("Sub", ["x", "m"], ["x1"]), helper.make_node("Div", ["x1", "sd"], ["x2"]),
             helper.make_node("BatchNormalization", ["x2", "g", "b", "mu", "v"], ["x3"]),
             helper.make_node("Mul", ["k", "x3"], ["x4"]), helper.make_node("Add", ["x4", "c"], ["x5"]),
             helper.make_node("Sub", ["d", "x5"], ["y"])]
    return _model(nodes, inits, [1, 2, 3, 4], [1, 2, 3, 4]), (1, 2, 3, 4)


def test_elementwise_nodes_are_scale_and_match_diagonal_matrices() -> None:
    rng = np.random.default_rng(1)
    data, shape = _scale_model(rng)
    net = read_network(data)
    assert [l.kind for l in net.layers] == ["scale"] * 6
    n = int(np.prod(shape))
    x, a = rng.standard_normal((4, n)), rng.standard_normal((3, n))
    for layer in net.layers:
        D = np.diag(layer.s)
        _close(apply(layer, x), x @ D.T, np.abs(x) @ np.abs(D).T)
        _close(apply_t(layer, a), a @ D, np.abs(a) @ np.abs(D))
        _close(apply(layer, x, "neg"), x @ np.minimum(D, 0).T, np.abs(x) @ np.abs(D).T)
        assert np.array_equal(dense_matrix(layer, n), D)
    sess = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    x32 = x[:1].astype(np.float32)
    y = sess.run(None, {"x": x32.reshape(shape)})[0].reshape(-1)
    t = interval_table(net, x32.astype(np.float64), x32.astype(np.float64))[net.output]
    assert np.allclose(t[0][0], y, atol=1e-4) and np.allclose(t[1][0], y, atol=1e-4)


def _residual_cnn(rng: np.random.Generator) -> bytes:
    """Normalise, Conv (stride 2) + BN + ReLU, Conv + residual Add + ReLU, Mul, Gemm."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = {"m": f(1, 2, 1, 1), "sd": np.abs(f(1, 2, 1, 1)) + 1.0, "K": f(3, 2, 3, 3) / 2, "kb": f(3),
             "g": f(3), "b": f(3), "mu": f(3), "v": np.abs(f(3)) + 0.5, "K2": f(3, 3, 3, 3) / 3,
             "s": f(1, 3, 1, 1), "W": f(5, 3 * 4 * 4) / 4, "wb": f(5), "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("Sub", ["x", "m"], ["x1"]), helper.make_node("Div", ["x1", "sd"], ["x2"]),
             helper.make_node("Conv", ["x2", "K", "kb"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "b", "mu", "v"], ["n1"]),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "K2"], ["c2"], pads=[1, 1, 1, 1], dilations=[1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["a"]), helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
             helper.make_node("Mul", ["r2", "s"], ["r3"]), helper.make_node("Reshape", ["r3", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "W", "wb"], ["y"], transB=1)]
    return _model(nodes, inits, [1, 2, 8, 8], [1, 5])


def _evaluate(net: Network, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor at points x [P, n_in], through the dense matrices (not `linear64`)."""
    vals = {net.input: x}
    for layer in net.layers:
        ins = [vals[i] for i in layer.inputs]
        if layer.kind == "affine":
            vals[layer.out] = ins[0] @ layer.W.T + layer.b
        elif layer.kind == "relu":
            vals[layer.out] = np.maximum(ins[0], 0.0)
        else:
            vals[layer.out] = sum(c * v for c, v in zip(layer.coefs, ins))
    return vals


def test_bounds_equal_the_dense_network_and_contain_sampled_points() -> None:
    rng = np.random.default_rng(2)
    data = _residual_cnn(rng)
    net = read_network(data)
    assert {l.kind for l in net.layers} == {"scale", "conv", "relu", "sum", "affine"}
    dense = _dense_net(net)
    center = rng.uniform(-1, 1, (3, net.n_in))
    lo, hi = center - np.array([[0.05], [0.2], [0.5]]), center + np.array([[0.05], [0.2], [0.5]])
    t_new, t_old = interval_table(net, lo, hi), interval_table(dense, lo, hi)
    for name, (l_old, u_old, _) in t_old.items():
        scale = 1e-9 * (1 + np.maximum(np.abs(l_old), np.abs(u_old)))
        assert np.all(np.abs(t_new[name][0] - l_old) <= scale) and np.all(np.abs(t_new[name][1] - u_old) <= scale)
    C, d = rng.standard_normal((4, net.n_out)), rng.standard_normal(4)
    alphas = {"relu1": rng.uniform(-0.2, 1.2, (4, net.sizes["r1"])), "relu2": rng.uniform(0, 1, (3, 4, net.sizes["a"]))}
    for al in (None, alphas):
        b_new, b_old = row_lower_bounds(net, t_new, C, d, al), row_lower_bounds(dense, t_old, C, d, al)
        assert np.all(np.abs(b_new - b_old) <= 1e-9 * (1 + np.abs(b_old)))
    # Soundness by sampling: corners and interior points of each box, every tensor.
    for k in range(3):
        x = rng.uniform(lo[k], hi[k], (600, net.n_in))
        x[:100] = np.where(rng.random((100, net.n_in)) < 0.5, lo[k], hi[k])
        vals = _evaluate(dense, x)
        for name, v in vals.items():
            assert np.all(t_new[name][0][k] <= v) and np.all(v <= t_new[name][1][k]), name
        rows = vals[net.output] @ C.T - d
        for al in (None, alphas):
            assert np.all(rows >= row_lower_bounds(net, t_new, C, d, al)[k]), k
    sess = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    x32 = center[:1].astype(np.float32)
    y = sess.run(None, {"x": x32.reshape(1, 2, 8, 8)})[0].reshape(-1)
    assert np.allclose(_evaluate(dense, x32.astype(np.float64))[net.output][0], y, atol=1e-4)
