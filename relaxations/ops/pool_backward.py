"""Closed-form backward steps for padding and average pooling.

The generic batched step (`affine_step.stacked_backward`) differentiates the forward
op at zero: it allocates a zero input as large as the coefficients, runs the op on it,
takes the gradient, and multiplies the coefficients by the op's value at zero for the
bias. For a constant Pad and an AveragePool the transpose is known (a crop, a spread of
each output's coefficient over its window), and the bias of a zero-valued pad or of a
pooling is zero, so these steps skip all of that: on a CNN whose one-layer feature map
is 32 x 27 x 27, the two steps took about a third of a CROWN pass before (BENCHMARKS.md,
session 41). Each returns None for a pattern it does not handle; the generic step then
runs.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from models import Node
from models.ops.conv import spatial_pads, torch_pad_order
from models.ops.pooling import pad_arguments

__all__ = ["pad_backward", "avgpool_backward", "global_avgpool_backward"]

T = torch.Tensor
Result = Optional[tuple[list, T, T]]

_POOL_BACKWARD = {2: torch.ops.aten.avg_pool2d_backward, 3: torch.ops.aten.avg_pool3d_backward}


def _zeros(A: T) -> T:
    return torch.zeros(A.shape[:2], dtype=A.dtype, device=A.device)


def pad_backward(node: Node, A_outs: Sequence, args: Sequence, in_shapes: Sequence) -> Result:
    """A constant pad of zeros: each input element takes its output's coefficient, which
    F.pad by the negated pads gives (it crops what the pad added and zero-fills what a
    negative pad cropped); pads of zero are the identity. Another constant adds to the
    bias, and the other modes read inputs several times: both go the generic way."""
    A = A_outs[0]
    rest = [None] * (len(args) - 1)
    rank = len(in_shapes[0])
    if node.opset >= 11 and (len(args) < 2 or args[1] is None):
        return None
    pads, value, mode = pad_arguments(node, rank, [None, *args[1:]])
    if mode != "constant" or len(pads) != 2 * rank:
        return None
    if not any(pads):
        return [A] + rest, _zeros(A), _zeros(A)
    if value != 0.0:
        return None
    return [F.pad(A, [-p for p in torch_pad_order(pads)])] + rest, _zeros(A), _zeros(A)


def avgpool_backward(node: Node, A_outs: Sequence, args: Sequence, in_shapes: Sequence) -> Result:
    """AveragePool without pads (2-D and 3-D): each output's coefficient spread over its
    window, divided by the window's size, by torch's own pooling backward (differentiable
    in the coefficients, for training). Its input tensor is read for its shape only, so
    an expanded zero stands in for it."""
    A = A_outs[0]
    shape = tuple(in_shapes[0])
    kernel = list(node.attr("kernel_shape"))
    nd = len(kernel)
    strides = list(node.attr("strides", [1] * nd))
    dil = list(node.attr("dilations", [1] * nd))
    backward = _POOL_BACKWARD.get(nd)
    if backward is None or len(shape) != nd + 2 or node.attr("ceil_mode", 0) or any(d != 1 for d in dil):
        return None
    if any(spatial_pads(node, shape[2:], kernel, strides, dil)):
        return None
    B, S = A.shape[:2]
    flat = A.reshape(B * S * shape[0], *A.shape[3:])
    ghost = torch.zeros((), dtype=A.dtype, device=A.device).expand(B * S * shape[0], *shape[1:])
    A_in = backward(flat, ghost, kernel, strides, [0] * nd, False, True, None)
    return [A_in.reshape(B, S, *shape)], _zeros(A), _zeros(A)


def global_avgpool_backward(node: Node, A_outs: Sequence, args: Sequence, in_shapes: Sequence) -> Result:
    """GlobalAveragePool: each input element takes its channel's coefficient over the
    count of elements averaged."""
    A = A_outs[0]
    shape = tuple(in_shapes[0])
    B, S = A.shape[:2]
    count = 1
    for d in shape[2:]:
        count *= d
    A_in = (A / count).expand(B, S, *shape[:2], *shape[2:]).contiguous()
    return [A_in], _zeros(A), _zeros(A)
