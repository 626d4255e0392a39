"""Bound values that flow between packages: intervals and one-sided linear bounds.

Only lower bounds are ever propagated linearly: an upper bound of `c @ y` is minus
the lower bound of `-c @ y`. One code path for both sides means one place to get
soundness right.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["IntervalBounds", "LinearBounds", "BoundsTable", "Precision", "widen_lower", "DeadlineExceeded",
           "check_deadline"]


class DeadlineExceeded(Exception):
    """A bound pass saw `BoundOptions.deadline` pass before it had a bound.

    Raised from inside long passes (per node, per chunk of rows) so that a caller's
    timeout is kept even on networks where one pass takes minutes. No bound exists
    when it is raised, so it must never be turned into a verdict: the verifier turns
    it into `timeout`. Nothing in `relaxations` catches it.
    """


def check_deadline(deadline: Optional[float]) -> None:
    """Raise DeadlineExceeded if `deadline` (a time.monotonic() value) has passed; None: never."""
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded("the deadline passed during bound propagation")


@dataclass(frozen=True)
class Precision:
    """Outward margins that absorb floating-point rounding in a bound.

    A computed lower bound L is replaced by L - (rel * mass + abs), where `mass` is
    the sum of absolute values of the terms that were added to get L. Rounding error
    in a sum is at most (number of terms) * eps * mass; rel is chosen far above that
    (float32 eps is 6e-8) so that a long chain of layers stays covered.
    """

    rel: float = 1e-5
    abs: float = 1e-6

    @staticmethod
    def for_dtype(dtype: torch.dtype) -> "Precision":
        return Precision(1e-12, 1e-12) if dtype == torch.float64 else Precision()


def widen_lower(value: torch.Tensor, mass: torch.Tensor, precision: Precision) -> torch.Tensor:
    return value - (precision.rel * mass.abs() + precision.abs)


@dataclass(frozen=True)
class IntervalBounds:
    """Elementwise lower and upper bounds, shape [B, *tensor_shape]."""

    lower: torch.Tensor
    upper: torch.Tensor

    @property
    def center(self) -> torch.Tensor:
        return (self.lower + self.upper) / 2

    @property
    def radius(self) -> torch.Tensor:
        return (self.upper - self.lower) / 2

    def intersect(self, other: "IntervalBounds") -> "IntervalBounds":
        return IntervalBounds(torch.maximum(self.lower, other.lower), torch.minimum(self.upper, other.upper))

    def width(self) -> torch.Tensor:
        return self.upper - self.lower


@dataclass(frozen=True)
class LinearBounds:
    """A lower bound `A . x + bias` on S linear functions of the input, per batch element.

    A: [B, S, *input_shape]; bias, mass: [B, S]. `mass` accumulates the absolute value
    of every term folded into `bias`, for the rounding margin.
    """

    A: torch.Tensor
    bias: torch.Tensor
    mass: torch.Tensor

    def concretize(self, box: IntervalBounds, precision: Precision) -> torch.Tensor:
        """The sound minimum over the box, [B, S], widened outward for rounding."""
        B, S = self.A.shape[:2]
        A = self.A.reshape(B, S, -1)
        lo = box.lower.reshape(B, -1, 1)
        hi = box.upper.reshape(B, -1, 1)
        center, radius = (lo + hi) / 2, (hi - lo) / 2
        absA = A.abs()
        value = torch.bmm(A, center).squeeze(-1) - torch.bmm(absA, radius).squeeze(-1) + self.bias
        mass = torch.bmm(absA, torch.maximum(lo.abs(), hi.abs())).squeeze(-1) + self.mass
        return widen_lower(value, mass, precision)

    def minimizer(self, box: IntervalBounds) -> torch.Tensor:
        """The box corner that minimises the linear function, [B, S, *input_shape]."""
        B, S = self.A.shape[:2]
        lo = box.lower.unsqueeze(1).expand_as(self.A)
        hi = box.upper.unsqueeze(1).expand_as(self.A)
        return torch.where(self.A >= 0, lo, hi)


class BoundsTable(dict):
    """Interval bounds of every tensor computed so far, keyed by tensor name.

    Kept outside the graph so that many bound computations can share one graph.
    """

    def __getitem__(self, key: str) -> IntervalBounds:
        return super().__getitem__(key)
