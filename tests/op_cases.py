"""A small ONNX model per registered op, for the registry-driven tests.

Each case wraps the op between dense layers where that makes the relaxation matter
(A with both signs flows back through it). `tests/relaxations/test_registry_soundness.py`
fails when a registered op has no case here, so a new op cannot skip the tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["OpCase", "CASES", "FOLDED_ONLY", "make_model", "dense_around"]

FOLDED_ONLY = {"Shape", "Size", "Constant", "ConstantOfShape", "Range", "Equal", "Where"}


@dataclass
class OpCase:
    name: str
    ops: tuple[str, ...]
    model: onnx.ModelProto
    input_shape: tuple[int, ...]
    low: float = -1.0
    high: float = 1.0
    extra: dict = field(default_factory=dict)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def make_model(nodes, inits, in_shape, out_shape, opset: int = 13, domains=None) -> onnx.ModelProto:
    """domains: {domain: version} imported beside ONNX's default one (contrib ops)."""
    graph = helper.make_graph(
        nodes, "case",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(out_shape))],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)] + [
        helper.make_opsetid(d, v) for d, v in (domains or {}).items()])
    model.ir_version = 8
    return model


def dense_around(op_nodes, op_in: str, op_out: str, n: int, m: int, seed: int, inits=None,
                  opset: int = 13, out_n: int = 3, domains=None) -> onnx.ModelProto:
    """X[1,n] -> Gemm -> op_in ... op_out[1,m] -> Gemm -> Y[1,out_n]."""
    r = _rng(seed)
    inits = dict(inits or {})
    inits.update({"W1": r.normal(size=(n, n)).astype(np.float32), "b1": r.normal(size=n).astype(np.float32),
                  "W2": r.normal(size=(m, out_n)).astype(np.float32), "b2": r.normal(size=out_n).astype(np.float32)})
    nodes = [helper.make_node("Gemm", ["X", "W1", "b1"], [op_in])] + list(op_nodes) + \
            [helper.make_node("Gemm", [op_out, "W2", "b2"], ["Y"])]
    return make_model(nodes, inits, (1, n), (1, out_n), opset, domains)


def _f(*shape, seed=0, scale=1.0):
    return (_rng(seed).normal(size=shape) * scale).astype(np.float32)


def _elementwise(op: str, seed: int, **attrs) -> OpCase:
    node = helper.make_node(op, ["h"], ["z"], **attrs)
    return OpCase(op, (op,), dense_around([node], "h", "z", 6, 6, seed), (1, 6))


def _cases() -> list[OpCase]:
    c: list[OpCase] = []
    add = lambda *a, **k: c.append(OpCase(*a, **k))
    # arithmetic
    add("Add_const", ("Add",), dense_around([helper.make_node("Add", ["h", "c"], ["z"])], "h", "z", 5, 5, 1,
                                             {"c": _f(5, seed=2)}), (1, 5))
    add("Add_two_vars", ("Add", "Relu"), dense_around([helper.make_node("Relu", ["h"], ["r"]),
                                                        helper.make_node("Add", ["h", "r"], ["z"])], "h", "z", 5, 5, 3), (1, 5))
    add("Sub_const_minus_var", ("Sub",), dense_around([helper.make_node("Sub", ["c", "h"], ["z"])], "h", "z", 4, 4, 4,
                                                       {"c": _f(4, seed=5)}), (1, 4))
    add("Sub_two_vars", ("Sub", "Relu"), dense_around([helper.make_node("Relu", ["h"], ["r"]),
                                                        helper.make_node("Sub", ["h", "r"], ["z"])], "h", "z", 4, 4, 6), (1, 4))
    add("Sub_broadcast", ("Sub",), make_model([helper.make_node("Sub", ["X", "c"], ["Y"])], {"c": _f(1, 3, 1, seed=7)},
                                              (1, 3, 2), (1, 3, 2)), (1, 3, 2))
    add("Mul_const", ("Mul",), dense_around([helper.make_node("Mul", ["h", "c"], ["z"])], "h", "z", 4, 4, 8,
                                             {"c": _f(4, seed=9)}), (1, 4))
    add("Mul_two_vars", ("Mul",), dense_around([helper.make_node("Mul", ["h", "h"], ["z"])], "h", "z", 4, 4, 10), (1, 4))
    add("Div_const", ("Div",), dense_around([helper.make_node("Div", ["h", "c"], ["z"])], "h", "z", 4, 4, 11,
                                             {"c": np.array([2.0, -3.0, 0.5, 4.0], np.float32)}), (1, 4))
    add("Div_var_denominator", ("Div", "Relu"), make_model(
        [helper.make_node("Relu", ["X"], ["r"]), helper.make_node("Add", ["r", "one"], ["p"]),
         helper.make_node("Div", ["c", "p"], ["Y"])], {"one": np.float32(1.0), "c": _f(3, seed=12)}, (1, 3), (1, 3)), (1, 3))
    add("Neg", ("Neg",), dense_around([helper.make_node("Neg", ["h"], ["z"])], "h", "z", 4, 4, 13), (1, 4))
    add("Sum", ("Sum", "Relu"), dense_around([helper.make_node("Relu", ["h"], ["r"]),
                                               helper.make_node("Sum", ["h", "r", "c"], ["z"])], "h", "z", 4, 4, 14,
                                              {"c": _f(4, seed=15)}), (1, 4))
    # linear
    add("MatMul_right_const", ("MatMul",), make_model([helper.make_node("MatMul", ["X", "W"], ["h"]),
                                                      helper.make_node("Relu", ["h"], ["r"]),
                                                      helper.make_node("MatMul", ["r", "W2"], ["Y"])],
                                                     {"W": _f(5, 4, seed=16), "W2": _f(4, 2, seed=17)}, (1, 5), (1, 2)), (1, 5))
    add("MatMul_left_const", ("MatMul",), make_model([helper.make_node("MatMul", ["W", "X"], ["Y"])],
                                                    {"W": _f(3, 4, seed=18)}, (4, 2), (3, 2)), (4, 2))
    add("MatMul_two_vars", ("MatMul", "Transpose"), make_model(
        [helper.make_node("Transpose", ["X"], ["t"], perm=[1, 0]), helper.make_node("MatMul", ["X", "t"], ["Y"])],
        {}, (2, 3), (2, 2)), (2, 3))
    add("Gemm_trans_alpha_beta", ("Gemm",), make_model(
        [helper.make_node("Gemm", ["X", "W", "b"], ["Y"], transB=1, alpha=0.7, beta=1.3)],
        {"W": _f(3, 5, seed=19), "b": _f(3, seed=20)}, (1, 5), (1, 3)), (1, 5))
    add("Gemm_transA", ("Gemm",), make_model(
        [helper.make_node("Gemm", ["X", "W"], ["Y"], transA=1)], {"W": _f(4, 3, seed=21)}, (4, 1), (1, 3)), (4, 1))
    # conv family
    add("Conv_pads_strides_group", ("Conv", "Relu"), make_model(
        [helper.make_node("Conv", ["X", "W", "b"], ["h"], pads=[1, 0, 2, 1], strides=[2, 1], group=2),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Conv", ["r", "W2"], ["Y"], kernel_shape=[2, 2], dilations=[1, 2])],
        {"W": _f(4, 1, 3, 3, seed=22), "b": _f(4, seed=23), "W2": _f(2, 4, 2, 2, seed=24)}, (1, 2, 6, 6), (1, 2, 3, 2)),
        (1, 2, 6, 6))
    add("Conv1d_same", ("Conv",), make_model([helper.make_node("Conv", ["X", "W"], ["Y"], auto_pad="SAME_UPPER", strides=[2])],
                                            {"W": _f(2, 3, 3, seed=25)}, (1, 3, 7), (1, 2, 4)), (1, 3, 7))
    add("ConvTranspose", ("ConvTranspose",), make_model(
        [helper.make_node("ConvTranspose", ["X", "W", "b"], ["Y"], strides=[2, 2], pads=[1, 0, 0, 1],
                          output_padding=[1, 0])],
        {"W": _f(2, 3, 3, 3, seed=26), "b": _f(3, seed=27)}, (1, 2, 3, 3), (1, 3, 7, 6)), (1, 2, 3, 3))
    add("BatchNormalization", ("BatchNormalization", "Relu"), make_model(
        [helper.make_node("Relu", ["X"], ["r"]),
         helper.make_node("BatchNormalization", ["r", "s", "bb", "m", "v"], ["Y"], epsilon=1e-3)],
        {"s": _f(3, seed=28), "bb": _f(3, seed=29), "m": _f(3, seed=30), "v": np.abs(_f(3, seed=31)) + 0.1},
        (1, 3, 2, 2), (1, 3, 2, 2)), (1, 3, 2, 2))
    # activations
    add("Relu", ("Relu",), _elementwise("Relu", 32).model, (1, 6))
    add("LeakyRelu", ("LeakyRelu",), _elementwise("LeakyRelu", 33, alpha=0.2).model, (1, 6))
    for i, op in enumerate(("Sigmoid", "Tanh", "Abs", "Sign", "Floor", "Sin", "Cos", "Exp")):
        add(op, (op,), _elementwise(op, 60 + i).model, (1, 6))
    # further activations (relaxations/ops/more_activations.py, relaxations/ops/gelu.py), each at an
    # opset that has it (HardSwish from 14, Gelu from 20); Elu also with its default alpha.
    for i, (name, op, attrs, opset) in enumerate((
            ("Softplus", "Softplus", {}, 13), ("Atan", "Atan", {}, 13), ("Erf", "Erf", {}, 13),
            ("Elu", "Elu", {"alpha": 0.7}, 13), ("Elu_default_alpha_opset7", "Elu", {}, 7),
            ("HardSigmoid", "HardSigmoid", {"alpha": 0.3, "beta": 0.4}, 13),
            ("HardSigmoid_negative_alpha", "HardSigmoid", {"alpha": -0.5, "beta": 0.6}, 13),
            ("HardSwish", "HardSwish", {}, 14), ("Gelu", "Gelu", {}, 20),
            ("Gelu_tanh", "Gelu", {"approximate": "tanh"}, 20), ("Softsign", "Softsign", {}, 13))):
        node = helper.make_node(op, ["h"], ["z"], **attrs)
        add(name, (op,), dense_around([node], "h", "z", 6, 6, 90 + i, opset=opset), (1, 6))
    # onnxruntime's contrib Gelu and FastGelu (domain com.microsoft, its opset 1), registered
    # as ops of their own domain: the registry test names them domain-qualified.
    for i, op in enumerate(("Gelu", "FastGelu")):
        node = helper.make_node(op, ["h"], ["z"], domain="com.microsoft")
        add(f"contrib_{op}", (f"com.microsoft.{op}",), dense_around([node], "h", "z", 6, 6, 110 + i,
                                                                    domains={"com.microsoft": 1}), (1, 6))
    add("Clip", ("Clip",), dense_around([helper.make_node("Clip", ["h", "lo", "hi"], ["z"])], "h", "z", 5, 5, 70,
                                         {"lo": np.float32(-0.5), "hi": np.float32(1.0)}), (1, 5))
    add("Clip_opset10", ("Clip",), dense_around([helper.make_node("Clip", ["h"], ["z"], min=-1.0, max=0.3)],
                                                "h", "z", 5, 5, 71, opset=10), (1, 5))
    for i, (op, extra) in enumerate((("Log", []), ("Sqrt", []), ("Reciprocal", []), ("Pow", ["e"]))):
        nodes = [helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Add", ["r", "one"], ["p"]),
                 helper.make_node(op, ["p"] + extra, ["z"])]
        add(f"{op}_positive", (op, "Relu", "Add"), dense_around(nodes, "h", "z", 4, 4, 72 + i,
                                                                  {"one": np.float32(0.5), "e": np.float32(3.0)}), (1, 4))
    add("Pow_square_signed", ("Pow",), dense_around([helper.make_node("Pow", ["h", "e"], ["z"])], "h", "z", 4, 4, 80,
                                                     {"e": np.float32(2.0)}), (1, 4))
    add("Softmax", ("Softmax",), dense_around([helper.make_node("Softmax", ["h"], ["z"], axis=-1)], "h", "z", 5, 5, 81),
        (1, 5))
    # pooling, padding, resizing
    add("MaxPool_pads_ceil", ("MaxPool", "Conv"), make_model(
        [helper.make_node("Conv", ["X", "W"], ["h"]),
         helper.make_node("MaxPool", ["h"], ["Y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 0, 0], ceil_mode=1)],
        {"W": _f(2, 1, 1, 1, seed=34)}, (1, 1, 6, 6), (1, 2, 3, 3)), (1, 1, 6, 6))
    add("AveragePool_pads", ("AveragePool",), make_model(
        [helper.make_node("AveragePool", ["X"], ["Y"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1])],
        {}, (1, 2, 4, 4), (1, 2, 3, 3)), (1, 2, 4, 4))
    add("GlobalAveragePool", ("GlobalAveragePool",), make_model(
        [helper.make_node("GlobalAveragePool", ["X"], ["Y"])], {}, (1, 2, 3, 3), (1, 2, 1, 1)), (1, 2, 3, 3))
    add("GlobalMaxPool", ("GlobalMaxPool",), make_model(
        [helper.make_node("GlobalMaxPool", ["X"], ["Y"])], {}, (1, 2, 3, 3), (1, 2, 1, 1)), (1, 2, 3, 3))
    add("Pad_constant", ("Pad",), make_model(
        [helper.make_node("Pad", ["X", "p", "v"], ["Y"], mode="constant")],
        {"p": np.array([0, 0, 1, 2, 0, 0, 2, 0], np.int64), "v": np.float32(0.5)}, (1, 1, 2, 2), (1, 1, 5, 4)), (1, 1, 2, 2))
    add("Pad_reflect", ("Pad",), make_model(
        [helper.make_node("Pad", ["X", "p"], ["Y"], mode="reflect")],
        {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}, (1, 1, 3, 3), (1, 1, 5, 5)), (1, 1, 3, 3))
    add("Resize_nearest", ("Resize",), make_model(
        [helper.make_node("Resize", ["X", "", "s"], ["Y"], mode="nearest")],
        {"s": np.array([1, 1, 2, 2], np.float32)}, (1, 1, 2, 3), (1, 1, 4, 6)), (1, 1, 2, 3))
    add("Upsample_opset9", ("Upsample",), make_model(
        [helper.make_node("Upsample", ["X", "s"], ["Y"], mode="nearest")],
        {"s": np.array([1, 1, 2, 3], np.float32)}, (1, 1, 2, 2), (1, 1, 4, 6), opset=9), (1, 1, 2, 2))
    add("ReduceSum", ("ReduceSum",), make_model(
        [helper.make_node("ReduceSum", ["X", "a"], ["Y"], keepdims=0)], {"a": np.array([1], np.int64)},
        (2, 3, 2), (2, 2)), (2, 3, 2))
    add("ReduceMean", ("ReduceMean",), make_model(
        [helper.make_node("ReduceMean", ["X"], ["Y"], axes=[2])], {}, (2, 3, 2), (2, 3, 1)), (2, 3, 2))
    add("ReduceMax_ReduceMin", ("ReduceMax", "ReduceMin", "Add"), make_model(
        [helper.make_node("ReduceMax", ["X"], ["a"], axes=[1]), helper.make_node("ReduceMin", ["X"], ["b"], axes=[1]),
         helper.make_node("Add", ["a", "b"], ["Y"])], {}, (2, 3), (2, 1)), (2, 3))
    add("Max_Min", ("Max", "Min", "Gemm"), dense_around(
        [helper.make_node("Max", ["h", "c"], ["m"]), helper.make_node("Min", ["m", "h", "c2"], ["z"])], "h", "z", 4, 4, 35,
        {"c": _f(4, seed=36), "c2": _f(4, seed=37)}), (1, 4))
    # shape ops
    shape_nodes = [helper.make_node("Shape", ["X"], ["s"]), helper.make_node("Gather", ["s", "i0"], ["d0"], axis=0),
                   helper.make_node("Concat", ["d0", "m1"], ["ns"], axis=0),
                   helper.make_node("Reshape", ["X", "ns"], ["Y"])]
    add("Reshape_from_Shape", ("Reshape",), make_model(shape_nodes, {"i0": np.array([0], np.int64),
                                                                  "m1": np.array([-1], np.int64)}, (1, 2, 3), (1, 6)), (1, 2, 3))
    # Mod in the shape arithmetic (what torch.onnx writes for nn.Unflatten): folded at import,
    # so only the reshape is bounded. 3 mod -2 is -1 (the divisor's sign, ONNX's integer Mod)
    # and gives shape (1, 1, 6), summed to one value; C's fmod would give 1, (1, 3, 2) and
    # three values, which the onnxruntime comparison would refuse.
    mod_nodes = [helper.make_node("Shape", ["X"], ["s"]), helper.make_node("Gather", ["s", "i2"], ["d2"], axis=0),
                 helper.make_node("Mod", ["d2", "k"], ["r"]), helper.make_node("Add", ["r", "c2"], ["d"]),
                 helper.make_node("Concat", ["one", "d", "m1"], ["ns"], axis=0),
                 helper.make_node("Reshape", ["X", "ns"], ["t"]),
                 helper.make_node("ReduceSum", ["t", "ax"], ["Y"], keepdims=0)]
    add("Reshape_from_Mod", ("Reshape", "ReduceSum"), make_model(mod_nodes, {"i2": np.array([2], np.int64),
                                                                "k": np.array([-2], np.int64),
                                                                "c2": np.array([2], np.int64),
                                                                "one": np.array([1], np.int64),
                                                                "m1": np.array([-1], np.int64),
                                                                "ax": np.array([2], np.int64)}, (1, 2, 3), (1, 1)),
        (1, 2, 3))
    add("Flatten_Transpose", ("Flatten", "Transpose"), make_model(
        [helper.make_node("Transpose", ["X"], ["t"], perm=[0, 2, 1]), helper.make_node("Flatten", ["t"], ["Y"], axis=1)],
        {}, (1, 2, 3), (1, 6)), (1, 2, 3))
    add("Squeeze_Unsqueeze", ("Squeeze", "Unsqueeze"), make_model(
        [helper.make_node("Squeeze", ["X", "a"], ["s"]), helper.make_node("Unsqueeze", ["s", "b"], ["Y"])],
        {"a": np.array([0], np.int64), "b": np.array([2], np.int64)}, (1, 3, 2), (3, 2, 1)), (1, 3, 2))
    add("Concat_Split", ("Concat", "Split", "Sub"), make_model(
        [helper.make_node("Concat", ["X", "c"], ["cat"], axis=1),
         helper.make_node("Split", ["cat", "sp"], ["p", "q"], axis=1),
         helper.make_node("Sub", ["p", "q"], ["Y"])],
        {"c": _f(1, 1, seed=38), "sp": np.array([2, 2], np.int64)}, (1, 3), (1, 2)), (1, 3))
    add("Slice_negative_step", ("Slice",), make_model(
        [helper.make_node("Slice", ["X", "st", "en", "ax", "sp"], ["Y"])],
        {"st": np.array([-1], np.int64), "en": np.array([-100], np.int64), "ax": np.array([1], np.int64),
         "sp": np.array([-2], np.int64)}, (2, 5), (2, 3)), (2, 5))
    add("Gather", ("Gather",), make_model(
        [helper.make_node("Gather", ["X", "i"], ["Y"], axis=1)], {"i": np.array([[2, -1], [0, 0]], np.int64)},
        (2, 4), (2, 2, 2)), (2, 4))
    add("Expand_Tile", ("Expand", "Tile"), make_model(
        [helper.make_node("Expand", ["X", "s"], ["e"]), helper.make_node("Tile", ["e", "r"], ["Y"])],
        {"s": np.array([2, 3], np.int64), "r": np.array([1, 2], np.int64)}, (1, 3), (2, 6)), (1, 3))
    add("Identity_Dropout_Cast", ("Identity", "Dropout", "Cast"), make_model(
        [helper.make_node("Identity", ["X"], ["a"]), helper.make_node("Dropout", ["a"], ["b"]),
         helper.make_node("Cast", ["b"], ["Y"], to=TensorProto.FLOAT)], {}, (1, 3), (1, 3)), (1, 3))
    for i, (name, to) in enumerate((("int", TensorProto.INT64), ("bool", TensorProto.BOOL),
                                    ("half", TensorProto.FLOAT16))):
        nodes = [helper.make_node("Cast", ["h"], ["k"], to=to), helper.make_node("Cast", ["k"], ["z"], to=TensorProto.FLOAT)]
        add(f"Cast_{name}", ("Cast",), dense_around(nodes, "h", "z", 6, 6, 70 + i), (1, 6))
    add("Pow_base", ("Pow",), dense_around([helper.make_node("Pow", ["base", "h"], ["z"])], "h", "z", 6, 6, 84,
                                            {"base": np.abs(_f(6, seed=85)) + 0.2}), (1, 6), -0.5, 0.5)
    thr = {"t": _f(6, seed=80, scale=0.5), "fill": _f(6, seed=81)}
    add("Greater_Where", ("Greater", "Where"), dense_around(
        [helper.make_node("Greater", ["h", "t"], ["g"]), helper.make_node("Where", ["g", "h", "fill"], ["z"])],
        "h", "z", 6, 6, 82, thr), (1, 6))
    cmp_nodes = [helper.make_node("Less", ["h", "t"], ["a"]), helper.make_node("GreaterOrEqual", ["h", "fill"], ["b"]),
                 helper.make_node("LessOrEqual", ["h", "t"], ["e"]), helper.make_node("Floor", ["h"], ["fl"]),
                 helper.make_node("Equal", ["fl", "zero"], ["q"])] + [
                 helper.make_node("Cast", [v], [v + "f"], to=TensorProto.FLOAT) for v in ("a", "e", "q")] + [
                 helper.make_node("Where", ["a", "ef", "qf"], ["w"]), helper.make_node("Where", ["b", "w", "af"], ["z"])]
    add("Comparisons", ("Less", "GreaterOrEqual", "LessOrEqual", "Equal"), dense_around(
        cmp_nodes, "h", "z", 6, 6, 83, {**thr, "zero": np.zeros(6, np.float32)}), (1, 6))
    return c


CASES: list[OpCase] = _cases()

from tests.op_cases_products import product_cases  # noqa: E402  (slot relaxations: products, max-type ops)
CASES += product_cases()
