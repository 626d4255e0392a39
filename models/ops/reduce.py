"""Forward semantics of reductions over axes."""
from __future__ import annotations

from typing import Sequence

import torch

from models.graph import Node
from models.ops.registry import register_forward

__all__ = ["register", "reduce_axes"]

T = torch.Tensor


def reduce_axes(node: Node, xs: Sequence[T | None], since: int) -> list[int]:
    """Axes to reduce: the `axes` input from opset `since`, else the attribute; empty means all."""
    x = xs[0]
    if node.opset >= since:
        axes = [int(a) for a in xs[1].reshape(-1).tolist()] if len(xs) > 1 and xs[1] is not None else []
        if not axes and node.attr("noop_with_empty_axes", 0):
            return []
    else:
        axes = [int(a) for a in node.attr("axes", [])]
    if not axes:
        axes = list(range(x.dim()))
    return sorted(a % x.dim() for a in axes)


def _reducer(fn, since: int):
    def run(node: Node, xs: Sequence[T | None]) -> list[T]:
        axes = reduce_axes(node, xs, since)
        if not axes:
            return [xs[0]]
        return [fn(xs[0], axes, bool(node.attr("keepdims", 1)))]
    return run


def _max(x: T, axes: list[int], keep: bool) -> T:
    return torch.amax(x, dim=axes, keepdim=keep)


def _min(x: T, axes: list[int], keep: bool) -> T:
    return torch.amin(x, dim=axes, keepdim=keep)


def register() -> None:
    register_forward("ReduceSum", _reducer(lambda x, a, k: x.sum(dim=a, keepdim=k), 13))
    register_forward("ReduceMean", _reducer(lambda x, a, k: x.mean(dim=a, keepdim=k), 18))
    register_forward("ReduceMax", _reducer(_max, 18))
    register_forward("ReduceMin", _reducer(_min, 18))
