"""Bounding rules for piecewise-linear activations: Relu and LeakyRelu.

The lower line of an unstable ReLU is y >= alpha x for any alpha in [0, 1]; alpha is
what alpha-CROWN optimises. The upper line is the chord from (l, 0) to (u, u).
"""
from __future__ import annotations

from typing import Sequence

import torch

from models import Node
from relaxations.ops.common import monotone_interval
from relaxations.registry import OpRule, Relaxation, register_rule

__all__ = ["register", "leaky_relaxation"]

T = torch.Tensor


def _slope(node: Node) -> float:
    return float(node.attr("alpha", 0.01)) if node.op == "LeakyRelu" else 0.0


def leaky_relaxation(l: T, u: T, s: float, alpha: T | None) -> Relaxation:
    """Lines for max(x, s x) with s <= 1 over [l, u]; alpha in [s, 1] is the lower slope."""
    if s > 1:
        raise ValueError(f"LeakyRelu with alpha {s} > 1 (concave) is not supported")
    active, inactive = l >= 0, u <= 0
    unstable = ~(active | inactive)
    width = torch.where(unstable, u - l, torch.ones_like(u))
    chord = (u - s * l) / width
    up_slope = torch.where(active, torch.ones_like(u), torch.where(inactive, torch.full_like(u, s), chord))
    up_bias = torch.where(unstable, s * l - chord * l, torch.zeros_like(u))
    if alpha is None:
        alpha = torch.where(u >= -l, torch.ones_like(u), torch.full_like(u, s))
    stable_slope = torch.where(active, torch.ones_like(u), torch.full_like(u, s))
    lo_slope = torch.where(unstable, alpha, stable_slope)
    return Relaxation(lo_slope, torch.zeros_like(lo_slope), up_slope, up_bias)


def _relax(node: Node, l: T, u: T, alpha: T | None, consts: Sequence) -> Relaxation:
    return leaky_relaxation(l, u, _slope(node), alpha)


def _alpha_init(node: Node, l: T, u: T, consts: Sequence) -> T:
    s = _slope(node)
    return torch.where(u >= -l, torch.ones_like(u), torch.full_like(u, s))


def _alpha_bounds(node: Node, l: T, u: T, consts: Sequence) -> tuple[T, T]:
    return torch.full_like(l, _slope(node)), torch.ones_like(l)


def _unstable(node: Node, l: T, u: T, consts: Sequence) -> T:
    return (l < 0) & (u > 0)


def _lipschitz(node: Node, consts: Sequence) -> float:
    """Relu: 1; LeakyRelu: its larger slope, max(1, |alpha|)."""
    return 1.0 if node.op == "Relu" else max(1.0, abs(float(node.attr("alpha", 0.01))))


def _derivative(node: Node, l: T, u: T, consts: Sequence) -> tuple[T, T]:
    """{1} where l >= 0, {s} where u <= 0, else [min(s, 1), max(s, 1)] (Clarke's at 0).

    An element with l = 0 takes d = 1 although the kink's Clarke set is [s, 1]: where
    z = 0 on a set of positive measure, z is locally constant there and d multiplies a
    zero gradient, so its value does not matter (local Lipschitz bounds rely on this)."""
    s = _slope(node)
    one, flat = torch.ones_like(l), torch.full_like(l, s)
    lo = torch.where(l >= 0, one, torch.where(u <= 0, flat, torch.full_like(l, min(s, 1.0))))
    hi = torch.where(l >= 0, one, torch.where(u <= 0, flat, torch.full_like(l, max(s, 1.0))))
    return lo, hi


def register() -> None:
    facts = frozenset({"piecewise_linear", "monotone", "elementwise"})
    for op in ("Relu", "LeakyRelu"):
        # max(x, 0) is exact in floating point: Relu's interval needs no rounding margin
        # (LeakyRelu's product does). A margin there made every ReLU's lower end -1e-6,
        # which a sum of many ReLUs with large weights turned into a visible loss.
        register_rule(OpRule(op, "elementwise", interval=monotone_interval, relax=_relax,
                             alpha_init=_alpha_init, alpha_bounds=_alpha_bounds, unstable=_unstable, sparse_alpha=True,
                             lipschitz=_lipschitz, derivative=_derivative,
                             facts=facts | {"exact"} if op == "Relu" else facts))
