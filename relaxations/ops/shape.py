"""Bounding rules for ops that move or select data.

Their linear maps have 0/1 coefficients, so |L| = L and the default radius rule
(apply the op to the radius) is exact.
"""
from __future__ import annotations

from typing import Sequence

from models import Node
from relaxations.ops.fast_backward import reshape_backward, transpose_backward
from relaxations.registry import OpRule, register_rule

__all__ = ["register", "first_input_only"]


def first_input_only(node: Node, variable: Sequence[bool]) -> bool:
    return not any(variable[1:])


def register() -> None:
    # "selection": every output element is an input element, copied without rounding, so
    # `ibp.sound_interval` passes the interval on unwidened (Cast, which may round or
    # truncate, is a step function in `nonsmooth`).
    facts = frozenset({"piecewise_linear", "monotone"})
    moves = facts | {"selection"}
    for op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
        register_rule(OpRule(op, "affine", affine_inputs=first_input_only, backward=reshape_backward,
                             facts=moves))
    register_rule(OpRule("Transpose", "affine", affine_inputs=first_input_only, backward=transpose_backward,
                         facts=moves))
    for op in ("Slice", "Gather", "Expand", "Tile", "Split", "Identity", "Dropout"):
        register_rule(OpRule(op, "affine", affine_inputs=first_input_only, facts=moves))
    register_rule(OpRule("Concat", "affine", facts=moves))
