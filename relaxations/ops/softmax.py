"""Interval rule for Softmax (a "nonlinear" rule: CROWN bounds its output by the interval).

softmax_i = 1 / (1 + sum_{j != i} exp(x_j - x_i)) is increasing in x_i and decreasing
in every other x_j, so over a box its extremes are at opposite corners:
  lower_i = 1 / (1 + sum_{j != i} exp(u_j - l_i)) = sigmoid(l_i - LSE_{j != i} u_j),
  upper_i = 1 / (1 + sum_{j != i} exp(l_j - u_i)) = sigmoid(u_i - LSE_{j != i} l_j).
The leave-one-out log-sum-exp is computed without cancellation: for every i other
than the arg-max, the sum without term i still holds the maximal term (>= 1 after
scaling), so subtracting term i loses at most n ulps; for the arg-max itself the sum
is taken over the other entries directly, scaled by their own maximum.
"""
from __future__ import annotations

import torch

from models import Node
from relaxations.bounds import IntervalBounds, Precision
from relaxations.ops.common import Ins
from relaxations.registry import OpRule, register_rule, slope

__all__ = ["register", "softmax_bounds", "leave_one_out_lse"]

T = torch.Tensor


def leave_one_out_lse(v: T, dim: int) -> T:
    """out_i = log sum_{j != i} exp(v_j) along `dim` (-inf when the axis has one entry)."""
    n = v.shape[dim]
    if n == 1:
        return torch.full_like(v, -torch.inf)
    m, arg = v.max(dim=dim, keepdim=True)
    is_arg = torch.zeros_like(v, dtype=torch.bool).scatter_(dim, arg, True)
    scaled = torch.exp(v - m)
    total = scaled.sum(dim, keepdim=True)
    others = torch.log((total - scaled).clamp(min=torch.finfo(v.dtype).tiny)) + m
    masked = v.masked_fill(is_arg, -torch.inf)
    m2 = masked.amax(dim, keepdim=True)
    at_arg = torch.log(torch.exp(masked - m2).sum(dim, keepdim=True)) + m2
    return torch.where(is_arg, at_arg.expand_as(v), others)


def _argument(x: T, lse: T, outward: float) -> T:
    """x - lse moved outward by the rounding margin of its terms: the difference of two
    numbers of, say, 1e3 that nearly cancel carries an absolute error of 1e-4, which the
    sigmoid passes on in full where it is steep (a relative margin on its output would not)."""
    mass = torch.nan_to_num(x.abs() + lse.abs(), nan=0.0, posinf=0.0)
    return x - lse + outward * Precision.for_dtype(x.dtype).margin(mass)


def softmax_bounds(lower: T, upper: T, dim: int) -> tuple[T, T]:
    """Sound elementwise bounds of softmax along `dim` over the box [lower, upper]."""
    lo = torch.sigmoid(_argument(lower, leave_one_out_lse(upper, dim), -1.0))
    hi = torch.sigmoid(_argument(upper, leave_one_out_lse(lower, dim), 1.0))
    # Infinite inputs make NaN (inf - inf); the trivial bounds [0, 1] always hold.
    lo = torch.nan_to_num(lo, nan=0.0).clamp(0.0, 1.0)
    hi = torch.nan_to_num(hi, nan=1.0).clamp(0.0, 1.0)
    return lo, hi


def _softmax_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    b = ins[0]
    if not isinstance(b, IntervalBounds):
        raise ValueError(f"Softmax node {node.name}: input is not variable")
    lower, upper = b.lower, b.upper
    rank = lower.dim() - 1  # without the batch dimension
    if node.opset >= 13:
        axis = int(node.attr("axis", -1))
        dim = (axis % rank) + 1 if rank else 1
        lo, hi = softmax_bounds(lower, upper, dim)
        return [IntervalBounds(lo, hi)]
    # Before opset 13: flatten to [lead, rest] at `axis` and normalise each row of rest.
    axis = int(node.attr("axis", 1)) % max(rank, 1)
    shape = lower.shape
    B = shape[0]
    lead = 1
    for d in shape[1:axis + 1]:
        lead *= d
    lo, hi = softmax_bounds(lower.reshape(B, lead, -1), upper.reshape(B, lead, -1), 2)
    return [IntervalBounds(lo.reshape(shape), hi.reshape(shape))]


def register() -> None:
    # Its Jacobian diag(p) - p p^T has l2 norm and largest row sum at most 1/2; 1 is kept.
    register_rule(OpRule("Softmax", "nonlinear", interval=_softmax_interval, lipschitz=slope(1.0),
                         facts=frozenset({"smooth"})))
