"""Bounding rules for MatMul and Gemm (affine when one factor is constant).

With both factors variable, MatMul has McCormick lines per product for CROWN
(relaxations/ops/products.py); Gemm (its alpha scaling makes the gathered slots no
longer a selection) has only its interval, and the import expands a Gemm of two
variable matrices into MatMul and the rest (`models.passes.expand_gemm`) so that
CROWN relaxes it all the same.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from models import Node
from models.ops.linear import gemm_parts
from relaxations.bounds import IntervalBounds, Precision
from relaxations.ops.common import Ins, batched
from relaxations.ops import products
from relaxations.ops.fast_backward import gemm_backward, matmul_backward
from relaxations.registry import OpRule, register_rule

__all__ = ["register"]

T = torch.Tensor


def _matmul_radius(node: Node, args: Sequence, variable: Sequence[bool]) -> list[T]:
    a, b = args[0], args[1]
    return [a @ b.abs() if variable[0] else a.abs() @ b]


def _gemm_radius(node: Node, args: Sequence, variable: Sequence[bool]) -> list[T]:
    a, b, c = gemm_parts(node, args)
    out = a @ b.abs() if variable[0] else a.abs() @ b
    if len(variable) > 2 and variable[2]:
        out = out + c
    return [out]


def _dense_centre_radius(node: Node, centre: T, radius: T, args: Sequence) -> Optional[tuple[T, T]]:
    """Gemm (no transA) or MatMul by a constant matrix on the right, the first input
    varying: the layer and its |W| as `F.linear` on the whole batch (one fused product
    with the bias, no per-sample reshapes), for certified training's intervals."""
    w = args[1] if len(args) > 1 else None
    if w is None or w.dim() != 2 or centre.dim() < 2:
        return None
    bias = None
    if node.op == "Gemm":
        if node.attr("transA", 0):
            return None
        _, w, bias = gemm_parts(node, [torch.empty(0, 0), w, args[2] if len(args) > 2 else None])
    w = w.transpose(0, 1)                     # [out, in], F.linear's layout
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != w.shape[0]):   # C broadcast as Gemm does
        return F.linear(centre, w) + bias, F.linear(radius, w.abs())
    return F.linear(centre, w, bias), F.linear(radius, w.abs())


def _bilinear_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    """Both factors vary: centre-radius interval arithmetic for a matrix product (Gemm's
    transposes, alpha and beta applied as its forward does).

    The ends are centre -+ radius, each a sum of products of both signs, so they are
    widened here by the rounding margin of the sum of the terms' magnitudes,
    |ca| |cb| + radius: the engine's per-end widening (`ibp.sound_interval`) sees only
    the ends, which may be small where the terms cancel.
    """
    def parts(x):
        return (x.center, x.radius) if isinstance(x, IntervalBounds) else (x, torch.zeros_like(x))

    mask = [isinstance(x, IntervalBounds) for x in ins[:2]]
    (ca, ra), (cb, rb) = parts(ins[0]), parts(ins[1])
    gemm = node.op == "Gemm"
    alpha = float(node.attr("alpha", 1.0)) if gemm else 1.0

    def prod(n, xs):
        ca, ra, cb, rb = xs
        if gemm and node.attr("transA", 0):
            ca, ra = ca.transpose(-1, -2), ra.transpose(-1, -2)
        if gemm and node.attr("transB", 0):
            cb, rb = cb.transpose(-1, -2), rb.transpose(-1, -2)
        center = alpha * (ca @ cb)
        radius = abs(alpha) * (ca.abs() @ rb + ra @ cb.abs() + ra @ rb)
        return [center, radius, abs(alpha) * (ca.abs() @ cb.abs()) + radius]

    center, radius, mass = batched(node, prod, [ca, ra, cb, rb], mask * 2)
    if gemm and len(ins) > 2 and ins[2] is not None:
        beta = float(node.attr("beta", 1.0))
        c = ins[2]
        cc, cr = parts(c)
        center, radius = center + beta * cc, radius + abs(beta) * cr
        mass = mass + abs(beta) * (cc.abs() + cr)
    margin = Precision.for_dtype(center.dtype).margin(mass)
    return [IntervalBounds(center - radius - margin, center + radius + margin)]


def _one_factor_variable(node: Node, variable: Sequence[bool]) -> bool:
    return not (variable[0] and variable[1])


def register() -> None:
    register_rule(OpRule("MatMul", "affine", radius=_matmul_radius, affine_inputs=_one_factor_variable,
                         interval=_bilinear_interval, backward=matmul_backward, centre_radius=_dense_centre_radius,
                         gather=products.matmul_gather, relax_slots=products.product_relax,
                         alpha_init=products.product_alpha_init, alpha_bounds=products.product_alpha_bounds,
                         unstable=products.product_unstable, facts=frozenset({"piecewise_linear"})))
    register_rule(OpRule("Gemm", "affine", radius=_gemm_radius, affine_inputs=_one_factor_variable,
                         interval=_bilinear_interval, backward=gemm_backward, centre_radius=_dense_centre_radius,
                         facts=frozenset({"piecewise_linear"})))
