"""Bounding rules for pooling, padding, resizing and reductions.

Averages, sums, padding and nearest resizing are affine with nonnegative
coefficients (the default radius rule is exact); max-type ops are monotone, so their
interval is f(l), f(u), and CROWN bounds their output by that interval.
"""
from __future__ import annotations

from relaxations.ops.common import monotone_interval
from relaxations.ops.shape import first_input_only
from relaxations.registry import OpRule, register_rule

__all__ = ["register"]


def register() -> None:
    facts = frozenset({"piecewise_linear", "monotone"})
    for op in ("AveragePool", "GlobalAveragePool", "Pad", "Resize", "Upsample", "ReduceSum", "ReduceMean"):
        register_rule(OpRule(op, "affine", affine_inputs=first_input_only, facts=facts))
    for op in ("MaxPool", "Max", "Min", "ReduceMax", "ReduceMin", "GlobalMaxPool"):
        register_rule(OpRule(op, "nonlinear", interval=monotone_interval, facts=facts))
