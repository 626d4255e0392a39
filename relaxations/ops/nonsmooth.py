"""Bounding rules for Abs, Clip, Sign, Floor, Cast, Sin, Cos and Pow with a constant exponent.

Non-monotone ops get exact interval extrema (Abs and even powers: 0 when the interval
straddles it; Sin/Cos: +-1 when the interval holds a peak or trough). Relaxations:
- Abs, Clip: like ReLU, the chord on the convex (concave) side and a family of sound
  lines through the kink whose slope is alpha (alpha-CROWN optimises it).
- Sin, Cos: both lines share a slope k in [-1, 1] (alpha; CROWN init: the chord
  slope) and get the exact supporting bias min/max of f(x) - k x over [l, u], taken
  over the endpoints and the (at most two, for width < 2 pi) critical points
  f'(x) = k. Computed in float64, so |x| up to 1e4 keeps full accuracy.
- Pow: x^p is convex or concave on each side of 0 (see `_pow_relax`); odd integer
  powers over an interval containing 0 are S-shaped and reuse `smooth.s_shape`. A
  positive constant base to a variable power, b^x, is monotone: its interval is exact
  and CROWN bounds it by that interval.
- Sign, Floor: step functions; constant lines (Floor: x - 1 <= floor(x) <= x when the
  interval holds a step), exact where the step is not inside the interval.
- Cast: to float32/float64 the identity; to float16/bfloat16 rounding to nearest, which
  is monotone (interval [cast(l), cast(u)]) and within a relative 2^-11 (2^-8) of x plus
  the smallest subnormal (lines of slope 1 that far apart); to an integer truncation
  toward zero (|trunc(x) - x| < 1, one side exact by sign); to bool x != 0 (constants).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from models import Node, UnsupportedModel
from relaxations.bounds import IntervalBounds
from relaxations.ops.common import Ins
from relaxations.ops.smooth import S_CROSSING_INIT, curved, extremum, finish, s_shape, unstable_if_wide
from relaxations.registry import OpRule, Relaxation, register_rule, slope

__all__ = ["register", "pow_exponent", "trig_range", "clip_limits"]

T = torch.Tensor
_TWO_PI = 2 * math.pi


def _zero_one(node: Node, l: T, u: T, consts: Sequence) -> tuple[T, T]:
    return torch.zeros_like(l), torch.ones_like(l)


def _minus_one_one(node: Node, l: T, u: T, consts: Sequence) -> tuple[T, T]:
    return -torch.ones_like(l), torch.ones_like(l)


def _safe(l: T, u: T) -> tuple[T, T]:
    ok = torch.isfinite(l) & torch.isfinite(u)
    return torch.where(ok, l, torch.zeros_like(l)), torch.where(ok, u, torch.zeros_like(u))


# ------------------------------------------------------------------------------ Abs

def _abs_range(l: T, u: T) -> tuple[T, T]:
    cross = (l < 0) & (u > 0)
    lo = torch.where(cross, torch.zeros_like(l), torch.minimum(l.abs(), u.abs()))
    return lo, torch.maximum(l.abs(), u.abs())


def _abs_relax(node: Node, l: T, u: T, alpha: Optional[T], consts: Sequence) -> Relaxation:
    ls, us = _safe(l, u)
    pos, neg = ls >= 0, us <= 0
    cross = ~(pos | neg)
    one = torch.ones_like(ls)
    width = torch.where(cross, us - ls, one)
    kc = (us + ls) / width
    bc = torch.maximum(ls.abs() - kc * ls, us.abs() - kc * us)
    k_lo = _abs_alpha_init(node, ls, us, consts) if alpha is None else alpha.clamp(-1, 1)
    stable = torch.where(pos, one, -one)
    lower = (torch.where(cross, k_lo, stable), torch.zeros_like(k_lo))
    upper = (torch.where(cross, kc, stable), torch.where(cross, bc, torch.zeros_like(bc)))
    lo_c, hi_c = _abs_range(l, u)
    return finish("Abs", l, u, lower, upper, lo_c, hi_c)


def _abs_alpha_init(node: Node, l: T, u: T, consts: Sequence) -> T:
    """|x| >= k x for any k in [-1, 1]; start from the side that covers more of [l, u]."""
    return torch.where(u >= -l, torch.ones_like(u), -torch.ones_like(u))


# ----------------------------------------------------------------------------- Clip

def clip_limits(node: Node, consts: Sequence) -> tuple[float, float]:
    """(min, max) of a Clip node as floats (+-inf when absent); constant limits only."""
    if node.opset < 11:
        lo, hi = node.attr("min", None), node.attr("max", None)
    else:
        vals = []
        for i in (1, 2):
            name = node.inputs[i] if len(node.inputs) > i else ""
            c = consts[i] if len(consts) > i else None
            if name and (c is None or isinstance(c, IntervalBounds)):
                raise ValueError(f"Clip node {node.name}: a variable min/max is not supported")
            vals.append(None if not name else float(c))
        lo, hi = vals
    lo = -math.inf if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    if lo > hi:
        raise ValueError(f"Clip node {node.name}: min {lo} > max {hi} is not supported")
    return lo, hi


def _clip_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    a, b = clip_limits(node, ins)
    return [IntervalBounds(ins[0].lower.clamp(a, b), ins[0].upper.clamp(a, b))]


def _clip_cases(l: T, u: T, a: float, b: float) -> tuple[T, T, T, T, T]:
    A = torch.full_like(l, a) if math.isfinite(a) else l - 1
    B = torch.full_like(u, b) if math.isfinite(b) else u + 1
    kink_lo = (l < A) & (u > A)
    kink_hi = (l < B) & (u > B)
    return A, B, kink_lo & ~kink_hi, kink_hi & ~kink_lo, kink_lo & kink_hi


def _clip_relax(node: Node, l: T, u: T, alpha: Optional[T], consts: Sequence) -> Relaxation:
    a, b = clip_limits(node, consts)
    ls, us = _safe(l, u)
    A, B, only_lo, only_hi, both = _clip_cases(ls, us, a, b)
    s = _clip_alpha_init(node, ls, us, consts) if alpha is None else alpha.clamp(0, 1)
    one, zero = torch.ones_like(ls), torch.zeros_like(ls)
    w = torch.where(us > ls, us - ls, one)
    # Stable pieces: constant A, constant B, or identity.
    flat = (us <= A) | (ls >= B)
    base_k = torch.where(flat, zero, one)
    base_b = torch.where(us <= A, A, torch.where(ls >= B, B, zero))
    # One kink at A: lower A + s (x - A); upper the chord (l, A)-(u, u).
    ch_lo_k = (us - A) / w
    # One kink at B: upper B + s (x - B); lower the chord (l, l)-(u, B).
    ch_hi_k = (B - ls) / w
    # Two kinks: slopes through (A, A) / (B, B) limited so the line stays under B / above A.
    s_lo2 = s * (B - A) / torch.where(both, us - A, one)
    s_hi2 = s * (B - A) / torch.where(both, B - ls, one)
    lk = torch.where(only_lo, s, torch.where(only_hi, ch_hi_k, torch.where(both, s_lo2, base_k)))
    lb = torch.where(only_lo | both, A - lk * A, torch.where(only_hi, ls - ch_hi_k * ls, base_b))
    uk = torch.where(only_hi, s, torch.where(only_lo, ch_lo_k, torch.where(both, s_hi2, base_k)))
    ub = torch.where(only_hi | both, B - uk * B, torch.where(only_lo, A - ch_lo_k * ls, base_b))
    return finish("Clip", l, u, (lk, lb), (uk, ub), l.clamp(a, b), u.clamp(a, b))


def _clip_alpha_init(node: Node, l: T, u: T, consts: Sequence) -> T:
    a, b = clip_limits(node, consts)
    A, B, only_lo, only_hi, both = _clip_cases(l, u, a, b)
    steep = torch.where(only_lo, u - A >= A - l,
                        torch.where(only_hi, B - l >= u - B, B - A >= torch.maximum(A - l, u - B)))
    return steep.to(l.dtype)


def _clip_unstable(node: Node, l: T, u: T, consts: Sequence) -> T:
    _, _, only_lo, only_hi, both = _clip_cases(l, u, *clip_limits(node, consts))
    return only_lo | only_hi | both


# ------------------------------------------------------------------------ Sign, Floor

def _step_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    fn = torch.sign if node.op == "Sign" else torch.floor
    return [IntervalBounds(fn(ins[0].lower), fn(ins[0].upper))]


def _step_relax(node: Node, l: T, u: T, alpha: Optional[T], consts: Sequence) -> Relaxation:
    fn = torch.sign if node.op == "Sign" else torch.floor
    lo_c, hi_c = fn(l), fn(u)
    zero = torch.zeros_like(l)
    if node.op == "Floor":
        step = lo_c != hi_c
        lower = (torch.where(step, torch.ones_like(l), zero), torch.where(step, -torch.ones_like(l), lo_c))
        upper = (torch.where(step, torch.ones_like(l), zero), torch.where(step, zero, hi_c))
    else:
        lower, upper = (zero, lo_c), (zero, hi_c)
    return finish(node.op, l, u, lower, upper, lo_c, hi_c)


def _step_unstable(node: Node, l: T, u: T, consts: Sequence) -> T:
    fn = torch.sign if node.op == "Sign" else torch.floor
    return fn(l) != fn(u)


# ---------------------------------------------------------------------------- Cast

# ONNX TensorProto codes: float 1, double 11, float16 10, bfloat16 16, bool 9; the
# forward rule (`models.ops.elementwise`) casts int32 (6) and int64 (7) as truncation.
_HALF = {10: (2.0 ** -11, 2.0 ** -24, torch.float16), 16: (2.0 ** -8, 2.0 ** -133, torch.bfloat16)}


def _cast_to(node: Node) -> int:
    return int(node.attr("to", 1))


def _cast_values(node: Node, x: T) -> T:
    """The cast of float values ``x``, as floats of x's dtype (monotone in x)."""
    to = _cast_to(node)
    if to in _HALF:
        return x.to(_HALF[to][2]).to(x.dtype)
    if to in (6, 7):
        return torch.trunc(x)
    if to == 9:
        return (x != 0).to(x.dtype)
    return x


def _cast_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    l, u = ins[0].lower, ins[0].upper
    if _cast_to(node) == 9:
        nonzero = (l > 0) | (u < 0)
        zero = (l == 0) & (u == 0)
        lo = nonzero.to(l.dtype)
        return [IntervalBounds(lo, torch.where(zero, torch.zeros_like(l), torch.ones_like(l)))]
    return [IntervalBounds(_cast_values(node, l), _cast_values(node, u))]


def _cast_relax(node: Node, l: T, u: T, alpha: Optional[T], consts: Sequence) -> Relaxation:
    to = _cast_to(node)
    [box] = _cast_interval(node, [IntervalBounds(l, u)])
    lo_c, hi_c = box.lower, box.upper
    one, zero = torch.ones_like(l), torch.zeros_like(l)
    if to in (6, 7):
        # x - 1 < trunc(x) <= x for x >= 0 and x <= trunc(x) < x + 1 for x <= 0: the
        # exact side where the interval keeps one sign, one unit off otherwise.
        lower = (one, torch.where(u <= 0, zero, -one))
        upper = (one, torch.where(l >= 0, zero, one))
    elif to == 9:
        lower, upper = (zero, lo_c), (zero, hi_c)
    elif to in _HALF:
        rel, tiny, _ = _HALF[to]
        r = torch.maximum(l.abs(), u.abs()) * rel + tiny
        lower, upper = (one, -r), (one, r)
    else:
        lower, upper = (one, zero), (one, zero)
    return finish(node.op, l, u, lower, upper, lo_c, hi_c)


def _cast_unstable(node: Node, l: T, u: T, consts: Sequence) -> T:
    if _cast_to(node) in (1, 11):
        return torch.zeros_like(l, dtype=torch.bool)
    [box] = _cast_interval(node, [IntervalBounds(l, u)])
    return box.lower != box.upper


# --------------------------------------------------------------------------- Sin, Cos

def trig_range(op: str, l: T, u: T) -> tuple[T, T]:
    """Exact range of sin or cos over [l, u] (float64 inside), as l's dtype."""
    L, U = l.double(), u.double()
    f = torch.sin if op == "Sin" else torch.cos
    peak, trough = (math.pi / 2, -math.pi / 2) if op == "Sin" else (0.0, math.pi)

    def holds(c: float) -> T:
        x = c + _TWO_PI * torch.ceil((L - c) / _TWO_PI)
        return x <= U

    full = ~(torch.isfinite(L) & torch.isfinite(U)) | (U - L >= _TWO_PI)
    Ls, Us = torch.where(full, 0.0, L), torch.where(full, 0.0, U)
    fl, fu = f(Ls), f(Us)
    hi = torch.where(full | holds(peak), 1.0, torch.maximum(fl, fu))
    lo = torch.where(full | holds(trough), -1.0, torch.minimum(fl, fu))
    return lo.to(l.dtype), hi.to(l.dtype)


def _trig_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    return [IntervalBounds(*trig_range(node.op, ins[0].lower, ins[0].upper))]


def _trig_chord(op: str, L: T, U: T) -> T:
    f = torch.sin if op == "Sin" else torch.cos
    wide = U > L
    k = (f(U) - f(L)) / torch.where(wide, U - L, torch.ones_like(U))
    return torch.where(wide, k, torch.zeros_like(k)).clamp(-1, 1)


def _trig_relax(node: Node, l: T, u: T, alpha: Optional[T], consts: Sequence) -> Relaxation:
    op = node.op
    ls, us = _safe(l, u)
    L, U = ls.double(), us.double()
    k = _trig_chord(op, L, U) if alpha is None else alpha.double().clamp(-1, 1)
    k = torch.where(U - L < _TWO_PI * (1 - 1e-9), k, torch.zeros_like(k))
    kd = k.detach()
    if op == "Sin":   # cos x = k
        bases = (torch.acos(kd), -torch.acos(kd))
        f = torch.sin
    else:             # -sin x = k
        bases = (torch.asin(-kd), math.pi - torch.asin(-kd))
        f = torch.cos
    points = [L, U]
    for b in bases:
        x = b + _TWO_PI * torch.ceil((L - b) / _TWO_PI)
        points.append(torch.minimum(torch.maximum(x, L), U))
    # The ends carry d bias / d l and d u (alpha-CROWN moves intervals); the critical points
    # are detached (f' = k there, so moving them changes f - k x to first order by nothing)
    # and, clamped onto an end, tie with it: `extremum` gives the end the whole gradient.
    vals = torch.stack(torch.broadcast_tensors(*[f(x) - k * x for x in points[:2]],
                                               *[f(x.detach()) - k * x.detach() for x in points[2:]]))
    dt = l.dtype
    lo_c, hi_c = trig_range(op, l, u)
    kk = k.to(dt)
    return finish(op, l, u, (kk, extremum(vals, False).to(dt)), (kk, extremum(vals, True).to(dt)), lo_c, hi_c)


def _trig_alpha_init(node: Node, l: T, u: T, consts: Sequence) -> T:
    ls, us = _safe(l, u)
    return _trig_chord(node.op, ls.double(), us.double()).to(l.dtype)


# ------------------------------------------------------------------------------ Pow

def pow_exponent(node: Node, c) -> float:
    """The constant exponent of a Pow node as one float (ValueError otherwise)."""
    if c is None or isinstance(c, IntervalBounds):
        raise ValueError(f"Pow node {node.name}: only a constant exponent is supported")
    c = torch.as_tensor(c)
    if c.numel() == 0:
        raise ValueError(f"Pow node {node.name}: empty exponent")
    p = float(c.reshape(-1)[0])
    if not bool((c == p).all()) or not math.isfinite(p):
        raise ValueError(f"Pow node {node.name}: only one finite exponent for all elements is supported")
    return p


def _pow_range(l: T, u: T, p: float) -> tuple[T, T]:
    inf = torch.full_like(l, math.inf)
    if p == 0:
        return torch.ones_like(l), torch.ones_like(u)
    fl, fu = torch.pow(l, p), torch.pow(u, p)
    lo, hi = torch.minimum(fl, fu), torch.maximum(fl, fu)
    if p == round(p):
        if p > 0:
            if int(p) % 2 == 0:
                lo = torch.where((l <= 0) & (u >= 0), torch.zeros_like(lo), lo)
            return lo, hi
        side = (l > 0) | (u < 0)
        return torch.where(side, lo, -inf), torch.where(side, hi, inf)
    ok = l >= 0
    return torch.where(ok, lo, -inf), torch.where(ok, hi, inf)


def _pow_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    if not isinstance(ins[0], IntervalBounds):
        return [_power_of_constant(node, ins[0], ins[1])]
    p = pow_exponent(node, ins[1])
    return [IntervalBounds(*_pow_range(ins[0].lower, ins[0].upper, p))]


def _power_of_constant(node: Node, base, exponent) -> IntervalBounds:
    """b^x for a constant base b > 0 and a variable exponent: monotone in x (increasing
    for b >= 1), so its interval is b^l, b^u in order. CROWN bounds it by this interval
    (the rule relaxes only its first input)."""
    if not isinstance(exponent, IntervalBounds):
        raise UnsupportedModel("Pow with neither input variable", node=node.name, op=node.qualified_op,
                               opset=node.opset)
    b = torch.as_tensor(base, dtype=exponent.lower.dtype, device=exponent.lower.device)
    if not bool((b > 0).all()) or not bool(torch.isfinite(b).all()):
        raise UnsupportedModel("a variable exponent needs a positive constant base", node=node.name,
                               op=node.qualified_op, opset=node.opset)
    at_l, at_u = torch.pow(b, exponent.lower), torch.pow(b, exponent.upper)
    return IntervalBounds(torch.minimum(at_l, at_u), torch.maximum(at_l, at_u))


def _pow_relax(node: Node, l: T, u: T, alpha: Optional[T], consts: Sequence) -> Relaxation:
    """x^p by cases: p = 0, 1 exact; even p > 0 convex; odd p > 0 convex for x >= 0,
    concave for x <= 0, S-shaped across 0 (relaxed as g = -x^p, which is convex then
    concave like a sigmoid, and negated back); integer p < 0 on one side of 0 (convex for x > 0, and for x < 0
    convex iff p is even); fractional p on x >= 0 (convex iff p >= 1 or p < 0)."""
    p = pow_exponent(node, consts[1])
    lo_c, hi_c = _pow_range(l, u, p)
    ls, us = _safe(l, u)
    one, zero = torch.ones_like(ls), torch.zeros_like(ls)
    if p in (0.0, 1.0):
        k = zero if p == 0 else one
        b = one if p == 0 else zero
        return finish("Pow", l, u, (k, b), (k, b), lo_c, hi_c)
    a = torch.full_like(ls, 0.5) if alpha is None else alpha

    def f(x: T) -> T:
        return torch.pow(x, p)

    def df(x: T) -> T:
        return p * torch.pow(x, p - 1)

    t = ls + a * (us - ls)
    nan = torch.full_like(ls, math.nan)
    if p == round(p) and p > 0 and int(p) % 2 == 0:
        lower, upper = curved(f, df, ls, us, t, True)
    elif p == round(p) and p > 0:
        cross = (ls < 0) & (us > 0)
        lower, upper = curved(f, df, ls, us, t, ls >= 0)
        q = int(p)

        def g(x: T) -> T:
            return -torch.pow(x, q)

        def dg(x: T) -> T:
            return -q * torch.pow(x, q - 1)

        def dg_inv(k: T) -> T:
            return torch.pow((-k).clamp(min=0) / q, 1.0 / (q - 1))

        a_s = torch.full_like(ls, S_CROSSING_INIT) if alpha is None else alpha
        lo_g, up_g = s_shape(g, dg, dg_inv, ls, us, a_s, cap=None)
        lower = (torch.where(cross, -up_g[0], lower[0]), torch.where(cross, -up_g[1], lower[1]))
        upper = (torch.where(cross, -lo_g[0], upper[0]), torch.where(cross, -lo_g[1], upper[1]))
    elif p == round(p):
        side = (ls > 0) | (us < 0)
        lp, up_ = torch.where(side, ls, one), torch.where(side, us, 2 * one)
        tp = torch.where(side, t, one)
        convex = (lp > 0) | (int(p) % 2 == 0)
        lower, upper = curved(f, df, lp, up_, tp, convex)
        lower = (torch.where(side, lower[0], nan), lower[1])
        upper = (torch.where(side, upper[0], nan), upper[1])
    else:
        ok = ls >= 0
        lp, up_ = torch.where(ok, ls, zero), torch.where(ok, us, one)
        tp = torch.where(ok, t, one)
        if p < 1:
            tp = torch.clamp(tp, min=math.sqrt(torch.finfo(ls.dtype).tiny))
        lower, upper = curved(f, df, lp, up_, tp, p > 1 or p < 0)
        lower = (torch.where(ok, lower[0], nan), lower[1])
        upper = (torch.where(ok, upper[0], nan), upper[1])
    return finish("Pow", l, u, lower, upper, lo_c, hi_c)


def _pow_alpha_init(node: Node, l: T, u: T, consts: Sequence) -> T:
    p = pow_exponent(node, consts[1])
    if p == round(p) and p > 0 and int(p) % 2 == 1:   # odd: s_shape on crossing intervals
        return torch.where((l < 0) & (u > 0), torch.full_like(l, S_CROSSING_INIT), torch.full_like(l, 0.5))
    return torch.full_like(l, 0.5)


def _clip_lipschitz(node: Node, consts: Sequence) -> Optional[float]:
    """1 with constant (or absent) limits; none when a limit varies with the input."""
    return 1.0 if all(c is not None for x, c in zip(node.inputs[1:], consts[1:]) if x) else None


def register() -> None:
    ew = frozenset({"elementwise"})
    register_rule(OpRule("Abs", "elementwise", interval=lambda n, ins, ev=None: [IntervalBounds(*_abs_range(ins[0].lower, ins[0].upper))],
                         relax=_abs_relax, alpha_init=_abs_alpha_init, alpha_bounds=_minus_one_one,
                         unstable=lambda n, l, u, c: (l < 0) & (u > 0), lipschitz=slope(1.0),
                         facts=ew | {"piecewise_linear"}))
    register_rule(OpRule("Clip", "elementwise", interval=_clip_interval, relax=_clip_relax,
                         alpha_init=_clip_alpha_init, alpha_bounds=_zero_one, unstable=_clip_unstable,
                         lipschitz=_clip_lipschitz, facts=ew | {"piecewise_linear", "monotone", "exact"}))
    for op in ("Sign", "Floor"):
        register_rule(OpRule(op, "elementwise", interval=_step_interval, relax=_step_relax,
                             unstable=_step_unstable, facts=ew | {"monotone", "piecewise_constant"}))
    register_rule(OpRule("Cast", "elementwise", interval=_cast_interval, relax=_cast_relax,
                         unstable=_cast_unstable, facts=ew | {"monotone"}))
    for op in ("Sin", "Cos"):
        register_rule(OpRule(op, "elementwise", interval=_trig_interval, relax=_trig_relax,
                             alpha_init=_trig_alpha_init, alpha_bounds=_minus_one_one,
                             unstable=unstable_if_wide, lipschitz=slope(1.0), facts=ew | {"smooth"}))
    register_rule(OpRule("Pow", "elementwise", interval=_pow_interval, relax=_pow_relax,
                         alpha_init=_pow_alpha_init, alpha_bounds=_zero_one, unstable=unstable_if_wide,
                         facts=ew))
