"""Proving an input region empty: a box cut by rows ``A x <= b`` that no point satisfies.

VNN-LIB 2.0 queries couple inputs (``0.5 X[0] + 0.75 X[1] >= 3`` over a box), and such
a region may be empty, which makes its disjunct unsat whatever the network does. Bound
propagation and input splitting never see that (they bound the network over the box),
so the verifier asks this module first. An LP (HiGHS through scipy) minimises the
largest violation ``t`` of the rows over the box; its row duals ``y >= 0`` are a Farkas
certificate: every point of the region satisfies ``(y A) x <= y b``, so if the
minimum of ``(y A) x`` over the box exceeds ``y b`` there is no such point. That last
inequality is checked in exact rational arithmetic on the float64 values of ``y``,
``A``, ``b`` and the box, so the LP's own rounding cannot make a wrong ``unsat``: a
certificate that fails the exact check is simply not used.

`polytope_point` asks the same question of the polytopes of activation split's fully
split leaves (bab/leaf_lp.py), many per search and up to hundreds of inputs wide, where
rational arithmetic would cost more than the LP: there the Farkas inequality is checked
in float64 with a rigorous bound on the rounding of every product and sum.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Optional

import numpy as np

from relaxations.lp import dual_lower_bound
from verifier.solvers.highs import closest_point, least_violation
from vnnlib.spec import InputRegion

__all__ = ["empty_region_proof", "check_empty_region", "polytope_point"]


def empty_region_proof(region: InputRegion) -> Optional[dict]:
    """A checked certificate that ``region`` is empty, or None (not empty, or not proved)."""
    if region.A is None or region.A.shape[0] == 0:
        return None  # a box with lower <= upper (the Spec checks it) is never empty
    from scipy.optimize import linprog  # lazy: scipy.optimize takes about 0.3-0.7 s; only a region with rows needs it

    A, b = region.A, region.b
    m, n = A.shape
    # minimise t  subject to  A x - t <= b,  lower <= x <= upper,  t >= 0
    cost = np.zeros(n + 1)
    cost[-1] = 1.0
    res = linprog(cost, A_ub=np.hstack([A, -np.ones((m, 1))]), b_ub=b,
                  bounds=[*zip(region.lower, region.upper), (0, None)], method="highs")
    if res.status != 0 or res.fun <= 0:
        return None
    y = np.maximum(-np.asarray(res.ineqlin.marginals, dtype=np.float64), 0.0)
    proof = {"kind": "empty-region", "y": [float(v) for v in y]}
    return proof if check_empty_region(region, proof) else None


def check_empty_region(region: InputRegion, proof: dict) -> bool:
    """Whether ``proof['y']`` shows, in exact arithmetic, that no point of the box meets every row."""
    y = np.asarray(proof.get("y", ()), dtype=np.float64)
    if region.A is None or y.shape != (region.A.shape[0],) or np.any(y < 0) or not np.all(np.isfinite(y)):
        return False
    rows = np.flatnonzero(y > 0)
    if rows.size == 0:
        return False
    weights = [Fraction(float(y[i])) for i in rows]
    rhs = sum((w * Fraction(float(region.b[i])) for w, i in zip(weights, rows)), Fraction(0))
    lowest = Fraction(0)
    for j in np.flatnonzero(np.any(region.A[rows] != 0, axis=0)):
        r = sum((w * Fraction(float(region.A[i, j])) for w, i in zip(weights, rows)), Fraction(0))
        end = float(region.lower[j] if r > 0 else region.upper[j])
        if r != 0:
            if not np.isfinite(end):
                return False
            lowest += r * Fraction(end)
    return lowest > rhs




def _gamma(k: int) -> float:
    """Twice the classical bound k u / (1 - k u) on the relative rounding of a k-term
    float64 dot product (u = 2^-53): the slack also covers the error terms' own rounding."""
    u = 2.0 ** -53
    return 2.0 * (k + 2) * u / (1.0 - (k + 2) * u)


def farkas_proves_empty(G: np.ndarray, h: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                        y: np.ndarray) -> bool:
    """Whether multipliers ``y >= 0`` show that no x of the box meets ``G x <= h``:
    ``min over the box of (y G) x > y h``. That is `relaxations.lp.dual_lower_bound` with a
    zero objective (its rigorous lower bound of min 0 over the polytope is the difference
    of the two sides, its rounding bounded), so a claim of emptiness is never the floating
    point's."""
    if y.shape != (G.shape[0],) or np.any(y < 0) or not np.all(np.isfinite(y)):
        return False
    m, n = G.shape
    return bool(dual_lower_bound(np.zeros(n), G, np.full(m, -np.inf), np.asarray(h, np.float64),
                                 np.asarray(lower, np.float64), np.asarray(upper, np.float64), -y) > 0)


def ball_lowest(G: np.ndarray, lower: np.ndarray, upper: np.ndarray, ball: tuple[np.ndarray, float],
                y: np.ndarray) -> float:
    """A rigorous lower bound of min (y G) x over x in the ball (centre c, radius rho):
    r.c - rho ||r|| with r = y G, lowered by bounds on the rounding of r, of the dot
    product and of the norm (each `_gamma` of its length)."""
    centre, radius = ball
    m, n = G.shape
    r = y @ G
    r_err = _gamma(m) * (y @ np.abs(G))
    terms = r * centre
    dot_lo = terms.sum() - _gamma(n) * np.abs(terms).sum() - float(r_err @ np.abs(centre)) * (1 + _gamma(n))
    norm_hi = (float(np.linalg.norm(r)) + float(np.linalg.norm(r_err))) * (1 + _gamma(n))
    return float(dot_lo - radius * norm_hi * (1 + _gamma(2)))


def polytope_point(G: np.ndarray, h: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                   ball: Optional[tuple[np.ndarray, float]] = None) -> tuple[bool, Optional[np.ndarray]]:
    """(True, None) when ``{x in [lower, upper]: G x <= h}`` (also within the l2 ball
    (centre, radius) when given) is proved empty, else (False, a point of it or the LP's
    least-violating point; None when the LP failed).

    The LP (`least_violation`) minimises the largest violation t >= 0; emptiness is
    claimed only when its row multipliers pass `farkas_proves_empty`. With a ball and a
    non-empty polytope, a QP finds the polytope's point nearest the centre
    (`closest_point`): inside the ball it is the answer; outside, the QP's multipliers y
    prove the ball misses the polytope when `ball_lowest` (min of (y G) x over the
    ball, rigorous) exceeds y h rounded up."""
    if G.shape[0] == 0:
        return False, (lower + upper) / 2 if ball is None else ball[0].copy()
    out = least_violation(G, h, lower, upper)
    if out is None:
        return False, None
    t, x, y = out
    x = np.clip(x, lower, upper)
    if t > 0 and farkas_proves_empty(G, h, lower, upper, y):
        return True, None
    if ball is None or t > 0:
        return False, x
    near = closest_point(G, h, lower, upper, ball[0])
    if near is None:
        return False, x
    x, y = np.clip(near[0], lower, upper), near[1]
    if float(np.linalg.norm(x - ball[0])) <= ball[1]:
        return False, x
    G, h, y = _with_box_rows(G, h, lower, upper, ball[0], x, y)
    bound = ball_lowest(G, lower, upper, ball, y) if bool((y > 0).any()) else -np.inf
    return (True, None) if bound > y @ h + _gamma(len(h)) * (y @ np.abs(h)) else (False, x)


def _with_box_rows(G: np.ndarray, h: np.ndarray, lower: np.ndarray, upper: np.ndarray, centre: np.ndarray,
                   x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The QP's active box bounds as rows (x_j <= upper_j, -x_j <= -lower_j) with their
    multipliers, read from stationarity x - c + G^T y + z_up - z_lo = 0: where the ball's
    nearest point sits on the box, the rows' multipliers alone certify nothing."""
    g = x - centre + G.T @ y
    tol = 1e-9 * (1 + np.abs(x))
    z_up = np.where(x >= upper - tol, np.maximum(-g, 0.0), 0.0)
    z_lo = np.where(x <= lower + tol, np.maximum(g, 0.0), 0.0)
    eye = np.eye(len(x))
    up, lo = z_up > 0, z_lo > 0
    return (np.vstack([G, eye[up], -eye[lo]]), np.concatenate([h, upper[up], -lower[lo]]),
            np.concatenate([y, z_up[up], z_lo[lo]]))
