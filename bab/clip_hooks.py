"""Domain clipping applied to bound passes: the hooks that tighten intermediate bounds.

`bab.clipping` holds the maths (box hulls, the one-dimensional and joint duals, where
constraints come from); this module applies it to the chunks of an intermediate CROWN
pass (`relaxations.compute_bounds(..., given=Given(clip=hook))`): `SplitClipper` with the split
constraints of activation split, `ConstraintClipper` with the constraints an input-split
domain inherits from its parent. Only the rows of still unstable neurons are worth the
sort, so both go through `min_under_constraints_at`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from bab.clipping import _best_lambda, _dual_value, _infeasible, _precision, _sanitise, constraints_from_splits
from relaxations.bounds import IntervalBounds, LinearBounds, Precision

__all__ = ["split_constraints", "min_under_constraints_at", "clip_unstable_rows", "SplitClipper",
           "ConstraintClipper", "ConstraintGroups"]

T = torch.Tensor


@dataclass(frozen=True)
class ConstraintGroups:
    """Constraints that describe a union rather than an intersection: constraint k
    belongs to group owner[k] ([K] long) of `n`, and a point need only meet the
    constraints of one group (the counterexamples of several conjunctions)."""

    owner: T
    n: int


def split_constraints(kept: list, lo: T, hi: T, k: int, precision: Optional[Precision] = None) -> tuple[T, T]:
    """Up to `k` split constraints per domain, the most cutting first: (a [B, k', n], c [B, k']).

    kept: (LinearBounds of `-sign z` over the input [B, K_t, ...], split mask [B, K_t]) per
    split tensor, as `relaxations.intermediate._crown_tensor` keeps them (None entries are
    skipped); lo, hi: the domains' boxes [B, n]. Each gives `a^T x + c <= 0` on its domain
    (`constraints_from_splits`, with the rounding margin). A constraint's score is the
    fraction of its range over the box that it cuts off, max^+ / (max - min): 0 when it
    holds on the whole box (useless), 2 when it holds nowhere (the domain is empty, which
    `min_under_constraint` turns into +inf). Unused slots and useless constraints get
    c = nan, which every consumer here ignores (dropping a constraint is always sound).
    """
    B, n = lo.shape
    parts = [x for x in kept if x is not None]
    if not parts or k <= 0:
        return lo.new_zeros(B, 0, n), lo.new_zeros(B, 0)
    A = torch.cat([lin.A.reshape(B, lin.A.shape[1], -1) for lin, _ in parts], 1)
    bias = torch.cat([lin.bias for lin, _ in parts], 1)
    mass = torch.cat([lin.mass for lin, _ in parts], 1)
    act = torch.cat([m for _, m in parts], 1)
    a, c = constraints_from_splits(A, bias, lo, hi, mass, precision)
    lo3, hi3 = lo.unsqueeze(1), hi.unsqueeze(1)
    mn = torch.minimum(a * lo3, a * hi3).sum(-1) + c
    mx = torch.maximum(a * lo3, a * hi3).sum(-1) + c
    score = mx.clamp(min=0) / (mx - mn).clamp(min=1e-30)
    score = torch.where(mn > 0, torch.full_like(score, 2.0), score)
    score = torch.where(act & torch.isfinite(c) & torch.isfinite(a).all(-1), score, torch.full_like(score, -1.0))
    top, idx = score.topk(min(k, score.shape[1]), dim=1)
    a = a.gather(1, idx.unsqueeze(-1).expand(-1, -1, n))
    c = torch.where(top > 0, c.gather(1, idx), torch.full_like(top, torch.nan))
    return a, c


def _each_constraint(w: T, b: T, mass: T, lo: T, hi: T, a: T, c: T, p: Precision) -> tuple[T, T]:
    """Plain bound [P] and the bound under each single constraint [P, K], all K at once.

    w, lo, hi: [P, n]; b, mass: [P]; a: [P, K, n]; c: [P, K]. One batched sort instead of a
    loop over constraints (the loop's many small tensor ops dominated on ACAS Xu).
    Unusable constraints (nan) give the plain bound, infeasible ones +inf.
    """
    a, c, _ = _sanitise(a, c)
    lo3, hi3 = lo.unsqueeze(1), hi.unsqueeze(1)
    w3, b2, m2 = w.unsqueeze(1), b.unsqueeze(1), mass.unsqueeze(1)
    box3 = IntervalBounds(lo3, hi3)
    plain = _dual_value(LinearBounds(w3, b2, m2), box3, w3, torch.zeros_like(b2), torch.zeros_like(w3), p)[:, 0]
    wk = w3.expand_as(a)
    lam = _best_lambda(wk, lo3, hi3, a, c)                                      # [P, K]
    lam3 = lam.unsqueeze(-1)
    g = _dual_value(LinearBounds(wk, b2, m2), box3, wk + lam3 * a, lam * c, lam3 * a.abs(), p)
    g = torch.maximum(g, plain.unsqueeze(1))
    g = torch.where(_infeasible(a, c, lo3, hi3, p), torch.full_like(g, torch.inf), g)
    return plain, g


def min_under_constraints_at(objective: LinearBounds, box: IntervalBounds, a: T, c: T, select: T,
                             max_elements: int = 1 << 22, precision: Optional[Precision] = None,
                             groups: Optional[ConstraintGroups] = None) -> T:
    """`min_under_constraints` on the selected entries only: [B, R], -inf where not selected.

    objective: w [B, R, n] (A), b and its mass [B, R]; select: [B, R]; box: lo, hi [B, n];
    a: [B, K, n]; c: [B, K]. Used for
    intermediate bounds, where only the rows of still unstable neurons are worth the
    sort (a dense call would cost B*R*n per constraint). Entries whose every constraint
    is unused (c = nan) are skipped too. The caller takes the max with its plain bound.
    With `groups` the constraints describe a union over groups: the bound is the
    smallest over groups of the group's best.
    """
    w, b, mass, lo, hi = objective.A, objective.bias, objective.mass, box.lower, box.upper
    owner, n_groups = (None, 1) if groups is None else (groups.owner, groups.n)
    p = _precision(w.dtype, precision)
    out = torch.full_like(b, -torch.inf)
    if c.shape[1] == 0:
        return out
    select = select & torch.isfinite(c).any(1, keepdim=True)
    bi, ri = select.nonzero(as_tuple=True)
    if bi.numel() == 0:
        return out
    K, n = a.shape[1], a.shape[2]
    step = max(1, max_elements // max(1, K * n))
    for s in range(0, bi.numel(), step):
        bb, rr = bi[s:s + step], ri[s:s + step]
        # Cheap filter: if the box corner minimising w (ties: either end) already meets a
        # constraint, its dual optimum is lambda = 0, the plain bound. Keep only entries
        # that some constraint cuts there (skipping an entry is always sound).
        ww, ab, lb_, hb = w[bb, rr], a[bb], lo[bb].unsqueeze(1), hi[bb].unsqueeze(1)
        corner = torch.where(ww > 0, lo[bb], hi[bb]).unsqueeze(1)        # [P, 1, n]
        at = torch.where((ww == 0).unsqueeze(1), torch.maximum(ab * lb_, ab * hb), ab * corner)
        cut_k = at.sum(-1) + c[bb] > 0                                  # [P, K]; nan c: False
        if owner is None:
            cuts = cut_k.any(1)
        else:  # a union gains only where every group has a cutting constraint
            cuts = torch.ones_like(cut_k[:, 0])
            for g in range(n_groups):
                cuts &= (cut_k & (owner == g).unsqueeze(0)).any(1)
        bb, rr = bb[cuts], rr[cuts]
        if bb.numel() == 0:
            continue
        plain, each = _each_constraint(w[bb, rr], b[bb, rr], mass[bb, rr], lo[bb], hi[bb], a[bb], c[bb], p)
        if owner is None:
            best = torch.maximum(plain, each.amax(1))
        else:
            best = torch.full_like(plain, torch.inf)
            for g in range(n_groups):
                mine = torch.where((owner == g).unsqueeze(0), each, torch.full_like(each, -torch.inf))
                best = torch.minimum(best, torch.maximum(plain, mine.amax(1)))
        out[bb, rr] = best
    return out


def clip_unstable_rows(lin, lb: T, lo: T, hi: T, a: T, c: T, precision: Optional[Precision] = None,
                       groups: Optional[ConstraintGroups] = None) -> T:
    """Clipped lower bounds [B, R] of an intermediate CROWN chunk (rows +z_j then -z_j).

    Only neurons still unstable (lower < 0 < upper) are worth the sort; the others get
    -inf, as do entries whose constraints are all unused. A constraint set found empty
    (+inf) also becomes -inf: intervals cannot carry emptiness, the plain bound stays.
    """
    B, R = lb.shape
    if R % 2 or c.numel() == 0:
        return torch.full_like(lb, -torch.inf)
    r = R // 2
    unstable = (lb[:, :r] < 0) & (lb[:, r:] < 0)                   # lower < 0 < upper
    w = lin.A.detach().reshape(B, R, -1)
    v = min_under_constraints_at(LinearBounds(w, lin.bias.detach(), lin.mass.detach()), IntervalBounds(lo, hi), a, c,
                                 torch.cat([unstable, unstable], 1), precision=precision, groups=groups)
    return torch.where(torch.isfinite(v), v, torch.full_like(v, -torch.inf))


class SplitClipper:
    """Relaxed clipping for one batch of activation-split domains.

    Holds the dict the bound computation fills with the split neurons' linear bounds
    (`split_linear`) and, called as the `clip` hook of `compute_bounds`, tightens each
    intermediate CROWN chunk with the constraints of the tensors bounded before it (those
    are valid on the domain, and the chunk's bounds are only needed on the domain).
    `final` does the same for the spec rows' bound. `k` constraints per domain.
    """

    def __init__(self, lo: T, hi: T, k: int = 4, intermediate: bool = True,
                 precision: Optional[Precision] = None) -> None:
        self.lo, self.hi = lo.reshape(lo.shape[0], -1), hi.reshape(hi.shape[0], -1)
        self.k, self.intermediate, self.precision = k, intermediate, precision
        self.split_linear: dict = {}
        self._cache: tuple[tuple, tuple[T, T]] = ((), (self.lo.new_zeros(0), self.lo.new_zeros(0)))

    def constraints(self) -> tuple[T, T]:
        key = tuple(k for k, v in self.split_linear.items() if v is not None)
        if key != self._cache[0]:
            self._cache = (key, split_constraints(list(self.split_linear.values()), self.lo, self.hi, self.k,
                                                  self.precision))
        return self._cache[1]

    def __call__(self, name: str, lin, lb: T) -> T:
        """Hook for `_crown_tensor`: rows are (+z_j, -z_j); only unstable neurons are clipped."""
        if not self.intermediate:
            return torch.full_like(lb, -torch.inf)
        a, c = self.constraints()
        return clip_unstable_rows(lin, lb, self.lo, self.hi, a, c, self.precision)

    def final(self, lin, lb: T) -> T:
        """max(lb, clipped bound) of the spec rows [B, S] from their LinearBounds `lin`."""
        a, c = self.constraints()
        if c.numel() == 0 or lin is None:
            return lb
        B, S = lb.shape
        w = lin.A.detach().reshape(B, S, -1)
        v = min_under_constraints_at(LinearBounds(w, lin.bias.detach(), lin.mass.detach()),
                                     IntervalBounds(self.lo, self.hi), a, c, torch.ones_like(lb, dtype=torch.bool),
                                     precision=self.precision)
        return torch.maximum(lb, v)


class ConstraintClipper:
    """Relaxed clipping of intermediate bounds with constraints known before bounding.

    In input split a child inherits its parent's constraints (every counterexample in
    the parent satisfies them, so every one in the child does). They tighten the
    child's intermediate CROWN bounds: those bounds are then valid on the points that
    can still be counterexamples, which is all a proof needs. With several
    conjunctions the counterexamples form a union over groups (`owner`, [K] long):
    the bound of a row is the smallest over groups of its best bound within the group,
    and a group without constraints leaves the plain bound.
    """

    def __init__(self, lo: T, hi: T, a: T, c: T, owner: T, n_groups: int,
                 precision: Optional[Precision] = None, tally: Optional[dict] = None) -> None:
        self.lo, self.hi = lo.reshape(lo.shape[0], -1), hi.reshape(hi.shape[0], -1)
        self.a, self.c, self.owner, self.n_groups, self.precision = a, c, owner, n_groups, precision
        self.tally = tally
        self.split_linear = None  # input split has no split neurons to collect (`ClipHook`)

    def __call__(self, name: str, lin, lb: T) -> T:
        groups = None if self.n_groups == 1 else ConstraintGroups(self.owner, self.n_groups)
        v = clip_unstable_rows(lin, lb, self.lo, self.hi, self.a, self.c, self.precision, groups)
        if self.tally is not None:  # how often clipping helps: the search may stop paying for it
            r = lb.shape[1] // 2
            self.tally["seen"] = self.tally.get("seen", 0) + 2 * int(((lb[:, :r] < 0) & (lb[:, r:] < 0)).sum())
            self.tally["tightened"] = self.tally.get("tightened", 0) + int((v > lb).sum())
        return v
