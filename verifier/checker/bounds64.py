"""IBP and CROWN in float64 numpy with outward rounding, for the certificate checker.

Trusted code, written from the definitions and sharing nothing with `relaxations`.
Every bound is computed for a batch of L input boxes at once.

Rounding. Each computed lower bound is `value - (MARGIN_REL * mass + MARGIN_ABS)`,
where `mass` bounds the sum of absolute values of every term whose rounding could move
the result: the products in each dot product, the biases, and, for each backward step
through a node with input z, `|A_out| . (|M| zmax) + |A_out| . |b|` for a linear node
`M z + b` (`|M|` is M with absolute weights: `|W| @ zmax` for affine, `|s| * zmax` for
scale, the convolution of zmax with `|K|` for conv), `|coef| |A_out| . zmax` per input
of a sum, and `|A_out| . zmax` plus the chord intercepts' terms for a ReLU, with
zmax = max(|l|, |u|) from z's sound interval. A float64 dot product of n terms is off
by at most n * 2^-53 * (sum of |terms|) (the standard gamma_n bound, in any order of
summation: `linear64` sums the same products as the dense row, grouped by kernel
offset for a convolution); entry k of the rounded `A_out M` is such a sum, of terms
`|A_out[r] M[r, k]|`, so its error changes `A . z` by at most gamma_n times
`|A_out| . (|M| zmax)`; the rounded chord of an unstable ReLU moves its line by at
most 5 * 2^-53 * zmax. IBP through a linear node charges `|M| zmax + |b|` per output.
So for every dot product of fewer than 10^6 terms all errors together stay below
8 * 10^6 * 1.1e-16 * mass < 1e-9 * mass: MARGIN_REL covers them with room to spare,
and MARGIN_ABS covers underflow. Over an l2 ball (a certificate's `l2_ball`) the minimum
A . c + b - r ||A||_2 is charged |A| . |c| + |b| + r ||A||_2 the same way
(`_ball_minimum`: sqrt of a float64 sum of squares is within (n/2 + 2) ulps).
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from verifier.checker.linear64 import apply, apply_t
from verifier.checker.onnx_net import LINEAR_KINDS, Layer, Network
from verifier.checker.region64 import outside_region, region_minimum

__all__ = ["MARGIN_REL", "MARGIN_ABS", "BALL", "interval_table", "split_interval_table", "row_lower_bounds"]

MARGIN_REL = 1e-9
MARGIN_ABS = 1e-12

Table = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # lower, upper, max(|lower|, |upper|)
# The table's entry for an l2 ball that cuts every input box (centre [L, n], radius [L, 1],
# and an unused third part): every concretisation then also uses the ball.
BALL = "\x00l2-ball"


def _widen(value: np.ndarray, mass: np.ndarray) -> np.ndarray:
    return value - (MARGIN_REL * mass + MARGIN_ABS)


def _zmax(table: Table, name: str) -> np.ndarray:
    return table[name][2]


def _entry(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return lo, hi, np.maximum(np.abs(lo), np.abs(hi))


def _bdot(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """sum_n a[l, s, n] * v[l, n] -> [l, s] (one batched matrix product)."""
    return np.matmul(a, v[:, :, None])[:, :, 0]


def _interval(layer: Layer, table: Table) -> tuple[np.ndarray, np.ndarray]:
    """IBP of one node: [L, n_out] lower and upper, widened outward."""
    if layer.kind == "relu":
        lo, hi = table[layer.inputs[0]][:2]
        return np.maximum(lo, 0.0), np.maximum(hi, 0.0)  # exact
    if layer.kind in LINEAR_KINDS:
        lo, hi = table[layer.inputs[0]][:2]
        mass = apply(layer, _zmax(table, layer.inputs[0]), "abs") + np.abs(layer.b)
        low = apply(layer, lo, "pos") + apply(layer, hi, "neg") + layer.b
        up = apply(layer, hi, "pos") + apply(layer, lo, "neg") + layer.b
        return _widen(low, mass), -_widen(-up, mass)
    if layer.kind == "mul":
        (lx, ux, zx), (ly, uy, zy) = table[layer.inputs[0]], table[layer.inputs[1]]
        corners = np.stack([lx * ly, lx * uy, ux * ly, ux * uy])
        return _widen(corners.min(0), zx * zy), -_widen(-corners.max(0), zx * zy)
    low = up = mass = 0.0
    for x, c in zip(layer.inputs, layer.coefs):
        lo, hi = table[x][:2]
        low = low + (c * lo if c > 0 else c * hi)
        up = up + (c * hi if c > 0 else c * lo)
        mass = mass + abs(c) * _zmax(table, x)
    return _widen(low, mass), -_widen(-up, mass)


def _relu_lines(lo: np.ndarray, hi: np.ndarray, alpha: Optional[np.ndarray]):
    """Lower slope, upper slope and upper intercept per neuron ([L or L,S, n])."""
    active, inactive = lo >= 0, hi <= 0
    unstable = ~(active | inactive)
    width = np.where(unstable, hi - lo, 1.0)
    chord = np.where(unstable, hi / width, 0.0)
    up_slope = np.where(active, 1.0, chord)
    up_bias = np.where(unstable, -lo * chord, 0.0)
    default = np.where(hi >= -lo, 1.0, 0.0)
    if alpha is None:
        low_slope = np.where(active, 1.0, np.where(unstable, default, 0.0))
    else:
        # Any slope in [0, 1] is a valid lower line; NaN marks "not given": CROWN's default.
        a = np.where(np.isnan(alpha), default[:, None], np.clip(alpha, 0.0, 1.0))
        low_slope = np.where(active[:, None], 1.0, np.where(unstable[:, None], a, 0.0))
        up_slope, up_bias = up_slope[:, None], up_bias[:, None]
    return low_slope, up_slope, up_bias


def _backward(net: Network, table: Table, start: str, A: np.ndarray,
              alphas: Optional[Mapping[str, np.ndarray]] = None,
              extra: Optional[Mapping[str, np.ndarray]] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A lower bound `A_in . x + bias` of `A . start`, with its rounding mass; A: [L, S, n].

    extra[t] ([L, S, n_t]) is added to the coefficient of tensor t when the walk reaches
    it: the beta terms of split constraints. It changes the function being bounded, so
    the caller must know that the added terms are <= 0 wherever the bound is used.
    """
    L, S = A.shape[:2]
    As: dict[str, np.ndarray] = {start: A}
    bias = np.zeros((L, S))
    mass = np.zeros((L, S))

    def accumulate(x: str, a: np.ndarray) -> None:
        nonlocal mass
        if x in As:  # the sum of two A matrices rounds too
            mass = mass + _bdot(np.abs(As[x]) + np.abs(a), _zmax(table, x))
            As[x] = As[x] + a
        else:
            As[x] = a

    stop = next((i for i, l in enumerate(net.layers) if l.out == start), -1)
    for layer in reversed(net.layers[:stop + 1]):
        if extra is not None and layer.out in extra:
            accumulate(layer.out, extra[layer.out])
        a = As.pop(layer.out, None)
        if a is None:
            continue
        absa = np.abs(a)
        if layer.kind in LINEAR_KINDS:
            x = layer.inputs[0]
            wz = apply(layer, _zmax(table, x), "abs") + np.abs(layer.b)    # |M| zmax + |b|: [L, n_out]
            bias = bias + a @ layer.b
            mass = mass + _bdot(absa, wz)
            accumulate(x, apply_t(layer, a.reshape(L * S, -1)).reshape(L, S, -1))
        elif layer.kind == "sum":
            for x, c in zip(layer.inputs, layer.coefs):
                accumulate(x, c * a)
                mass = mass + abs(c) * _bdot(absa, _zmax(table, x))
        elif layer.kind == "mul":
            # McCormick's planes with weight 1/2 (CROWN's default in the engine): both lines
            # of z = x y have the slopes (cy, cx) of the centres, and intercepts
            # -(lx ly + ux uy) / 2 below, -(lx uy + ux ly) / 2 above; each a convex
            # combination of two planes valid on the whole box. Their rounding, and that of
            # the products into A, is charged by |A| (|cy| zx + |cx| zy + |bl| + |bu|).
            x, y = layer.inputs
            (lx, ux, zx), (ly, uy, zy) = table[x], table[y]
            cx, cy = (lx + ux) / 2, (ly + uy) / 2
            bl, bu = -(lx * ly + ux * uy) / 2, -(lx * uy + ux * ly) / 2
            bias = bias + _bdot(np.maximum(a, 0.0), bl) + _bdot(np.minimum(a, 0.0), bu)
            mass = mass + _bdot(absa, np.abs(cy) * zx + np.abs(cx) * zy + np.abs(bl) + np.abs(bu))
            accumulate(x, a * cy[:, None, :])
            accumulate(y, a * cx[:, None, :])
        else:
            x = layer.inputs[0]
            lo, hi = table[x][:2]
            alpha = None if alphas is None else alphas.get(layer.name)
            low_slope, up_slope, up_bias = _relu_lines(lo, hi, alpha)
            if alpha is None:
                low_slope, up_slope, up_bias = low_slope[:, None], up_slope[:, None], up_bias[:, None]
            neg = np.minimum(a, 0.0)
            slope = np.where(a > 0, low_slope, up_slope)
            # up_bias >= 0 and neg <= 0, so |neg * up_bias| summed is minus the bias term.
            term = _bdot(neg, up_bias[:, 0, :])                          # up_bias: [L, 1, n]
            bias = bias + term
            mass = mass - term + _bdot(absa, _zmax(table, x))
            accumulate(x, a * slope)
    if extra is not None and net.input in extra:
        accumulate(net.input, extra[net.input])
    A_in = As.pop(net.input, np.zeros((L, S, net.n_in)))
    return A_in, bias, mass


def _concretize(table: Table, net: Network, A_in: np.ndarray, bias: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Sound minimum of A_in . x + bias over each input box (and, where the table holds a
    ball, the better of that and the minimum over the ball: both bound the minimum over
    their intersection), widened for rounding."""
    lo, hi, zmax = table[net.input]
    value = _bdot(np.maximum(A_in, 0.0), lo) + _bdot(np.minimum(A_in, 0.0), hi)
    total = mass + np.abs(bias) + _bdot(np.abs(A_in), zmax)
    box = _widen(value + bias, total)
    if BALL not in table:
        return box
    centre, radius = table[BALL][0], table[BALL][1][:, 0]
    return np.maximum(box, _widen(*_ball_minimum(A_in, bias, mass, centre, radius)))


def _ball_minimum(A: np.ndarray, bias: np.ndarray, mass: np.ndarray, centre: np.ndarray, radius: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """min of A . x + bias over ||x - centre||_2 <= radius, [L, S]: A . centre + bias -
    radius ||A||_2 (Cauchy-Schwarz, attained), and its rounding mass. The dot product
    is charged |A| . |centre| as any other; sqrt(sum A^2) in float64 is within (n/2 + 2)
    ulps of ||A||_2 (n < 10^6 terms: below 1e-9 relative), so charging radius ||A||_2
    lets MARGIN_REL cover it, and the subtraction and the product by radius too."""
    norm = np.sqrt(np.einsum("lsn,lsn->ls", A, A))
    value = _bdot(A, centre) + bias - radius[:, None] * norm
    total = mass + np.abs(bias) + _bdot(np.abs(A), np.abs(centre)) + radius[:, None] * norm
    return value, total


def _crown_interval(net: Network, table: Table, name: str, lo: np.ndarray, hi: np.ndarray, every: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """IBP interval of `name` tightened by CROWN on the neurons unstable in some box (on
    every neuron with `every`)."""
    idx = np.arange(lo.shape[1]) if every else np.nonzero(((lo < 0) & (hi > 0)).any(0))[0]
    if idx.size == 0:
        return lo, hi
    L, n, r = lo.shape[0], lo.shape[1], idx.size
    A = np.zeros((L, 2 * r, n))
    A[:, np.arange(r), idx] = 1.0
    A[:, r + np.arange(r), idx] = -1.0
    lb = _concretize(table, net, *_backward(net, table, name, A))
    lo, hi = lo.copy(), hi.copy()
    lo[:, idx] = np.maximum(lo[:, idx], lb[:, :r])
    hi[:, idx] = np.minimum(hi[:, idx], -lb[:, r:])
    return lo, hi


def interval_table(net: Network, lower: np.ndarray, upper: np.ndarray,
                   ball: Optional[tuple[np.ndarray, float]] = None) -> Table:
    """Sound intervals of every tensor over each box [L, n_in] (cut by the l2 ball
    (centre [n_in], radius) when given): IBP, and CROWN on ReLU inputs."""
    return split_interval_table(net, lower, upper, {}, ball)[0]


def _clamp(lo: np.ndarray, hi: np.ndarray, sign: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Split decisions applied: sign > 0 means t >= 0 on the domain, sign < 0 means t <= 0."""
    if sign is None:
        return lo, hi
    return np.where(sign > 0, np.maximum(lo, 0.0), lo), np.where(sign < 0, np.minimum(hi, 0.0), hi)


def split_interval_table(net: Network, lower: np.ndarray, upper: np.ndarray, signs: Mapping[str, np.ndarray],
                         ball: Optional[tuple[np.ndarray, float]] = None) -> tuple[Table, np.ndarray]:
    """Sound intervals over {x in box : every split holds}, and which leaves are empty.

    signs[t] ([L, n_t], +1 / -1 / 0 for free) clamps t's interval as soon as it is
    computed (IBP, then again after CROWN), so every later interval and relaxation is
    sound for the inputs that satisfy the splits on earlier tensors. A clamped interval
    with lower > upper proves that no input satisfies the leaf's splits: the leaf is
    empty [L] (its intervals are then replaced by points, to keep the arithmetic tame).
    """
    lo0, hi0 = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    empty = np.zeros(lo0.shape[0], bool)

    def settle(name: str, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nonlocal empty
        lo, hi = _clamp(lo, hi, signs.get(name))
        bad = lo > hi
        if bad.any():
            empty = empty | bad.any(1)
            lo = np.where(bad, hi, lo)
        return lo, hi

    table: Table = {net.input: _entry(*settle(net.input, lo0, hi0))}
    if ball is not None:
        L = lo0.shape[0]
        centre = np.broadcast_to(np.asarray(ball[0], np.float64).reshape(1, -1), lo0.shape).copy()
        table[BALL] = (centre, np.full((L, 1), float(ball[1])), np.zeros((L, 1)))
    relu_inputs = {l.inputs[0] for l in net.layers if l.kind == "relu"}
    factors = {x for l in net.layers if l.kind == "mul" for x in l.inputs}   # CROWN on every element
    # Over a ball, the tensors affine in the input are bounded through it at every element
    # (the box's IBP is looser there, and IBP goes on from them all), as the engine does.
    affine = {net.input} if ball is not None else set()
    for layer in net.layers:
        lo, hi = settle(layer.out, *_interval(layer, table))
        whole = layer.kind in (*LINEAR_KINDS, "sum") and all(x in affine for x in layer.inputs)
        if whole:
            affine.add(layer.out)
        if whole or layer.out in relu_inputs or layer.out in factors:
            lo, hi = settle(layer.out, *_crown_interval(net, table, layer.out, lo, hi,
                                                        every=whole or layer.out in factors))
        table[layer.out] = _entry(lo, hi)
    return table, empty


def row_lower_bounds(net: Network, table: Table, C: np.ndarray, d: np.ndarray,
                     alphas: Optional[Mapping[str, np.ndarray]] = None,
                     extra: Optional[Mapping[str, np.ndarray]] = None,
                     region: Optional[tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """Sound lower bounds [L, S] of C y - d: the better of IBP and CROWN (with `alphas`).

    alphas: ReLU node name -> [S, n] or [L, S, n] slopes (clipped into [0, 1]; NaN: the
    default); a missing node uses CROWN's default slope. extra: tensor -> [L, S, n]
    coefficients added in the backward pass (beta terms, see `_backward`). region: the
    spec region's rows (R [K, n_in], r [K]) besides its box: CROWN's linear bound is then
    also minimised over each box cut by them (`region64`), and a box outside them is +inf.
    """
    lo, hi = table[net.output][:2]
    L = lo.shape[0]
    Cp, Cn = np.maximum(C, 0.0), np.minimum(C, 0.0)
    ibp = lo @ Cp.T + hi @ Cn.T - d
    ibp = _widen(ibp, _zmax(table, net.output) @ np.abs(C).T + np.abs(d))
    A = np.broadcast_to(C, (L,) + C.shape).copy()
    A_in, bias, mass = _backward(net, table, net.output, A, alphas, extra)
    crown = _concretize(table, net, A_in, bias - d, mass + np.abs(d))
    if region is not None and len(region[1]):
        lo_in, hi_in = table[net.input][:2]
        R, r = region
        crown = np.maximum(crown, _widen(*region_minimum(A_in, bias - d, mass + np.abs(d), lo_in, hi_in, R, r)))
        outside = outside_region(lo_in, hi_in, R, r, lambda m: MARGIN_REL * m + MARGIN_ABS)
        crown[outside] = np.inf
    return np.maximum(ibp, crown)
