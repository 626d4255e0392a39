"""Forward semantics of ops that move, select or create data without arithmetic."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from models.graph import Node
from models.ops.registry import register_forward

__all__ = ["register", "slice_indices"]

T = torch.Tensor


def _ints(t: T | None) -> list[int]:
    return [] if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axes(node: Node, xs: Sequence[T | None], input_index: int, since: int) -> list[int] | None:
    if node.opset >= since:
        return _ints(xs[input_index]) if len(xs) > input_index and xs[input_index] is not None else None
    value = node.attr("axes")
    return None if value is None else [int(a) for a in value]


def _flatten(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    axis = int(node.attr("axis", 1)) % (x.dim() + 1) if x.dim() else 0
    lead = math.prod(x.shape[:axis])
    return [x.reshape(lead, -1)]


def _reshape(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    shape = _ints(xs[1]) if node.opset >= 5 else [int(v) for v in node.attr("shape")]
    if not node.attr("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [x.reshape(shape)]


def _transpose(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    perm = node.attr("perm")
    perm = list(reversed(range(x.dim()))) if perm is None else [int(p) for p in perm]
    return [x.permute(perm)]


def _squeeze(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    axes = _axes(node, xs, 1, 13)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = sorted(a % x.dim() for a in axes)
    shape = [d for i, d in enumerate(x.shape) if i not in axes]
    return [x.reshape(shape)]


def _unsqueeze(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    axes = _axes(node, xs, 1, 13) or []
    rank = x.dim() + len(axes)
    shape = list(x.shape)
    for a in sorted(a % rank for a in axes):
        shape.insert(a, 1)
    return [x.reshape(shape)]


def _concat(node: Node, xs: Sequence[T | None]) -> list[T]:
    parts = [x for x in xs if x is not None and x.numel() > 0 or (x is not None and x.dim() > 0)]
    return [torch.cat(parts, dim=int(node.attr("axis")))]


def _split(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    axis = int(node.attr("axis", 0)) % x.dim()
    sizes = _ints(xs[1]) if node.opset >= 13 and len(xs) > 1 and xs[1] is not None else \
        [int(v) for v in node.attr("split", [])]
    n = len(node.outputs)
    if not sizes:
        chunk = -(-x.shape[axis] // n)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(n)]
    return list(torch.split(x, sizes, dim=axis))


def slice_indices(dim: int, start: int, end: int, step: int) -> list[int]:
    """The indices ONNX Slice keeps along one axis (clamping as the spec says)."""
    return list(range(dim))[slice(start, end, step)] if step else []


def _slice(node: Node, xs: Sequence[T | None]) -> list[T]:
    x = xs[0]
    if node.opset < 10:
        starts, ends = list(node.attr("starts")), list(node.attr("ends"))
        axes = list(node.attr("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = _ints(xs[1]), _ints(xs[2])
        axes = _ints(xs[3]) if len(xs) > 3 and xs[3] is not None else list(range(len(starts)))
        steps = _ints(xs[4]) if len(xs) > 4 and xs[4] is not None else [1] * len(starts)
    for a, s, e, st in zip(axes, starts, ends, steps):
        a = a % x.dim()
        # Python slicing clamps exactly as ONNX does, including INT64_MAX ends.
        idx = slice_indices(x.shape[a], s, e, st)
        if idx != list(range(x.shape[a])):
            x = x.index_select(a, torch.tensor(idx, dtype=torch.long, device=x.device))
    return [x]


def _gather(node: Node, xs: Sequence[T | None]) -> list[T]:
    x, idx = xs[0], xs[1]
    axis = int(node.attr("axis", 0)) % x.dim()
    flat = idx.reshape(-1).long()
    flat = torch.where(flat < 0, flat + x.shape[axis], flat)
    picked = x.index_select(axis, flat)
    shape = list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:])
    return [picked.reshape(shape)]


def _shape(node: Node, xs: Sequence[T | None]) -> list[T]:
    dims = list(xs[0].shape)
    start, end = node.attr("start", 0), node.attr("end", None)
    return [torch.tensor(dims[start:end], dtype=torch.int64)]


def _size(node: Node, xs: Sequence[T | None]) -> list[T]:
    return [torch.tensor(xs[0].numel(), dtype=torch.int64)]


def _expand(node: Node, xs: Sequence[T | None]) -> list[T]:
    x, shape = xs[0], _ints(xs[1])
    target = list(np.broadcast_shapes(tuple(x.shape), tuple(shape)))
    return [x.expand(target)]


def _tensor_attr(value: object) -> T:
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
        return torch.tensor(arr, dtype=torch.get_default_dtype())
    return torch.tensor(arr)


def _constant(node: Node, xs: Sequence[T | None]) -> list[T]:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if node.attr(key) is not None:
            return [_tensor_attr(node.attr(key))]
    raise ValueError("Constant without a supported value attribute")


def _constant_of_shape(node: Node, xs: Sequence[T | None]) -> list[T]:
    value = node.attr("value")
    fill = _tensor_attr(value).reshape(-1)[0] if value is not None else torch.tensor(0.0)
    return [torch.full(_ints(xs[0]), fill.item(), dtype=fill.dtype)]


def _tile(node: Node, xs: Sequence[T | None]) -> list[T]:
    return [xs[0].repeat(_ints(xs[1]))]


def _range(node: Node, xs: Sequence[T | None]) -> list[T]:
    return [torch.arange(xs[0].item(), xs[1].item(), xs[2].item(), dtype=xs[0].dtype)]


def register() -> None:
    # Only axis 1 keeps N as axis 0: (1, C, H, W) -> (1, CHW); other axes merge or split it.
    register_forward("Flatten", _flatten, batches=lambda node, variable, args: int(node.attr("axis", 1)) == 1)
    register_forward("Reshape", _reshape)
    register_forward("Transpose", _transpose)
    register_forward("Squeeze", _squeeze)
    register_forward("Unsqueeze", _unsqueeze)
    register_forward("Concat", _concat)
    register_forward("Split", _split)
    register_forward("Slice", _slice)
    register_forward("Gather", _gather)
    register_forward("Shape", _shape, shape_only=True)
    register_forward("Size", _size, shape_only=True)
    register_forward("Expand", _expand)
    register_forward("Constant", _constant, shape_only=True)
    register_forward("ConstantOfShape", _constant_of_shape, reads_shapes=True)
    register_forward("Tile", _tile)
    register_forward("Range", _range)
