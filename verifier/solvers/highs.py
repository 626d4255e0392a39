"""HiGHS (open source, PyPI `highspy`) as the LP/MILP back end: the one file that calls it.

A `HighsModel` grows one `relaxations.lp.Block` at a time and answers two questions:
`lower(objective)`, an LP minimum turned into a rigorous bound by
`relaxations.lp.dual_lower_bound` on HiGHS's row duals (so the bound does not rest on
HiGHS's tolerances, and the duals are a witness a checker can re-verify), and
`milp(objective, ...)`, a time-limited MILP whose bound rests on HiGHS's branch and
bound and is marked as such. HiGHS keeps its basis between solves, so the many LPs of
one layer, which differ only in their objective, are warm-started.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import scipy.sparse as sp

from relaxations.lp import Block, dual_lower_bound

__all__ = ["HighsModel", "LpBound", "MilpOutcome", "available", "least_violation", "closest_point"]


def available() -> bool:
    """Whether highspy imports (it is a dependency; this guards a broken install)."""
    try:
        import highspy  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """HiGHS prints a banner on stdout (file descriptor 1) when the first model is made
    in a process; `nncert verify` writes its result there, so the banner goes to null."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


@dataclass(frozen=True)
class LpBound:
    """An LP minimum: `bound` is rigorous (weak duality on `duals`), `value` HiGHS's own."""

    bound: float                 # -inf when the LP was not solved to optimality
    value: float
    duals: Optional[np.ndarray]  # one per row, the witness of `bound`
    status: str


@dataclass(frozen=True)
class MilpOutcome:
    """A MILP's result. `bound` is HiGHS's dual bound (no checkable witness); `point` and
    `value` the best feasible solution found, if any."""

    status: str                  # "optimal", "time limit", "infeasible", or HiGHS's word
    bound: float
    value: float
    point: Optional[np.ndarray]


class HighsModel:
    """An LP (or MILP) held by one HiGHS instance, with a float64 copy of its data."""

    def __init__(self, threads: int = 1) -> None:
        import highspy  # lazy: a broken highspy install must not break importing this module (`available`)
        with _quiet_stdout():
            self._h = highspy.Highs()
        self._inf = highspy.kHighsInf
        self._h.setOptionValue("output_flag", False)
        self._h.setOptionValue("threads", max(1, int(threads)))
        self._h.setOptionValue("random_seed", 0)
        self._col_lo: list[np.ndarray] = []
        self._col_hi: list[np.ndarray] = []
        self._integer: list[np.ndarray] = []
        self._trip: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._row_lo: list[np.ndarray] = []
        self._row_hi: list[np.ndarray] = []
        self.n_cols = 0
        self.n_rows = 0
        self._cost_cols = np.zeros(0, np.int32)
        self._cache: Optional[tuple] = None
        self._stop = False
        # Cancellation is heard at the MILP's own checks only: a Python callback needs the
        # GIL, and one per simplex iteration would make the MILP crawl beside a search.
        self._h.cbMipInterrupt += self._interrupt

    def add(self, block: Block) -> None:
        """Append a block's columns (continuous in the LP; see `milp`) and rows."""
        if block.first_col != self.n_cols:
            raise ValueError(f"block starts at column {block.first_col}, the model has {self.n_cols}")
        h, inf = self._h, self._inf
        for what, a in (("column bound", block.col_lo), ("column bound", block.col_hi), ("row bound", block.row_lo),
                        ("row bound", block.row_hi), ("coefficient", block.vals)):
            if np.isnan(a).any():  # nan_to_num below would make it 0: a constraint nobody wrote
                raise ValueError(f"an LP block has a NaN {what}")
        n = block.n_cols
        if n:
            h.addCols(n, np.zeros(n), np.nan_to_num(block.col_lo, neginf=-inf, posinf=inf),
                      np.nan_to_num(block.col_hi, neginf=-inf, posinf=inf), 0, np.zeros(0, np.int32),
                      np.zeros(0, np.int32), np.zeros(0))
        m = block.n_rows
        if m:
            A = sp.csr_matrix((block.vals, (block.rows, block.cols)), shape=(m, self.n_cols + n))
            h.addRows(m, np.nan_to_num(block.row_lo, neginf=-inf, posinf=inf),
                      np.nan_to_num(block.row_hi, neginf=-inf, posinf=inf), A.nnz,
                      A.indptr[:-1].astype(np.int32), A.indices.astype(np.int32), A.data.astype(np.float64))
        self._col_lo.append(block.col_lo.astype(np.float64))
        self._col_hi.append(block.col_hi.astype(np.float64))
        self._integer.append(block.integer.astype(bool))
        self._trip.append((block.rows + self.n_rows, block.cols, block.vals))
        self._row_lo.append(block.row_lo.astype(np.float64))
        self._row_hi.append(block.row_hi.astype(np.float64))
        self.n_cols += n
        self.n_rows += m
        self._cache = None

    def tighten(self, cols: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
        """Intersect the bounds of `cols` with [lower, upper] (refined intervals)."""
        lo, hi = self._bounds()
        cols = np.asarray(cols, np.int64)
        new_lo = np.maximum(lo[cols], lower)
        new_hi = np.minimum(hi[cols], upper)
        self._h.changeColsBounds(len(cols), cols.astype(np.int32), new_lo, new_hi)
        lo[cols], hi[cols] = new_lo, new_hi
        self._col_lo, self._col_hi = [lo], [hi]
        self._cache = None

    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.concatenate(self._col_lo) if self._col_lo else np.zeros(0)
        hi = np.concatenate(self._col_hi) if self._col_hi else np.zeros(0)
        return lo, hi

    def data(self) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(A, row_lo, row_hi, col_lo, col_hi): the model as HiGHS has it, in float64."""
        if self._cache is None:
            r = np.concatenate([t[0] for t in self._trip]) if self._trip else np.zeros(0, np.int64)
            c = np.concatenate([t[1] for t in self._trip]) if self._trip else np.zeros(0, np.int64)
            v = np.concatenate([t[2] for t in self._trip]) if self._trip else np.zeros(0)
            A = sp.csr_matrix((v, (r, c)), shape=(self.n_rows, self.n_cols))
            lo, hi = self._bounds()
            self._cache = (A, np.concatenate(self._row_lo) if self._row_lo else np.zeros(0),
                           np.concatenate(self._row_hi) if self._row_hi else np.zeros(0), lo, hi)
        return self._cache

    def cancel(self) -> None:
        """Ask a MILP running in another thread to stop (it returns its best so far).
        A model whose MILP was cancelled stays cancelled: make a new one to solve again."""
        self._stop = True

    def _interrupt(self, event) -> None:
        if self._stop:
            event.interrupt()

    def _objective(self, cols: np.ndarray, vals: np.ndarray) -> None:
        h = self._h
        if len(self._cost_cols):
            h.changeColsCost(len(self._cost_cols), self._cost_cols, np.zeros(len(self._cost_cols)))
        cols = np.asarray(cols, np.int32)
        h.changeColsCost(len(cols), cols, np.asarray(vals, np.float64))
        self._cost_cols = cols

    def _set_integrality(self, on: bool) -> None:
        integer = np.concatenate(self._integer) if self._integer else np.zeros(0, bool)
        idx = np.nonzero(integer)[0].astype(np.int32)
        if len(idx):
            import highspy  # lazy: a broken highspy install must not break importing this module (`available`)
            kind = highspy.HighsVarType.kInteger if on else highspy.HighsVarType.kContinuous
            self._h.changeColsIntegrality(len(idx), idx, np.array([kind] * len(idx)))

    def lower(self, cols: np.ndarray, vals: np.ndarray, offset: float = 0.0,
              time_limit: float = 60.0) -> LpBound:
        """min sum vals * x[cols] + offset over the LP relaxation (binaries relaxed to [0, 1])."""
        h = self._h
        self._objective(cols, vals)
        h.setOptionValue("time_limit", max(1e-3, float(time_limit)))
        h.run()
        status = h.modelStatusToString(h.getModelStatus())
        if status != "Optimal":
            return LpBound(-np.inf, np.nan, None, status)
        y = np.asarray(h.getSolution().row_dual, np.float64)
        c = np.zeros(self.n_cols)
        np.add.at(c, np.asarray(cols, np.int64), np.asarray(vals, np.float64))
        A, rl, rh, cl, ch = self.data()
        bound = dual_lower_bound(c, A, rl, rh, cl, ch, y, offset)
        return LpBound(bound, float(h.getInfo().objective_function_value) + offset, y, status)

    def milp(self, cols: np.ndarray, vals: np.ndarray, offset: float = 0.0, time_limit: float = 60.0,
             start: Optional[np.ndarray] = None, stop_below: Optional[float] = None,
             cutoff: Optional[float] = None) -> MilpOutcome:
        """min sum vals * x[cols] + offset with the binaries integral, for at most `time_limit` s.

        `start`: a full column vector to try as the first incumbent (an attack's point
        propagated through the net). `stop_below`: HiGHS may stop as soon as it has a
        solution with value below it (a counterexample is enough; its optimum is not
        needed). `cutoff`: only solutions below it matter, so HiGHS prunes every node
        whose bound reaches it (its `objective_bound`); "infeasible" then means no solution
        below the cutoff, and the bound returned is never above the cutoff. A proof that the minimum is
        positive needs no more, and comes far sooner than the optimum (verivital's avgpool
        net, 5,299 binaries: 1-3 s a row against 50 s or a time limit). The integrality
        is switched off again afterwards, so `lower` keeps solving LPs.
        """
        h = self._h
        self._objective(cols, vals)
        self._set_integrality(True)
        h.setOptionValue("time_limit", max(1e-3, float(time_limit)))
        h.setOptionValue("mip_rel_gap", 0.0)
        h.setOptionValue("mip_abs_gap", 0.0)
        if stop_below is not None:
            h.setOptionValue("objective_target", float(stop_below - offset))
        if cutoff is not None:
            h.setOptionValue("objective_bound", float(cutoff - offset))
        if start is not None:
            import highspy  # lazy: a broken highspy install must not break importing this module (`available`)
            sol = highspy.HighsSolution()
            sol.col_value = list(np.asarray(start, np.float64))
            h.setSolution(sol)
        try:
            h.run()
            info = h.getInfo()
            word = h.modelStatusToString(h.getModelStatus())
            sol = h.getSolution()
            point = np.asarray(sol.col_value, np.float64) if sol.value_valid else None
            objective, dual_bound = float(info.objective_function_value), float(info.mip_dual_bound)
        finally:  # read everything first: changing the model clears HiGHS's status
            self._set_integrality(False)
            h.setOptionValue("objective_target", -self._inf)
            h.setOptionValue("objective_bound", self._inf)
        status = {"Optimal": "optimal", "Time limit reached": "time limit", "Infeasible": "infeasible",
                  "Objective target reached": "target"}.get(word, word)
        value = objective + offset if point is not None else np.inf
        bound = dual_bound + offset if status != "infeasible" else np.inf
        if cutoff is not None:
            # Nodes whose bound reaches the cutoff are pruned, not explored: HiGHS's dual bound
            # then speaks only of what lies below the cutoff (an exhausted tree reports its
            # incumbent's value, which may be far above the true minimum). All it shows is
            # that no solution lies below min(its bound, the cutoff).
            bound = min(bound, float(cutoff))
        return MilpOutcome(status, bound, value, point)


def _solve_dense(A: np.ndarray, row_upper: np.ndarray, cost: np.ndarray, col_lower: np.ndarray,
                 col_upper: np.ndarray, quadratic: bool = False) -> Optional[tuple[float, np.ndarray, np.ndarray]]:
    """min cost.x (+ |x|^2 / 2 when `quadratic`) subject to A x <= row_upper and the column
    bounds, passed whole to a fresh HiGHS instance: activation split asks many small ones,
    and building them block by block in a `HighsModel` costs several times more.
    (objective, x, row duals as multipliers y >= 0) or None when HiGHS reports no optimum."""
    import highspy  # lazy: a broken highspy install must not break importing this module (`available`)

    m, n = A.shape
    with _quiet_stdout():
        solver = highspy.Highs()
    solver.setOptionValue("output_flag", False)
    solver.setOptionValue("threads", 1)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n, m
    lp.col_cost_ = np.asarray(cost, np.float64)
    lp.col_lower_ = np.asarray(col_lower, np.float64)
    lp.col_upper_ = np.nan_to_num(np.asarray(col_upper, np.float64), posinf=highspy.kHighsInf)
    lp.row_lower_ = np.full(m, -highspy.kHighsInf)
    lp.row_upper_ = np.asarray(row_upper, np.float64)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = (np.arange(n + 1) * m).astype(np.int32)
    lp.a_matrix_.index_ = np.tile(np.arange(m, dtype=np.int32), n)
    lp.a_matrix_.value_ = np.asarray(A, np.float64).T.reshape(-1)
    solver.passModel(lp)
    if quadratic:
        hessian = highspy.HighsHessian()
        hessian.dim_, hessian.format_ = n, highspy.HessianFormat.kTriangular
        hessian.start_ = np.arange(n + 1, dtype=np.int32)
        hessian.index_ = np.arange(n, dtype=np.int32)
        hessian.value_ = np.ones(n)
        solver.passHessian(hessian)
    solver.run()
    if solver.modelStatusToString(solver.getModelStatus()) != "Optimal":
        return None
    sol = solver.getSolution()
    # HiGHS's row duals of a minimisation are <= 0 on rows at their upper bound.
    return (float(solver.getInfo().objective_function_value), np.asarray(sol.col_value, np.float64),
            np.maximum(-np.asarray(sol.row_dual, np.float64), 0.0))


def least_violation(G: np.ndarray, h: np.ndarray, lower: np.ndarray, upper: np.ndarray
                    ) -> Optional[tuple[float, np.ndarray, np.ndarray]]:
    """min t over x in [lower, upper], t >= 0 with G x - t <= h: (t*, x*, y) with y >= 0
    the rows' multipliers, or None when HiGHS does not report an optimum. Nothing
    returned is trusted by itself: callers check y (`verifier.lp.region`)."""
    m, n = G.shape
    out = _solve_dense(np.hstack([G, -np.ones((m, 1))]), h, np.r_[np.zeros(n), 1.0], np.r_[lower, 0.0],
                       np.r_[upper, np.inf])
    return None if out is None else (out[0], out[1][:n], out[2])


def closest_point(G: np.ndarray, h: np.ndarray, lower: np.ndarray, upper: np.ndarray, centre: np.ndarray
                  ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The point of {x in [lower, upper]: G x <= h} nearest to `centre` in l2 (a convex QP),
    with the rows' multipliers y >= 0, or None. At the optimum y.(G c - h) = |G^T y| dist
    (the box aside), so the same y certifies that the polytope misses a smaller ball."""
    out = _solve_dense(G, h, -np.asarray(centre, np.float64), lower, upper, quadratic=True)
    return None if out is None else (out[1], out[2])
