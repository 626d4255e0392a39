"""Forward semantics of elementwise ops (arithmetic with broadcasting, activations)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from models.graph import Node
from models.ops.registry import broadcasting, register_forward

__all__ = ["register"]

T = torch.Tensor


def _binary(fn):
    return lambda node, xs: [fn(xs[0], xs[1])]


def _unary(fn):
    return lambda node, xs: [fn(xs[0])]


def _clip(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    if node.opset < 11:
        lo, hi = node.attr("min", None), node.attr("max", None)
    else:
        lo = None if len(xs) < 2 or xs[1] is None else float(xs[1])
        hi = None if len(xs) < 3 or xs[2] is None else float(xs[2])
    return [torch.clamp(x, min=lo, max=hi)]


def _variadic(fn):
    def run(node: Node, xs: Sequence[T | None]) -> list[T]:
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return [out]
    return run


def _sum(node: Node, xs: Sequence[T | None]) -> list[T]:
    return _variadic(torch.add)(node, xs)


def _softmax(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    axis = node.attr("axis", -1 if node.opset >= 13 else 1)
    if node.opset >= 13:
        return [torch.softmax(x, dim=axis)]
    # Before opset 13 Softmax flattens to 2-D at `axis` and normalises the trailing block.
    shape = x.shape
    axis = axis % len(shape) if len(shape) else 0
    lead = 1
    for d in shape[:axis]:
        lead *= d
    return [torch.softmax(x.reshape(lead, -1), dim=1).reshape(shape)]


def _leaky(node: Node, xs: Sequence[T | None]) -> list[T]:
    return [F.leaky_relu(xs[0], node.attr("alpha", 0.01))]


def _softplus(node: Node, xs: Sequence[T | None]) -> list[T]:
    # log(1 + e^x) without overflow or a cut-off (F.softplus returns x above 20).
    x = xs[0]
    return [torch.logaddexp(x, torch.zeros_like(x))]


def _elu(node: Node, xs: Sequence[T | None]) -> list[T]:
    # F.elu, not a torch.where of two branches: the attack differentiates the forward,
    # and expm1 overflowing in the unused branch would turn gradients into NaN.
    return [F.elu(xs[0], alpha=float(node.attr("alpha", 1.0)))]


def _hard_sigmoid(node: Node, xs: Sequence[T | None]) -> list[T]:
    alpha, beta = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    return [torch.clamp(alpha * xs[0] + beta, 0.0, 1.0)]


def _hard_swish(node: Node, xs: Sequence[T | None]) -> list[T]:
    # ONNX: x * HardSigmoid(x) with alpha = 1/6, beta = 0.5 fixed (no attributes).
    x = xs[0]
    return [x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)]


def _gelu(node: Node, xs: Sequence[T | None]) -> list[T]:
    approximate = str(node.attr("approximate", "none"))
    if approximate not in ("none", "tanh"):
        raise ValueError(f"Gelu approximate={approximate!r} (ONNX allows 'none' and 'tanh')")
    return [F.gelu(xs[0], approximate=approximate)]


def _pow(node: Node, xs: Sequence[T | None]) -> list[T]:
    return [torch.pow(xs[0], xs[1])]


def _cast(node: Node, xs: Sequence[T | None]) -> list[T]:
    # ONNX TensorProto codes: 1 float, 11 double, 7 int64, 6 int32, 9 bool, 10 float16.
    to = int(node.attr("to", 1))
    x = xs[0]
    if to in (1, 11, 10, 16):
        x = x.to(x.dtype if x.is_floating_point() else torch.get_default_dtype())
        if to in (10, 16):  # rounds to the half type's nearest value, kept in x's float type
            x = x.to(torch.float16 if to == 10 else torch.bfloat16).to(x.dtype)
        return [x]
    if to in (6, 7):
        return [x.to(torch.int64)]
    if to == 9:
        return [x.to(torch.bool)]
    raise ValueError(f"Cast to type {to} is not supported")


def register() -> None:
    register_forward("Add", _binary(torch.add), batches=broadcasting)
    register_forward("Sub", _binary(torch.sub), batches=broadcasting)
    register_forward("Mul", _binary(torch.mul), batches=broadcasting)
    register_forward("Div", _binary(lambda a, b: a / b if a.is_floating_point() or b.is_floating_point()
                                    else torch.div(a, b, rounding_mode="trunc")))
    register_forward("Neg", _unary(torch.neg), batches=broadcasting)
    register_forward("Abs", _unary(torch.abs))
    register_forward("Sign", _unary(torch.sign))
    register_forward("Sqrt", _unary(torch.sqrt))
    register_forward("Exp", _unary(torch.exp))
    register_forward("Log", _unary(torch.log))
    register_forward("Reciprocal", _unary(torch.reciprocal))
    register_forward("Sin", _unary(torch.sin))
    register_forward("Cos", _unary(torch.cos))
    register_forward("Relu", _unary(torch.relu), batches=broadcasting)
    register_forward("Sigmoid", _unary(torch.sigmoid), batches=broadcasting)
    register_forward("Tanh", _unary(torch.tanh), batches=broadcasting)
    register_forward("LeakyRelu", _leaky, batches=broadcasting)
    # Opsets: where each op first appears in the ONNX standard (later versions only
    # widened the accepted types, which the importer casts to float32 anyway).
    register_forward("Softplus", _softplus)
    register_forward("Atan", _unary(torch.atan), min_opset=7)
    register_forward("Erf", _unary(torch.erf), min_opset=9)
    register_forward("Softsign", _unary(lambda x: x / (1 + x.abs())))
    register_forward("Elu", _elu)
    register_forward("HardSigmoid", _hard_sigmoid)
    register_forward("HardSwish", _hard_swish, min_opset=14)
    register_forward("Gelu", _gelu, min_opset=20)
    register_forward("Pow", _pow)
    register_forward("Clip", _clip)
    register_forward("Max", _variadic(torch.maximum))
    register_forward("Min", _variadic(torch.minimum))
    register_forward("Sum", _sum)
    register_forward("Softmax", _softmax)
    register_forward("Identity", _unary(lambda x: x))
    register_forward("Dropout", lambda node, xs: [xs[0]])  # inference: identity (mask output unused)
    register_forward("Cast", _cast)
    register_forward("Floor", _unary(torch.floor))
    # Shape arithmetic of exported reshapes (nn.Unflatten): folded at import, never bounded.
    register_forward("Mod", lambda node, xs: [torch.fmod(xs[0], xs[1]) if int(node.attr("fmod", 0))
                                              else torch.remainder(xs[0], xs[1])], min_opset=10)
    register_forward("Equal", _binary(torch.eq))
    register_forward("Greater", _binary(torch.gt))
    register_forward("Less", _binary(torch.lt))
    register_forward("GreaterOrEqual", _binary(torch.ge), min_opset=12)
    register_forward("LessOrEqual", _binary(torch.le), min_opset=12)
    register_forward("Where", lambda node, xs: [torch.where(xs[0].bool(), xs[1], xs[2])])
