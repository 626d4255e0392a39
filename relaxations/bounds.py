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

__all__ = ["IntervalBounds", "BallBox", "LinearBounds", "BoundsTable", "Precision", "widen_lower", "DeadlineExceeded",
           "check_deadline", "concretize", "interval_terms", "rows_proved", "selection_lower"]


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
    def none() -> "Precision":
        """No margin: bounds sound in exact arithmetic only, for loss terms (certified
        training), never for a verdict. Intervals then skip the rounding masses entirely."""
        return Precision(0.0, 0.0)

    @property
    def exact(self) -> bool:
        """Whether this is `Precision.none()` (no rounding accounted for)."""
        return self.rel == 0.0 and self.abs == 0.0

    @staticmethod
    def for_dtype(dtype: torch.dtype) -> "Precision":
        return Precision(1e-12, 1e-12) if dtype == torch.float64 else Precision()

    def margin(self, mass):
        """The one outward margin of nncert's engine: rel * |mass| + abs (tensors or floats).

        Every sound lower bound that the engine computes in floating point is moved down by
        this much, from the mass of the terms summed to get it; clipping and interval
        widening use it too. The independent checker keeps its own on purpose.
        """
        return self.rel * abs(mass) + self.abs


def widen_lower(value: torch.Tensor, mass: torch.Tensor, precision: Precision) -> torch.Tensor:
    """`value` moved outward (down) by the margin of its rounding mass."""
    return value - precision.margin(mass)


def interval_terms(A: torch.Tensor, bounds: "IntervalBounds", want_mass: bool = True
                   ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Exact minimum of `A . t` over t in an interval, before any margin: (value, mass), each [B, S].

    A: [B, S, *shape]; bounds: [B, *shape]. `mass` is the sum of |A_i| max(|l_i|, |u_i|),
    what rounding in the sum can be proportional to. Backward passes add these terms to
    their bias and mass where they stop at an interval, and `concretize` widens the total
    once. This is two batched products through centre and radius (the rows share the
    interval); when an end is infinite or nan it is the elementwise sum instead, where an
    unused element (coefficient 0) counts as 0 and a used one keeps its inf or nan.
    `want_mass` False: mass is None (`Precision.none()` needs none) and one product less.
    A of batch 1 against a batch of intervals is shared by them: matrix products give
    [B, S] without a [B, S, n] tensor (`_shared_terms`).
    """
    B, S = A.shape[:2]
    if B == 1 and bounds.lower.shape[0] > 1:
        shared = _shared_terms(A, bounds, want_mass)
        if shared is not None:
            return shared
        A = A.expand(bounds.lower.shape[0], *A.shape[1:])   # an infinite end: element by element below
        B = A.shape[0]
    Af = A.reshape(B, S, -1)
    lo = bounds.lower.reshape(B, -1, 1)
    hi = bounds.upper.reshape(B, -1, 1)
    absA = Af.abs()
    if not want_mass and torch.is_grad_enabled():
        # Certified training's loss terms (`Precision.none()`, under autograd): a product
        # and a sum, whose backward is several times faster on CPU than bmm's against a
        # single column. Not for alpha-CROWN's steps: on its wide rows bmm is the faster,
        # and a change of summation order there changes which near-tied neuron a search
        # splits (BENCHMARKS.md, session 23).
        value = (Af * ((lo + hi) / 2).transpose(1, 2)).sum(-1) - (absA * ((hi - lo) / 2).transpose(1, 2)).sum(-1)
    else:
        value = torch.bmm(Af, (lo + hi) / 2).squeeze(-1) - torch.bmm(absA, (hi - lo) / 2).squeeze(-1)
    if not want_mass:
        if bool(torch.isfinite(value).all()):
            return value, None
    else:
        mass = torch.bmm(absA, torch.maximum(lo.abs(), hi.abs())).squeeze(-1)
        # An infinite (or nan) end makes the centre or radius inf or nan, and so the sums:
        # checking the small results costs less than checking the intervals.
        if bool(torch.isfinite(value).all() & torch.isfinite(mass).all()):
            return value, mass
    # Only a zero coefficient may hide an end: 0 * inf counts as 0. A nan end under a
    # nonzero coefficient stays nan (no row is ever proved by a nan), and an infinite one
    # gives -inf: nothing here may turn a missing bound into a finite number.
    lo, hi = lo.transpose(1, 2), hi.transpose(1, 2)
    unused = Af == 0
    zero = Af.new_zeros(())
    value = torch.where(unused, zero, torch.where(Af > 0, Af * lo, Af * hi)).sum(-1)
    if not want_mass:
        return value, None
    mass = torch.where(unused, zero, Af.abs() * torch.maximum(lo.abs(), hi.abs())).sum(-1)
    return value, mass


def _shared_terms(A: torch.Tensor, bounds: "IntervalBounds", want_mass: bool
                  ) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """`interval_terms` of one A [1, S, *shape] against every interval of the batch
    [B, *shape]: centre and radius times A^T and |A|^T, [B, S] (certified training's folded
    specification: S rows over all class pairs, shared, instead of a [B, K-1, n] product
    per sample). None when an end is infinite or nan (the caller sums element by element)."""
    S = A.shape[1]
    Af = A.reshape(S, -1)
    nb = bounds.lower.shape[0]
    lo, hi = bounds.lower.reshape(nb, -1), bounds.upper.reshape(nb, -1)
    absA = Af.abs()
    value = ((lo + hi) / 2) @ Af.transpose(0, 1) - ((hi - lo) / 2) @ absA.transpose(0, 1)
    mass = torch.maximum(lo.abs(), hi.abs()) @ absA.transpose(0, 1) if want_mass else None
    finite = torch.isfinite(value).all() if mass is None else torch.isfinite(value).all() & torch.isfinite(mass).all()
    return (value, mass) if bool(finite) else None


def ball_terms(A: torch.Tensor, ball: "BallBox", want_mass: bool = True
               ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Exact minimum of `A . t` over the l2 ball ||t - centre|| <= radius: (value, mass), [B, S].

    The minimum is A . centre - radius ||A||_2 (Cauchy-Schwarz, attained at the centre
    moved by -radius A / ||A||). `mass`, |A| . |centre| + radius ||A||_2, is what the two
    sums' rounding can be proportional to (the norm's own relative error is of the same order).
    """
    S = A.shape[1]
    B = ball.ball_centre.shape[0]                 # A may be of batch 1, shared by the batch
    Af = A.reshape(A.shape[0], S, -1)
    c = ball.ball_centre.reshape(B, 1, -1)
    r = ball.ball_radius.reshape(B, 1)
    norm = Af.norm(dim=-1)
    value = (Af * c).sum(-1) - r * norm
    if not want_mass:
        return value, None
    return value, (Af.abs() * c.abs()).sum(-1) + r * norm


def concretize(A: torch.Tensor, bounds: "IntervalBounds", precision: Precision,
               bias: Optional[torch.Tensor] = None, mass: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The one concretisation: a sound lower bound [B, S] of `A . t + bias` over the interval
    (over the interval intersected with an l2 ball when `bounds` is a `BallBox`: the better
    of the two minima, each a lower bound over the intersection).

    `mass` is the rounding mass already in `bias` (`LinearBounds.mass`). The result is
    widened outward by `Precision.margin` of the total mass, once per candidate.
    """
    candidates = [interval_terms(A, bounds, want_mass=not precision.exact)]
    if isinstance(bounds, BallBox):
        candidates.append(ball_terms(A, bounds, want_mass=not precision.exact))
    best = None
    for value, m in candidates:
        if bias is not None:
            value = value + bias
        if not precision.exact:
            value = widen_lower(value, m if mass is None else m + mass, precision)
        best = value if best is None else torch.maximum(best, value)
    return best


def simplex_lower(A: torch.Tensor, bounds: "IntervalBounds", groups: torch.Tensor, precision: Precision
                  ) -> torch.Tensor:
    """A sound lower bound [B, S] of `A . y` over the interval of y when the entries of each
    group (`groups` [G, m]: flat indices, as `models.graph.output_simplices` gives them)
    lie in [0, 1] and sum to exactly 1 (softmax rows).

    Per group and row this is the minimum of sum_i c_i y_i over y in [l, u] with sum y = 1,
    a fractional knapsack: every y_i from its lower end, then the remaining 1 - sum l
    placed on the cheapest coefficients first, each up to its upper end. Entries outside
    the groups take the end their coefficient's sign picks, as in `interval_terms`. A row
    such as "y_0 + y_1 > 1.01" is refuted here, where bounding each y_i alone cannot.
    Widened outward by the margin of its mass, like `concretize`.
    """
    B, S = A.shape[:2]
    Af = A.reshape(B, S, -1)
    n = Af.shape[-1]
    grouped = torch.zeros(n, dtype=torch.bool, device=A.device)
    grouped[groups.reshape(-1).to(A.device)] = True
    lo, hi = bounds.lower.reshape(B, 1, n), bounds.upper.reshape(B, 1, n)
    zero = Af.new_zeros(())
    rest = torch.where(grouped | (Af == 0), zero, torch.where(Af > 0, Af * lo, Af * hi)).sum(-1)
    rest_mass = torch.where(grouped | (Af == 0), zero, Af.abs() * torch.maximum(lo.abs(), hi.abs())).sum(-1)
    index = groups.to(A.device)
    c = Af[..., index]                                                  # [B, S, G, m]
    order = c.argsort(-1)
    cs = c.gather(-1, order)
    ls = lo.clamp(0, 1)[..., index].expand_as(c).gather(-1, order)
    us = hi.clamp(0, 1)[..., index].expand_as(c).gather(-1, order)
    width = (us - ls).clamp_min(0)
    room = 1 - ls.sum(-1, keepdim=True)
    take = torch.minimum((room - (width.cumsum(-1) - width)).clamp_min(0), width)
    value = rest + (cs * (ls + take)).sum((-1, -2))
    if not precision.exact:
        mass = rest_mass + (cs.abs() * (ls + take + width)).sum((-1, -2)) + cs.abs().sum((-1, -2))
        value = widen_lower(value, mass, precision)
    # A nan end (never a softmax's: its Clip keeps [0, 1]) must not reach the caller's
    # maximum, which would spread it: no bound is then -inf. (Not nan_to_num, which would
    # also turn an unbounded row's -inf into a finite -3.4e38.)
    return torch.where(torch.isnan(value), torch.full_like(value, -torch.inf), value)


def selection_lower(A: torch.Tensor, bounds: "IntervalBounds") -> torch.Tensor:
    """The exact lower bound [B, S] of the rows of A [B, S, *shape] that pick one entry
    with coefficient +1 or -1 (`y_k`, `-y_k`): that entry's lower end, or minus its upper
    end, with no rounding margin, since no arithmetic is done; -inf for any other row.
    A spec row such as `y_k < 0` over an output whose interval is exact (softmax's [0, 1]
    after its Clip) is then refuted, where `concretize`'s margin would leave it open."""
    B, S = A.shape[:2]
    flat = A.reshape(B, S, -1)
    nonzero = flat != 0
    one = nonzero.sum(-1) == 1
    k = nonzero.to(torch.int8).argmax(-1)                                        # [B, S]
    coef = flat.gather(-1, k.unsqueeze(-1)).squeeze(-1)
    lo = bounds.lower.reshape(B, 1, -1).expand(B, S, -1).gather(-1, k.unsqueeze(-1)).squeeze(-1)
    hi = bounds.upper.reshape(B, 1, -1).expand(B, S, -1).gather(-1, k.unsqueeze(-1)).squeeze(-1)
    value = torch.where(coef > 0, lo, -hi)
    ok = one & (coef.abs() == 1)
    return torch.where(ok, value, torch.full_like(value, -torch.inf))


def rows_proved(gap, strict):
    """The one "row proved" rule, for torch tensors and numpy arrays alike.

    gap: a sound lower bound of `C_i y - d_i` over a region; strict: whether row i is
    `C_i y < d_i` (else `<=`). The row is violated everywhere (its conjunction has no
    point in the region) when gap > 0, or gap >= 0 for a strict row. The independent
    checker keeps its own copy on purpose.
    """
    return (gap > 0) | (strict & (gap >= 0))


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
class BallBox(IntervalBounds):
    """An input region that is a box intersected with an l2 ball: ||t - centre||_2 <= radius.

    It is an `IntervalBounds` (the box, which should contain the ball's part inside the
    valid range), so every pass that reads a box reads it unchanged and stays sound; the
    final concretisation against the input (`concretize`) also takes the ball's minimum.
    ball_centre [B, *shape], ball_radius [B]. A pass that rebuilds the box drops the ball (sound,
    looser).
    """

    ball_centre: torch.Tensor
    ball_radius: torch.Tensor


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
        """The sound minimum over the box, [B, S], widened outward for rounding (`concretize`)."""
        return concretize(self.A, box, precision, self.bias, self.mass)

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
