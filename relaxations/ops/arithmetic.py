"""Bounding rules for Add, Sub, Mul, Div, Neg, Sum.

Each is affine while at most the right inputs vary (Mul: one factor, Div: the
numerator). Otherwise its interval comes from interval arithmetic, and Mul of two
variable tensors has McCormick lines for CROWN (relaxations/ops/products.py); Div with
a variable denominator has none (CROWN bounds it by its interval).
"""
from __future__ import annotations

from typing import Sequence

import torch

from models import Node
from relaxations.bounds import IntervalBounds
from relaxations.ops import products
from relaxations.ops.common import Ins
from relaxations.ops.fast_backward import add_sub_backward, scale_backward
from relaxations.registry import OpRule, register_rule

__all__ = ["register", "product_interval"]

T = torch.Tensor


def _sum_radius(node: Node, args: Sequence[T | None], variable: Sequence[bool]) -> list[T]:
    out = None
    for a, v in zip(args, variable):
        if v:
            out = a if out is None else out + a
    return [out]


def _mul_radius(node: Node, args: Sequence, variable: Sequence[bool]) -> list[T]:
    r, c = (args[0], args[1]) if variable[0] else (args[1], args[0])
    return [r * c.abs()]


def _div_radius(node: Node, args: Sequence, variable: Sequence[bool]) -> list[T]:
    return [args[0] / args[1].abs()]


def product_interval(a: IntervalBounds | T, b: IntervalBounds | T) -> IntervalBounds:
    """Interval of an elementwise product: min and max over the four corner products."""
    al, au = (a.lower, a.upper) if isinstance(a, IntervalBounds) else (a, a)
    bl, bu = (b.lower, b.upper) if isinstance(b, IntervalBounds) else (b, b)
    corners = torch.stack(torch.broadcast_tensors(al * bl, al * bu, au * bl, au * bu))
    return IntervalBounds(corners.amin(0), corners.amax(0))


def _mul_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    return [product_interval(ins[0], ins[1])]


def _div_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    den = ins[1]
    if not isinstance(den, IntervalBounds):
        return [product_interval(ins[0], 1.0 / den)]
    # 1/x is decreasing on each side of 0; across 0 it is unbounded.
    crosses = (den.lower <= 0) & (den.upper >= 0)
    inv_lo = torch.where(crosses, torch.full_like(den.lower, -torch.inf), 1.0 / den.upper)
    inv_hi = torch.where(crosses, torch.full_like(den.lower, torch.inf), 1.0 / den.lower)
    result = product_interval(ins[0], IntervalBounds(inv_lo, inv_hi))
    lo = torch.nan_to_num(result.lower, nan=-torch.inf)
    hi = torch.nan_to_num(result.upper, nan=torch.inf)
    return [IntervalBounds(lo, hi)]


def _at_most_one_variable(node: Node, variable: Sequence[bool]) -> bool:
    return sum(bool(v) for v in variable[:2]) <= 1


def register() -> None:
    linear_facts = frozenset({"piecewise_linear"})
    register_rule(OpRule("Add", "affine", radius=_sum_radius, backward=add_sub_backward, facts=linear_facts | {"monotone"}))
    register_rule(OpRule("Sum", "affine", radius=_sum_radius, facts=linear_facts | {"monotone"}))
    register_rule(OpRule("Sub", "affine", radius=_sum_radius, backward=add_sub_backward, facts=linear_facts))
    register_rule(OpRule("Neg", "affine", radius=lambda n, a, v: [a[0]], facts=linear_facts | {"elementwise"}))
    # Mul and Div are "elementwise" (each output element one product, broadcasting aside):
    # `ibp.sound_interval` then takes their interval rule's ends, each with its own margin.
    register_rule(OpRule("Mul", "affine", radius=_mul_radius, backward=scale_backward, affine_inputs=_at_most_one_variable,
                         interval=_mul_interval, gather=products.mul_gather, relax_slots=products.product_relax,
                         alpha_init=products.product_alpha_init, alpha_bounds=products.product_alpha_bounds,
                         unstable=products.product_unstable, facts=frozenset({"elementwise"})))
    register_rule(OpRule("Div", "affine", radius=_div_radius, backward=scale_backward,
                         affine_inputs=lambda n, v: not v[1], interval=_div_interval, facts=frozenset({"elementwise"})))
