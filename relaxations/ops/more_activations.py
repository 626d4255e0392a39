"""Bounding rules for further activations: Softplus, Atan, Erf, Softsign, Elu, HardSigmoid, HardSwish.

(Gelu, which is not monotone and whose derivative has no closed-form inverse, has its
own file, `gelu.py`.)

Every line is built as smooth.py builds its lines: "a slope k, then the exact
supporting bias for that slope", the bias being the min (lower line) or max (upper
line) of f(x) - k x over [l, u]. That extremum lies at an endpoint, a kink, or a
critical point f'(x) = k, and each op here has its critical points in closed form, so
all of them are evaluated (an extra candidate inside [l, u] can only move the line
outward, never make it unsound). How well a slope was chosen therefore only decides
tightness, never soundness. Float32 rounding is absorbed by `smooth.finish`'s outward
slack (SLACK_ULPS), and the interval rules are widened outward by the same slack.

- Softplus log(1 + e^x): convex. Lower: tangent at t = l + alpha (u - l); upper: chord.
  Critical point of f - k x: x = logit(k).
- Atan, Erf, Softsign x / (1 + |x|): S-shaped, odd, with f' even: `smooth.s_shape` with
  the closed-form inverse of f' (atan: sqrt(1/k - 1); erf: sqrt(-log(k sqrt(pi) / 2));
  softsign: 1 / sqrt(k) - 1), alpha as for Tanh.
- Elu (attribute alpha, default 1): x for x >= 0, alpha (e^x - 1) below. Lower: the
  slope of the tangent at t = l + alpha_param (u - l); upper: the chord. Candidates:
  the ends, the kink 0 and log(k / alpha). Sound for any alpha (also > 1, where the
  kink is concave, or < 0: the supports are exact), tight for 0 < alpha <= 1, where
  Elu is convex.
- HardSigmoid clip(a x + b, 0, 1): like Clip, a ReLU-style lower (upper) line whose slope
  alpha-CROWN chooses at the lower (upper) kink, the chord on the other side.
- HardSwish x clip(x / 6 + 1/2, 0, 1): 0, then the convex parabola x (x + 3) / 6 on
  [-3, 3], then x. Lower: tangent to the parabola at a point alpha chooses among those
  whose tangent passes under f at both ends (the concave kinks at +-3 would otherwise
  push it down); upper: the chord. Candidates: the ends, the kinks -3 and 3 and the
  parabola's critical point 3 k - 3/2.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from models import Node
from relaxations.bounds import IntervalBounds
from relaxations.ops.common import Ins
from relaxations.ops.smooth import (S_LR_SCALE, SLACK_ULPS, SPoints, extremum, finish, half_alpha, s_alpha_init,
                                    s_points, s_shape, unstable_if_wide)
from relaxations.registry import OpRule, Relaxation, register_rule, slope

__all__ = ["register", "support", "outward"]

T = torch.Tensor
Fn = Callable[[T], T]
_S_CAP = 64.0   # bracket for the tangent searches of the saturating S-shapes (smooth._s_points)


# ------------------------------------------------------------------------- helpers

def _unit_bounds(node: Node, l: T, u: T, consts: Sequence) -> tuple[T, T]:
    return torch.zeros_like(l), torch.ones_like(l)


def _safe_box(l: T, u: T) -> tuple[T, T]:
    """Finite stand-ins for l, u; `finish` gives elements with an infinite end constant lines."""
    ok = torch.isfinite(l) & torch.isfinite(u)
    return torch.where(ok, l, torch.zeros_like(l)), torch.where(ok, u, torch.zeros_like(u))


def _chord(fl: T, fu: T, l: T, u: T) -> T:
    wide = u > l
    return torch.where(wide, (fu - fl) / torch.where(wide, u - l, torch.ones_like(u)), torch.zeros_like(u))


def outward(lo: T, hi: T) -> tuple[T, T]:
    """An interval moved outward by the rounding slack of a few-ulp function evaluation."""
    eps = SLACK_ULPS * torch.finfo(lo.dtype).eps
    tiny = torch.finfo(lo.dtype).tiny
    return lo - (eps * lo.abs() + tiny), hi + (eps * hi.abs() + tiny)


def support(f: Fn, k: T, l: T, u: T, points: Sequence[T], upper: bool) -> T:
    """Exact supporting bias of slope k: max (upper) or min (lower) of f(x) - k x over
    x in {l, u} and the given candidate points, each clamped into [l, u].

    Sound whenever the candidates include every interior extremum of f(x) - k x; any
    further candidate only moves the line outward. Candidates are detached (envelope
    theorem: d bias / d k = -x at the extremum), the ends are not, so gradients reach
    the intervals when alpha-CROWN optimises them.
    """
    vals = [f(l) - k * l, f(u) - k * u]
    for p in points:
        x = torch.minimum(torch.maximum(p.detach(), l), u).detach()
        vals.append(f(x) - k * x)
    stacked = torch.stack(torch.broadcast_tensors(*vals))
    return extremum(stacked, upper)


def _monotone_range(f: Fn, l: T, u: T) -> tuple[T, T]:
    fl, fu = f(l), f(u)
    return outward(torch.minimum(fl, fu), torch.maximum(fl, fu))


# ------------------------------------------------------------------------ Softplus

def _softplus(x: T) -> T:
    return torch.logaddexp(x, torch.zeros_like(x))


def _logit(k: T) -> T:
    """The x with sigmoid(x) = k (Softplus' critical point), k clamped into (0, 1)."""
    eps = torch.finfo(k.dtype).eps
    k = k.clamp(min=torch.finfo(k.dtype).tiny, max=1 - eps)
    return torch.log(k) - torch.log1p(-k)


def _softplus_relax(node: Node, l: T, u: T, alpha: Optional[T], consts: Sequence) -> Relaxation:
    ls, us = _safe_box(l, u)
    a = torch.full_like(ls, 0.5) if alpha is None else alpha
    t = ls + a * (us - ls)
    k_lo = torch.sigmoid(t)
    k_up = _chord(_softplus(ls), _softplus(us), ls, us)
    lower = (k_lo, support(_softplus, k_lo, ls, us, (t, _logit(k_lo.detach())), upper=False))
    upper = (k_up, support(_softplus, k_up, ls, us, (), upper=True))   # convex: peaks at an end
    lo_c, hi_c = _monotone_range(_softplus, l, u)
    return finish("Softplus", l, u, lower, upper, lo_c, hi_c)


# ------------------------------------------------------------------------ Atan, Erf

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _datan(x: T) -> T:
    return 1.0 / (1.0 + x * x)


def _atan_dinv(k: T) -> T:
    """x >= 0 with 1 / (1 + x^2) = k."""
    k = k.clamp(min=torch.finfo(k.dtype).tiny, max=1.0)
    return torch.sqrt((1.0 - k) / k)


def _derf(x: T) -> T:
    return _TWO_OVER_SQRT_PI * torch.exp(-x * x)


def _erf_dinv(k: T) -> T:
    """x >= 0 with 2 / sqrt(pi) exp(-x^2) = k."""
    k = k.clamp(min=torch.finfo(k.dtype).tiny, max=_TWO_OVER_SQRT_PI)
    return torch.sqrt((-torch.log(k / _TWO_OVER_SQRT_PI)).clamp(min=0))


def _softsign(x: T) -> T:
    return x / (1.0 + x.abs())


def _dsoftsign(x: T) -> T:
    return 1.0 / (1.0 + x.abs()) ** 2


def _softsign_dinv(k: T) -> T:
    """x >= 0 with 1 / (1 + x)^2 = k."""
    k = k.clamp(min=torch.finfo(k.dtype).tiny, max=1.0)
    return torch.rsqrt(k) - 1.0


_S_FUNCS: dict[str, tuple[Fn, Fn, Fn]] = {"Atan": (torch.atan, _datan, _atan_dinv),
                                          "Erf": (torch.erf, _derf, _erf_dinv),
                                          "Softsign": (_softsign, _dsoftsign, _softsign_dinv)}


def _s_prepare(node: Node, l: T, u: T, consts: Sequence) -> SPoints:
    f, df, dinv = _S_FUNCS[node.op]
    return s_points(f, df, dinv, *_safe_box(l, u), cap=_S_CAP)


def _s_relax(node: Node, l: T, u: T, alpha: Optional[T], consts: Sequence, prepared=None) -> Relaxation:
    f, df, dinv = _S_FUNCS[node.op]
    ls, us = _safe_box(l, u)
    lower, upper = s_shape(f, df, dinv, ls, us, alpha, cap=_S_CAP, points=prepared)
    lo_c, hi_c = _monotone_range(f, l, u)
    return finish(node.op, l, u, lower, upper, lo_c, hi_c)


def _s_alpha_init(node: Node, l: T, u: T, consts: Sequence) -> T:
    return s_alpha_init(l, u)


def _s_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    b = ins[0]
    return [IntervalBounds(*_monotone_range(_S_FUNCS[node.op][0], b.lower, b.upper))]


def _softplus_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    return [IntervalBounds(*_monotone_range(_softplus, ins[0].lower, ins[0].upper))]


# ----------------------------------------------------------------------------- Elu

def _elu_alpha(node: Node) -> float:
    a = float(node.attr("alpha", 1.0))
    if not math.isfinite(a):
        raise ValueError(f"Elu node {node.name}: alpha {a} is not finite")
    return a


def _elu_fn(a: float) -> Fn:
    return lambda x: F.elu(x, alpha=a)


def _elu_range(a: float, l: T, u: T) -> tuple[T, T]:
    """Exact range: Elu is monotone on each side of 0 (increasing for alpha >= 0)."""
    f = _elu_fn(a)
    vals = torch.stack([f(l), f(u), f(torch.zeros_like(l).clamp(min=l, max=u))])
    return outward(vals.amin(0), vals.amax(0))


def _elu_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    return [IntervalBounds(*_elu_range(_elu_alpha(node), ins[0].lower, ins[0].upper))]


def _elu_candidates(a: float, k: T) -> tuple[T, T]:
    """The kink 0 and the negative side's critical point log(k / alpha) (0 where none)."""
    zero = torch.zeros_like(k)
    if a == 0:
        return zero, zero
    r = k.detach() / a
    crit = torch.where(r > 0, torch.log(torch.where(r > 0, r, torch.ones_like(r))), zero)
    return zero, crit


def _elu_relax(node: Node, l: T, u: T, alpha: Optional[T], consts: Sequence) -> Relaxation:
    a_elu = _elu_alpha(node)
    f = _elu_fn(a_elu)
    ls, us = _safe_box(l, u)
    a = torch.full_like(ls, 0.5) if alpha is None else alpha
    t = ls + a * (us - ls)
    k_lo = torch.where(t >= 0, torch.ones_like(t), a_elu * torch.exp(t.clamp(max=0)))
    k_up = _chord(f(ls), f(us), ls, us)
    lower = (k_lo, support(f, k_lo, ls, us, (t,) + _elu_candidates(a_elu, k_lo), upper=False))
    upper = (k_up, support(f, k_up, ls, us, _elu_candidates(a_elu, k_up), upper=True))
    lo_c, hi_c = _elu_range(a_elu, l, u)
    # alpha (exp(x) - 1) cancels near 0: a runtime misses by about an ulp of alpha, not of
    # the value (onnxruntime's float32 Elu: 0.5 eps measured); 1 eps of |alpha| allowed.
    return finish("Elu", l, u, lower, upper, lo_c, hi_c, abs(a_elu) * torch.finfo(l.dtype).eps)


def _elu_unstable(node: Node, l: T, u: T, consts: Sequence) -> T:
    return (u > l) & (l < 0)


# --------------------------------------------------------------------- HardSigmoid

def _hs_params(node: Node) -> tuple[float, float]:
    a, b = float(node.attr("alpha", 0.2)), float(node.attr("beta", 0.5))
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"HardSigmoid node {node.name}: alpha {a}, beta {b} must be finite")
    return a, b


def _hs_fn(a: float, b: float) -> Fn:
    if a == 0:    # a constant; 0 * inf would be NaN at an infinite end
        c = min(max(b, 0.0), 1.0)
        return lambda x: torch.full_like(x, c)
    return lambda x: torch.clamp(a * x + b, 0.0, 1.0)


def _hs_z(a: float, b: float, l: T, u: T) -> tuple[T, T]:
    """The range [zl, zu] of the clipped argument a x + b over [l, u]."""
    zl, zu = a * l + b, a * u + b
    return torch.minimum(zl, zu), torch.maximum(zl, zu)


def _hs_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    a, b = _hs_params(node)
    return [IntervalBounds(*_monotone_range(_hs_fn(a, b), ins[0].lower, ins[0].upper))]


def _hs_kinks(a: float, b: float, like: T) -> tuple[T, T]:
    """x at a x + b = 0 and = 1 (0 when a = 0, where no kink exists)."""
    if a == 0:
        return torch.zeros_like(like), torch.zeros_like(like)
    return torch.full_like(like, -b / a), torch.full_like(like, (1.0 - b) / a)


def _hs_relax(node: Node, l: T, u: T, alpha: Optional[T], consts: Sequence) -> Relaxation:
    """Slopes chosen in z = a x + b (the Clip(z, 0, 1) pattern), then mapped to x (times a);
    the biases are exact supports in x over the ends and both kinks."""
    a_hs, b_hs = _hs_params(node)
    f = _hs_fn(a_hs, b_hs)
    ls, us = _safe_box(l, u)
    zl, zu = _hs_z(a_hs, b_hs, ls, us)
    s = _hs_alpha_init(node, ls, us, consts) if alpha is None else alpha.clamp(0, 1)
    one = torch.ones_like(zl)
    lo_kink, hi_kink = (zl < 0) & (zu > 0), (zl < 1) & (zu > 1)
    gc, gu = zl.clamp(0, 1), zu.clamp(0, 1)
    kc = _chord(gc, gu, zl, zu)                     # chord of clip(z, 0, 1) in z
    both = lo_kink & hi_kink
    # One kink: the line through it has slope s in [0, 1] (0 flat, 1 the identity).
    # Two kinks: slopes up to the line through both the kink and the far corner.
    k_lo = torch.where(both, s / torch.where(both, zu, one), torch.where(lo_kink, s, kc))
    k_up = torch.where(both, s / torch.where(both, 1 - zl, one), torch.where(hi_kink, s, kc))
    K_lo, K_up = k_lo * a_hs, k_up * a_hs
    kinks = _hs_kinks(a_hs, b_hs, ls)
    lower = (K_lo, support(f, K_lo, ls, us, kinks, upper=False))
    upper = (K_up, support(f, K_up, ls, us, kinks, upper=True))
    lo_c, hi_c = _monotone_range(f, l, u)
    return finish("HardSigmoid", l, u, lower, upper, lo_c, hi_c)


def _hs_alpha_init(node: Node, l: T, u: T, consts: Sequence) -> T:
    """1 (steep) or 0 (flat) by which side covers more of the interval, as for ReLU/Clip."""
    a_hs, b_hs = _hs_params(node)
    zl, zu = _hs_z(a_hs, b_hs, l, u)
    lo_kink, hi_kink = (zl < 0) & (zu > 0), (zl < 1) & (zu > 1)
    steep = torch.where(lo_kink & hi_kink, 1 >= torch.maximum(-zl, zu - 1),
                        torch.where(lo_kink, zu >= -zl, 1 - zl >= zu - 1))
    return steep.to(l.dtype)


def _hs_unstable(node: Node, l: T, u: T, consts: Sequence) -> T:
    zl, zu = _hs_z(*_hs_params(node), l, u)
    return ((zl < 0) & (zu > 0)) | ((zl < 1) & (zu > 1))


# ----------------------------------------------------------------------- HardSwish

def _hswish(x: T) -> T:
    # 0 below -3 written out: at x = -inf the product would be -inf * 0 = NaN.
    return torch.where(x <= -3, torch.zeros_like(x), x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0))


def _hswish_range(l: T, u: T) -> tuple[T, T]:
    """Exact range: HardSwish falls to its minimum -3/8 at x = -3/2, then rises."""
    fl, fu = _hswish(l), _hswish(u)
    fm = _hswish(torch.full_like(l, -1.5).clamp(min=l, max=u))
    return outward(torch.minimum(torch.minimum(fl, fu), fm), torch.maximum(fl, fu))


def _hswish_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    return [IntervalBounds(*_hswish_range(ins[0].lower, ins[0].upper))]


def _hswish_tangents(l: T, u: T) -> tuple[T, T, T, T]:
    """The parabola's part [p_lo, p_hi] of [l, u] and, inside it, [p1, p2]: the tangent
    points whose tangents (-t^2 + (2 t + 3) x) / 6 pass under f at both ends (under the
    0 at l < -3: t >= l + sqrt(l^2 + 3 l); under u at u > 3: t <= u - sqrt(u^2 - 3 u);
    written without cancellation). They only choose slopes: biases are exact supports."""
    three = torch.full_like(l, 3.0)
    p_lo, p_hi = torch.maximum(l, -three), torch.minimum(u, three)
    lm, up = l.clamp(max=-3), u.clamp(min=3)
    p1 = torch.where(l < -3, 3 * lm / (torch.sqrt(lm * lm + 3 * lm) - lm), p_lo)
    p2 = torch.where(u > 3, 3 * up / (up + torch.sqrt(up * up - 3 * up)), p_hi)
    return p_lo, p_hi, torch.maximum(p1, p_lo), torch.minimum(p2, p_hi)


def _hswish_crown_alpha(p_lo: T, p_hi: T, p1: T, p2: T) -> T:
    """CROWN's tangent point, the middle of the parabola's part kept in [p1, p2], as alpha."""
    t = ((p_lo + p_hi) / 2).clamp(min=p1, max=torch.maximum(p1, p2))
    w = p2 - p1
    return torch.where(w > 0, (t - p1) / torch.where(w > 0, w, torch.ones_like(w)), torch.full_like(t, 0.5))


def _hswish_alpha_init(node: Node, l: T, u: T, consts: Sequence) -> T:
    return _hswish_crown_alpha(*_hswish_tangents(*_safe_box(l, u))).clamp(0, 1)


def _hswish_relax(node: Node, l: T, u: T, alpha: Optional[T], consts: Sequence) -> Relaxation:
    ls, us = _safe_box(l, u)
    p_lo, p_hi, p1, p2 = _hswish_tangents(ls, us)
    curved = (p_lo < p_hi) & (p1 <= p2)     # else no tangent passes under both ends: the chord
    a = _hswish_crown_alpha(p_lo, p_hi, p1, p2) if alpha is None else alpha
    t = p1 + a * (p2 - p1)
    kc = _chord(_hswish(ls), _hswish(us), ls, us)
    k_lo = torch.where(curved, (2 * t + 3) / 6, kc)
    crit = 3 * k_lo.detach() - 1.5                                       # (2 x + 3) / 6 = k
    three = torch.full_like(ls, 3.0)
    cands = (-three, three)
    lower = (k_lo, support(_hswish, k_lo, ls, us, cands + (t, crit), upper=False))
    upper = (kc, support(_hswish, kc, ls, us, cands, upper=True))     # convex pieces: peaks at ends/kinks
    lo_c, hi_c = _hswish_range(l, u)
    return finish("HardSwish", l, u, lower, upper, lo_c, hi_c)


def _hswish_unstable(node: Node, l: T, u: T, consts: Sequence) -> T:
    return (u > l) & (u > -3) & (l < 3)


# Erf's steepest slope, 2 / sqrt(pi) = 1.1283791670955126, rounded up. HardSwish's is
# 1.5 (x / 3 + 1/2 at x = 3), Elu's max(1, |alpha|), HardSigmoid's |alpha|.
ERF_SLOPE = 1.1283792


def register() -> None:
    ew = frozenset({"elementwise"})
    smooth = ew | {"smooth"}
    register_rule(OpRule("Softplus", "elementwise", interval=_softplus_interval, relax=_softplus_relax,
                         alpha_init=half_alpha, alpha_bounds=_unit_bounds, unstable=unstable_if_wide,
                         lipschitz=slope(1.0), facts=smooth | {"monotone", "convex"}))
    for op, opset in (("Atan", 7), ("Erf", 9), ("Softsign", 1)):
        register_rule(OpRule(op, "elementwise", min_opset=opset, interval=_s_interval, relax=_s_relax,
                             prepare=_s_prepare, alpha_init=_s_alpha_init, alpha_lr_scale=S_LR_SCALE,
                             alpha_bounds=_unit_bounds, unstable=unstable_if_wide,
                             lipschitz=slope(ERF_SLOPE if op == "Erf" else 1.0), facts=smooth | {"monotone"}))
    # Elu and HardSigmoid are monotone only for alpha >= 0: no "monotone" fact.
    register_rule(OpRule("Elu", "elementwise", interval=_elu_interval, relax=_elu_relax,
                         alpha_init=half_alpha, alpha_bounds=_unit_bounds, unstable=_elu_unstable,
                         lipschitz=lambda n, c: max(1.0, abs(float(n.attr("alpha", 1.0)))), facts=ew))
    register_rule(OpRule("HardSigmoid", "elementwise", interval=_hs_interval, relax=_hs_relax,
                         alpha_init=_hs_alpha_init, alpha_bounds=_unit_bounds, unstable=_hs_unstable,
                         lipschitz=lambda n, c: abs(float(n.attr("alpha", 0.2))), facts=ew | {"piecewise_linear"}))
    register_rule(OpRule("HardSwish", "elementwise", min_opset=14, interval=_hswish_interval,
                         relax=_hswish_relax, alpha_init=_hswish_alpha_init, alpha_bounds=_unit_bounds,
                         unstable=_hswish_unstable, lipschitz=slope(1.5), facts=ew))
