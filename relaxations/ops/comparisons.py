"""Interval rules for comparisons (Equal, Greater, Less, GreaterOrEqual, LessOrEqual)
and the selection they drive (Where).

A comparison is a step function with values in {0, 1} (bool): its interval is exact
from its inputs' intervals (1 where every pair of values compares true, 0 where none
does, [0, 1] otherwise), and the values compared are the float32 values onnxruntime
compares, which lie in those intervals. Where(c, a, b) is a's interval where c is
surely true, b's where surely false, and their hull otherwise. Both are "nonlinear"
rules: CROWN bounds their outputs by these intervals, which is all a step or a
selection by a step can give to a linear bound, and branch and bound on the input
makes the condition's interval decide. Both are "exact": their ends are computed
without rounding (comparisons of the values themselves, a selection of input ends), so
no rounding margin widens them, and a condition surely true stays exactly 1.
"""
from __future__ import annotations

from typing import Callable

import torch

from models import Node
from relaxations.bounds import IntervalBounds
from relaxations.ops.common import Ins
from relaxations.registry import OpRule, register_rule

__all__ = ["register"]

T = torch.Tensor


def _ends(x: "IntervalBounds | T") -> tuple[T, T]:
    if isinstance(x, IntervalBounds):
        return x.lower, x.upper
    return x, x


# For op(a, b) over a in [la, ua], b in [lb, ub]: (surely true, surely false).
_CASES: dict[str, Callable[[T, T, T, T], tuple[T, T]]] = {
    "Greater": lambda la, ua, lb, ub: (la > ub, ua <= lb),
    "Less": lambda la, ua, lb, ub: (ua < lb, la >= ub),
    "GreaterOrEqual": lambda la, ua, lb, ub: (la >= ub, ua < lb),
    "LessOrEqual": lambda la, ua, lb, ub: (ua <= lb, la > ub),
    "Equal": lambda la, ua, lb, ub: ((la == ua) & (lb == ub) & (la == lb), (ua < lb) | (la > ub)),
}


def _compare_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    (la, ua), (lb, ub) = _ends(ins[0]), _ends(ins[1])
    yes, no = _CASES[node.op](la.to(torch.float64), ua.to(torch.float64), lb.to(torch.float64), ub.to(torch.float64))
    like = la if la.is_floating_point() else lb
    lo = yes.to(like.dtype)
    hi = (~no).to(like.dtype)
    return [IntervalBounds(lo, hi)]


def _where_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    (lc, uc), (la, ua), (lb, ub) = _ends(ins[0]), _ends(ins[1]), _ends(ins[2])
    true, false = lc.to(torch.float64) >= 1, uc.to(torch.float64) <= 0
    lo = torch.where(true, la, torch.where(false, lb, torch.minimum(la, lb)))
    hi = torch.where(true, ua, torch.where(false, ub, torch.maximum(ua, ub)))
    return [IntervalBounds(lo, hi)]


def register() -> None:
    for op in _CASES:   # GreaterOrEqual and LessOrEqual appear in opset 12, as their forwards say
        register_rule(OpRule(op, "nonlinear", min_opset=12 if op.endswith("OrEqual") else 1,
                             interval=_compare_interval,
                             facts=frozenset({"piecewise_constant", "exact"})))
    register_rule(OpRule("Where", "nonlinear", interval=_where_interval, facts=frozenset({"piecewise_linear", "exact"})))
