"""Bounding rules for pooling, padding, resizing and reductions.

Averages, sums, padding and nearest resizing are affine with nonnegative
coefficients (the default radius rule is exact); max-type ops are monotone, so their
interval is f(l), f(u), and CROWN walks through them by their slot relaxation
(relaxations/ops/maxes.py).
"""
from __future__ import annotations

from relaxations.ops import maxes
from relaxations.ops.common import monotone_interval
from relaxations.ops.fast_backward import reduce_backward
from relaxations.ops.pool_backward import avgpool_backward, global_avgpool_backward, pad_backward
from relaxations.ops.shape import first_input_only
from relaxations.registry import OpRule, register_rule

__all__ = ["register"]


def register() -> None:
    facts = frozenset({"piecewise_linear", "monotone"})
    closed = {"AveragePool": avgpool_backward, "GlobalAveragePool": global_avgpool_backward, "Pad": pad_backward}
    for op in ("AveragePool", "GlobalAveragePool", "Pad", "Resize", "Upsample"):
        # The closed forms first; the patterns they leave go through one autograd call.
        stacked = {"stacked_transpose"} if op in closed else set()
        register_rule(OpRule(op, "affine", affine_inputs=first_input_only, backward=closed.get(op),
                             facts=facts | stacked))
    for op in ("ReduceSum", "ReduceMean"):
        register_rule(OpRule(op, "affine", affine_inputs=first_input_only, backward=reduce_backward, facts=facts))
    gathers = {"MaxPool": maxes.maxpool_gather, "GlobalMaxPool": maxes.global_max_gather,
               "Max": maxes.variadic_gather, "Min": maxes.variadic_gather,
               "ReduceMax": maxes.reduce_gather, "ReduceMin": maxes.reduce_gather}
    for op, gather in gathers.items():
        register_rule(OpRule(op, "nonlinear", interval=monotone_interval, gather=gather, relax_slots=maxes.max_relax,
                             alpha_init=maxes.max_alpha_init, alpha_bounds=maxes.max_alpha_bounds,
                             unstable=maxes.max_unstable, facts=facts))
