"""The full Raghunathan SDP through cvxpy: the only place where its dual meets a solver.

We solve the DUAL directly (``max t`` subject to ``M(y) >= 0``, ``y >= 0`` where
required): its variables are exactly what a certificate carries, and whatever the
solver returns (optimal, inaccurate or stopped at its iteration/time limit) is turned
into a valid bound by ``relaxations.sdp.certified_bound`` in float64, so the solver is
trusted for nothing. cvxpy is imported inside the function (a second of import time).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np

from relaxations.sdp.problem import Multipliers, SdpProblem, dual_operator, nonneg_mask

__all__ = ["DualSolution", "CLARABEL_MAX_DIM", "default_solver", "solve_sdp_dual"]

# Clarabel (interior point) is accurate and fast for small PSD cones; SCS (first
# order, one eigendecomposition per iteration) is the default beyond this size.
CLARABEL_MAX_DIM = 60


@dataclass(frozen=True, eq=False)
class DualSolution:
    """Raw solver output (uncertified): multipliers, the solver's objective and status."""

    multipliers: Optional[Multipliers]
    objective: float
    status: str
    solver: str
    solve_time_s: float


def default_solver(dim: int) -> str:
    import cvxpy as cp  # lazy: cvxpy takes over a second to import; only the full SDP's rows need it

    return "CLARABEL" if dim <= CLARABEL_MAX_DIM and "CLARABEL" in cp.installed_solvers() else "SCS"


def solve_sdp_dual(problem: SdpProblem, solver: Optional[str] = None, max_iters: int = 20_000,
                   time_limit_s: float = 0.0, eps: float = 1e-7) -> DualSolution:
    """Maximise ``t`` s.t. ``M(y) >= 0`` (``y`` packed as in ``Multipliers.pack``).

    ``time_limit_s`` > 0 is passed to SCS (``time_limit_secs``) and Clarabel
    (``time_limit``); it bounds the solve, not cvxpy's compilation. SCS's ``eps`` is its absolute and
    relative tolerance. Never raises for solver failures: the status says what happened."""
    import cvxpy as cp  # lazy: cvxpy takes over a second to import; only the full SDP's rows need it

    n = problem.dim
    m_const, b = dual_operator(problem)
    mask = nonneg_mask(problem)
    y = cp.Variable(problem.n_multipliers())
    mat = cp.reshape(m_const.toarray().reshape(-1) + b @ y, (n, n), order="C")
    cons = [0.5 * (mat + mat.T) >> 0, y[np.flatnonzero(mask)] >= 0]
    prob = cp.Problem(cp.Maximize(y[0]), cons)
    name = solver or default_solver(n)
    t0 = time.perf_counter()
    status = "unsolved"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Solution may be inaccurate")
        try:
            if name == "SCS":
                kw = dict(eps_abs=eps, eps_rel=eps, max_iters=max_iters, verbose=False)
                if time_limit_s > 0:
                    kw["time_limit_secs"] = float(time_limit_s)
                prob.solve(solver=cp.SCS, **kw)
            elif name == "CLARABEL" and time_limit_s > 0:
                prob.solve(solver=name, verbose=False, time_limit=float(time_limit_s))
            else:
                prob.solve(solver=name, verbose=False)
            status = str(prob.status)
        except (cp.error.SolverError, ArithmeticError, ValueError, np.linalg.LinAlgError) as exc:
            status = f"solver_error: {exc}"
            left = time_limit_s - (time.perf_counter() - t0)
            if name != "SCS" and (time_limit_s <= 0 or left > 0.2):
                # Clarabel can fail numerically where SCS still gives multipliers
                name = "SCS"
                kw = dict(eps_abs=eps, eps_rel=eps, max_iters=max_iters, verbose=False)
                if time_limit_s > 0:
                    kw["time_limit_secs"] = float(left)
                try:
                    prob.solve(solver=cp.SCS, **kw)
                    status = str(prob.status)
                except (cp.error.SolverError, ArithmeticError, ValueError, np.linalg.LinAlgError) as exc2:
                    status = f"solver_error: {exc2}"
    elapsed = time.perf_counter() - t0
    if y.value is None:
        return DualSolution(None, float("nan"), status, name, elapsed)
    mult = Multipliers.unpack(problem, np.asarray(y.value, dtype=np.float64))
    obj = float(prob.value) if prob.value is not None else float("nan")
    return DualSolution(mult, obj, status, name, elapsed)
