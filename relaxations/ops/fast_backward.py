"""Closed-form backward passes for the affine ops that dominate real networks.

The generic vector-Jacobian product in `crown.py` is correct for every affine op but
pays autograd overhead on each call; these cover dense layers, elementwise constants
(a variable input broadcast too), reshapes, transposes and sum/mean reductions
directly. Each returns None for a pattern it does not handle, and the generic path
takes over.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from models import Node
from models.ops.linear import gemm_parts
from models.ops.reduce import reduce_axes

__all__ = ["matmul_backward", "gemm_backward", "add_sub_backward", "scale_backward", "reshape_backward",
           "transpose_backward", "reduce_backward", "unbroadcast"]

T = torch.Tensor
Result = Optional[tuple[list, T, T]]


def _bias_term(A: T, c: T) -> tuple[T, T]:
    """<A, c> and <|A|, |c|> per [B, S], with c broadcast to A's trailing shape."""
    B, S = A.shape[:2]
    c = torch.broadcast_to(c, A.shape[2:]).reshape(-1)
    Af = A.reshape(B, S, -1)
    return Af @ c, Af.abs() @ c.abs()


def _zeros(A: T) -> T:
    return torch.zeros(A.shape[:2], dtype=A.dtype, device=A.device)


def matmul_backward(node: Node, A_outs: Sequence, args: Sequence, in_shapes: Sequence) -> Result:
    A = A_outs[0]
    if args[1] is not None and args[0] is None and args[1].dim() == 2:
        A_in = A @ args[1].transpose(0, 1)
        return [A_in.reshape(*A.shape[:2], *in_shapes[0]), None], _zeros(A), _zeros(A)
    if args[0] is not None and args[1] is None and args[0].dim() == 2 and len(in_shapes[1]) == 2:
        A_in = args[0].transpose(0, 1) @ A
        return [None, A_in.reshape(*A.shape[:2], *in_shapes[1])], _zeros(A), _zeros(A)
    return None


def gemm_backward(node: Node, A_outs: Sequence, args: Sequence, in_shapes: Sequence) -> Result:
    if args[0] is not None or args[1] is None or (len(args) > 2 and in_shapes[2] is not None):
        return None
    A = A_outs[0]
    _, b, c = gemm_parts(node, [torch.empty(0, 0), args[1], args[2] if len(args) > 2 else None])
    A_in = A @ b.transpose(0, 1)
    if node.attr("transA", 0):
        A_in = A_in.transpose(-1, -2)
    bias, mass = _bias_term(A, c) if c is not None else (_zeros(A), _zeros(A))
    return [A_in.reshape(*A.shape[:2], *in_shapes[0])] + [None] * (len(args) - 1), bias, mass


def add_sub_backward(node: Node, A_outs: Sequence, args: Sequence, in_shapes: Sequence) -> Result:
    A = A_outs[0]
    out_shape = tuple(A.shape[2:])
    A_ins: list = []
    bias, mass = _zeros(A), _zeros(A)
    for i, (a, shape) in enumerate(zip(args, in_shapes)):
        sign = -1.0 if (node.op == "Sub" and i == 1) else 1.0
        if a is None:
            a_in = A if tuple(shape) == out_shape else unbroadcast(A, shape)
            if a_in is None:
                return None
            A_ins.append(a_in if sign > 0 else -a_in)
        else:
            b, m = _bias_term(A, sign * a)
            bias, mass = bias + b, mass + m
            A_ins.append(None)
    return A_ins, bias, mass


def unbroadcast(A: T, shape: Sequence[int]) -> Optional[T]:
    """A [B, S, *out] back onto an input of `shape` that the op broadcast to `out`
    (numpy rules): summed over the dims the input lacks or has as 1. None where `shape`
    does not broadcast to `out`."""
    B, S = A.shape[:2]
    out, shape = tuple(A.shape[2:]), tuple(shape)
    lead = len(out) - len(shape)
    if lead < 0 or any(s != o and s != 1 for s, o in zip(shape, out[lead:])):
        return None
    return A.sum_to_size(B, S, *(1,) * lead, *shape).reshape(B, S, *shape)


def transpose_backward(node: Node, A_outs: Sequence, args: Sequence, in_shapes: Sequence) -> Result:
    """Output dim j is input dim perm[j]: the coefficients go back by the inverse permutation."""
    A = A_outs[0]
    n = len(in_shapes[0])
    perm = [int(p) % n for p in node.attr("perm", list(range(n))[::-1])]
    inverse = [0] * n
    for j, p in enumerate(perm):
        inverse[p] = j
    return [A.permute(0, 1, *(2 + inverse[k] for k in range(n)))], _zeros(A), _zeros(A)


def reduce_backward(node: Node, A_outs: Sequence, args: Sequence, in_shapes: Sequence) -> Result:
    """ReduceSum / ReduceMean: each input element gets its output's coefficient (divided
    by the count averaged over, for the mean)."""
    A = A_outs[0]
    B, S = A.shape[:2]
    shape = tuple(in_shapes[0])
    since = 18 if node.op == "ReduceMean" else 13
    axes = reduce_axes(node, [torch.empty(shape, device="meta"), *args[1:]], since)
    rest = [None] * (len(args) - 1)
    if not axes:
        return [A.reshape(B, S, *shape)] + rest, _zeros(A), _zeros(A)
    kept = [1 if i in axes else d for i, d in enumerate(shape)]
    A_in = A.reshape(B, S, *kept).expand(B, S, *shape).contiguous()
    if node.op == "ReduceMean":
        A_in = A_in / math.prod(shape[a] for a in axes)
    return [A_in] + rest, _zeros(A), _zeros(A)


def scale_backward(node: Node, A_outs: Sequence, args: Sequence, in_shapes: Sequence) -> Result:
    """Mul by a constant, or Div by a constant, with the variable input at full shape."""
    A = A_outs[0]
    var = 0 if args[0] is None else 1
    if node.op == "Div" and var != 0:
        return None
    if tuple(in_shapes[var]) != tuple(A.shape[2:]):
        return None
    c = args[1 - var]
    factor = 1.0 / c if node.op == "Div" else c
    A_ins = [None, None]
    A_ins[var] = A * torch.broadcast_to(factor, A.shape[2:])
    return A_ins, _zeros(A), _zeros(A)


def reshape_backward(node: Node, A_outs: Sequence, args: Sequence, in_shapes: Sequence) -> Result:
    A = A_outs[0]
    return [A.reshape(*A.shape[:2], *in_shapes[0])] + [None] * (len(args) - 1), _zeros(A), _zeros(A)
