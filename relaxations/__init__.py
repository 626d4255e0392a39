"""The maths of bounding: bound values, the op registry, IBP, CROWN, alpha-CROWN.

Imports only `models`. Importing this package registers every op family's rules.
"""
from __future__ import annotations

import relaxations.ops  # noqa: F401  (fills the registry explicitly, see relaxations/ops/__init__.py)
from relaxations.bounds import (BallBox, BoundsTable, DeadlineExceeded, IntervalBounds, LinearBounds, Precision, concretize,
                                rows_proved)
from relaxations.compute import METHODS, BoundOptions, BoundResult, ClipHook, Given, compute_bounds
from relaxations.registry import REGISTRY, OpRule, Relaxation, register_rule, registered_ops, rule_for

__all__ = ["BallBox", "BoundsTable", "DeadlineExceeded", "IntervalBounds", "LinearBounds", "Precision", "BoundOptions",
           "BoundResult", "ClipHook", "Given", "compute_bounds", "concretize", "rows_proved", "METHODS", "REGISTRY",
           "OpRule", "Relaxation", "register_rule", "registered_ops", "rule_for"]
