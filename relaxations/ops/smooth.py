"""Bounding rules for smooth elementwise ops: Sigmoid, Tanh, Exp, Log, Sqrt, Reciprocal.

Every relaxation line here is built as "a slope k, then the exact supporting bias for
that slope": the tightest bias is min (or max) over [l, u] of f(x) - k x, attained at
an endpoint or at a critical point f'(x) = k, and we evaluate f(x) - k x at all of
those candidates (any extra candidate inside [l, u] is harmless: it can only move the
line outward). Soundness therefore never rests on how accurately a tangent point was
found (bisection only decides which slope CROWN prefers); it rests on knowing the
critical points, which for convex/concave pieces is the tangent point itself and for
S-shaped functions comes from a closed-form inverse of f'.

Alpha (one value per element and spec row) is a normalised tangent-point position in
[0, 1]. Only one of the two lines is ever used per (row, element) by the backward
pass (the sign of the coefficient picks it), so both lines share the parameter:
- single-curvature intervals: tangent point t = l + alpha (u - l), CROWN init 0.5
  (convex and concave functions);
- S-shaped functions over an interval containing the inflection point: t = d + alpha
  (end - d), where d is the tangent point whose line passes through the opposite
  endpoint (the CROWN paper's choice, alpha 0) and end the near endpoint (the
  flattest tangent, alpha 1); init 0.5, halfway (`S_CROSSING_INIT`). On one side of the
  inflection point the init leans to the flat end (`S_FLAT_LEAN`).
Anything non-finite (a box reaching +-inf, an overflowing tangent) falls back to the
constant lines of the exact interval; if that is infinite too, a ValueError says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from models import Node
from relaxations.bounds import IntervalBounds
from relaxations.ops.common import Ins
from relaxations.registry import OpRule, Relaxation, register_rule, slope

__all__ = ["register", "finish", "curved", "s_shape", "s_points", "SPoints", "SLACK_ULPS", "unstable_if_wide",
           "half_alpha", "bisect", "extremum", "S_LR_SCALE", "S_CROSSING_INIT", "S_FLAT_LEAN", "implicit_root"]

T = torch.Tensor
Fn = Callable[[T], T]

# Outward slack in units of the dtype's epsilon, times the size of the line's terms:
# absorbs the few-ulp error of torch's transcendental functions and of the bias sum.
SLACK_ULPS = 8.0
_BISECT_STEPS = 30
# alpha-CROWN's step size for S-shaped tangent points, relative to `bounds.alpha_lr` (0.25,
# tuned on ReLU slopes): eran's 6x200 sigmoid net, root bound's worst gap after 20 steps,
# mnist idx 3029: -2.15 at 0.25, -0.36 at 0.1, -0.25 at 0.05; idx 7903: -3.2, -2.0, -1.75.
S_LR_SCALE = 0.2
# Where an S-shape's tangents start on an interval that contains the inflection point: 0
# is the tangent whose line passes through the opposite end (the CROWN paper's, the
# steepest valid slope), 1 the near end's tangent (the flattest). Through several
# sigmoid layers the steep lines compound and halfway is far tighter than either end
# (BENCHMARKS.md, "S-shaped tangents start halfway").
S_CROSSING_INIT = 0.5
# On an interval on one side of the inflection point the tangent point starts this far
# from the steep end towards the flat one (0.5: the midpoint, the least-area tangent);
# leaning flat is tighter through several layers, for the same reason.
S_FLAT_LEAN = 0.75


def _finite(x: T) -> T:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


# What a runtime's float computation of an op may miss by, beyond SLACK_ULPS of the value
# and of the slope times |x|, in eps of the dtype: where the true value is tiny and the
# runtime's formula cancels (a sigmoid's tail computed from 0.5 tanh(x / 2) + 0.5, so its
# error is an ulp of 1, not of the value). onnxruntime's float32 Sigmoid was measured at
# 1.26 eps on [-90, 90] (the shapes it vectorises and the single-element one).
SIGMOID_RUNTIME_EPS = 2.0


def finish(op: str, l: T, u: T, lower: tuple[T, T], upper: tuple[T, T], lo_c: T, hi_c: T,
           runtime: float | T = 0.0) -> Relaxation:
    """Sanitise two lines and widen them by a rounding slack.

    Elements with a zero-width, infinite or unusable (non-finite) line get the constant
    line of the interval [lo_c, hi_c] (exact for zero width). Where that constant is not
    finite either, no finite linear bound exists (the op is unbounded, undefined or
    overflows on the element's interval): the line keeps a bias of -inf (lower) or +inf
    (upper), and CROWN bounds that element by its output interval instead
    (`crown.PartialRelaxation`); callers without such a fallback refuse it
    (`registry.finite_relaxation`).

    The slack is SLACK_ULPS of the bias and of the slope times max(|l|, |u|), plus
    `runtime`, an absolute allowance for how far the runtime's own evaluation of the op
    may be from the real function where that error does not scale with the value (an op
    whose formula cancels: Sigmoid's tail, Elu near 0, Gelu's negative tail).
    """
    ls, lb = lower
    us, ub = upper
    box_ok = torch.isfinite(l) & torch.isfinite(u) & (u > l)
    ok_lo = box_ok & torch.isfinite(ls) & torch.isfinite(lb)
    ok_up = box_ok & torch.isfinite(us) & torch.isfinite(ub)
    zero = torch.zeros((), dtype=l.dtype, device=l.device)
    ls = torch.where(ok_lo, ls, zero)
    lb = torch.where(ok_lo, lb, torch.nan_to_num(lo_c, nan=-torch.inf))
    us = torch.where(ok_up, us, zero)
    ub = torch.where(ok_up, ub, torch.nan_to_num(hi_c, nan=torch.inf))
    m = _finite(torch.maximum(l.abs(), u.abs()))
    eps = SLACK_ULPS * torch.finfo(l.dtype).eps
    tiny = torch.finfo(l.dtype).tiny
    lb = lb - (eps * (lb.abs() + ls.abs() * m) + tiny + runtime)
    ub = ub + (eps * (ub.abs() + us.abs() * m) + tiny + runtime)
    return Relaxation(ls, lb, us, ub)


def _safe_box(l: T, u: T) -> tuple[T, T]:
    """Finite stand-ins for l, u (elements with infinite ends use constants later)."""
    ok = torch.isfinite(l) & torch.isfinite(u)
    z = torch.zeros_like(l)
    return torch.where(ok, l, z), torch.where(ok, u, z)


def _chord_slope(fl: T, fu: T, l: T, u: T) -> T:
    wide = u > l
    return torch.where(wide, (fu - fl) / torch.where(wide, u - l, torch.ones_like(u)), torch.zeros_like(u))


def curved(f: Fn, df: Fn, l: T, u: T, t: T, convex: T | bool) -> tuple[tuple[T, T], tuple[T, T]]:
    """Tangent at t on the inner side, chord on the outer side, for f convex (or concave) on [l, u].

    Both biases are exact supports for their slopes: the chord's over the endpoints
    (where a convex function's f(x) - k x peaks), the tangent's over {t, l, u}.
    """
    fl, fu, ft, kt = f(l), f(u), f(t), df(t)
    kc = _chord_slope(fl, fu, l, u)
    chord_hi = torch.maximum(fl - kc * l, fu - kc * u)
    chord_lo = torch.minimum(fl - kc * l, fu - kc * u)
    cand = (ft - kt * t, fl - kt * l, fu - kt * u)
    tan_lo = torch.minimum(torch.minimum(cand[0], cand[1]), cand[2])
    tan_hi = torch.maximum(torch.maximum(cand[0], cand[1]), cand[2])
    convex = torch.as_tensor(convex, device=l.device)
    lower = (torch.where(convex, kt, kc), torch.where(convex, tan_lo, chord_lo))
    upper = (torch.where(convex, kc, kt), torch.where(convex, chord_hi, tan_hi))
    return lower, upper


def half_alpha(node: Node, l: T, u: T, consts: Sequence) -> T:
    """CROWN's tangent point for single-curvature pieces: the midpoint."""
    return torch.full_like(l, 0.5)


def _unit_bounds(node: Node, l: T, u: T, consts: Sequence) -> tuple[T, T]:
    return torch.zeros_like(l), torch.ones_like(l)


def unstable_if_wide(node: Node, l: T, u: T, consts: Sequence) -> T:
    """A smooth nonlinear function is relaxed exactly only on a zero-width interval."""
    return u > l


# ---------------------------------------------------------------- S-shaped functions

def bisect(h: Callable[[T], T], lo: T, hi: T, steps: int = _BISECT_STEPS) -> tuple[T, T]:
    """Shrink [lo, hi] around the sign change of an increasing h (h(lo) <= 0 < h(hi)):
    hi moves to the midpoint where h > 0 there, lo elsewhere (nan included)."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        up = h(mid) > 0
        hi = torch.where(up, mid, hi)
        lo = torch.where(up, lo, mid)
    return lo, hi


def _s_points(f: Fn, df: Fn, l: T, u: T, cap: Optional[float]) -> tuple[T, T, T, T]:
    """CROWN's tangent points for l < 0 < u: d_u >= 0 (tangent through (l, f(l))) and
    d_l <= 0 (through (u, f(u))), and whether the chord serves instead on each side."""
    fl, fu = f(l), f(u)

    def h_up(t: T) -> T:
        return f(t) + df(t) * (l - t) - fl

    def h_lo(t: T) -> T:
        return f(t) + df(t) * (u - t) - fu

    up_chord = h_up(u) <= 0
    lo_chord = h_lo(l) >= 0
    zero = torch.zeros_like(u)
    if cap is None:
        hi0, lo0 = u, l
        a_lo, a_hi = zero, u
        b_lo, b_hi = l, zero
    else:
        # The tangent points of a saturating function lie near 0: search a short bracket
        # first so that a huge |l| or |u| does not cost precision.
        hi0 = torch.clamp(u, max=cap)
        lo0 = torch.clamp(l, min=-cap)
        near_up = h_up(hi0) > 0
        near_lo = h_lo(lo0) < 0
        a_lo, a_hi = torch.where(near_up, zero, hi0), torch.where(near_up, hi0, u)
        b_lo, b_hi = torch.where(near_lo, lo0, l), torch.where(near_lo, zero, lo0)
    _, d_u = bisect(h_up, a_lo, a_hi)
    d_l, _ = bisect(h_lo, b_lo, b_hi)
    return implicit_root(h_up, d_u), implicit_root(h_lo, d_l), up_chord, lo_chord


def implicit_root(h: Callable[[T], T], root: T) -> T:
    """`root` (a bisection's, h(root) = 0 up to its resolution) with the gradient of the
    implicit function, d root = -(dh / h'(root)), where bisection's own is that of a
    dyadic average of its bracket's ends: wrong for alpha-CROWN, which moves l and u
    through h. The value is root's exactly (the correction is zero in value); only under
    autograd, and nothing where h' is not a usable number (an inflexion, nan)."""
    if not torch.is_grad_enabled():
        return root
    r0 = root.detach()
    moved = h(r0)
    if not moved.requires_grad:      # l and u are not under autograd: no derivative to carry
        return root
    with torch.enable_grad():
        t = r0.clone().requires_grad_(True)
        slope, = torch.autograd.grad(h(t).sum(), t, allow_unused=True)
    if slope is None:
        return r0
    usable = torch.isfinite(slope) & (slope.abs() > 1e-12) & torch.isfinite(moved)
    step = torch.where(usable, (moved - moved.detach()) / torch.where(usable, slope, torch.ones_like(slope)),
                       torch.zeros_like(moved))
    return r0 - step


@dataclass(frozen=True)
class SPoints:
    """What `s_shape` needs besides alpha, for one interval: the tangent points found by
    bisection and the chord lines with their exact supporting biases. alpha-CROWN
    computes it once per interval (`OpRule.prepare`) instead of at every step."""

    d_u: T
    d_l: T
    chord_up: T       # bool: the chord is the upper line (no tangent through (l, f(l)) fits)
    chord_lo: T
    fl: T
    fu: T
    kc: T             # the chord's slope
    chord_up_bias: T  # exact supporting biases of the chord's slope
    chord_lo_bias: T


def extremum(stacked: T, upper: bool) -> T:
    """max (upper) or min over dim 0 of a bias's candidates, the value of the first one
    that attains it (nan wins, as in amax). Put the candidates evaluated at the interval's
    own ends first: where an interior candidate (detached, clamped into [l, u]) lands on
    an end, the two tie, and the end's value is the one that moves with l and u. amax
    would share the gradient among the ties, so alpha-CROWN, optimising the intervals,
    would see only a fraction of d bias / d l (measured: BENCHMARKS.md, session 34)."""
    best = (stacked.amax(0) if upper else stacked.amin(0)).detach()
    out = stacked[-1]
    for cand in reversed(stacked[:-1]):     # a few candidates: argmax along dim 0 is slow on CPU
        out = torch.where(cand.detach() == best, cand, out)
    return torch.where(torch.isnan(best), best, out)


def _support(f: Fn, dinv: Fn, k: T, l: T, u: T, fl: T, fu: T, sign: float) -> T:
    """The exact supporting bias of slope k over [l, u]: max (sign +1) or min (-1) of
    f(x) - k x over the ends and the critical point sign * dinv(k) (f' even, so f' = k
    there), the only interior point where f - k x can take its max (min)."""
    x_k = (sign * dinv(k.detach())).clamp(min=l, max=u).detach()
    vals = torch.stack(torch.broadcast_tensors(fl - k * l, fu - k * u, f(x_k) - k * x_k))
    return extremum(vals, sign > 0)


def s_points(f: Fn, df: Fn, dinv: Fn, l: T, u: T, cap: Optional[float]) -> SPoints:
    cross = (u > 0) & (l < 0)
    lc, uc = torch.where(cross, l, -torch.ones_like(l)), torch.where(cross, u, torch.ones_like(u))
    d_u, d_l, up_chord, lo_chord = _s_points(f, df, lc, uc, cap)
    fl, fu = f(l), f(u)
    kc = _chord_slope(fl, fu, l, u)
    chord_up = (u <= 0) | (cross & up_chord)
    chord_lo = (l >= 0) | (cross & lo_chord)
    return SPoints(d_u, d_l, chord_up, chord_lo, fl, fu, kc, _support(f, dinv, kc, l, u, fl, fu, 1.0),
                   _support(f, dinv, kc, l, u, fl, fu, -1.0))


def s_shape(f: Fn, df: Fn, dinv: Fn, l: T, u: T, alpha: Optional[T], cap: Optional[float],
            points: Optional[SPoints] = None) -> tuple[tuple[T, T], tuple[T, T]]:
    """Lines for f convex on (-inf, 0] and concave on [0, inf), with f' even.

    dinv(k) is the point x >= 0 with f'(x) = k (the concave-side critical point; -x is
    the convex-side one), clamped to where it exists. The chord's slope gets its exact
    supporting bias (`_support`, once per interval in `s_points`). A tangent line, at a
    point t >= 0 for the upper line (t <= 0 for the lower), has its critical point at t
    itself: f - k x is concave on [0, u] (convex on [l, 0]) with f'(t) = k, and on the
    other side its max (min) is at an end. So its bias is the max (min) of f - k x over
    {l, u, t}: exact for any t, whichever alpha chose it; rounding of k = f'(t) moves the
    true critical point by a second-order amount that `finish`'s slack covers. The
    tangent points (`points`, from `s_points` on the same l, u) decide tightness only.
    """
    a = s_alpha_init(l, u) if alpha is None else alpha
    P = s_points(f, df, dinv, l, u, cap) if points is None else points
    cross = (u > 0) & (l < 0)
    t_mid = l + a * (u - l)
    t_up = torch.where(cross, P.d_u + a * (u - P.d_u), t_mid).clamp(min=0)
    t_lo = torch.where(cross, P.d_l + a * (l - P.d_l), t_mid).clamp(max=0)

    def tangent(t: T, sign: float) -> tuple[T, T]:
        # clamp, not maximum/minimum: at alpha's bounds t equals an end, and a tie in those
        # splits the gradient with the end, halving d slope / d alpha; clamp gives t all of it.
        t_in = t.clamp(min=l, max=u)
        k = df(t_in)
        vals = torch.stack(torch.broadcast_tensors(P.fl - k * l, P.fu - k * u, f(t_in) - k * t_in))
        return k, extremum(vals, sign > 0)

    k_up, b_up = tangent(t_up, 1.0)
    k_lo, b_lo = tangent(t_lo, -1.0)
    lower = (torch.where(P.chord_lo, P.kc, k_lo), torch.where(P.chord_lo, P.chord_lo_bias, b_lo))
    upper = (torch.where(P.chord_up, P.kc, k_up), torch.where(P.chord_up, P.chord_up_bias, b_up))
    return lower, upper


def s_alpha_init(l: T, u: T) -> T:
    """The tangent points plain CROWN uses, and where alpha-CROWN starts, for an increasing
    S-shape whose slope peaks at 0 (sigmoid, tanh, atan, erf): `S_CROSSING_INIT` on an
    interval that contains the inflection point; elsewhere `S_FLAT_LEAN` of the way from
    the steep end to the flat one (t = l + alpha (u - l): the flat end is l on the convex
    side, u on the concave side)."""
    cross = (l < 0) & (u > 0)
    side = torch.where(u <= 0, torch.full_like(l, 1.0 - S_FLAT_LEAN), torch.full_like(l, S_FLAT_LEAN))
    return torch.where(cross, torch.full_like(l, S_CROSSING_INIT), side)


def _dsigmoid(x: T) -> T:
    return torch.sigmoid(x) * torch.sigmoid(-x)


def _sigmoid_dinv(k: T) -> T:
    # s(1 - s) = k with s >= 1/2; 1 - s written without cancellation.
    k = k.clamp(min=torch.finfo(k.dtype).tiny, max=0.25)
    r = torch.sqrt((1 - 4 * k).clamp(min=0))
    # log(s / (1 - s)) with s = (1 + r) / 2 and 1 - s = 2k / (1 + r).
    return 2 * torch.log1p(r) - torch.log(4 * k)


def _dtanh(x: T) -> T:
    return 4 * torch.sigmoid(2 * x) * torch.sigmoid(-2 * x)


def _tanh_dinv(k: T) -> T:
    # 1 - y^2 = k with y >= 0: x = atanh(y) = (log(1 + y) - log(1 - y)) / 2, 1 - y = k / (1 + y).
    k = k.clamp(min=torch.finfo(k.dtype).tiny, max=1.0)
    y = torch.sqrt((1 - k).clamp(min=0))
    return (torch.log1p(y) + torch.log1p(y) - torch.log(k)) / 2


_S_FUNCS = {"Sigmoid": (torch.sigmoid, _dsigmoid, _sigmoid_dinv), "Tanh": (torch.tanh, _dtanh, _tanh_dinv)}


def _s_relax(node: Node, l: T, u: T, alpha: Optional[T], consts: Sequence, prepared=None) -> Relaxation:
    f, df, dinv = _S_FUNCS[node.op]
    ls, us = _safe_box(l, u)
    lower, upper = s_shape(f, df, dinv, ls, us, alpha, cap=64.0, points=prepared)
    runtime = SIGMOID_RUNTIME_EPS * torch.finfo(l.dtype).eps if node.op == "Sigmoid" else 0.0
    return finish(node.op, l, u, lower, upper, f(l), f(u), runtime)


def _s_prepare(node: Node, l: T, u: T, consts: Sequence) -> SPoints:
    f, df, dinv = _S_FUNCS[node.op]
    return s_points(f, df, dinv, *_safe_box(l, u), cap=64.0)


def _s_alpha_init(node: Node, l: T, u: T, consts: Sequence) -> T:
    return s_alpha_init(l, u)


# ------------------------------------------------------- convex / concave functions

def _increasing_interval(fn: Fn) -> Callable[..., list]:
    def interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
        b = ins[0]
        return [IntervalBounds(fn(b.lower), fn(b.upper))]
    return interval


def _log_range(l: T, u: T) -> tuple[T, T]:
    # Below 0 the op yields NaN, which no interval describes: report (-inf, inf).
    inf = torch.full_like(l, math.inf)
    lo = torch.where(l >= 0, torch.log(l.clamp(min=0)), -inf)
    hi = torch.where(l >= 0, torch.log(u.clamp(min=0)), inf)
    return lo, hi


def _sqrt_range(l: T, u: T) -> tuple[T, T]:
    inf = torch.full_like(l, math.inf)
    ok = l >= 0
    return torch.where(ok, torch.sqrt(l.clamp(min=0)), -inf), torch.where(ok, torch.sqrt(u.clamp(min=0)), inf)


def _exp_range(l: T, u: T) -> tuple[T, T]:
    return torch.exp(l), torch.exp(u)


def _reciprocal_range(l: T, u: T) -> tuple[T, T]:
    # 1/x is decreasing on each side of 0; an interval touching 0 reaches +-inf (1/+-0).
    side = (l > 0) | (u < 0)
    inf = torch.full_like(l, math.inf)
    return torch.where(side, 1.0 / u, -inf), torch.where(side, 1.0 / l, inf)


_RANGES = {"Exp": _exp_range, "Log": _log_range, "Sqrt": _sqrt_range, "Reciprocal": _reciprocal_range}


def _range_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    lo, hi = _RANGES[node.op](ins[0].lower, ins[0].upper)
    return [IntervalBounds(lo, hi)]


def _sqrt_floor(x: T) -> T:
    """Smallest tangent point used near 0, where sqrt-like derivatives blow up."""
    return torch.full_like(x, math.sqrt(torch.finfo(x.dtype).tiny))


def _convex_relax(node: Node, l: T, u: T, alpha: Optional[T], consts: Sequence) -> Relaxation:
    op = node.op
    lo_c, hi_c = _RANGES[op](l, u)
    ls, us = _safe_box(l, u)
    a = torch.full_like(ls, 0.5) if alpha is None else alpha
    t = ls + a * (us - ls)
    if op == "Exp":
        lower, upper = curved(torch.exp, torch.exp, ls, us, t, True)
    elif op == "Log":
        pos = ls > 0
        lp, up_ = torch.where(pos, ls, torch.ones_like(ls)), torch.where(pos, us, torch.ones_like(us))
        tp = torch.where(pos, t, torch.ones_like(t))
        lower, upper = curved(torch.log, torch.reciprocal, lp, up_, tp, False)
        lower, upper = _mask_lines(pos, lower, upper)
    elif op == "Sqrt":
        ok = ls >= 0
        lp, up_ = torch.where(ok, ls, torch.zeros_like(ls)), torch.where(ok, us, torch.ones_like(us))
        tp = torch.maximum(torch.where(ok, t, torch.ones_like(t)), _sqrt_floor(t))
        lower, upper = curved(torch.sqrt, lambda x: 0.5 / torch.sqrt(x), lp, up_, tp, False)
        lower, upper = _mask_lines(ok, lower, upper)
    elif op == "Reciprocal":
        side = (ls > 0) | (us < 0)
        one = torch.ones_like(ls)
        lp, up_ = torch.where(side, ls, one), torch.where(side, us, 2 * one)
        tp = torch.where(side, t, one)
        lower, upper = curved(torch.reciprocal, lambda x: -1.0 / (x * x), lp, up_, tp, lp > 0)
        lower, upper = _mask_lines(side, lower, upper)
    else:  # pragma: no cover - registration guards this
        raise ValueError(f"no smooth relaxation for {op}")
    return finish(op, l, u, lower, upper, lo_c, hi_c)


def _mask_lines(ok: T, lower: tuple[T, T], upper: tuple[T, T]) -> tuple[tuple[T, T], tuple[T, T]]:
    """Mark lines outside the op's domain as unusable (NaN), so `finish` replaces them."""
    nan = torch.tensor(math.nan, dtype=lower[0].dtype, device=lower[0].device)
    return ((torch.where(ok, lower[0], nan), lower[1]), (torch.where(ok, upper[0], nan), upper[1]))


def _s_derivative(node: Node, l: T, u: T, consts: Sequence) -> tuple[T, T]:
    """Sigmoid' and Tanh' are even and fall with |z|: the smaller end value and the value
    nearest 0, each moved out by more than their rounding (1e-14 in float64)."""
    def dphi(z: T) -> T:
        if node.op == "Sigmoid":
            sz = torch.sigmoid(z)
            return sz * (1 - sz)
        return 1 - torch.tanh(z) ** 2
    pad = 1e-14 if l.dtype == torch.float64 else 1e-6
    near = torch.where(l > 0, l, torch.where(u < 0, u, torch.zeros_like(l)))
    return (torch.minimum(dphi(l), dphi(u)) - pad).clamp(min=0), dphi(near) + pad


def register() -> None:
    facts = frozenset({"monotone", "elementwise", "smooth"})
    for op in ("Sigmoid", "Tanh"):
        fn = _S_FUNCS[op][0]
        register_rule(OpRule(op, "elementwise", interval=_increasing_interval(fn), relax=_s_relax,
                             prepare=_s_prepare, alpha_init=_s_alpha_init, alpha_lr_scale=S_LR_SCALE,
                             alpha_bounds=_unit_bounds, unstable=unstable_if_wide,
                             lipschitz=slope(0.25 if op == "Sigmoid" else 1.0), derivative=_s_derivative,
                             facts=facts))
    for op in ("Exp", "Log", "Sqrt", "Reciprocal"):
        register_rule(OpRule(op, "elementwise", interval=_range_interval, relax=_convex_relax,
                             alpha_init=half_alpha, alpha_bounds=_unit_bounds, unstable=unstable_if_wide,
                             facts=facts - {"monotone"} if op == "Reciprocal" else facts))
