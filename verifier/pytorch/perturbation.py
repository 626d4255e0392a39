"""The threat model shared by certified training and `verify_module`, less its radius.

No torch here: `verifier.Perturbation` is importable without paying for it.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from verifier.config_checks import instance_of

__all__ = ["Perturbation", "NORMS", "checked_perturbation"]

NORMS = ("inf", "2")


@dataclass(frozen=True)
class Perturbation:
    """How a point may be perturbed: within a ball of the norm `norm` ("inf": the box
    x +- eps; "2": the l2 ball of radius eps) and inside the valid input range
    [lower, upper] (pixels in [0, 1] by default) that the ball is clipped to.

    These stay fixed for a model and its data, so they travel together. The radius eps
    does not: it is each call's own argument, because a training schedule
    (`EpsilonSchedule`) changes it every step and it may be a tensor with one radius per
    example, where a frozen object would have to be rebuilt at every step.
    """

    norm: str = "inf"
    lower: float = 0.0
    upper: float = 1.0

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {self.norm!r}")
        for name in ("lower", "upper"):
            value = getattr(self, name)
            if not isinstance(value, (numbers.Real, str)) and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
                value = value.item()    # a 0-d tensor or array, as the old signatures took
                object.__setattr__(self, name, value)
            if not (isinstance(value, numbers.Real) and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.lower > self.upper:
            raise ValueError(f"lower must be <= upper, got lower={self.lower} and upper={self.upper}")


def checked_perturbation(value: object) -> Perturbation:
    """`value` if it is a `Perturbation`: a clear error for a call written against the
    old signatures, whose norm or range would otherwise land in its place."""
    return instance_of("perturbation", value, Perturbation, "e.g. Perturbation(norm='2', lower=0.0, upper=1.0)")
