"""Ops of onnxruntime's contrib domain (``com.microsoft``) that nncert reads.

onnxruntime's transformer optimiser rewrites ONNX's ``Gelu`` into these, so models that
went through it carry them. Each is registered under its own domain and that domain's
opset (1), so the registries never take it for ONNX's op of the same name; the meaning
is the contrib schema's, which equals a standard op's here:

- ``Gelu``: x Phi(x), ONNX's Gelu with approximate="none";
- ``FastGelu``: the tanh approximation, ONNX's Gelu with approximate="tanh". Its
  optional bias input (added before the activation) is refused.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from models.graph import Node
from models.ops.registry import register_forward

__all__ = ["register", "CONTRIB", "GELU_FORM"]

T = torch.Tensor
CONTRIB = "com.microsoft"
# The standard Gelu each contrib op equals (its `approximate` attribute).
GELU_FORM = {"Gelu": "none", "FastGelu": "tanh"}


def _gelu_form(node: Node, xs: Sequence[T | None]) -> list[T]:
    if len(xs) > 1 and xs[1] is not None:
        raise ValueError(f"{CONTRIB}.{node.op} with a bias input is not supported (only the activation alone)")
    return [F.gelu(xs[0], approximate=GELU_FORM[node.op])]


def register() -> None:
    for op in GELU_FORM:
        register_forward(op, _gelu_form, min_opset=1, max_opset=1, domain=CONTRIB)
