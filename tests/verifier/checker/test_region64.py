"""The checker's bound of a linear function over a box cut by rows R x <= r
(verifier/checker/region64.py) against the exact LP minimum: never above it, equal to
it (up to rounding) for one row, and above the plain box minimum where a row cuts; a
box outside a row is recognised, one that touches it is not."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from verifier.checker.bounds64 import MARGIN_ABS, MARGIN_REL
from verifier.checker.region64 import outside_region, region_minimum


def _widened(value, total):
    return value - (MARGIN_REL * total + MARGIN_ABS)


@pytest.mark.parametrize("K", [1, 2, 3])
def test_never_above_the_lp_minimum_and_tight_for_one_row(K):
    rng = np.random.default_rng(K)
    L, S, n = 6, 3, 5
    lo = rng.uniform(-1, 0, (L, n))
    hi = lo + rng.uniform(0.1, 2, (L, n))
    A = rng.standard_normal((L, S, n))
    bias = rng.standard_normal((L, S))
    R = rng.standard_normal((K, n))
    centre = (lo + hi) / 2
    r = (centre[0] @ R.T) + 0.05          # the first box's centre meets every row
    got = _widened(*region_minimum(A, bias, np.zeros((L, S)), lo, hi, R, r))
    plain = (np.minimum(A * lo[:, None], A * hi[:, None]).sum(-1) + bias)
    tighter = 0
    for leaf in range(L):
        for s in range(S):
            res = linprog(A[leaf, s], A_ub=R, b_ub=r, bounds=list(zip(lo[leaf], hi[leaf])), method="highs")
            if res.status == 2:            # no point: any bound holds
                continue
            exact = res.fun + bias[leaf, s]
            assert got[leaf, s] <= exact + 1e-9, (leaf, s)
            if K == 1:
                assert got[leaf, s] >= exact - 1e-7, (leaf, s)
            tighter += got[leaf, s] > plain[leaf, s] + 1e-6
    assert tighter > 0


def test_outside_region():
    lo, hi = np.array([[0.0, 0.0], [0.0, 0.0]]), np.array([[1.0, 1.0], [0.5, 0.5]])
    R, r = np.array([[-1.0, -1.0]]), np.array([-1.5])      # x0 + x1 >= 1.5
    out = outside_region(lo, hi, R, r, lambda m: MARGIN_REL * m + MARGIN_ABS)
    assert out.tolist() == [False, True]
    touching = outside_region(np.array([[0.0, 0.0]]), np.array([[0.75, 0.75]]), R, r,
                              lambda m: MARGIN_REL * m + MARGIN_ABS)
    assert touching.tolist() == [False]
