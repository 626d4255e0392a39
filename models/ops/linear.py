"""Forward semantics of MatMul and Gemm."""
from __future__ import annotations

from typing import Sequence

import torch

from models.graph import Node
from models.ops.registry import first_input, register_forward

__all__ = ["register", "gemm_parts"]

T = torch.Tensor


def gemm_parts(node: Node, xs: Sequence[T | None]) -> tuple[T, T, T | None]:
    """A and B after the transposes and alpha, and C after beta: Y = A @ B + C."""
    a, b = xs[0], xs[1]
    if node.attr("transA", 0):
        a = a.transpose(-1, -2)
    if node.attr("transB", 0):
        b = b.transpose(-1, -2)
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    if alpha != 1.0:
        b = b * alpha
    c = xs[2] if len(xs) > 2 else None
    if c is not None and beta != 1.0:
        c = c * beta
    return a, b, c


def _gemm(node: Node, xs: Sequence[T | None]) -> list[T]:
    a, b, c = gemm_parts(node, xs)
    y = a @ b
    return [y if c is None else y + c]


def _matmul(node: Node, xs: Sequence[T | None]) -> list[T]:
    return [torch.matmul(xs[0], xs[1])]


def register() -> None:
    register_forward("MatMul", _matmul)
    # Gemm's rows are samples when only A varies and is not transposed.
    register_forward("Gemm", _gemm, batches=lambda node, variable, args: first_input(node, variable, args)
                     and not int(node.attr("transA", 0)))
