"""ReLU networks as linear programs (and MILPs), as data; and the bound any dual vector proves.

The LP relaxation of a ReLU MLP is the "triangle" relaxation of every unstable neuron
over the intervals of its pre-activation; with one binary per unstable neuron
(big-M over the same intervals) it is exact. Neither is solved here (no solver calls
in `relaxations`): `Layers` hands out the columns and rows a solver adapter adds, one
layer at a time, so that a refinement can tighten layer k's intervals by LPs before
layer k+1's relaxation is written from them.

Soundness does not rest on the solver. `dual_lower_bound` turns *any* vector of row
multipliers into a lower bound of the LP's minimum by weak duality, evaluated in
float64 with its rounding error bounded and subtracted; a solver's duals only make
that bound tight. A MILP's own bound has no such witness (it rests on the solver's
branch and bound and its tolerances), and callers must say so.

Variables: x (the input, in the box), then per hidden layer k its pre-activations
z_k (columns bounded by their intervals) and its post-activations h_k, plus one binary
per unstable neuron when the layer is written as a MILP. Rows: z_k - W_k h_{k-1} = b_k,
and per neuron h = z (active), h in [0, 0] (inactive), or the triangle h >= z,
h <= u (z - l) / (u - l) (unstable; h >= 0 is h's column bound), with the MILP's
h <= z - l (1 - a), h <= u a.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["Block", "affine_block", "sparse_affine_block", "relu_block", "dual_lower_bound", "unknown_as_infinite", "EPS64"]

EPS64 = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class Block:
    """New columns and rows for an LP: what a solver adapter appends.

    Columns are numbered from `first_col` (the LP's column count before this block);
    rows refer to columns by their global number. Row i is
    row_lo[i] <= sum_k vals[k] * x[cols[k]] (over k with rows[k] == i) <= row_hi[i].
    """

    first_col: int
    col_lo: np.ndarray
    col_hi: np.ndarray
    integer: np.ndarray      # bool per new column
    rows: np.ndarray         # COO triplets of the new rows (row index local to the block)
    cols: np.ndarray
    vals: np.ndarray
    row_lo: np.ndarray
    row_hi: np.ndarray

    @property
    def n_cols(self) -> int:
        return len(self.col_lo)

    @property
    def n_rows(self) -> int:
        return len(self.row_lo)


def unknown_as_infinite(lower, upper) -> tuple[np.ndarray, np.ndarray]:
    """Interval ends as float64, a NaN end read as unknown: -inf below, +inf above."""
    lo, hi = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    return np.where(np.isnan(lo), -np.inf, lo), np.where(np.isnan(hi), np.inf, hi)


def affine_block(first_col: int, inputs: np.ndarray, W: np.ndarray, b: np.ndarray,
                 lower: np.ndarray, upper: np.ndarray) -> tuple[Block, np.ndarray]:
    """Columns z = W @ v + b for the input columns `inputs`, bounded by [lower, upper].

    Returns the block and the new columns' numbers. The rows are equalities
    z_j - W_j . v = b_j, exact in the LP's real arithmetic; W and b are the float32
    network's weights read exactly into float64.
    """
    nz = np.nonzero(W)
    return sparse_affine_block(first_col, inputs, W.shape[0], nz[0], nz[1], W[nz], b, lower, upper)


def sparse_affine_block(first_col: int, inputs: np.ndarray, n_out: int, w_rows: np.ndarray, w_cols: np.ndarray,
                        w_vals: np.ndarray, b: np.ndarray, lower: np.ndarray, upper: np.ndarray
                        ) -> tuple[Block, np.ndarray]:
    """`affine_block` with W given by its nonzero entries (COO triplets, W's own indices).

    W may be a chain of affine layers composed in float64 (models.affine.segment_map):
    its entries are then within float64 rounding of the real products, far inside the
    float32 margins that the callers add to every bound they take from the LP.
    """
    z = first_col + np.arange(n_out)
    rows = np.concatenate([np.arange(n_out), w_rows])
    cols = np.concatenate([z, inputs[w_cols]])
    vals = np.concatenate([np.ones(n_out), -np.asarray(w_vals, np.float64)])
    lo, hi = unknown_as_infinite(lower, upper)
    block = Block(first_col, lo, hi, np.zeros(n_out, bool), rows, cols, vals,
                  np.asarray(b, np.float64).copy(), np.asarray(b, np.float64).copy())
    return block, z


def relu_block(first_col: int, z: np.ndarray, lower: np.ndarray, upper: np.ndarray,
               binaries: Optional[np.ndarray] = None) -> tuple[Block, np.ndarray]:
    """Columns h = relu(z) for the columns z with intervals [lower, upper].

    `binaries` (bool per neuron, None: none) selects the unstable neurons written
    exactly with a binary; the others get the triangle. The triangle's upper row is
    computed in float64 and its right-hand side widened by a few ulps of its terms,
    so the rounded row still holds at every point of the exact relaxation.
    A NaN end is read as unknown (infinite); an unstable neuron with an infinite end gets
    only h >= z and h >= 0 (no triangle, no binary: both would need the end).
    Returns the block and h's column numbers.
    """
    lo, hi = unknown_as_infinite(lower, upper)
    n = len(lo)
    active, inactive = lo >= 0, hi <= 0
    unstable = ~active & ~inactive
    finite = np.isfinite(lo) & np.isfinite(hi)
    exact = unstable & finite & (binaries if binaries is not None else np.zeros(n, bool))
    h = first_col + np.arange(n)
    a_cols = first_col + n + np.arange(int(exact.sum()))
    col_lo = np.concatenate([np.maximum(lo, 0.0) * 0.0, np.zeros(len(a_cols))])
    col_hi = np.concatenate([np.where(inactive, 0.0, np.maximum(hi, 0.0)), np.ones(len(a_cols))])
    integer = np.concatenate([np.zeros(n, bool), np.ones(len(a_cols), bool)])
    R: list[np.ndarray] = []
    Cc: list[np.ndarray] = []
    V: list[np.ndarray] = []
    RL: list[np.ndarray] = []
    RH: list[np.ndarray] = []
    count = 0

    def add(coef_cols: list[tuple[np.ndarray, np.ndarray]], rlo: np.ndarray, rhi: np.ndarray) -> None:
        nonlocal count
        m = len(rlo)
        for cols, vals in coef_cols:
            R.append(count + np.arange(m))
            Cc.append(cols)
            V.append(np.broadcast_to(vals, (m,)).astype(np.float64))
        RL.append(rlo)
        RH.append(rhi)
        count += m

    act = np.nonzero(active)[0]
    if len(act):  # h - z = 0
        add([(h[act], np.ones(1)), (z[act], -np.ones(1))], np.zeros(len(act)), np.zeros(len(act)))
    uns = np.nonzero(unstable)[0]
    if len(uns):
        add([(h[uns], np.ones(1)), (z[uns], -np.ones(1))], np.zeros(len(uns)), np.full(len(uns), np.inf))
    uns = np.nonzero(unstable & finite)[0]
    if len(uns):
        l, u = lo[uns], hi[uns]
        s = u / (u - l)                               # h - s z <= -s l
        rhs = -s * l
        slack = 8 * EPS64 * (np.abs(s) * (np.abs(l) + np.abs(u)) + np.abs(u) + np.abs(rhs))
        add([(h[uns], np.ones(1)), (z[uns], -s)], np.full(len(uns), -np.inf), rhs + slack)
    ex = np.nonzero(exact)[0]
    if len(ex):
        l, u = lo[ex], hi[ex]
        # h - z - l a <= -l   (a = 0: h <= z - l, slack; a = 1: h <= z)
        add([(h[ex], np.ones(1)), (z[ex], -np.ones(1)), (a_cols, -l)], np.full(len(ex), -np.inf), -l)
        # h - u a <= 0        (a = 0: h = 0)
        add([(h[ex], np.ones(1)), (a_cols, -u)], np.full(len(ex), -np.inf), np.zeros(len(ex)))
    cat = (lambda xs, dt=np.float64: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt))  # noqa: E731
    block = Block(first_col, col_lo, col_hi, integer, cat(R, np.int64), cat(Cc, np.int64), cat(V),
                  cat(RL), cat(RH))
    return block, h


def dual_lower_bound(c: np.ndarray, A, row_lo: np.ndarray, row_hi: np.ndarray, col_lo: np.ndarray,
                     col_hi: np.ndarray, y: np.ndarray, offset: float = 0.0) -> float:
    """A rigorous lower bound of min c.x + offset over {row_lo <= A x <= row_hi, col_lo <= x <= col_hi}.

    Weak duality with any multipliers y (one per row, either sign): for a feasible x,
    c.x = (c - A^T y).x + y.(A x) >= sum_j min over x_j's bounds of r_j x_j
    + sum_i (y_i row_lo_i if y_i > 0 else y_i row_hi_i). A multiplier whose row bound
    on its side is infinite is dropped (it would give -inf). The sum is evaluated in
    float64 and lowered by a bound on its rounding error (a few ulps of the total
    magnitude per term, times the longest sum), so the result holds in exact
    arithmetic. -inf when a column bound that the reduced cost needs is infinite.
    A: scipy.sparse matrix or ndarray [rows, cols].
    """
    y = np.asarray(y, np.float64).copy()
    y[(y > 0) & ~np.isfinite(row_lo)] = 0.0
    y[(y < 0) & ~np.isfinite(row_hi)] = 0.0
    At_y = A.T @ y
    At_abs = abs(A).T @ np.abs(y)
    r = np.asarray(c, np.float64) - At_y
    rb = np.where(y > 0, row_lo, np.where(y < 0, row_hi, 0.0))
    row_terms = np.where(y != 0, y * rb, 0.0)
    cb = np.where(r > 0, col_lo, np.where(r < 0, col_hi, 0.0))
    if not np.all(np.isfinite(cb[r != 0])):
        return -np.inf
    col_terms = np.where(r != 0, r * cb, 0.0)
    total = float(row_terms.sum() + col_terms.sum()) + offset
    mag = np.maximum(np.abs(col_lo), np.abs(col_hi))
    mag = np.where(np.isfinite(mag), mag, 0.0)
    mass = float(np.abs(row_terms).sum() + ((np.abs(c) + At_abs) * mag).sum() + abs(offset))
    longest = 2 * len(y) + len(r) + 8          # no sum above has more terms than this
    return total - 4 * longest * EPS64 * mass
