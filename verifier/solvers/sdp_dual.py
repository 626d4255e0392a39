"""Direct ascent on the certified dual bound of the SDP relaxation (numpy + scipy).

The bound that ``relaxations.sdp.certified_bound`` certifies for multipliers ``y`` is,
with ``t`` chosen optimally, the concave function

    h(y) = max_{delta >= 0} q(y, delta),
    q(y, delta) = m00(y) - delta (T - 1) - beta(y)^T (R(y) + delta I)^{-1} beta(y)

of the centred dual matrix ``K^T M(y) K = [[m00, beta^T], [beta, R]]`` (``T`` the centred
trace bound). The augmented-Lagrangian multipliers of the low-rank primal are only
approximately dual-optimal, and with ``T`` in the tens every unit of residual negative
eigenvalue costs ``T`` in the bound; maximising ``h`` itself removes that loss. Why it
is cheap:

* ``R``'s input block is diagonal (only the input box rows touch ``x_i^2``), so every
  factorisation is a Schur complement onto the few unstable neurons: about
  ``n_0 * n_z^2`` flops instead of ``(n_0 + n_z)^3``.
* ``q`` is differentiable in y with gradient ``<B_i, w w^T>`` (envelope theorem), where
  ``w = [1; c - x]`` and ``x = (R + delta I)^{-1} beta`` is the rank-one primal point
  the dual is "looking at"; the inner ``delta`` is the trust-region multiplier of
  ``||x||^2 <= T - 1``, found by the More-Sorensen Newton iteration.
* ``y >= 0`` (except ``nu``) is a box, so L-BFGS-B applies as is.

Every evaluated ``(y, delta)`` with ``R + delta I`` positive definite is a valid bound,
so stopping early (iteration or time limit) only costs tightness; the bound that is
reported is re-derived from the dense matrix in float64 by ``certified_bound``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from relaxations.sdp.problem import Multipliers, SdpProblem, certified_bound, nonneg_mask

__all__ = ["DualFunction", "PolishResult", "crown_multipliers", "polish_dual"]


class _Stop(Exception):
    """Raised inside the objective to end L-BFGS-B (time limit or target reached)."""


@dataclass
class PolishResult:
    """``bound``: certified (float64, dense eigenvalue) bound of ``multipliers``;
    ``value``: the best ``q`` seen during the ascent (equal up to rounding);
    ``evaluations``: function evaluations; ``primal_point``: the lifted rank-one
    point ``c - x`` of the best evaluation (an approximate primal first-order solution)."""

    bound: float
    multipliers: Multipliers
    lam_min: float
    value: float
    evaluations: int
    time_s: float
    primal_point: Optional[np.ndarray] = None


class DualFunction:
    """``q(y, delta)`` and its gradient for one problem, built block by block.

    ``y`` is the packed multiplier vector WITHOUT ``t`` (``Multipliers.pack()[1:]``).
    Nothing of size ``dim^2`` is formed: ``R = [[diag(mu), C^T], [C, Z]]`` with ``C``
    (hidden x input) and ``Z`` (hidden x hidden) built from the ``nu`` rows, so one
    evaluation costs about ``n_0 n_z^2`` flops plus a few matrix-vector products."""

    def __init__(self, problem: SdpProblem) -> None:
        self.problem = problem
        self.n0 = problem.sizes[0]
        self.nz = sum(problem.sizes[1:])
        self.m = problem.n_multipliers() - 1
        self.lower = np.where(nonneg_mask(problem)[1:], 0.0, -np.inf)
        self.centre = problem.centre()
        self.t1 = problem.trace_bound() - 1.0
        self.lo, self.hi = problem.in_lower, problem.in_upper
        self.layers = []
        for k in range(problem.n_hidden):
            lx, ux = problem.post_bounds(k)
            s, r = problem.triangle(k)
            zs = problem.block(k + 1)
            self.layers.append((problem.maps[k], problem.shifts[k], lx, ux, s, r,
                                slice(zs.start - 1, zs.stop - 1), problem.offsets[k + 1] - 1))

    def _split(self, y: np.ndarray) -> tuple[np.ndarray, list[tuple[np.ndarray, ...]]]:
        n0, pos = self.n0, self.n0
        lays = []
        for a, *_ in self.layers:
            n = a.shape[0]
            lays.append(tuple(y[pos + i * n:pos + (i + 1) * n] for i in range(5)))
            pos += 5 * n
        return y[:n0], lays

    def parts(self, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(m00, beta, diag(mu), C, Z) of the centred ``K^T M(y) K`` with ``t = 0``."""
        p, n0, nz = self.problem, self.n0, self.nz
        mu, lays = self._split(y)
        m00 = p.objective_const + float(mu @ (self.lo * self.hi))
        g = np.array(p.objective_linear, dtype=np.float64, copy=True)
        g[:n0] -= mu * (self.lo + self.hi)
        cmat, zmat = np.zeros((nz, n0)), np.zeros((nz, nz))
        for (a, b, lx, ux, s, r, zs, width), (lp, ll, nu, lb, lt) in zip(self.layers, lays):
            m00 += float(ll @ b + lb @ (lx * ux) - lt @ (r + s * b))
            g[zs] += -lp - ll + nu * b - lb * (lx + ux) + lt
            g[:width] += a.T @ (ll - lt * s)
            zr = slice(zs.start - n0, zs.stop - n0)
            half = 0.5 * nu[:, None] * a
            cmat[zr] = half[:, :n0]
            zmat[zr, :width - n0] += half[:, n0:]
            zmat[np.arange(zr.start, zr.stop), np.arange(zr.start, zr.stop)] += lb - nu
        zmat = zmat + np.tril(zmat, -1).T
        beta, c = 0.5 * g, self.centre
        rc = np.concatenate([mu * c[:n0] + cmat.T @ c[n0:], cmat @ c[:n0] + zmat @ c[n0:]])
        m00 += 2.0 * float(c @ beta) + float(c @ rc)
        return m00, beta + rc, mu, cmat, zmat

    def _solve(self, parts: tuple, delta: float):
        """``x = (R + delta I)^{-1} beta`` and ``x^T (R + delta I)^{-1} x`` by the Schur
        complement onto the hidden block; None when ``R + delta I`` is not positive definite."""
        _, beta, mu, cmat, zmat = parts
        n0 = self.n0
        dx = mu + delta
        if not np.all(dx > 0):
            return None
        cd = cmat / dx
        s = zmat + delta * np.eye(self.nz) - cd @ cmat.T
        if self.nz:
            try:
                chol = cho_factor(s, lower=True, check_finite=False)
            except np.linalg.LinAlgError:
                return None
            if not np.all(np.diag(chol[0]) > 0):
                return None

        def solve(rhs: np.ndarray) -> np.ndarray:
            rx, rz = rhs[:n0], rhs[n0:]
            if self.nz:
                rz = cho_solve(chol, rz - cd @ rx, check_finite=False)
            return np.concatenate([(rx - cmat.T @ rz) / dx, rz])

        x = solve(beta)
        return x, float(x @ solve(x))

    def constraint_values(self, v: np.ndarray) -> np.ndarray:
        """Every relaxation row at the rank-one lifted point ``[1; v]``, packed like y
        (``<A_i, w w^T>``; the gradient of ``q`` is minus this, by the envelope theorem)."""
        x = v[:self.n0]
        out = [(self.lo + self.hi) * x - self.lo * self.hi - x * x]
        for a, b, lx, ux, s, r, zs, width in self.layers:
            z, h = v[zs], a @ v[:width] + b
            out += [z, z - h, z * z - z * h, (lx + ux) * z - lx * ux - z * z, r + s * h - z]
        return np.concatenate(out)

    def inner(self, parts: tuple, delta0: float = 0.0, iters: int = 60) -> tuple[float, float, np.ndarray]:
        """``(q, delta, x)`` at the (near-)optimal shift ``delta >= 0`` for fixed y.

        The secular equation ``1/||x(delta)|| = 1/sqrt(T-1)`` is concave increasing in
        delta, so More-Sorensen Newton steps from its left converge monotonically and stay
        in the domain; points right of the root or outside the domain are only bracketing."""
        t1, m00, beta = self.t1, parts[0], parts[1]
        radius = np.sqrt(t1)
        scale = max(1.0, float(np.max(np.abs(parts[2]), initial=0.0)), float(np.max(np.abs(parts[4]), initial=0.0)))

        def val(delta, sol):
            x, _ = sol
            return m00 - delta * t1 - float(beta @ x), delta, x

        lo, lo_sol, hi, hi_sol, d = 0.0, None, None, None, None
        first = self._solve(parts, delta0) if delta0 > 0 else None
        if first is not None and first[0] @ first[0] > t1:  # warm start left of the root
            lo, lo_sol = delta0, first
        else:
            if first is not None:
                hi, hi_sol = delta0, first
            sol = self._solve(parts, 0.0)
            if sol is not None and sol[0] @ sol[0] <= t1:
                return val(0.0, sol)
            lo_sol = sol  # left bracket: infeasible (None) or ||x|| > radius
            if sol is None and hi is None:
                lo = delta0 if delta0 > 0 else 0.0
                d = max(4.0 * delta0, 1e-8 * scale)
        while d is not None:  # find a feasible point
            s2 = self._solve(parts, d)
            if s2 is None:
                lo, d = d, 4.0 * d
            elif s2[0] @ s2[0] > t1:
                lo, lo_sol, d = d, s2, None
            else:
                hi, hi_sol, d = d, s2, None
        for _ in range(iters):
            if lo_sol is not None:
                x, xqx = lo_sol
                nx = float(np.sqrt(x @ x))
                if abs(nx - radius) <= 1e-8 * radius:
                    break
                step = (nx / radius - 1.0) * nx * nx / max(xqx, 1e-300)
                cand = lo + step
                if hi is not None and cand >= hi:
                    cand = 0.5 * (lo + hi)
            else:
                cand = 0.5 * (lo + hi) if lo > 0 else 0.5 * hi
                if hi_sol is not None:  # Newton from the right, kept inside the bracket
                    x, xqx = hi_sol
                    nx = float(np.sqrt(x @ x))
                    c2 = hi + (nx / radius - 1.0) * nx * nx / max(xqx, 1e-300)
                    if lo < c2 < hi:
                        cand = c2
            if hi is not None and hi - lo <= 1e-13 * max(hi, 1e-30):
                break
            s2 = self._solve(parts, cand)
            if s2 is None:
                lo, lo_sol = cand, None
            elif s2[0] @ s2[0] > t1:
                if lo_sol is not None and cand - lo <= 1e-14 * max(cand, 1e-30):
                    lo, lo_sol = cand, s2
                    break
                lo, lo_sol = cand, s2
            else:
                hi, hi_sol = cand, s2
        # the best evaluated feasible point (any feasible delta gives a valid value)
        cands = [val(lo, lo_sol)] if lo_sol is not None else []
        if hi_sol is not None:
            cands.append(val(hi, hi_sol))
        return max(cands, key=lambda c: c[0])

    def value_grad(self, y: np.ndarray, delta0: float = 0.0) -> tuple[float, np.ndarray, float, np.ndarray]:
        """(q, dq/dy, delta, x) at the inner-optimal delta."""
        q, delta, x = self.inner(self.parts(y), delta0)
        return q, -self.constraint_values(self.centre - x), delta, x


def crown_multipliers(problem: SdpProblem) -> Multipliers:
    """The SDP multipliers that reproduce CROWN's bound (with its adaptive lower slopes)
    on the reduced problem: a start ``h`` already values at about CROWN's bound.

    Backward pass: a coefficient ``a >= 0`` on ``z = relu(h)`` is relaxed by ``z >= alpha h``
    (``lam_lin = alpha a``, ``lam_pos = (1 - alpha) a``), ``a < 0`` by the triangle's upper side
    (``lam_tri = -a``); the input coefficient ``a_i`` gets ``mu_i = |a_i| / (2 r_i)``, which
    makes ``a_i x_i`` + the box row's rank-one minimum equal to the box's."""
    n0 = problem.sizes[0]
    coef = np.array(problem.objective_linear, dtype=np.float64, copy=True)
    layers: list[dict[str, np.ndarray]] = [dict() for _ in range(problem.n_hidden)]
    for k in range(problem.n_hidden - 1, -1, -1):
        zs = slice(problem.offsets[k + 1] - 1, problem.offsets[k + 2] - 1)
        a = coef[zs].copy()
        lo, hi = problem.pre_lower[k], problem.pre_upper[k]
        alpha = (hi >= -lo).astype(np.float64)
        s, _ = problem.triangle(k)
        pos, neg = np.maximum(a, 0.0), np.maximum(-a, 0.0)
        layers[k] = {"lam_pos": (1.0 - alpha) * pos, "lam_lin": alpha * pos, "nu": np.zeros_like(a),
                     "lam_box": np.zeros_like(a), "lam_tri": neg}
        slope = alpha * pos - s * neg  # coefficient on h = A v_prev + b
        coef[zs] = 0.0
        coef[:zs.start] += problem.maps[k].T @ slope
    r = 0.5 * (problem.in_upper - problem.in_lower)
    mu = np.where(r > 0, np.abs(coef[:n0]) / (2.0 * np.where(r > 0, r, 1.0)), 0.0)
    return Multipliers(0.0, mu, tuple(layers))


def polish_dual(problem: SdpProblem, start: Optional[Multipliers] = None, max_iter: int = 500,
                time_limit_s: float = 30.0, target: Optional[float] = None,
                fn: Optional[DualFunction] = None) -> PolishResult:
    """Maximise the certified bound ``h(y)`` by L-BFGS-B from ``start`` (CROWN's
    multipliers, ``crown_multipliers``, if None).

    Stops at ``max_iter`` iterations, at the time limit, or once the bound exceeds
    ``target`` (then the last evaluation is re-checked densely and returned)."""
    from scipy.optimize import minimize  # lazy: scipy.optimize takes about 0.3-0.7 s; only this ascent needs it

    t0 = time.monotonic()
    f = fn or DualFunction(problem)
    if start is None:  # CROWN's multipliers, moved off the kink where the hidden block of R is 0
        start = crown_multipliers(problem)
        layers = tuple(dict(lay, lam_box=lay["lam_box"] + 1e-2 * (1.0 + np.abs(lay["lam_tri"] + lay["lam_lin"])))
                       for lay in start.layers)
        start = Multipliers(0.0, start.mu, layers)
    y0 = np.asarray(start.projected().pack()[1:], dtype=np.float64)
    y0 = np.maximum(y0, f.lower)
    best = {"q": -np.inf, "y": y0, "x": None}
    state = {"delta": 0.0, "evals": 0}
    deadline = t0 + time_limit_s

    def obj(y: np.ndarray) -> tuple[float, np.ndarray]:
        q, g, delta, x = f.value_grad(y, state["delta"])
        state["delta"], state["evals"] = delta, state["evals"] + 1
        if q > best["q"]:
            best.update(q=q, y=y.copy(), x=x)
        if (target is not None and best["q"] > target) or time.monotonic() > deadline:
            raise _Stop
        return -q, -g

    bounds = [(lo if np.isfinite(lo) else None, None) for lo in f.lower]
    try:
        minimize(obj, y0, jac=True, method="L-BFGS-B", bounds=bounds,
                 options={"maxiter": max_iter, "maxcor": 30, "ftol": 1e-15, "gtol": 1e-12})
    except _Stop:
        pass
    mult = Multipliers.unpack(problem, np.concatenate([[0.0], best["y"]]))
    bound, mult, lam_min = certified_bound(problem, mult)
    point = None if best["x"] is None else f.centre - best["x"]
    return PolishResult(bound, mult, lam_min, float(best["q"]), state["evals"], time.monotonic() - t0, point)
