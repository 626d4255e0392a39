"""What every branch-and-bound search decides: one input region and the spec rows over it.

A `Problem` is the same for every kind of branching: input split cuts its region,
activation split its network's ReLUs, and both ask the same question of each domain
through `rows_status` (is it proved, and how far from it) and of each point through
`objective` (is it a counterexample).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from models import Graph, GraphEvaluator
from relaxations.bounds import BallBox, IntervalBounds, rows_proved
from relaxations.options import BoundOptions

__all__ = ["Problem", "region_box", "into_region", "onto_rows", "project_l2", "rows_status", "pruning_proved", "open_rows", "rows_left_open",
           "rows_problem", "objective", "violations"]

T = torch.Tensor


@dataclass(frozen=True)
class Problem:
    """One input region and its conjunctions as padded tensors (C y <= d rows), on one device."""

    graph: Graph
    ev: GraphEvaluator
    lower: T          # [1, *input_shape]
    upper: T
    C: T              # [S, n_out]
    d: T              # [S]
    strict: T         # [S] bool
    owner: T          # [S] long: the conjunction of each row
    n_conj: int
    # Intervals of intermediate tensors proved over the whole region before the search
    # (LP refinement): every domain's bounds are intersected with them.
    known: Mapping[str, IntervalBounds] = field(default_factory=dict)
    # The region's own rows beyond its box (VNN-LIB 2.0 coupled inputs): a x + c <= 0
    # at every point of it, [K, n_in] and [K]. Input split clips every box by them, and
    # a point that misses one is no counterexample.
    region_a: Optional[T] = None
    region_c: Optional[T] = None
    # An l2 ball the region is also cut by (torch modules verified over l2 balls):
    # (centre [1, *input_shape], radius [1]). Bounds concretise against the box and the
    # ball (`relaxations.BallBox`), candidates are projected into it, and a point outside
    # it is no counterexample.
    ball: Optional[tuple[T, T]] = None


def region_box(p: Problem, n: int) -> IntervalBounds:
    """The region's box for a batch of n domains: a `BallBox` when the problem has a ball."""
    shape = p.lower.shape[1:]
    lo, hi = p.lower.expand(n, *shape), p.upper.expand(n, *shape)
    if p.ball is None:
        return IntervalBounds(lo, hi)
    centre, radius = p.ball
    return BallBox(lo, hi, centre.expand(n, *shape), radius.expand(n))


# Projected points are pulled this far inside the ball: float32 rounding of the
# projection must not leave them a hair outside it, where the replay would refuse them.
BALL_SHRINK = 1e-5


def project_l2(xs: T, centre: T, radius, lower, upper) -> T:
    """Points xs [M, *shape] projected a hair (`BALL_SHRINK`) inside the l2 ball, then
    clamped to [lower, upper] (tensors or floats). When the box holds the centre, the clamp
    moves no coordinate away from it, so the points stay in the ball."""
    d = xs - centre
    norm = d.reshape(len(xs), -1).norm(dim=1).clamp_min(1e-30)
    scale = torch.clamp(radius * (1 - BALL_SHRINK) / norm, max=1.0).reshape(-1, *([1] * (xs.dim() - 1)))
    return torch.clamp(centre + d * scale, lower, upper)


def onto_rows(x: T, A: T, b: T, lo: T, hi: T, sweeps: int = 4) -> T:
    """Points x [N, n] moved toward {A x <= b} within the box [lo, hi] (broadcast against x):
    each sweep projects every point onto all its violated half-spaces at once, then clamps
    to the box. Cheap and approximate: a point may still miss a row, so callers keep
    judging points by `violations` (and the pre-search attack repairs its few by an LP)."""
    norms = (A * A).sum(1).clamp_min(1e-30)
    for _ in range(sweeps):
        excess = (x @ A.T - b).clamp(min=0)
        if not bool((excess > 0).any()):
            break
        x = (x - (excess / norms) @ A).clamp(lo, hi)
    return x


def into_region(p: Problem, xs: T, lower: Optional[T] = None, upper: Optional[T] = None) -> T:
    """Points xs [M, *input_shape] moved into the problem's region: onto its rows beyond
    the box (`onto_rows`), then into its ball (`project_l2`), each kept within [lower,
    upper] ([1 or M, *input_shape]; default the region's box, so a search can keep a point
    in its own domain's box). Unchanged for a plain box: a gradient step already clamps."""
    lo = p.lower if lower is None else lower
    hi = p.upper if upper is None else upper
    if p.region_a is not None:
        flat = onto_rows(xs.reshape(len(xs), -1), p.region_a, -p.region_c, lo.reshape(len(lo), -1),
                         hi.reshape(len(hi), -1))
        xs = flat.reshape(xs.shape)
    if p.ball is not None:
        xs = project_l2(xs, p.ball[0], p.ball[1], lo, hi)
    return xs


def rows_status(p: Problem, lb: T) -> tuple[T, T]:
    """(proved [N] bool, score [N]) from row lower bounds lb [N, S] of C y - d.

    A conjunction is proved when one of its rows is (`relaxations.rows_proved`); a
    domain when all conjunctions are. The score is the smallest over conjunctions of
    the best row gap: how far the domain is from proved.
    """
    row_ok = rows_proved(lb, p.strict)
    N = lb.shape[0]
    best = torch.full((N, p.n_conj), -torch.inf, dtype=lb.dtype, device=lb.device)
    best = best.scatter_reduce(1, p.owner.expand(N, -1), lb, reduce="amax")
    ok = torch.zeros((N, p.n_conj), dtype=torch.bool, device=lb.device)
    ok = ok.scatter_reduce(1, p.owner.expand(N, -1), row_ok, reduce="amax")
    return ok.all(1), best.amin(1)


def pruning_proved(p: Problem, options: BoundOptions, on: bool) -> BoundOptions:
    """`options` telling alpha-CROWN which domains of a batch over `p` are decided (every
    conjunction proved, as `rows_status` says), so that its later steps leave them out
    (`BoundOptions.proved`); unchanged when `on` is false. Both activation splits bound
    their rounds with this."""
    if not on:
        return options
    return dataclasses.replace(options, proved=lambda lower: rows_status(p, lower - p.d)[0])


def open_rows(p: Problem, lb: T) -> T:
    """[N, S] as lb's dtype: 1 for the rows not proved yet, whose looseness branching should cut."""
    return (~rows_proved(lb, p.strict)).to(lb.dtype)


def rows_left_open(p: Problem, lb: T) -> Optional[T]:
    """The spec rows whose conjunction some domain of the batch (row bounds lb [N, S])
    leaves open; None when that is all of them. A conjunction proved over a domain is
    proved over its children (their regions lie inside it): their other rows need no
    bound, the parent's holds."""
    if p.C.shape[0] == 1:
        return None
    N = lb.shape[0]
    ok = torch.zeros((N, p.n_conj), dtype=torch.bool, device=lb.device)
    ok = ok.scatter_reduce(1, p.owner.expand(N, -1), rows_proved(lb, p.strict), reduce="amax")
    need = (~ok).any(0)[p.owner]                                         # [S]
    return None if bool(need.all()) else torch.nonzero(need).flatten()


def rows_problem(p: Problem, rows: T) -> Problem:
    """The problem of some spec rows (every row of each conjunction they touch, or the
    answer would change): their conjunctions renumbered in order."""
    uniq, owner = torch.unique(p.owner[rows], return_inverse=True)
    return dataclasses.replace(p, C=p.C[rows], d=p.d[rows], strict=p.strict[rows], owner=owner, n_conj=len(uniq))


def objective(p: Problem, y: T) -> T:
    """[M] min over conjunctions of the max over its rows of C y - d: <= 0 iff one holds."""
    v = y.reshape(len(y), -1) @ p.C.T - p.d                 # [M, S]
    M = v.shape[0]
    worst = torch.full((M, p.n_conj), -torch.inf, dtype=v.dtype, device=v.device)
    worst = worst.scatter_reduce(1, p.owner.expand(M, -1), v, reduce="amax")
    return worst.amin(1)


def violations(p: Problem, xs: T) -> T:
    """Objective at points xs [M, *input_shape] (no autograd); +inf off the region's rows."""
    with torch.no_grad():
        obj = objective(p, p.ev(xs))
        if p.region_a is not None:
            off = (xs.reshape(len(xs), -1) @ p.region_a.T + p.region_c > 0).any(1)
            obj = torch.where(off, torch.full_like(obj, torch.inf), obj)
        if p.ball is not None:
            centre, radius = p.ball
            off = (xs - centre).reshape(len(xs), -1).double().norm(dim=1) > radius.double()
            obj = torch.where(off, torch.full_like(obj, torch.inf), obj)
        return obj
