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


def register() -> None:
    facts = frozenset({"piecewise_linear", "monotone", "elementwise"})
    for op in ("Relu", "LeakyRelu"):
        # max(x, 0) is exact in floating point: Relu's interval needs no rounding margin
        # (LeakyRelu's product does). A margin there made every ReLU's lower end -1e-6,
        # which a sum of many ReLUs with large weights turned into a visible loss.
        register_rule(OpRule(op, "elementwise", interval=monotone_interval, relax=_relax,
                             alpha_init=_alpha_init, alpha_bounds=_alpha_bounds, unstable=_unstable, sparse_alpha=True,
                             lipschitz=_lipschitz, facts=facts | {"exact"} if op == "Relu" else facts))
