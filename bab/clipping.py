"""Domain clipping: shrink boxes and tighten bounds with linear constraints over the input.

"Clip-and-Verify: Linear Constraint-Driven Domain Clipping for Accelerating Neural
Network Verification". Bound propagation hands us, besides the bounds themselves, linear
functions of the input that every *relevant* input must keep non-positive: if a spec
row's linear lower bound is positive at x, x is no counterexample, so the unproved part
of a domain satisfies `a^T x + c <= 0`. Two uses:

1. Relaxed clipping (`clip_box`): replace the box by the box hull of
   `{x in box : a_k^T x + c_k <= 0 for all k}`. Branch and bound then bisects a smaller
   box, and the next bound computation (whose relaxations depend on the box) is tighter.
2. Complete clipping (`min_under_constraint`): concretise a linear bound `w^T x + b` over
   the box *and* one constraint, exactly, through the one-dimensional Lagrangian dual;
   `min_under_all_constraints` uses all constraints jointly (coordinate ascent on the
   K-multiplier dual, each step the exact 1-D method). The hooks `SplitClipper`
   (activation split) and `ConstraintClipper` (input split, inherited constraints), in
   `bab/clip_hooks.py`,
   apply it to the intermediate bounds of a CROWN pass.

(The paper's names, and DESIGN.md's. The config key `bab.relaxed_clip`, older than this
naming, turns on the second in activation split: the split neurons' linear bounds are
the constraints there.)

Everything here is a pure, batched torch function (any device, float32 or float64) with
no solver and no Python loop over input dimensions. Loops run only over the (few)
constraints and over rounds.

Rounding. Results must hold in exact arithmetic for the real numbers the inputs stand
for. Every computed bound is widened outward by `Precision` (relative to the sum of
absolute values of the terms that were added, plus an absolute part), the same rule as
`relaxations.bounds.widen_lower`: a clipped box only ever contains more than the exact
hull, a concretised bound is only ever lower than the exact minimum, and a domain is
declared empty only when the constraint's minimum over the box exceeds its margin.

Constraints with a non-finite coefficient or constant (nan, inf) are ignored: dropping
a constraint only enlarges the feasible set, so that is always sound. Boxes must be
finite with lo <= hi (zero-width dimensions are fine).
"""
from __future__ import annotations

from typing import Optional

import torch

from relaxations.bounds import IntervalBounds, LinearBounds, Precision

__all__ = [
    "clip_box_one",
    "clip_box",
    "clip_box_union",
    "min_under_constraint",
    "min_under_constraints",
    "min_under_all_constraints",
    "min_under_region",
    "hull_under_constraints",
    "constraint_from_lower_bound",
    "row_constraints",
    "constraints_from_rows",
    "constraints_from_splits",
]

T = torch.Tensor


def _precision(dtype: torch.dtype, precision: Optional[Precision]) -> Precision:
    return precision if precision is not None else Precision.for_dtype(dtype)


def _infeasible(a: T, c: T, lo: T, hi: T, p: Precision) -> T:
    """Whether `a^T x + c <= 0` has no point in the box, beyond its rounding margin.

    a, lo, hi broadcast over the last dim ([..., n]), c to the rest. The constraint's
    minimum over the box must exceed `rel * (sum |a_i| max(|lo_i|, |hi_i|) + |c|) + abs`:
    only then is the set empty whatever the rounding of the sum.
    """
    amin = torch.minimum(a * lo, a * hi).sum(-1)
    tol = p.margin((a.abs() * torch.maximum(lo.abs(), hi.abs())).sum(-1) + c.abs())
    return amin + c > tol


def _sanitise(a: T, c: T, active: Optional[T] = None) -> tuple[T, T, T]:
    """Replace unusable constraints (non-finite, or inactive) by `0 . x + 0 <= 0`, which
    every point satisfies and which clips nothing. Returns (a, c, usable)."""
    usable = torch.isfinite(a).all(-1) & torch.isfinite(c)
    if active is not None:
        usable = usable & active
    a = torch.where(usable.unsqueeze(-1), a, torch.zeros_like(a))
    c = torch.where(usable, c, torch.zeros_like(c))
    return a, c, usable


# --------------------------------------------------------------------------- relaxed clipping (the box)


def clip_box_one(lo: T, hi: T, a: T, c: T, precision: Optional[Precision] = None) -> tuple[T, T, T]:
    """Box hull of `{x in [lo, hi] : a^T x + c <= 0}`, closed form, widened for rounding.

    lo, hi, a: [N, n]; c: [N]. Returns (new_lo, new_hi, empty [N] bool).

    Why it is exact: let m_i = min(a_i lo_i, a_i hi_i) and m = sum_i m_i (the minimum of
    a^T x over the box). A feasible x has a_i x_i <= -c - sum_{j != i} a_j x_j
    <= -c - (m - m_i) =: r_i, and the other coordinates can sit at their minimising
    corner, so r_i is attained. Hence x_i <= r_i / a_i when a_i > 0, x_i >= r_i / a_i
    when a_i < 0, and nothing changes when a_i = 0 (nor on the other side, which the
    minimising corner leaves free). The set is empty iff m + c > 0.

    Rounding: r_i is computed with `tol = rel * (sum |a_j| max(|lo_j|,|hi_j|) + |c|) + abs`
    added (it covers the rounding of the sum), the quotient is widened by a relative and
    absolute margin, and the result is clamped into [lo, hi] on both sides, so the new box
    is never empty unless `empty` is set (then the input box is returned unchanged).
    """
    p = _precision(lo.dtype, precision)
    prod_lo, prod_hi = a * lo, a * hi
    amin = torch.minimum(prod_lo, prod_hi)                               # [N, n]
    mag = torch.maximum(lo.abs(), hi.abs())
    tol = p.margin((a.abs() * mag).sum(-1) + c.abs())          # [N]
    slack = -c - amin.sum(-1)                                            # >= 0 iff feasible
    empty = slack < -tol
    r = (slack + tol).unsqueeze(-1) + amin                               # bound on a_i x_i
    pos, neg = a > 0, a < 0
    safe_a = torch.where(pos | neg, a, torch.ones_like(a))
    t = r / safe_a
    widen = p.margin(t)
    cand_hi = torch.minimum(hi, torch.maximum(t + widen, lo))
    cand_lo = torch.maximum(lo, torch.minimum(t - widen, hi))
    new_hi = torch.where(pos, cand_hi, hi)
    new_lo = torch.where(neg, cand_lo, lo)
    keep = empty.unsqueeze(-1)
    return torch.where(keep, lo, new_lo), torch.where(keep, hi, new_hi), empty


def clip_box(lo: T, hi: T, a: T, c: T, rounds: int = 3, active: Optional[T] = None,
             precision: Optional[Precision] = None) -> tuple[T, T, T]:
    """Box containing `{x in [lo, hi] : a_k^T x + c_k <= 0 for every k}`, and emptiness.

    lo, hi: [N, n]; a: [N, K, n]; c: [N, K]; active: optional [N, K] or [K] bool mask of the
    constraints to use. Returns (new_lo, new_hi, empty [N] bool).

    The exact box hull of an intersection of half-spaces with a box is an LP per bound;
    instead each constraint's closed-form clip (`clip_box_one`) is applied in turn
    (Gauss-Seidel) for `rounds` sweeps. Every step keeps every point that satisfies all
    constraints, so the result is a SUPERSET of the exact hull (equal to it for K = 1; for
    K > 1 usually close after two or three sweeps, since a shrunk box lets the other
    constraints clip further). `empty` is sound: a constraint that cannot be met in a box
    that contains every feasible point proves there is none.
    """
    N, K = c.shape
    if active is not None and active.dim() == 1:
        active = active.unsqueeze(0).expand(N, K)
    a, c, _ = _sanitise(a, c, active)
    empty = torch.zeros(N, dtype=torch.bool, device=lo.device)
    for _ in range(rounds if K > 1 else K):        # one constraint: exact after one clip
        for k in range(K):
            lo, hi, e = clip_box_one(lo, hi, a[:, k], c[:, k], precision)
            empty = empty | e
    return lo, hi, empty


def clip_box_union(lo: T, hi: T, a: T, c: T, owner: T, n_groups: int, rounds: int = 3,
                   precision: Optional[Precision] = None) -> tuple[T, T, T]:
    """Box containing the UNION over groups g of `{x in box : constraints of group g}`.

    For a disjunction of conjunctions (several ways to be a counterexample) the relevant
    set is a union; its box hull is the hull of the per-group clipped boxes, skipping the
    groups proved empty. owner: [K] long, the group of each constraint. A group with no
    constraint keeps the whole box. Empty iff every group is empty.
    """
    N = lo.shape[0]
    new_lo = torch.full_like(lo, torch.inf)
    new_hi = torch.full_like(hi, -torch.inf)
    all_empty = torch.ones(N, dtype=torch.bool, device=lo.device)
    for g in range(n_groups):
        mine = owner == g                          # only the group's constraints: no masked no-op clips
        glo, ghi, e = clip_box(lo, hi, a[:, mine], c[:, mine], rounds, None, precision)
        live = (~e).unsqueeze(-1)
        new_lo = torch.where(live, torch.minimum(new_lo, glo), new_lo)
        new_hi = torch.where(live, torch.maximum(new_hi, ghi), new_hi)
        all_empty = all_empty & e
    keep = all_empty.unsqueeze(-1)
    return torch.where(keep, lo, new_lo), torch.where(keep, hi, new_hi), all_empty


# --------------------------------------------------------------------------- complete clipping (concretisation)


def _box_min(coef: T, lo: T, hi: T) -> T:
    """sum_i min(coef_i lo_i, coef_i hi_i) over the last dim; coef [n_, M, n], lo/hi [n_, 1, n]."""
    return torch.minimum(coef * lo, coef * hi).sum(-1)


def _best_lambda(w: T, lo3: T, hi3: T, a3: T, c: T) -> T:
    """Maximiser lambda* >= 0 of the one-dimensional dual (see `min_under_constraint`), [N, M].

    w: [N, M, n]; lo3, hi3: [N, 1, n]; a3: [N, 1 or M, n]; c: [N, 1 or M] (one constraint
    for all rows, or one per row). Only the choice of lambda happens here;
    its value is evaluated (with rounding margins) by the caller, and any lambda >= 0
    gives a valid bound, so rounding in this search costs tightness, never soundness.
    """
    # Breakpoints: w_i + lambda a_i changes sign at lambda_i = -w_i / a_i, relevant when > 0.
    is_bp = (w * a3) < 0
    safe_a = torch.where(a3 != 0, a3, torch.ones_like(a3))
    bp = torch.where(is_bp, -w / safe_a, torch.full_like(w, torch.inf))
    # Slope of g just right of 0: c + sum_i a_i x_i*, x_i* the box corner minimising
    # (w_i + 0+ a_i) x_i; for w_i = 0 the sign is a_i's (contribution min(a_i lo, a_i hi)).
    sgn = torch.where(w != 0, w, a3)
    x0 = torch.where(sgn > 0, lo3, hi3)
    s0 = c + (a3 * x0).sum(-1)                                            # [N, M]
    # Passing breakpoint i flips x_i* to the other end: the slope drops by |a_i| width_i.
    drop = torch.where(is_bp, (a3.abs() * (hi3 - lo3)).expand_as(w), torch.zeros_like(w))
    bp_sorted, order = bp.sort(-1)
    cum = drop.gather(-1, order).cumsum(-1)
    # lambda* = first breakpoint after which the slope is <= 0 (0 when it already is).
    k = (cum < s0.unsqueeze(-1)).sum(-1, keepdim=True)
    n = w.shape[-1]
    lam = bp_sorted.gather(-1, k.clamp(max=n - 1)).squeeze(-1)
    # Slope still positive after every breakpoint (infeasible, or borderline in floats):
    # g is increasing to the end; the last finite breakpoint is as good as any point.
    last = torch.where(torch.isfinite(bp_sorted), bp_sorted, torch.zeros_like(bp_sorted)).amax(-1)
    lam = torch.where((k.squeeze(-1) >= n) | ~torch.isfinite(lam), last, lam)
    return torch.where(s0 <= 0, torch.zeros_like(lam), lam)


def _dual_value(objective: LinearBounds, box3: IntervalBounds, coef: T, lam_c: T, lam_mass: T, p: Precision) -> T:
    """Sound value of the Lagrangian `b + lambda . c + min_box coef^T x`, widened, [N, M].

    objective: w (A), b (bias) and b's rounding mass; box3: lo, hi [N, 1, n].
    coef = w + sum_k lambda_k a_k as computed in floats; lam_mass [N, M, n] bounds
    sum_k lambda_k |a_k| elementwise and lam_c.abs() the constant terms, so the margin
    covers the rounding of the products, of coef itself and of the sums.
    """
    w, b, extra_mass, lo3, hi3 = objective.A, objective.bias, objective.mass, box3.lower, box3.upper
    mag3 = torch.maximum(lo3.abs(), hi3.abs())
    g = b + lam_c + _box_min(coef, lo3, hi3)
    mass = b.abs() + lam_c.abs() + ((w.abs() + lam_mass) * mag3).sum(-1) + extra_mass
    return g - p.margin(mass)


def _min_under_one_chunk(w: T, b: T, lo: T, hi: T, a: T, c: T, extra_mass: T, p: Precision) -> T:
    """`min_under_constraint` on one chunk of rows (see there)."""
    lo3, hi3, a3 = lo.unsqueeze(1), hi.unsqueeze(1), a.unsqueeze(1)     # [N, 1, n]
    # lambda = 0: the plain box concretisation, kept as a floor (the dual optimum is never
    # below it in exact arithmetic; in floats this guards against a badly rounded lambda*).
    zero = torch.zeros_like(b)
    objective, box3 = LinearBounds(w, b, extra_mass), IntervalBounds(lo3, hi3)
    g0 = _dual_value(objective, box3, w, zero, torch.zeros_like(w), p)
    lam = _best_lambda(w, lo3, hi3, a3, c.unsqueeze(1))
    lam3 = lam.unsqueeze(-1)
    g = _dual_value(objective, box3, w + lam3 * a3, lam * c.unsqueeze(1), lam3 * a3.abs(), p)
    return torch.maximum(g0, g)


def min_under_constraint(objective: LinearBounds, box: IntervalBounds, a: T, c: T,
                         precision: Optional[Precision] = None, max_elements: int = 1 << 24) -> T:
    """Sound lower bound of `min { w_m^T x + b_m : x in [lo, hi], a^T x + c <= 0 }`, [N, M].

    objective: w [N, M, n] (A), b [N, M] (bias) and the rounding mass [N, M] already
    carried by b (zeros when none), added to the margin; box: lo, hi [N, n]; a: [N, n];
    c: [N].

    Method (exact up to rounding, by LP duality; strong duality holds as the feasible set
    is a polytope): the Lagrangian dual is `max_{lambda >= 0} g(lambda)` with
    `g(lambda) = b + lambda c + sum_i min over [lo_i, hi_i] of (w_i + lambda a_i) x_i`,
    concave and piecewise linear, with kinks at lambda_i = -w_i / a_i where positive. Its
    right slope at 0 is `c + sum_i a_i x_i*`, x_i* the corner minimising the objective,
    and each kink lowers the slope by |a_i| (hi_i - lo_i). Sorting the kinks and a cumsum
    give the first kink where the slope turns non-positive: that is lambda*, and g there
    is returned. g(lambda) is a valid bound for ANY lambda >= 0 (weak duality), so a
    lambda* that rounding put slightly off costs tightness, never soundness; the result
    is widened by rel * (sum of absolute terms) + abs and is never below the plain box
    bound g(0).

    Empty feasible set: when the constraint cannot be met in the box (its minimum over
    the box exceeds its rounding margin) the minimum over the empty set is +inf and +inf
    is returned: any claim about no point is vacuously true, so the caller may treat the
    domain as proved.

    Memory: temporaries of size N*M*n; rows are processed in chunks of at most
    `max_elements` elements.
    """
    w, b, extra, lo, hi = objective.A, objective.bias, objective.mass, box.lower, box.upper
    p = _precision(w.dtype, precision)
    N, M, n = w.shape
    a, c, _ = _sanitise(a, c)
    infeasible = _infeasible(a, c, lo, hi, p)                             # [N]
    step = max(1, max_elements // max(1, M * n))
    parts = [_min_under_one_chunk(w[s:s + step], b[s:s + step], lo[s:s + step], hi[s:s + step],
                                  a[s:s + step], c[s:s + step], extra[s:s + step], p)
             for s in range(0, N, step)]
    out = torch.cat(parts) if parts else b.new_zeros(0, M)
    return torch.where(infeasible.unsqueeze(1), torch.full_like(out, torch.inf), out)


def _box_bound(w: T, b: T, lo: T, hi: T, extra_mass: T, p: Precision) -> T:
    """Plain sound minimum of w^T x + b over the box, [N, M] (no constraint)."""
    # The same sum as `_dual_value` at lambda = 0 (not `relaxations.bounds.concretize`,
    # whose centre-radius form rounds differently): the two must agree to the bit.
    lo3, hi3 = lo.unsqueeze(1), hi.unsqueeze(1)
    mass = b.abs() + (w.abs() * torch.maximum(lo3.abs(), hi3.abs())).sum(-1) + extra_mass
    return b + _box_min(w, lo3, hi3) - p.margin(mass)


def min_under_constraints(objective: LinearBounds, box: IntervalBounds, a: T, c: T, allowed: Optional[T] = None,
                          precision: Optional[Precision] = None, max_elements: int = 1 << 24) -> T:
    """Best single-constraint bound over K constraints: a [N, K, n], c [N, K] -> [N, M].

    Sound because `{box, all K constraints}` is a subset of `{box, constraint k}` for each
    k, so each single-constraint minimum is a lower bound of the minimum over the
    intersection; taking the largest is still one. Not exact for K > 1 (that needs a
    K-dimensional dual). Never below the plain box bound.

    allowed: optional [M, K] bool, which constraints may be used for which objective row.
    Needed when the constraints do not all hold on the same set, e.g. spec rows of several
    conjunctions: row s may only be tightened with constraints of its own conjunction
    (`allowed = owner[:, None] == owner[None, :]`).
    """
    w, b, extra, lo, hi = objective.A, objective.bias, objective.mass, box.lower, box.upper
    p = _precision(w.dtype, precision)
    best = _box_bound(w, b, lo, hi, extra, p)
    for k in range(c.shape[1]):
        rows = None if allowed is None else allowed[:, k]
        if rows is not None and not bool(rows.any()):
            continue
        v = min_under_constraint(objective, box, a[:, k], c[:, k], precision, max_elements)
        if rows is not None:
            v = torch.where(rows.unsqueeze(0), v, torch.full_like(v, -torch.inf))
        best = torch.maximum(best, v)
    return best


def min_under_all_constraints(objective: LinearBounds, box: IntervalBounds, a: T, c: T, allowed: Optional[T] = None,
                              sweeps: int = 2, precision: Optional[Precision] = None,
                              max_elements: int = 1 << 24) -> T:
    """Sound lower bound of `min { w_m^T x + b_m : x in box, a_k^T x + c_k <= 0 for every k }`.

    Shapes as in `min_under_constraints`. Unlike it (the best single constraint), this
    uses the constraints jointly: the Lagrangian dual `max_{lambda >= 0} b + lambda . c +
    min_box (w + sum_k lambda_k a_k)^T x` is concave, and coordinate ascent maximises it
    one multiplier at a time, each step solved exactly by the sorted-breakpoint method
    with the other multipliers folded into the objective (the "complete clipping" of
    Clip-and-Verify). Every lambda >= 0 gives a valid bound (weak duality), so stopping
    after `sweeps` sweeps costs tightness only; the value is evaluated once at the end
    with the rounding margin of `min_under_constraint` and is never below the plain box
    bound. `allowed` [M, K] keeps lambda_k = 0 for constraints a row may not use.
    """
    w, b, extra, lo, hi = objective.A, objective.bias, objective.mass, box.lower, box.upper
    p = _precision(w.dtype, precision)
    N, M, n = w.shape
    K = c.shape[1]
    a, c, _ = _sanitise(a, c)
    step = max(1, max_elements // max(1, M * max(n, K)))
    parts = []
    for s in range(0, N, step):
        ws, bs, ls, hs = w[s:s + step], b[s:s + step], lo[s:s + step].unsqueeze(1), hi[s:s + step].unsqueeze(1)
        As, cs = a[s:s + step], c[s:s + step]
        part, box3 = LinearBounds(ws, bs, extra[s:s + step]), IntervalBounds(ls, hs)
        best = _dual_value(part, box3, ws, torch.zeros_like(bs), torch.zeros_like(ws), p)
        if K:
            lam = ws.new_zeros(ws.shape[0], M, K)
            coef = ws.clone()
            for _ in range(sweeps):
                for k in range(K):
                    a3 = As[:, k:k + 1]                                      # [N, 1, n]
                    wk = coef - lam[..., k:k + 1] * a3
                    lk = _best_lambda(wk, ls, hs, a3, cs[:, k:k + 1])
                    if allowed is not None:
                        lk = torch.where(allowed[:, k].unsqueeze(0), lk, torch.zeros_like(lk))
                    lam[..., k] = lk
                    coef = wk + lk.unsqueeze(-1) * a3
            coef = ws + lam @ As                                             # fresh, one rounding
            g = _dual_value(part, box3, coef, (lam * cs.unsqueeze(1)).sum(-1), lam @ As.abs(), p)
            best = torch.maximum(best, g)
        parts.append(best)
    return torch.cat(parts) if parts else b.new_zeros(0, M)


def min_under_region(objective: LinearBounds, box: IntervalBounds, a: T, c: T,
                     precision: Optional[Precision] = None) -> T:
    """Sound lower bound [N, S] of each row of a linear bound (A [N, S, *shape], bias, mass
    [N, S]) over each box ([N, *shape]) cut by a region's rows `a x + c <= 0` (a [K, n],
    c [K], shared by every box and usable by every row): `min_under_all_constraints`, and
    +inf on a box where some row has no point at all (beyond its rounding margin): no
    counterexample lies there, so every claim about it holds."""
    N, S = objective.bias.shape
    K = c.shape[0]
    flat = IntervalBounds(box.lower.reshape(N, -1), box.upper.reshape(N, -1))
    objective = LinearBounds(objective.A.detach().reshape(N, S, -1), objective.bias.detach(),
                             objective.mass.detach())
    p = _precision(objective.A.dtype, precision)
    a, c, _ = _sanitise(a.expand(N, K, -1), c.expand(N, K))
    out = min_under_all_constraints(objective, flat, a, c, precision=p)
    empty = _infeasible(a, c, flat.lower.unsqueeze(1), flat.upper.unsqueeze(1), p).any(1)
    return torch.where(empty.unsqueeze(1), torch.full_like(out, torch.inf), out)


def hull_under_constraints(lo: T, hi: T, a: T, c: T, sweeps: int = 2, precision: Optional[Precision] = None
                           ) -> tuple[T, T, T]:
    """Box containing `{x in box : all constraints}`: each coordinate's min and max by the
    joint dual (`min_under_all_constraints` with objectives +x_i and -x_i), [N, n] x 2 and
    empty [N]. Tighter than `clip_box`'s sequential clips when no single constraint
    decides a coordinate; the set is empty when some coordinate's bounds cross."""
    N, n = lo.shape
    eye = torch.eye(n, dtype=lo.dtype, device=lo.device)
    w = torch.cat([eye, -eye]).unsqueeze(0).expand(N, 2 * n, n)
    zero = lo.new_zeros(N, 2 * n)                  # no constant, hence no rounding mass either
    v = min_under_all_constraints(LinearBounds(w, zero, zero), IntervalBounds(lo, hi), a, c, sweeps=sweeps,
                                  precision=precision)
    new_lo, new_hi = torch.maximum(lo, v[:, :n]), torch.minimum(hi, -v[:, n:])
    empty = (new_lo > new_hi).any(1)
    keep = empty.unsqueeze(-1)
    return torch.where(keep, lo, new_lo), torch.where(keep, hi, new_hi), empty


# --------------------------------------------------------------------------- where constraints come from


def constraint_from_lower_bound(A: T, bias: T, lo: T, hi: T, mass: Optional[T] = None,
                                precision: Optional[Precision] = None) -> tuple[T, T]:
    """Constraints `a^T x + c <= 0` from linear lower bounds of quantities known to be <= 0.

    If q_k(x) <= 0 for every relevant x and `A_k x + bias_k <= q_k(x)` on the box (a lower
    bound from bound propagation, computed in floats with rounding mass `mass`), then
    every relevant x satisfies `A_k x + bias_k - margin_k <= 0`, with margin_k the same
    outward margin `LinearBounds.concretize` uses: rel * (sum |A_k| max(|lo|,|hi|) + mass)
    + abs. A: [N, K, n]; bias, mass: [N, K]; lo, hi: [N, n], the box on which the linear
    bound is valid (the constraint may then be used on any sub-box). Returns (a, c).
    """
    p = _precision(A.dtype, precision)
    mag = torch.maximum(lo.abs(), hi.abs()).unsqueeze(1)
    m = (A.abs() * mag).sum(-1) + bias.abs()
    if mass is not None:
        m = m + mass
    return A, bias - p.margin(m)


def row_constraints(A: T, bias: T, d: T, *, lo: T, hi: T, mass: Optional[T] = None,
                    precision: Optional[Precision] = None) -> tuple[T, T]:
    """One constraint per spec row, `A_s x + bias_s - d_s - margin <= 0`: (a [N,S,n], c [N,S]).

    Row s's constraint holds for every counterexample OF ROW s's CONJUNCTION only (see
    `constraints_from_rows`). Use it with `clip_box_union(..., owner, n_conj)` or with
    `min_under_constraints(..., allowed=owner[:, None] == owner[None, :])`.
    """
    N, S, n = A.shape
    d = d.to(bias.dtype).reshape(1, S)
    extra = d.abs().expand(N, S)                # the subtraction bias - d rounds too
    extra = extra if mass is None else extra + mass
    return constraint_from_lower_bound(A, bias - d, lo, hi, extra, precision)


def constraints_from_rows(A: T, bias: T, d: T, owner: T, n_conj: int, *, box: IntervalBounds,
                          mass: Optional[T] = None, precision: Optional[Precision] = None) -> tuple[T, T]:
    """Constraints that every counterexample in a domain satisfies, from the spec rows' bounds.

    A: [N, S, n], bias: [N, S]: the linear lower bound `A_s x + bias_s <= C_s y(x)` over
    the box [lo, hi] = `box` (`BoundResult.linear`, flattened); d: [S] the right-hand sides;
    owner: [S] the conjunction of each row. A counterexample of conjunction j satisfies
    `C_s y - d_s <= 0` for all its rows s (for strict rows even < 0), hence
    `A_s x + bias_s - d_s <= 0`.

    Only valid as a conjunction of constraints when n_conj == 1: then every row gives one
    and (a, c) has K = S. With several conjunctions the counterexamples form a UNION of
    such sets, which no conjunction of constraints describes; the hull-safe answer is no
    constraint at all (K = 0). Use `constraint_from_lower_bound` per row with
    `clip_box_union(..., owner, n_conj)` to clip against the union instead.
    """
    N, S, n = A.shape
    if n_conj != 1:
        return A.new_zeros(N, 0, n), bias.new_zeros(N, 0)
    return row_constraints(A, bias, d, lo=box.lower, hi=box.upper, mass=mass, precision=precision)


def constraints_from_splits(A: T, bias: T, lo: T, hi: T, mass: Optional[T] = None,
                            precision: Optional[Precision] = None) -> tuple[T, T]:
    """Constraints from activation splits: A, bias [N, K, n], [N, K] -> (a, c).

    A split decision `z_k >= 0` (sign +1) or `z_k <= 0` (sign -1) says that `-sign_k z_k`
    is <= 0 on the whole domain. Pass the LINEAR LOWER bound of `-sign_k z_k` over the
    input box (for z >= 0: minus z's linear upper bound; for z <= 0: z's linear lower
    bound), e.g. from `backward_lower` with the row `-sign_k e_k` at z's tensor. Then
    `A_k x + bias_k <= -sign_k z_k(x) <= 0` for every input of the domain, which is the
    constraint (with the rounding margin of `constraint_from_lower_bound`).
    """
    return constraint_from_lower_bound(A, bias, lo, hi, mass, precision)
