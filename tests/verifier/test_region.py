"""Polytope emptiness for activation split's leaves (`polytope_point`, `farkas_proves_empty`):
never 'empty' for a polytope with a point, even one point wide; empty claims agree with an
independent LP; points returned lie in the polytope."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from verifier.region import farkas_proves_empty, polytope_point


def _scipy_feasible(G, h, lo, hi) -> bool:
    res = linprog(np.zeros(G.shape[1]), A_ub=G, b_ub=h, bounds=list(zip(lo, hi)), method="highs")
    return res.status == 0


@pytest.mark.parametrize("seed", range(40))
def test_random_polytopes_agree_with_an_independent_lp(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 6)), int(rng.integers(1, 12))
    G = rng.normal(size=(m, n))
    h = rng.normal(size=m) * 0.5
    lo, hi = -np.ones(n), np.ones(n)
    empty, point = polytope_point(G, h, lo, hi)
    feasible = _scipy_feasible(G, h, lo, hi)
    if empty:
        assert not feasible
    if feasible:
        assert not empty and point is not None
        assert np.all(G @ point <= h + 1e-6) and np.all(point >= lo) and np.all(point <= hi)


def test_a_single_point_polytope_is_never_called_empty() -> None:
    """x0 + x1 <= 1, -x0 - x1 <= -1, x0 - x1 <= 0, x1 - x0 <= 0: only x = (0.5, 0.5)."""
    G = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    h = np.array([1.0, -1.0, 0.0, 0.0])
    lo, hi = np.zeros(2), np.ones(2)
    empty, point = polytope_point(G, h, lo, hi)
    assert not empty
    assert np.allclose(point, [0.5, 0.5], atol=1e-9)
    # Any multipliers: none can prove a non-empty polytope empty.
    rng = np.random.default_rng(0)
    for _ in range(200):
        assert not farkas_proves_empty(G, h, lo, hi, rng.exponential(size=4))


def test_a_gap_of_one_ulp_is_not_claimed_unless_proved() -> None:
    """x <= 0.5 and x >= 0.5 + 1 ulp: empty in exact arithmetic; the check may decline,
    but with x >= 0.5 it must never say empty."""
    lo, hi = np.zeros(1), np.ones(1)
    G = np.array([[1.0], [-1.0]])
    assert not farkas_proves_empty(G, np.array([0.5, -0.5]), lo, hi, np.array([1.0, 1.0]))
    assert farkas_proves_empty(G, np.array([0.5, -0.75]), lo, hi, np.array([1.0, 1.0]))


def test_bad_multipliers_and_infinite_ends_prove_nothing() -> None:
    G = np.array([[1.0], [-1.0]])
    h = np.array([0.0, -1.0])
    lo, hi = np.zeros(1), np.ones(1)
    assert farkas_proves_empty(G, h, lo, hi, np.array([1.0, 1.0]))
    assert not farkas_proves_empty(G, h, lo, hi, np.array([-1.0, 1.0]))
    assert not farkas_proves_empty(G, h, lo, hi, np.array([np.nan, 1.0]))
    assert not farkas_proves_empty(G, h, lo, hi, np.array([1.0]))
    assert not farkas_proves_empty(np.array([[1.0], [-2.0]]), h, lo, np.array([np.inf]), np.array([1.0, 1.0]))
