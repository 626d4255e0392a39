"""Bounding rules for Gelu (ONNX opset 20; approximate = "none" or "tanh").

Gelu f(x) = x Phi(x) (or its tanh approximation) is not monotone: it falls to a minimum
of about -0.17 near x = -0.75, then rises. Its curvature f'' = phi(x) (2 - x^2) (the
tanh form has the same sign pattern, with inflection points at +-1.4185) makes it
concave on (-inf, -r], convex on [-r, r] and concave on [r, inf). f' has no closed-form
inverse, so the critical points of f(x) - k x are found by bisection, but soundness
does not rest on how well:

- every line is "a slope, then a sound supporting bias": the min (lower line) or max
  (upper line) of g(x) = f(x) - k x over [l, u]. On a piece where g is convex (for a
  min) the bisection keeps a bracket [p, q] with g'(p) <= 0 < g'(q), so the minimiser
  lies in it, g is at least min(g(p), g(q)) outside it, and inside it g stays above
  min(g(p), g(q)) - (q - p) max(|g'(p)|, |g'(q)|) because g' is monotone there. That
  bound is rigorous for any bracket; a coarse one only costs tightness. Where g is
  concave (for a min) the extremum is at the piece's ends, which are candidates. Where
  g' keeps one sign over the final bracket, the bisection never left that end of the
  piece (or stopped on the extremum), and the end's value is exact, with no allowance.
  The max for upper lines is the mirror image on the concave pieces.
- the interval rule uses a rigorous lower bound of the global minimum from the same
  bracket argument (computed once, in float64, when the module loads).

Everything is computed in float64 (as Sin/Cos are) and cast back; slopes are rounded
to the working dtype before their biases are computed, so the bias supports the slope
actually used, and `smooth.finish` adds the usual outward slack.

Slopes: the lower line is the tangent at a point t = p1 + alpha (p2 - p1) of the
convex part, where [p1, p2] are the tangent points whose tangents pass under f at
both ends (`_tangent_range`; CROWN: the middle of the convex part, moved into
[p1, p2]; alpha-CROWN optimises alpha from there). Where no
such tangent exists (the interval misses the convex part, or the convex part lies
above the chord) the lower line is the chord. The upper line is the chord, lifted by
the exact support where a concave part bulges above it.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from models import Node
from relaxations.bounds import IntervalBounds
from relaxations.ops.common import Ins
from relaxations.ops.smooth import bisect, extremum, finish, implicit_root, unstable_if_wide
from relaxations.registry import OpRule, Relaxation, register_rule, slope

__all__ = ["register", "gelu_rule", "gelu64", "dgelu64", "inflection", "minimum_bracket"]

T = torch.Tensor
_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_C = math.sqrt(2.0 / math.pi)
_K = 0.044715
# Bisection steps in float64: a piece at most 80 wide shrinks to 80 * 2^-64, below the
# spacing of float64 numbers away from 0 (near 0 a bracket may stay open; its allowance
# covers it). Fewer steps would do for the bias's value (a bracket [p, q] costs it
# (q - p) max |g'|), not for alpha-CROWN's gradient: where the extremum is at an end of
# the interval, a bracket left open beats the end's own candidate by its allowance and
# takes the gradient that candidate would carry (`smooth.extremum`; BENCHMARKS.md,
# "alpha-CROWN through Gelu and S-shapes").
_STEPS = 64
_NARROW_STEPS = 26     # from a confirmed bracket of width ~1e-4: ~1e-12
_TANGENT_STEPS = 30    # tangent points that only choose slopes (see _tangent_range)
# Beyond +-_FAR, f' equals 0 or 1 to far below float64's resolution (phi(40) ~ 1e-348),
# so every critical point of f(x) - k x for a float64 k lies inside; see `_bias`.
_FAR = 40.0


def _approx(node: Node) -> bool:
    """True for approximate="tanh"; ValueError for anything but "none"/"tanh"."""
    a = str(node.attr("approximate", "none"))
    if a not in ("none", "tanh"):
        raise ValueError(f"Gelu node {node.name}: approximate={a!r} is not 'none' or 'tanh'")
    return a == "tanh"


def gelu64(x: T, tanh: bool) -> T:
    """f(x) for finite x (Phi through erfc: no cancellation for negative x)."""
    if tanh:
        return x * torch.sigmoid(2 * _C * (x + _K * x ** 3))
    return 0.5 * x * torch.erfc(-x / _SQRT2)


def dgelu64(x: T, tanh: bool) -> T:
    """f'(x) for finite x."""
    if tanh:
        z2 = 2 * _C * (x + _K * x ** 3)
        s, sn = torch.sigmoid(z2), torch.sigmoid(-z2)
        return s + x * s * sn * 2 * _C * (1 + 3 * _K * x * x)
    return 0.5 * torch.erfc(-x / _SQRT2) + x * torch.exp(-0.5 * x * x) * _INV_SQRT_2PI


def _gelu_ext(x: T, tanh: bool) -> T:
    """f on the extended reals: f(-inf) = 0, f(inf) = inf."""
    fin = torch.isfinite(x)
    v = gelu64(torch.where(fin, x, torch.zeros_like(x)), tanh)
    return torch.where(fin, v, torch.where(x > 0, x, torch.zeros_like(x)))


# ------------------------------------------------------------ constants, in float64

def _d2_scalar(x: float, tanh: bool) -> float:
    if not tanh:
        return math.exp(-0.5 * x * x) * _INV_SQRT_2PI * (2 - x * x)
    z2 = 2 * _C * (x + _K * x ** 3)
    s = 1 / (1 + math.exp(-z2))
    q = s * (1 - s)
    dz, d2z = _C * (1 + 3 * _K * x * x), 6 * _C * _K * x
    ds = 2 * q * dz
    d2s = 2 * q * d2z + 2 * dz * ds * (1 - 2 * s)
    return 2 * ds + x * d2s


def inflection(tanh: bool) -> float:
    """r > 0 with f''(r) = 0 (f'' is even, positive on (-r, r), negative beyond)."""
    if not tanh:
        return _SQRT2
    lo, hi = 1.0, 2.0      # f'' > 0 at 1, < 0 at 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if _d2_scalar(mid, tanh) > 0:
            lo = mid
        else:
            hi = mid
    return lo


def _f_scalar(x: float, tanh: bool) -> float:
    if tanh:
        return x / (1 + math.exp(-2 * _C * (x + _K * x ** 3)))
    return 0.5 * x * math.erfc(-x / _SQRT2)


def _df_scalar(x: float, tanh: bool) -> float:
    if tanh:
        z2 = 2 * _C * (x + _K * x ** 3)
        s = 1 / (1 + math.exp(-z2))
        return s + x * s * (1 - s) * 2 * _C * (1 + 3 * _K * x * x)
    return 0.5 * math.erfc(-x / _SQRT2) + x * math.exp(-0.5 * x * x) * _INV_SQRT_2PI


def minimum_bracket(tanh: bool) -> tuple[float, float, float]:
    """(x_lo, x_hi, m): the minimiser of f lies in [x_lo, x_hi] and m <= min f, rigorously
    (f' is increasing on [-r, 0], negative at -r and 0.5 at 0; bracket bound as above,
    plus a few ulps for the rounding of the two evaluations). Python floats: no torch
    dispatch at import time."""
    lo, hi = -inflection(tanh), 0.0
    while True:
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if _df_scalar(mid, tanh) > 0:
            hi = mid
        else:
            lo = mid
    f_lo, f_hi = _f_scalar(lo, tanh), _f_scalar(hi, tanh)
    slope = max(abs(_df_scalar(lo, tanh)), abs(_df_scalar(hi, tanh)))
    m = min(f_lo, f_hi) - (hi - lo) * slope
    return lo, hi, m - 8 * sys.float_info.epsilon * abs(m)


_CONST = {tanh: (inflection(tanh),) + minimum_bracket(tanh) for tanh in (False, True)}


# ------------------------------------------------------------------------ interval

def _down(v: T, dtype: torch.dtype) -> T:
    """A float64 lower bound moved out by its rounding and cast to dtype downward."""
    v = v - (8 * torch.finfo(torch.float64).eps * v.abs() + torch.finfo(torch.float64).tiny)
    w = v.to(dtype)
    return torch.where(w.double() > v, torch.nextafter(w, torch.full_like(w, -math.inf)), w)


def _up(v: T, dtype: torch.dtype) -> T:
    return -_down(-v, dtype)


# How far a runtime's Gelu may be from the real one, in units of eps (of the dtype it
# computes in) times |x| for x < 0: 0.5 x (1 + erf(x / sqrt 2)) and 0.5 x (1 + tanh(...))
# cancel where erf or tanh nears -1, so the error there is absolute, about an ulp of
# 0.5 |x|, not relative to the tiny true value. onnxruntime's float32 Gelu was measured at
# up to 0.36 (erf) and 0.89 (tanh) of these units on x in [-12, 0]; 4 leaves room for
# other runtimes. Below x = -RUNTIME_CAP both forms round 1 + erf (or tanh) to 0 in
# float32 and float64, and the true value is under 1e-20: the error is no larger than at
# the cap. For x >= 0 nothing cancels (the relative slack of `finish` covers it).
RUNTIME_ULPS = 4.0
RUNTIME_CAP = 10.0


def _runtime_error(l: T, u: T, dtype: torch.dtype) -> T:
    """[float64] the allowance for the runtime's own rounding on [l, u] (see RUNTIME_ULPS)."""
    neg = (-l.double()).clamp(min=0.0, max=RUNTIME_CAP)
    return RUNTIME_ULPS * torch.finfo(dtype).eps * torch.where(torch.isnan(neg), torch.zeros_like(neg), neg)


def _gelu_range(l: T, u: T, tanh: bool) -> tuple[T, T]:
    _, x_lo, x_hi, m = _CONST[tanh]
    L, U = l.double(), u.double()
    fl, fu = _gelu_ext(L, tanh), _gelu_ext(U, tanh)
    hi = torch.maximum(fl, fu)
    # f decreases up to its minimiser and increases after it.
    inner = torch.minimum(torch.minimum(fl, fu), torch.full_like(fl, m))
    lo = torch.where(U <= x_lo, fu, torch.where(L >= x_hi, fl, inner))
    err = _runtime_error(l, u, l.dtype)
    return _down(lo - err, l.dtype), _up(hi + err, l.dtype)


def _gelu_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    b = ins[0]
    return [IntervalBounds(*_gelu_range(b.lower, b.upper, _approx(node)))]


# ---------------------------------------------------------------------- relaxation

def _bisect(dg: Callable[[T], T], lo: T, hi: T, upper: bool, steps: int) -> tuple[T, T]:
    """Shrink [lo, hi] around the sign change of g' (decreasing for upper, increasing for lower)."""
    return bisect((lambda x: -dg(x)) if upper else dg, lo, hi, steps)   # > 0: the extremum is left of x


def _piece_extremum(k: T, a: T, b: T, tanh: bool, upper: bool, guess: Optional[T] = None) -> T:
    """Sound bound of max (upper) or min (lower) of g(x) = f(x) - k x over [a, b], where g
    is concave (upper) or convex (lower) on [a, b]; see the module docstring for why.

    `guess`, where given, is where the extremum should be (the tangent point of a
    tangent's slope): a bracket of width ~1e-4 around it is used wherever the signs of
    g' at its ends confirm it, so _NARROW_STEPS suffice there; the other elements (if
    any) are bisected from the whole piece. The confirmation, not the guess, is what
    the bound rests on.
    """
    k, a, b = torch.broadcast_tensors(k, a.detach(), torch.maximum(a, b).detach())
    kd = k.detach()

    def dg(x: T, kk: T = kd) -> T:
        return dgelu64(x, tanh) - kk

    if guess is None:
        lo, hi = _bisect(dg, a, b, upper, _STEPS)
    else:
        guess = guess.detach().expand_as(a)
        delta = 1e-4 * (1 + guess.abs())
        n_lo = torch.maximum(guess - delta, a).clamp(max=b)
        n_hi = torch.minimum(guess + delta, b).clamp(min=a)
        d_lo, d_hi = dg(n_lo), dg(n_hi)
        ok = ((n_lo <= a) | ((d_lo >= 0) if upper else (d_lo <= 0))) \
            & ((n_hi >= b) | ((d_hi < 0) if upper else (d_hi > 0)))
        lo, hi = _bisect(dg, n_lo, n_hi, upper, _NARROW_STEPS)
        bad = ~ok
        if bool(bad.any()):
            lo, hi = lo.clone(), hi.clone()
            lo[bad], hi[bad] = _bisect(lambda x: dg(x, kd[bad]), a[bad], b[bad], upper, _STEPS)

    def g(x: T) -> T:
        return gelu64(x, tanh) - k * x

    # Where g' does not change sign across the bracket, the bisection never left that end
    # of the piece (or stopped on the extremum itself), and the extremum is the end's value
    # exactly; the allowance is for a bracket around an interior extremum (nan keeps it).
    d_lo, d_hi = dg(lo), dg(hi)
    at_end = ((d_lo <= 0) | (d_hi >= 0)) if upper else ((d_lo >= 0) | (d_hi <= 0))
    slope = torch.where(at_end, torch.zeros_like(d_lo), torch.maximum(d_lo.abs(), d_hi.abs()))
    if upper:
        return torch.maximum(g(lo), g(hi)) + (hi - lo) * slope
    return torch.minimum(g(lo), g(hi)) - (hi - lo) * slope


def _bias(k: T, L: T, U: T, r: float, tanh: bool, upper: bool, guess: Optional[T] = None) -> T:
    """Sound supporting bias of slope k over [L, U] (float64): min / max of f(x) - k x.
    `guess`: where the lower line's minimum is expected (its tangent point), see
    `_piece_extremum`."""

    def g(x: T) -> T:
        return gelu64(x, tanh) - k * x

    def at(c: float) -> T:
        return torch.full_like(L, c).clamp(min=L, max=U).detach()

    vals = [g(L), g(U), g(at(-r)), g(at(r))]   # the interval's ends first: they win ties (`extremum`)
    if upper:
        # Concave pieces (-inf, -r] and [r, inf), searched within +-_FAR: beyond it g
        # is monotone towards the piece (f' - k keeps one sign there for any float64
        # k), so the ends L, U cover the rest.
        vals.append(_piece_extremum(k, at(-_FAR), at(-r), tanh, upper=True))
        vals.append(_piece_extremum(k, at(r), at(_FAR), tanh, upper=True))
    else:
        vals.append(_piece_extremum(k, at(-r), at(r), tanh, upper=False, guess=guess))
    return extremum(torch.stack(torch.broadcast_tensors(*vals)), upper)


def _tangent_range(L: T, U: T, c_lo: T, c_hi: T, tanh: bool) -> tuple[T, T]:
    """[p1, p2] within the convex part [c_lo, c_hi]: the tangent points whose tangents stay
    below f at L and at U (the lower convex envelope's own tangents, as CROWN's tangent
    through the far endpoint for S-shapes). A tangent at p passes under (L, f(L)) iff
    p >= p1 (its value at L falls as p grows) and under (U, f(U)) iff p <= p2. These
    points only choose slopes; the biases are computed soundly for whatever slope."""
    fL, fU = gelu64(L, tanh), gelu64(U, tanh)

    def tangent_gap(p: T, x: T, fx: T) -> T:   # the tangent at p at x, less f(x)
        return gelu64(p, tanh) + dgelu64(p, tanh) * (x - p) - fx

    def above(p: T, x: T, fx: T) -> T:     # the tangent at p passes above (x, f(x))
        return tangent_gap(p, x, fx) > 0   # a > b exactly when a - b > 0 in floats

    # p1: first p whose tangent is under (L, f(L)); p2: last p whose tangent is under (U, f(U)).
    _, hi = bisect(lambda p: (~above(p, L, fL)).to(p.dtype), c_lo, c_hi, _TANGENT_STEPS)
    lo, _ = bisect(lambda p: above(p, U, fU).to(p.dtype), c_lo, c_hi, _TANGENT_STEPS)
    # Where a bisection found them, p1 and p2 move with L and U as the roots of "the tangent
    # at p meets (L, f(L))" (resp. U) do: the implicit function's gradient for alpha-CROWN.
    p1 = torch.where(above(c_lo, L, fL), implicit_root(lambda p: tangent_gap(p, L, fL), hi), c_lo)
    p2 = torch.where(above(c_hi, U, fU), implicit_root(lambda p: tangent_gap(p, U, fU), lo), c_hi)
    return p1, p2


def _tangent_points(L: T, U: T, r: float, tanh: bool) -> tuple[T, T, T, T]:
    """The convex part [c_lo, c_hi] of [L, U] (float64, finite) and its [p1, p2]."""
    c_lo, c_hi = L.clamp(min=-r), U.clamp(max=r)
    p1, p2 = _tangent_range(L, U, c_lo, c_hi.clamp(min=c_lo), tanh)
    return c_lo, c_hi, p1, p2


def _crown_alpha(c_lo: T, c_hi: T, p1: T, p2: T) -> T:
    """CROWN's tangent point, the middle of the convex part kept inside [p1, p2], as alpha."""
    t = ((c_lo + c_hi) / 2).clamp(min=p1, max=p2.clamp(min=p1))
    width = p2 - p1
    return torch.where(width > 0, (t - p1) / torch.where(width > 0, width, torch.ones_like(width)),
                       torch.full_like(t, 0.5)).clamp(0, 1)


def _gelu_alpha_init(node: Node, l: T, u: T, consts: Sequence) -> T:
    ok = torch.isfinite(l) & torch.isfinite(u)
    L = torch.where(ok, l, torch.zeros_like(l)).double()
    U = torch.where(ok, u, torch.zeros_like(u)).double()
    return _crown_alpha(*_tangent_points(L, U, _CONST[_approx(node)][0], _approx(node))).to(l.dtype)


@dataclass(frozen=True)
class GeluPrepared:
    """What Gelu's lines over one interval share whatever alpha is: the float64 interval
    (L, U), the convex part [c_lo, c_hi] and its tangent range [p1, p2] (`convex`: some
    tangent passes under both ends), the chord's slope kc, and the upper line (the
    chord, lifted to its exact support), already in the working dtype."""

    L: T
    U: T
    c_lo: T
    c_hi: T
    p1: T
    p2: T
    convex: T
    kc: T
    k_up: T
    b_up: T


def _gelu_prepare(node: Node, l: T, u: T, consts: Sequence) -> GeluPrepared:
    """Gelu's alpha-free part on [l, u]: alpha-CROWN then computes only the lower line at
    each step (the upper line's support is the costly part: two bisections over the
    concave pieces)."""
    tanh = _approx(node)
    r = _CONST[tanh][0]
    ok = torch.isfinite(l) & torch.isfinite(u)
    L = torch.where(ok, l, torch.zeros_like(l)).double()
    U = torch.where(ok, u, torch.zeros_like(u)).double()
    c_lo, c_hi, p1, p2 = _tangent_points(L, U, r, tanh)
    # No tangent of the convex part passes under both ends: the chord is the envelope.
    convex = (c_lo < c_hi) & (p1 <= p2)
    fL, fU = gelu64(L, tanh), gelu64(U, tanh)
    wide = U > L
    kc = torch.where(wide, (fU - fL) / torch.where(wide, U - L, torch.ones_like(U)), torch.zeros_like(U))
    k_up = kc.to(l.dtype)
    b_up = _bias(k_up.double(), L, U, r, tanh, upper=True).to(l.dtype)
    return GeluPrepared(L, U, c_lo, c_hi, p1, p2, convex, kc, k_up, b_up)


def _gelu_relax(node: Node, l: T, u: T, alpha: Optional[T], consts: Sequence,
                prepared: Optional[GeluPrepared] = None) -> Relaxation:
    tanh = _approx(node)
    r = _CONST[tanh][0]
    dt = l.dtype
    g = prepared if prepared is not None else _gelu_prepare(node, l, u, consts)
    a = _crown_alpha(g.c_lo, g.c_hi, g.p1, g.p2) if alpha is None else alpha.double()
    t = g.p1 + a * (g.p2 - g.p1)
    k_lo = torch.where(g.convex, dgelu64(t, tanh), g.kc).to(dt)
    b_lo = _bias(k_lo.double(), g.L, g.U, r, tanh, upper=False, guess=torch.where(g.convex, t, g.L)).to(dt)
    lo_c, hi_c = _gelu_range(l, u, tanh)
    # The lines bound the real Gelu; the runtime's may be off by its allowance.
    return finish("Gelu", l, u, (k_lo, b_lo), (g.k_up, g.b_up), lo_c, hi_c, _runtime_error(l, u, dt).to(dt))


# Gelu's steepest slope: Phi(x) + x phi(x) peaks at x = sqrt(2) at 1.128904 (1.128993 for
# the tanh form; both below 0.13 on the negative side), rounded up.
GELU_SLOPE = 1.13


def gelu_rule() -> OpRule:
    """ONNX's Gelu (opset 20 on); onnxruntime's contrib Gelu and FastGelu reuse it
    (relaxations/ops/contrib.py)."""
    return OpRule("Gelu", "elementwise", min_opset=20, interval=_gelu_interval, relax=_gelu_relax,
                  prepare=_gelu_prepare, alpha_init=_gelu_alpha_init,
                  alpha_bounds=lambda n, l, u, c: (torch.zeros_like(l), torch.ones_like(l)),
                  unstable=unstable_if_wide, lipschitz=slope(GELU_SLOPE), facts=frozenset({"elementwise", "smooth"}))


def register() -> None:
    register_rule(gelu_rule())
