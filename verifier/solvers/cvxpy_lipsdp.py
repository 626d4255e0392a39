"""LipSDP through cvxpy (Clarabel or SCS): the only place where the LMI meets a solver.

The LMI's algebra lives in ``relaxations.lipschitz.lmi`` (numpy); here the same
blocks are written as cvxpy expressions of the multipliers. What a solver returns is
never trusted: ``verifier.lipschitz`` re-certifies it in float64.
cvxpy is imported inside the functions because importing it costs about a second.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from relaxations.lipschitz.lmi import maxmin_pair_form, output_metric
from relaxations.lipschitz.network import FeedForward, slope_bounds

__all__ = ["SDPSolution", "default_solver", "solve_lipsdp", "solve_layer_step"]

# Interior-point Clarabel is accurate but its cost grows fast with the PSD cone;
# above this matrix size SCS (first order) is used unless a solver is named.
CLARABEL_MAX_DIM = 64


@dataclass(frozen=True, eq=False)
class SDPSolution:
    """Raw (uncertified) solver output."""

    multipliers: tuple[np.ndarray, ...]
    input_weights: np.ndarray
    status: str
    solver: str
    solve_time_s: float


def default_solver(dim: int, activation: str = "relu") -> str:
    """Clarabel for small slope-restricted LMIs, SCS otherwise. Clarabel often stops
    with a numerical failure on the MaxMin QCs (their free equality multipliers make
    the problem degenerate), where SCS converges."""
    import cvxpy as cp  # lazy: cvxpy takes over a second to import (module docstring)

    if "CLARABEL" in cp.installed_solvers() and dim <= CLARABEL_MAX_DIM and activation != "maxmin":
        return "CLARABEL"
    return "SCS"


def _solve(problem: Any, solver: str, scs_eps: float | None = None, time_limit_s: float | None = None) -> str:
    """Solve; if Clarabel fails numerically, retry with SCS. Returns the solver used.

    ``time_limit_s`` counts from this call, cvxpy's compilation included: what is left
    after compiling becomes the solver's own limit (Clarabel ``time_limit``, SCS
    ``time_limit_secs``), and no solve starts with less than 0.2 s left. A solver
    stopped by it returns its last iterate, which the caller certifies or discards like
    any other answer. (Compilation itself cannot be interrupted in-process: see
    ``verifier.solvers.killable``.)"""
    import cvxpy as cp  # lazy: cvxpy takes over a second to import (module docstring)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Solution may be inaccurate")
        warnings.filterwarnings("ignore", category=RuntimeWarning)  # overflow in a diverging solve
        return _solve_quiet(problem, solver, cp, scs_eps, time_limit_s)


def _compile_and_solve(problem: Any, solver: str, opts: dict[str, Any], limit_key: str,
                       limit_at: float | None) -> None:
    """``problem.solve`` in its two steps, so that the time limit left after compiling
    is what the solver gets. Raises ``SolverError`` when no time is left to solve."""
    import cvxpy as cp  # lazy: cvxpy takes over a second to import (module docstring)

    # The SciPy canonicalisation backend builds these LMIs 2-3x faster than the default
    # C++ one (mnist-net_256x6: 21 s instead of 44 s; ACAS Xu: the same 0.3 s).
    data, chain, inverse = problem.get_problem_data(solver, canon_backend="SCIPY", solver_opts=dict(opts))
    if limit_at is not None:
        left = limit_at - time.monotonic()
        if left < 0.2:
            raise cp.error.SolverError(f"time limit reached while compiling for {solver}")
        opts = dict(opts, **{limit_key: left})
    raw = chain.solve_via_data(problem, data, False, False, opts)
    problem.unpack_results(raw, chain, inverse)


def _solve_quiet(problem: Any, solver: str, cp: Any, scs_eps: float | None = None,
                 time_limit_s: float | None = None) -> str:
    limit_at = None if time_limit_s is None else time.monotonic() + float(time_limit_s)
    if solver == "CLARABEL":
        try:
            _compile_and_solve(problem, cp.CLARABEL, {}, "time_limit", limit_at)
            if problem.status in ("optimal", "optimal_inaccurate"):
                return solver
        except cp.error.SolverError:
            pass
        solver = "SCS"
    if solver == "SCS":
        # Moderate accuracy: the multipliers are repaired and rho recomputed exactly
        # in float64 afterwards, so extra SCS iterations buy little.
        eps = 1e-6 if scs_eps is None else float(scs_eps)
        _compile_and_solve(problem, cp.SCS, {"eps_abs": eps, "eps_rel": eps, "max_iters": 20_000},
                           "time_limit_secs", limit_at)
    else:
        problem.solve(solver=solver, verbose=False)
    return solver


def _layer_variables(activation: str, width: int, variant: str) -> tuple[list[Any], Any]:
    """cvxpy variables of one hidden layer and a function building its (Q_vv, Q_vz, Q_zz)."""
    import cvxpy as cp  # lazy: cvxpy takes over a second to import (module docstring)

    if activation == "maxmin":
        npairs = width // 2
        if variant == "layer":
            lam = cp.Variable(nonneg=True)
            mu = cp.Variable(4)
            lam_vec = lam * np.ones(npairs)
            mu_mat = np.ones((npairs, 1)) @ cp.reshape(mu, (1, 4), order="C")
        else:
            lam_vec = cp.Variable(npairs, nonneg=True)
            mu_mat = cp.Variable((npairs, 4))
        basis = [maxmin_pair_form(1.0, np.zeros(4))] + [
            maxmin_pair_form(0.0, np.eye(4)[j]) for j in range(4)
        ]
        coeffs = [lam_vec] + [mu_mat[:, j] for j in range(4)]
        blocks = []
        for sl in ((slice(0, 2), slice(0, 2)), (slice(0, 2), slice(2, 4)), (slice(2, 4), slice(2, 4))):
            blocks.append(sum(cp.kron(cp.diag(c), b[sl]) for c, b in zip(coeffs, basis)))
        variables = [lam_vec, mu_mat]
        return variables, tuple(blocks)
    if variant == "layer":
        lam = cp.Variable(nonneg=True)
        t = lam * np.ones(width)
    else:
        t = cp.Variable(width, nonneg=True)
    return [t], t


def _qc_expr(net: FeedForward, layer_data: Any) -> tuple[Any, Any, Any]:
    import cvxpy as cp  # lazy: cvxpy takes over a second to import (module docstring)

    if net.activation == "maxmin":
        return layer_data
    sb = slope_bounds(net.activation, net.negative_slope)
    t = cp.diag(layer_data)
    return -2.0 * sb.a * sb.b * t, (sb.a + sb.b) * t, -2.0 * t


def _multiplier_values(net: FeedForward, variables: list[Any]) -> np.ndarray:
    if net.activation == "maxmin":
        lam, mu = variables
        return np.column_stack([np.asarray(lam.value).reshape(-1), np.asarray(mu.value)])
    return np.asarray(variables[0].value, dtype=np.float64).reshape(-1)


def _compress_input(net: FeedForward) -> FeedForward:
    """For l2 (tau = rho I) only range(W_0^T) matters: on its orthogonal complement
    the LMI reads -rho I <= 0. Replacing W_0 by W_0 Q (Q an orthonormal basis of
    range(W_0^T)) gives the same optimum with an n_1 x n_1 input block; this turns
    MNIST's 784-wide input into 50. Multipliers carry over unchanged."""
    w0 = net.weights[0]
    if w0.shape[1] <= w0.shape[0]:
        return net
    q, _ = np.linalg.qr(w0.T)
    return FeedForward((w0 @ q,) + net.weights[1:], (), net.activation, net.negative_slope)


def solve_lipsdp(
    net: FeedForward,
    variant: str = "neuron",
    output_rows: Sequence[int] | None = None,
    vector_input: bool = False,
    solver: str | None = None,
    time_limit_s: float | None = None,
) -> SDPSolution:
    """Minimise rho (or sum tau for l-inf) subject to LipSDP's LMI ``M <= 0``.

    ``variant``: "neuron" (diagonal T per layer) or "layer" (T = lambda I).
    ``vector_input``: tau free per input coordinate (l-inf); else tau = rho 1 (l2).
    ``time_limit_s``: the solver's own time limit (see ``_solve``)."""
    import cvxpy as cp  # lazy: cvxpy takes over a second to import (module docstring)

    n_input = net.weights[0].shape[1]
    if not vector_input:
        net = _compress_input(net)
    ws = net.weights
    nh = len(ws) - 1
    n0 = ws[0].shape[1]
    layer_vars, qcs = [], []
    for k in range(nh):
        v, data = _layer_variables(net.activation, ws[k].shape[0], variant)
        layer_vars.append(v)
        qcs.append(_qc_expr(net, data))
    if vector_input:
        tau = cp.Variable(n0, nonneg=True)
        objective = cp.sum(tau)
        tau_diag = cp.diag(tau)
    else:
        rho = cp.Variable(nonneg=True)
        tau = rho
        objective = rho
        tau_diag = rho * np.eye(n0)
    sizes = [n0] + [w.shape[0] for w in ws[:-1]]
    grid: list[list[Any]] = [[None] * (nh + 1) for _ in range(nh + 1)]
    grid[0][0] = -tau_diag + ws[0].T @ qcs[0][0] @ ws[0]
    for k in range(1, nh + 1):
        q_vv, q_vz, q_zz = qcs[k - 1]
        off = ws[k - 1].T @ q_vz
        grid[k - 1][k], grid[k][k - 1] = off, off.T
        if k < nh:
            grid[k][k] = q_zz + ws[k].T @ qcs[k][0] @ ws[k]
        else:
            wl = ws[-1]
            grid[k][k] = q_zz + wl.T @ output_metric(wl.shape[0], output_rows) @ wl
    for i in range(nh + 1):
        for j in range(nh + 1):
            if grid[i][j] is None:
                grid[i][j] = np.zeros((sizes[i], sizes[j]))
    m = cp.bmat(grid)
    dim = sum(sizes)
    name = solver or default_solver(dim, net.activation)
    problem = cp.Problem(cp.Minimize(objective), [0.5 * (m + m.T) << 0])
    t0 = time.perf_counter()
    try:
        name = _solve(problem, name, time_limit_s=time_limit_s)
        status = str(problem.status)
    except (cp.error.SolverError, ArithmeticError, ValueError, np.linalg.LinAlgError) as exc:
        status = f"solver_error: {type(exc).__name__}"  # reported, then certified from a fallback
    elapsed = time.perf_counter() - t0
    ok = tau.value is not None and all(v.value is not None for lv in layer_vars for v in lv)
    if not ok:
        return SDPSolution((), np.array([]), status, name, elapsed)
    mults = tuple(_multiplier_values(net, lv) for lv in layer_vars)
    tau_val = (
        np.asarray(tau.value, dtype=np.float64).reshape(-1)
        if vector_input
        else np.full(n_input, float(tau.value))
    )
    return SDPSolution(mults, tau_val, status, name, elapsed)


def solve_layer_step(
    net: FeedForward,
    w_in: np.ndarray,
    h: np.ndarray,
    variant: str = "neuron",
    solver: str | None = None,
    scs_eps: float | None = None,
    time_limit_s: float | None = None,
) -> tuple[np.ndarray | None, str]:
    """One layer of the layer-by-layer method: given the pulled-back output metric H
    on this layer's outputs, choose its multipliers to minimise
    ``lambda_max(W_in^T G W_in)``, G being the metric passed to the previous layer:

        min gamma  s.t.  [[gamma I - W^T Q_vv W, -W^T Q_vz], [-Q_vz^T W, -Q_zz - H]] >= 0.

    H should be normalised (lambda_max ~ 1) by the caller; the problem is homogeneous.
    ``scs_eps`` loosens SCS's tolerance (default 1e-6). That is sound: the caller repairs
    the multipliers and recomputes rho in float64, so a looser solve only costs tightness
    (what it costs and saves: docs/bench_lipschitz.md)."""
    import cvxpy as cp  # lazy: cvxpy takes over a second to import (module docstring)

    n_out = h.shape[0]
    n_in = w_in.shape[1]
    v, data = _layer_variables(net.activation, n_out, variant)
    q_vv, q_vz, q_zz = _qc_expr(net, data)
    gamma = cp.Variable()
    top = gamma * np.eye(n_in) - w_in.T @ q_vv @ w_in
    off = -w_in.T @ q_vz
    bottom = -q_zz - h - 1e-7 * np.eye(n_out)
    m = cp.bmat([[top, off], [off.T, bottom]])
    name = solver or default_solver(n_in + n_out, net.activation)
    problem = cp.Problem(cp.Minimize(gamma), [0.5 * (m + m.T) >> 0])
    try:
        name = _solve(problem, name, scs_eps, time_limit_s)
    except (cp.error.SolverError, ArithmeticError, ValueError, np.linalg.LinAlgError):
        return None, f"{name}:solver_error"
    if any(x.value is None for x in v):
        return None, f"{name}:{problem.status}"
    return _multiplier_values(net, v), f"{name}:{problem.status}"
