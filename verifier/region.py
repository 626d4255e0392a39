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
"""
from __future__ import annotations

from fractions import Fraction
from typing import Optional

import numpy as np

from vnnlib.spec import InputRegion

__all__ = ["empty_region_proof", "check_empty_region"]


def empty_region_proof(region: InputRegion) -> Optional[dict]:
    """A checked certificate that ``region`` is empty, or None (not empty, or not proved)."""
    if region.A is None or region.A.shape[0] == 0:
        return None  # a box with lower <= upper (the Spec checks it) is never empty
    from scipy.optimize import linprog

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
