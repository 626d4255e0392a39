"""Bounding rules for Conv, ConvTranspose and BatchNormalization (affine in the input)."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from models import Node
import torch.nn.functional as F

from models.ops.conv import _conv_transpose, conv_forward, spatial_pads
from relaxations.registry import OpRule, register_rule

__all__ = ["register"]

T = torch.Tensor


def _conv_radius(node: Node, args: Sequence, variable: Sequence[bool]) -> list[T]:
    return [conv_forward(node, args[0], args[1].abs(), None)]


def _conv_transpose_radius(node: Node, args: Sequence, variable: Sequence[bool]) -> list[T]:
    return _conv_transpose(node, [args[0], args[1].abs()])


def _batchnorm_radius(node: Node, args: Sequence, variable: Sequence[bool]) -> list[T]:
    x, scale, _, _, var = args[:5]
    factor = (scale / torch.sqrt(var + float(node.attr("epsilon", 1e-5)))).abs()
    return [x * factor.reshape([1, -1] + [1] * (x.dim() - 2))]


_CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv_backward(node: Node, A_outs: Sequence, args: Sequence, in_shapes: Sequence):
    """A through a convolution is the transposed convolution of A (then crop the pads)."""
    A = A_outs[0]
    w = args[1]
    if w is None or in_shapes[0] is None:
        return None
    B, S = A.shape[:2]
    in_shape = in_shapes[0]
    nd = w.dim() - 2
    strides = list(node.attr("strides", [1] * nd))
    dil = list(node.attr("dilations", [1] * nd))
    pads = spatial_pads(node, in_shape[2:], list(w.shape[2:]), strides, dil)
    padded = [in_shape[2 + i] + pads[i] + pads[nd + i] for i in range(nd)]
    out_sp = A.shape[-nd:]
    base = [(out_sp[i] - 1) * strides[i] + dil[i] * (w.shape[2 + i] - 1) + 1 for i in range(nd)]
    extra = [padded[i] - base[i] for i in range(nd)]
    if any(e < 0 or e >= max(strides[i], dil[i]) for i, e in enumerate(extra)):
        return None
    groups = int(node.attr("group", 1))
    if _dense_pays(w, in_shape, A):
        A_in = _dense_transpose(node, w, in_shape, A)
        return [A_in, None, None][:len(args)], *_bias_terms(A, args)
    flat = A.reshape(B * S * in_shape[0], *A.shape[3:])
    # The transpose crops the pads both sides share itself (its `padding`); only what one side
    # pads beyond the other is narrowed off after. Cropping all by narrow cost twice the
    # transpose, and under autograd a zero-filled copy of the padded map in the backward
    # (BENCHMARKS.md, session 35).
    crop = [min(pads[i], pads[nd + i]) for i in range(nd)]
    # A strided transpose onto several channels runs 1.2-2.5x faster on CPU from channels-last
    # coefficients, conversions included (slower or even at stride 1, or onto one channel):
    # BENCHMARKS.md, session 33. Not with weights under autograd (certified training), whose
    # steps are 5-8% faster in the default layout (session 35).
    strided = nd == 2 and max(strides) > 1 and w.shape[1] * groups > 1 and not w.requires_grad
    if strided:
        flat = flat.contiguous(memory_format=torch.channels_last)
    A_in = _CONVT[nd](flat, w, None, stride=strides, padding=crop, output_padding=extra, groups=groups,
                      dilation=dil)
    if strided:
        A_in = A_in.contiguous()
    for i in range(nd):
        if A_in.shape[2 + i] != in_shape[2 + i]:
            A_in = A_in.narrow(2 + i, pads[i] - crop[i], in_shape[2 + i])
    A_in = A_in.reshape(B, S, *in_shape)
    return [A_in, None, None][:len(args)], *_bias_terms(A, args)


def _bias_terms(A: T, args: Sequence) -> tuple[T, T]:
    """<A, bias> and its mass per row [B, S], the bias broadcast over each channel's map."""
    B, S = A.shape[:2]
    bias = torch.zeros(B, S, dtype=A.dtype, device=A.device)
    mass = torch.zeros_like(bias)
    if len(args) > 2 and args[2] is not None:
        per_channel = A.reshape(B, S, A.shape[2], A.shape[3], -1).sum(-1)  # [B, S, N, C]
        term = per_channel * args[2]
        bias = term.sum((-1, -2))
        mass = (A.abs().reshape(B, S, A.shape[2], A.shape[3], -1).sum(-1) * args[2].abs()).sum((-1, -2))
    return bias, mass


# Entries of a convolution's dense matrix (inputs x outputs of one example) up to which
# certified training transposes it as a matrix product (`_dense_pays`).
_DENSE_ENTRIES = 2 ** 18


def _dense_pays(w: T, in_shape: Sequence[int], A: T) -> bool:
    """Whether A goes back through the convolution as a product with its dense matrix: in
    certified training (weights under autograd), for a convolution from one channel (a
    first layer) whose matrix is small. A transposed convolution onto one channel is slow
    on CPU (forward and backward), where a GEMM with a matrix of a few hundred thousand
    entries is not: the digits CNN's CROWN-IBP step 10% faster with its first layer (64 x
    1,024) so (BENCHMARKS.md, session 38); its second layer (16 channels, 1,024 x 512) so
    made the step 30% slower. Not in verification, whose rows the transposed convolution
    serves as before."""
    n_in = math.prod(in_shape[1:])
    n_out = math.prod(A.shape[2:])
    return w.requires_grad and torch.is_grad_enabled() and in_shape[1] == 1 and n_in * n_out <= _DENSE_ENTRIES


def _dense_transpose(node: Node, w: T, in_shape: Sequence[int], A: T) -> T:
    """A [B, S, *out] times the convolution's matrix, transposed: [B, S, *in_shape]. The
    matrix is the convolution (no bias) of the identity's rows, one image per input
    element: exact (each entry is one weight), with autograd to the weights."""
    B, S = A.shape[:2]
    n_in = math.prod(in_shape[1:])
    eye = torch.eye(n_in, dtype=A.dtype, device=A.device).reshape(n_in, *in_shape[1:])
    rows = conv_forward(node, eye, w, None).reshape(n_in, -1)          # [n_in, n_out]
    return (A.reshape(B * S, -1) @ rows.transpose(0, 1)).reshape(B, S, *in_shape)


def _input_only(node: Node, variable: Sequence[bool]) -> bool:
    return not any(variable[1:])


def register() -> None:
    facts = frozenset({"piecewise_linear"})
    register_rule(OpRule("Conv", "affine", radius=_conv_radius, affine_inputs=_input_only,
                         backward=_conv_backward, facts=facts))
    register_rule(OpRule("ConvTranspose", "affine", radius=_conv_transpose_radius,
                         affine_inputs=_input_only, facts=facts))
    register_rule(OpRule("BatchNormalization", "affine", radius=_batchnorm_radius,
                         affine_inputs=_input_only, facts=facts | {"elementwise", "stacked_transpose"}))
