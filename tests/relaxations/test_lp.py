"""The LP data of ReLU layers holds at every point of the network, and any dual vector gives a valid bound."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import linprog

from relaxations.lp import affine_block, dual_lower_bound, relu_block


def _rows_hold(block, v: np.ndarray, tol: float = 1e-9) -> None:
    A = sp.csr_matrix((block.vals, (block.rows, block.cols)), shape=(block.n_rows, len(v)))
    r = A @ v
    assert np.all(r >= block.row_lo - tol * (1 + np.abs(r))), "a row's lower side fails at a network point"
    assert np.all(r <= block.row_hi + tol * (1 + np.abs(r))), "a row's upper side fails at a network point"
    own = v[block.first_col:block.first_col + block.n_cols]
    assert np.all(own >= block.col_lo - tol) and np.all(own <= block.col_hi + tol), "a column bound fails"


@pytest.mark.parametrize("exact", [False, True])
def test_relu_rows_hold_at_every_sampled_point(exact: bool) -> None:
    r = np.random.default_rng(3)
    n = 40
    lo = r.normal(size=n) - 0.5
    hi = lo + r.uniform(0.01, 3, size=n)
    hi[:5] = -np.abs(hi[:5]) - 0.1         # some stably inactive,
    lo[:5] = hi[:5] - 1.0
    lo[5:10] = np.abs(lo[5:10])            # some stably active
    hi[5:10] = lo[5:10] + 1.0
    unstable = (lo < 0) & (hi > 0)
    block, h = relu_block(n, np.arange(n), lo, hi, unstable if exact else None)
    assert block.integer.sum() == (unstable.sum() if exact else 0)
    for _ in range(500):
        z = lo + (hi - lo) * r.uniform(size=n)
        ends = r.uniform(size=n) < 0.1       # some at an end of their interval
        z[ends] = np.where(r.uniform(size=int(ends.sum())) < 0.5, lo[ends], hi[ends])
        v = np.zeros(n + block.n_cols)
        v[:n] = z
        v[h] = np.maximum(z, 0)
        if exact:
            v[h[-1] + 1:] = (z[unstable] > 0).astype(float)
        _rows_hold(block, v)


def test_relu_rows_hold_at_the_interval_ends() -> None:
    """The triangle's upper row passes through (l, 0) and (u, u): rounding must not cut either."""
    r = np.random.default_rng(4)
    n = 200
    lo = -np.exp(r.uniform(-20, 20, size=n))
    hi = np.exp(r.uniform(-20, 20, size=n))
    block, h = relu_block(n, np.arange(n), lo, hi)
    for z in (lo, hi):
        v = np.zeros(n + block.n_cols)
        v[:n], v[h] = z, np.maximum(z, 0)
        _rows_hold(block, v, tol=0.0)


def test_affine_rows_are_the_layer() -> None:
    r = np.random.default_rng(5)
    W, b = r.normal(size=(7, 5)), r.normal(size=7)
    block, z = affine_block(5, np.arange(5), W, b, np.full(7, -100.0), np.full(7, 100.0))
    x = r.uniform(size=5)
    v = np.concatenate([x, W @ x + b])
    _rows_hold(block, v, tol=1e-12)


def _random_lp(r: np.random.Generator, m: int, n: int):
    A = r.normal(size=(m, n))
    x0 = r.uniform(-1, 1, size=n)
    slack = r.uniform(0, 1, size=m)
    row_lo = np.where(r.uniform(size=m) < 0.5, A @ x0 - slack, -np.inf)
    row_hi = np.where(np.isinf(row_lo), A @ x0 + slack, np.where(r.uniform(size=m) < 0.3, A @ x0 + slack, np.inf))
    return A, row_lo, row_hi, np.full(n, -2.0), np.full(n, 2.0), r.normal(size=n)


def test_any_multipliers_give_a_lower_bound() -> None:
    """Weak duality: for every y, the bound is <= the LP's true minimum (scipy's HiGHS)."""
    r = np.random.default_rng(6)
    for _ in range(20):
        A, rl, rh, cl, ch, c = _random_lp(r, 12, 8)
        A_ub = np.vstack([A[np.isfinite(rh)], -A[np.isfinite(rl)]])
        b_ub = np.concatenate([rh[np.isfinite(rh)], -rl[np.isfinite(rl)]])
        opt = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=list(zip(cl, ch)), method="highs")
        assert opt.status == 0
        for _ in range(50):
            y = r.normal(size=12) * r.exponential()
            assert dual_lower_bound(c, A, rl, rh, cl, ch, y) <= opt.fun + 1e-9


def test_optimal_multipliers_give_the_minimum() -> None:
    """With HiGHS's own duals the bound is the optimum (to rounding), through the adapter."""
    from relaxations.lp import Block
    from verifier.solvers.highs import HighsModel

    r = np.random.default_rng(7)
    A, rl, rh, cl, ch, c = _random_lp(r, 12, 8)
    model = HighsModel()
    nz = np.nonzero(A)
    model.add(Block(0, cl, ch, np.zeros(8, bool), nz[0], nz[1], A[nz], rl, rh))
    res = model.lower(np.arange(8), c)
    A_ub = np.vstack([A[np.isfinite(rh)], -A[np.isfinite(rl)]])
    b_ub = np.concatenate([rh[np.isfinite(rh)], -rl[np.isfinite(rl)]])
    opt = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=list(zip(cl, ch)), method="highs")
    assert res.bound <= opt.fun + 1e-12
    assert res.bound >= opt.fun - 1e-6
    assert res.value == pytest.approx(opt.fun, abs=1e-7)


def test_infinite_column_bound_under_a_cost_gives_minus_infinity() -> None:
    A = np.array([[1.0, 1.0]])
    bound = dual_lower_bound(np.array([1.0, 0.0]), A, np.array([0.0]), np.array([np.inf]),
                             np.array([-np.inf, 0.0]), np.array([np.inf, 1.0]), np.array([0.0]))
    assert bound == -np.inf


@pytest.mark.parametrize("exact", [False, True])
def test_unknown_ends_leave_the_neuron_free_never_pinned(exact: bool) -> None:
    """An infinite or NaN end (overflow upstream) must not become a constraint: the
    triangle's slope u / (u - l) is 0 for l = -inf, and 0 * inf is NaN, which an LP
    library would read as 0 and pin h to 0. Rows must hold at every point, with no NaN."""
    lo = np.array([-np.inf, -1.0, np.nan, -2.0, np.nan])
    hi = np.array([1.0, np.inf, 3.0, np.nan, np.nan])
    block, h = relu_block(5, np.arange(5), lo, hi, np.ones(5, bool) if exact else None)
    assert block.integer.sum() == 0, "no binary can be written without both ends"
    for a in (block.col_lo, block.col_hi, block.row_lo, block.row_hi, block.vals):
        assert not np.isnan(a).any()
    r = np.random.default_rng(8)
    for z in (r.normal(size=5) * 1e6, r.normal(size=5), np.zeros(5)):
        z = np.clip(z, np.nan_to_num(lo, nan=-np.inf), np.nan_to_num(hi, nan=np.inf))   # inside each interval
        v = np.zeros(5 + block.n_cols)
        v[:5], v[h] = z, np.maximum(z, 0)
        _rows_hold(block, v)


def test_the_adapter_refuses_a_nan_bound() -> None:
    from relaxations.lp import Block
    from verifier.solvers.highs import HighsModel

    with pytest.raises(ValueError, match="NaN"):
        HighsModel().add(Block(0, np.array([np.nan]), np.array([1.0]), np.zeros(1, bool), *([np.zeros(0, np.int64)] * 2),
                               *([np.zeros(0)] * 3)))
