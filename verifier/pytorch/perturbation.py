"""The threat model shared by certified training and `verify_module`, less its radius.

No torch here: `verifier.Perturbation` is importable without paying for it.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from verifier.config_checks import Choice, Real, check_settings, instance_of, setting

__all__ = ["Perturbation", "NORMS", "checked_perturbation"]

NORMS = ("inf", "2")


@dataclass(frozen=True)
class _RangeEnd(Real):
    """A finite number, as `Real` takes it; a 0-d tensor or array is taken as its number
    (the old signatures clamped with one)."""

    def __call__(self, value: Any) -> float:
        if not isinstance(value, (numbers.Real, str)) and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()
        return super().__call__(value)


@dataclass(frozen=True)
class Perturbation:
    """How a point may be perturbed: within a ball of the norm `norm` ("inf": the box
    x +- eps; "2": the l2 ball of radius eps) and inside the valid input range
    [lower, upper] (pixels in [0, 1] by default) that the ball is clipped to.

    These stay fixed for a model and its data, so they travel together. The radius eps
    does not: it is each call's own argument, because a training schedule
    (`EpsilonSchedule`) changes it every step and it may be a tensor with one radius per
    example, where a frozen object would have to be rebuilt at every step. The fields
    meet the config keys' checks (`verifier.config_checks`), with their words.
    """

    norm: str = setting("inf", Choice(NORMS))
    lower: float = setting(0.0, _RangeEnd(None))
    upper: float = setting(1.0, _RangeEnd(None))

    def __post_init__(self) -> None:
        check_settings(self)
        if self.lower > self.upper:
            raise ValueError(f"lower must be <= upper, got lower={self.lower} and upper={self.upper}")


def checked_perturbation(value: object) -> Perturbation:
    """`value` if it is a `Perturbation`: a clear error for a call written against the
    old signatures, whose norm or range would otherwise land in its place."""
    return instance_of("perturbation", value, Perturbation, "e.g. Perturbation(norm='2', lower=0.0, upper=1.0)")
