"""Linear lower bounds over a box cut by a region's rows ``R x <= r``, in float64, for the checker.

Trusted code, written from the definitions (it shares nothing with `bab.clipping`, which
the search uses to the same end). A VNN-LIB 2.0 query may couple its inputs (``X_f[0] >=
X_g[0]``, ``|X1 - X2| <= eps``): such rows are a region's ``A x <= b``, and a leaf's
bound may need them. For a linear lower bound ``w . x + c`` of a spec row on a leaf box,
weak Lagrangian duality gives, for ANY multipliers ``lam >= 0``,

    min { w . x + c : x in box, R x <= r }  >=  c - lam . r + min_{x in box} (w + lam R) . x,

so the multipliers need no checking: they are chosen here (coordinate ascent, each
coordinate maximised exactly: the one-dimensional dual is concave and piecewise linear
with kinks where a coefficient of ``w + lam R`` changes sign), and a poor choice only
costs tightness. The value is computed with the rounding mass of `bounds64`: every
product and sum that makes it is charged, so the widened result is a true lower bound.
A leaf on which some row has no point (its minimum over the box above the row's bound
by more than that row's rounding margin) holds no point of the region: +inf.
"""
from __future__ import annotations

import numpy as np

__all__ = ["SWEEPS", "region_minimum", "outside_region"]

SWEEPS = 2


def _box_min(coef: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """sum_i min(coef_i lo_i, coef_i hi_i) over the last axis."""
    return np.minimum(coef * lo, coef * hi).sum(-1)


def _best_step(w: np.ndarray, lo: np.ndarray, hi: np.ndarray, a: np.ndarray, c: float) -> np.ndarray:
    """argmax over lam >= 0 of  -lam c + min_box (w + lam a) . x  for each row of w [..., n]
    (lo, hi broadcast to w; a [n]). Its right slope at lam is -c + a . x*(lam), x* the
    minimising corner; passing the kink -w_i / a_i moves x_i to the other end and lowers
    the slope by |a_i| (hi_i - lo_i). The maximiser is the first kink where the slope is
    no longer positive."""
    kink = (w * a) < 0
    safe = np.where(a != 0, a, 1.0)
    at = np.where(kink, -w / safe, np.inf)
    x0 = np.where(np.where(w != 0, w, a) > 0, lo, hi)
    slope = -c + (a * x0).sum(-1)                                   # [...]
    drop = np.where(kink, np.abs(a) * (hi - lo), 0.0)
    order = np.argsort(at, axis=-1)
    sorted_at = np.take_along_axis(at, order, -1)
    passed = np.cumsum(np.take_along_axis(drop, order, -1), -1)
    k = (passed < slope[..., None]).sum(-1)
    n = w.shape[-1]
    lam = np.take_along_axis(sorted_at, np.minimum(k, n - 1)[..., None], -1)[..., 0]
    finite = np.where(np.isfinite(sorted_at), sorted_at, 0.0).max(-1)
    lam = np.where((k >= n) | ~np.isfinite(lam), finite, lam)
    return np.where(slope <= 0, 0.0, lam)


def outside_region(lo: np.ndarray, hi: np.ndarray, R: np.ndarray, r: np.ndarray, margin) -> np.ndarray:
    """[L] True where some row of R x <= r has no point in the box lo, hi [L, n], beyond
    `margin(mass)` of its rounding."""
    amin = np.stack([_box_min(R[k], lo, hi) for k in range(len(r))], -1) - r          # [L, K]
    mass = np.stack([(np.abs(R[k]) * np.maximum(np.abs(lo), np.abs(hi))).sum(-1) for k in range(len(r))], -1)
    return (amin > margin(mass + np.abs(r))).any(-1)


def region_minimum(A: np.ndarray, bias: np.ndarray, mass: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                   R: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value, rounding mass) [L, S] of the dual bound of min A . x + bias over each box
    lo, hi [L, n] cut by R x <= r (R [K, n], r [K]); `mass` is what `bias` already carries."""
    L, S, n = A.shape
    lo3, hi3 = lo[:, None, :], hi[:, None, :]
    lam = np.zeros((L, S, len(r)))
    coef = A.copy()
    for _ in range(SWEEPS):
        for k in range(len(r)):
            w = coef - lam[..., k:k + 1] * R[k]
            lam[..., k] = _best_step(w, lo3, hi3, R[k], float(r[k]))
            coef = w + lam[..., k:k + 1] * R[k]
    coef = A + lam @ R                                               # fresh, one rounding
    zmax = np.maximum(np.abs(lo3), np.abs(hi3))
    value = bias - lam @ r + _box_min(coef, lo3, hi3)
    total = mass + np.abs(bias) + lam @ np.abs(r) + ((np.abs(A) + lam @ np.abs(R)) * zmax).sum(-1)
    return value, total
