"""Registry cases for the slot relaxations: products of two variable tensors and max-type ops.

Each case puts the op where CROWN walks through it with coefficients of both signs
(dense or convolutional layers before and after), so both its lower and upper lines
are used. `tests/op_cases.py` appends these to its CASES.
"""
from __future__ import annotations

import numpy as np
from onnx import helper

__all__ = ["product_cases"]


def _f(*shape: int, seed: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def product_cases() -> list:
    """The cases, built on first call (imports tests.op_cases lazily: it imports this module)."""
    from tests.op_cases import OpCase, make_model

    c: list = []
    gemm = lambda x, w, b, y: helper.make_node("Gemm", [x, w, b], [y])   # noqa: E731
    # z = h * g with h, g two affine functions of X; and h times a broadcast [1, 1] factor
    dense = {"W1": _f(5, 5, seed=101), "b1": _f(5, seed=102), "W3": _f(5, 5, seed=103), "b3": _f(5, seed=104),
             "W4": _f(5, 1, seed=105), "b4": _f(1, seed=106), "W2": _f(5, 3, seed=107), "b2": _f(3, seed=108)}
    c.append(OpCase("Mul_two_distinct_vars", ("Mul", "Gemm"), make_model(
        [gemm("X", "W1", "b1", "h"), gemm("X", "W3", "b3", "g"), helper.make_node("Mul", ["h", "g"], ["z"]),
         gemm("z", "W2", "b2", "Y")], dense, (1, 5), (1, 3)), (1, 5)))
    c.append(OpCase("Mul_two_vars_broadcast", ("Mul", "Relu"), make_model(
        [gemm("X", "W1", "b1", "h"), gemm("X", "W4", "b4", "g"), helper.make_node("Relu", ["g"], ["r"]),
         helper.make_node("Mul", ["h", "r"], ["z"]), gemm("z", "W2", "b2", "Y")], dense, (1, 5), (1, 3)), (1, 5)))
    # a tiny attention block without softmax: S = (X Wq)(X Wk)^T, Y = S (X Wv)
    att = {"Wq": _f(3, 2, seed=110), "Wk": _f(3, 2, seed=111), "Wv": _f(3, 2, seed=112)}
    c.append(OpCase("MatMul_attention", ("MatMul", "Transpose"), make_model(
        [helper.make_node("MatMul", ["X", "Wq"], ["q"]), helper.make_node("MatMul", ["X", "Wk"], ["k"]),
         helper.make_node("MatMul", ["X", "Wv"], ["v"]), helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
         helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("MatMul", ["s", "v"], ["Y"])],
        att, (4, 3), (4, 2)), (4, 3), low=-0.5, high=0.5))
    # Max and Min of two variable tensors
    for op, seed in (("Max", 120), ("Min", 121)):
        c.append(OpCase(f"{op}_two_vars", (op, "Gemm"), make_model(
            [gemm("X", "W1", "b1", "h"), gemm("X", "W3", "b3", "g"), helper.make_node(op, ["h", "g"], ["z"]),
             gemm("z", "W2", "b2", "Y")], dense, (1, 5), (1, 3)), (1, 5)))
    # a small CNN: Conv -> Relu -> MaxPool 2x2 -> Gemm; and overlapping padded windows on a conv output
    cnn = {"K": _f(2, 1, 3, 3, seed=130), "kb": _f(2, seed=131), "Wd": _f(18, 3, seed=132), "bd": _f(3, seed=133),
           "sh": np.array([1, 18], np.int64)}
    c.append(OpCase("MaxPool_cnn", ("MaxPool", "Conv", "Relu", "Reshape"), make_model(
        [helper.make_node("Conv", ["X", "K", "kb"], ["h"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Reshape", ["p", "sh"], ["f"]), gemm("f", "Wd", "bd", "Y")], cnn, (1, 1, 6, 6), (1, 3)),
        (1, 1, 6, 6)))
    cnn2 = {"K": _f(2, 1, 3, 3, seed=134), "Wd": _f(18, 3, seed=135), "bd": _f(3, seed=136),
            "sh": np.array([1, 18], np.int64)}
    c.append(OpCase("MaxPool_overlapping_pads", ("MaxPool", "Conv", "Reshape"), make_model(
        [helper.make_node("Conv", ["X", "K"], ["h"]),
         helper.make_node("MaxPool", ["h"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
         helper.make_node("Reshape", ["p", "sh"], ["f"]), gemm("f", "Wd", "bd", "Y")], cnn2, (1, 1, 7, 7), (1, 3)),
        (1, 1, 7, 7)))
    # ReduceMax over rows and ReduceMin over columns of an affine function of X, broadcast-added
    red = {"W": _f(3, 4, seed=140), "W2": _f(4, 2, seed=141)}
    c.append(OpCase("ReduceMax_ReduceMin_after_MatMul", ("ReduceMax", "ReduceMin", "MatMul", "Add"), make_model(
        [helper.make_node("MatMul", ["X", "W"], ["h"]),
         helper.make_node("ReduceMax", ["h"], ["a"], axes=[1], keepdims=1),
         helper.make_node("ReduceMin", ["h"], ["b"], axes=[0], keepdims=1),
         helper.make_node("Add", ["a", "b"], ["z"]), helper.make_node("MatMul", ["z", "W2"], ["Y"])],
        red, (2, 3), (2, 2)), (2, 3)))
    return c
