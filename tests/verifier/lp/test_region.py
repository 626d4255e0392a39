"""Polytope emptiness for activation split's leaves (`polytope_point`, `farkas_proves_empty`):
never 'empty' for a polytope with a point, even one point wide; empty claims agree with an
independent LP; points returned lie in the polytope."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linprog

from verifier.lp.region import farkas_proves_empty, polytope_point


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


@pytest.mark.parametrize("factor,empty", [(1.02, True), (0.98, False)])
def test_a_half_space_beside_a_ball(factor: float, empty: bool) -> None:
    """{x: u.x >= d} at distance d from the centre 0: it misses the ball of radius
    d / factor exactly when factor > 1; when it meets it, the point returned is in both."""
    rng = np.random.default_rng(0)
    u = rng.normal(size=5)
    u /= np.linalg.norm(u)
    d, radius = 0.3, 0.3 / factor
    G, h = -u[None, :], np.array([-d])
    lo, hi = -np.ones(5), np.ones(5)
    got, point = polytope_point(G, h, lo, hi, (np.zeros(5), radius))
    assert got == empty
    if not empty:
        assert np.linalg.norm(point) <= radius and float((G @ point)[0]) <= h[0] + 1e-9


def test_the_ball_certificate_counts_the_box_where_the_nearest_point_touches_it() -> None:
    """Centre at the box's upper face: the polytope x0 + x1 >= 1.2 is nearest the centre
    on that face, and only the face's multiplier makes the ball's certificate hold."""
    centre = np.array([1.0, 0.5])
    G, h = np.array([[-1.0, -1.0]]), np.array([-1.7])
    lo, hi = np.zeros(2), np.ones(2)
    # Over the box the nearest point is (1, 0.7): 0.2 from the centre; unbounded, 0.2/sqrt(2).
    assert polytope_point(G, h, lo, hi, (centre, 0.19))[0]
    assert not polytope_point(G, h, lo, hi, (centre, 0.21))[0]


@pytest.mark.parametrize("seed", range(30))
def test_ball_claims_survive_sampling(seed: int) -> None:
    """Random polytopes and balls: whenever emptiness is claimed, no sampled point of the
    ball and box meets every row; a point returned inside the ball meets them."""
    rng = np.random.default_rng(100 + seed)
    n, m = int(rng.integers(2, 5)), int(rng.integers(1, 6))
    G = rng.normal(size=(m, n))
    h = rng.normal(size=m) * 0.3 - 0.2
    lo, hi = np.zeros(n), np.ones(n)
    centre, radius = rng.uniform(0, 1, size=n), float(rng.uniform(0.05, 0.6))
    empty, point = polytope_point(G, h, lo, hi, (centre, radius))
    d = rng.normal(size=(20000, n))
    xs = centre + d / np.linalg.norm(d, axis=1, keepdims=True) * radius * rng.uniform(0, 1, (20000, 1)) ** (1 / n)
    xs = xs[np.all((xs >= lo) & (xs <= hi), axis=1)]
    if empty:
        assert not np.any(np.all(xs @ G.T <= h, axis=1))
    elif point is not None and np.linalg.norm(point - centre) <= radius:
        assert np.all(G @ point <= h + 1e-7)
