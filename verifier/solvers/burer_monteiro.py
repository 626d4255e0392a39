"""Low-rank (Burer-Monteiro) solution of the SDP relaxation, in torch.

Following "Tight Certification of Adversarially Trained Neural Networks via Nonconvex
Low-Rank Semidefinite Relaxations" (Chiu & Zhang, 2023): the lifted matrix is
factored as ``P = V V^T`` with ``V`` of rank r, so ``P >= 0`` holds by construction and
the problem becomes a smooth nonconvex one in ``V`` (size N x r instead of N x N).
The first row of V is fixed to ``e_1`` (a rotation makes that free), so ``P_00 = 1``
and the first column of V holds the first-order values ``P_0i``.

Constraints are enforced by an augmented Lagrangian (L-BFGS on the inner problem,
the classical multiplier updates outside). Those multipliers are the dual variables
of ``relaxations.sdp.problem``: however poorly the nonconvex problem was solved, the
bound comes from ``certified_bound`` (float64 eigenvalues and the trace shift), so it
is valid; a bad solve only makes it loose. Works on any torch device; the final
eigenvalue check is on the CPU in float64.

The augmented-Lagrangian multipliers can be far from dual-optimal (then the certified
bound loses much to ``T * lambda_min``), while maximising the certified bound itself
(``verifier.solvers.sdp_dual.polish_dual``, from CROWN's multipliers) is direct and
cheap (BENCHMARKS.md, section 6, has the figures). So ``solve_lowrank`` runs that dual
ascent first and only falls back to the rank-r primal (raising the rank, each
round's multipliers polished by the same ascent) when it has not reached the target.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from relaxations.sdp.problem import LAYER_FIELDS, Multipliers, SdpProblem, certified_bound
from verifier.solvers.sdp_dual import DualFunction, polish_dual

__all__ = ["LowRankOptions", "LowRankSolution", "solve_lowrank"]

T = torch.Tensor


@dataclass(frozen=True)
class LowRankOptions:
    """``dual_iter``: L-BFGS-B iterations of the direct dual ascent run first;
    ``primal_fallback``: then, if the target is not reached, the rank-r primal rounds.
    ``rank``: starting rank; it is doubled up to ``max_rank`` while the bound stays
    below the target. ``outer``/``inner``: augmented-Lagrangian rounds and L-BFGS
    iterations per round. ``rho``: initial penalty, multiplied by ``rho_growth`` when
    the constraint violation does not shrink by ``rho_shrink``."""

    rank: int = 8
    max_rank: int = 32
    outer: int = 30
    inner: int = 150
    rho: float = 10.0
    rho_growth: float = 3.0
    rho_shrink: float = 0.5
    rho_max: float = 1e4
    tol: float = 1e-6
    check_every: int = 1
    time_limit_s: float = 60.0
    dual_iter: int = 3000
    primal_fallback: bool = True
    seed: int = 0
    device: str = "cpu"
    dtype: torch.dtype = torch.float64


@dataclass
class LowRankSolution:
    bound: float
    multipliers: Multipliers
    lam_min: float
    rank: int
    primal_objective: float
    violation: float
    rounds: int
    time_s: float
    history: list = field(default_factory=list)
    dual_evaluations: int = 0
    stage: str = "dual"


class _Data:
    """The problem's arrays as torch tensors on one device."""

    def __init__(self, p: SdpProblem, device: str, dtype: torch.dtype) -> None:
        def t(a) -> T:
            return torch.as_tensor(np.array(a, dtype=np.float64), dtype=dtype, device=device)
        self.sizes = p.sizes
        self.w = [t(w) for w in p.maps]
        self.b = [t(b) for b in p.shifts]
        self.lo, self.hi = t(p.in_lower), t(p.in_upper)
        self.lx, self.ux, self.s, self.r = [], [], [], []
        for k in range(p.n_hidden):
            lx, ux = p.post_bounds(k)
            s, r = p.triangle(k)
            self.lx.append(t(lx)); self.ux.append(t(ux)); self.s.append(t(s)); self.r.append(t(r))
        self.c_last = t(p.objective_linear)
        self.const = float(p.objective_const)


def _constraints(d: _Data, blocks: list[T]) -> tuple[T, list[dict[str, T]]]:
    """Values of every constraint at ``P = V V^T`` (``>= 0`` rows, and ``nu``'s ``= 0``)."""
    v0 = blocks[0]
    x0, q0 = v0[:, 0], (v0 * v0).sum(1)
    g_mu = (d.lo + d.hi) * x0 - d.lo * d.hi - q0
    layers = []
    for k in range(len(d.w)):
        vk, vp = blocks[k + 1], torch.cat(blocks[:k + 1])
        h = d.w[k] @ vp
        hz = h[:, 0] + d.b[k]
        x, q = vk[:, 0], (vk * vk).sum(1)
        layers.append({
            "lam_pos": x,
            "lam_lin": x - hz,
            "nu": q - (vk * h).sum(1) - d.b[k] * x,
            "lam_box": (d.lx[k] + d.ux[k]) * x - d.lx[k] * d.ux[k] - q,
            "lam_tri": d.r[k] + d.s[k] * hz - x,
        })
    return g_mu, layers


def _initial(p: SdpProblem, rank: int, d: _Data, seed: int) -> list[T]:
    """The network's own lifted point at the box centre, plus small noise in the other columns."""
    g = torch.Generator().manual_seed(seed)
    v = 0.5 * (p.in_lower + p.in_upper)
    vals = [v]
    for w, b in zip(p.maps, p.shifts):
        x = np.maximum(w @ v + b, 0.0)
        vals.append(x)
        v = np.concatenate([v, x])
    blocks = []
    for v in vals:
        noise = 1e-2 * torch.randn(len(v), rank, generator=g, dtype=torch.float64)
        noise[:, 0] = torch.as_tensor(v)
        blocks.append(noise.to(device=d.w[0].device, dtype=d.w[0].dtype))
    return blocks


def _pad(blocks: list[T], rank: int, seed: int) -> list[T]:
    g = torch.Generator().manual_seed(seed + rank)
    out = []
    for v in blocks:
        extra = 1e-3 * torch.randn(v.shape[0], rank - v.shape[1], generator=g, dtype=torch.float64)
        out.append(torch.cat([v.detach(), extra.to(v)], 1))
    return out


def _flat(g_mu: T, cons: list[dict[str, T]]) -> tuple[T, T]:
    """(inequality values, equality values) as two flat vectors, in ``Multipliers`` order."""
    ineq = [g_mu] + [lay[f] for lay in cons for f in LAYER_FIELDS if f != "nu"]
    return torch.cat(ineq), torch.cat([lay["nu"] for lay in cons])


def _from_flat(p: SdpProblem, lam: T, nu: T) -> Multipliers:
    lam = lam.detach().cpu().double().numpy()
    nu = nu.detach().cpu().double().numpy()
    n0 = p.sizes[0]
    mu, pos, npos = lam[:n0].copy(), n0, 0
    layers = []
    for n in p.sizes[1:]:
        lay = {}
        for f in LAYER_FIELDS:
            if f == "nu":
                lay[f] = nu[npos:npos + n].copy()
                npos += n
            else:
                lay[f] = lam[pos:pos + n].copy()
                pos += n
        layers.append(lay)
    return Multipliers(0.0, mu, tuple(layers))


def _al_rounds(p: SdpProblem, d: _Data, blocks: list[T], opts: LowRankOptions, deadline: float,
               target: Optional[float], state: dict) -> list[T]:
    """Augmented-Lagrangian rounds at a fixed rank; keeps the best certified bound in ``state``."""
    split = [b.shape[0] for b in blocks]
    flat = torch.cat(blocks).detach().clone().requires_grad_(True)
    lam, nu, rho = state["lam"], state["nu"], state["rho"]
    prev_viol = float("inf")
    for rnd in range(opts.outer):
        opt = torch.optim.LBFGS([flat], lr=1.0, max_iter=opts.inner, history_size=20,
                                tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")

        def closure() -> T:
            opt.zero_grad()
            bl = list(torch.split(flat, split))
            g, h = _flat(*_constraints(d, bl))
            obj = d.c_last @ flat[:, 0]
            loss = obj + (torch.clamp(lam - rho * g, min=0) ** 2).sum() / (2 * rho) \
                - nu @ h + 0.5 * rho * (h @ h)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            bl = list(torch.split(flat, split))
            g, h = _flat(*_constraints(d, bl))
            obj = float(d.c_last @ flat[:, 0]) + d.const
            viol = max(float(torch.clamp(-g, min=0).max()), float(h.abs().max()))
            lam = torch.clamp(lam - rho * g, min=0)
            nu = nu - rho * h
        state["rounds"] += 1
        last = rnd == opts.outer - 1 or time.monotonic() > deadline
        converged = viol < opts.tol and rnd > 0
        if rnd % opts.check_every == opts.check_every - 1 or last or converged:
            bound, mult, lam_min = certified_bound(p, _from_flat(p, lam, nu))
            polish = (last or converged) and time.monotonic() < deadline
            if polish and bound <= (target if target is not None else state["bound"]):
                pol = polish_dual(p, mult, max_iter=opts.dual_iter, target=target,
                                  time_limit_s=max(0.0, deadline - time.monotonic()), fn=state["fn"])
                state["dual_evals"] += pol.evaluations
                if pol.bound > bound:
                    bound, mult, lam_min = pol.bound, pol.multipliers, pol.lam_min
            state["history"].append((state["rank"], state["rounds"], obj, viol, bound))
            if bound > state["bound"]:
                state.update(bound=bound, mult=mult, lam_min=lam_min, obj=obj, viol=viol)
            if target is not None and bound > target:
                break
        if last or converged:
            break
        if viol > opts.rho_shrink * prev_viol:
            rho = min(rho * opts.rho_growth, opts.rho_max)
        prev_viol = viol
    state["lam"], state["nu"], state["rho"] = lam, nu, rho
    return list(torch.split(flat.detach(), split))


def solve_lowrank(problem: SdpProblem, options: LowRankOptions = LowRankOptions(),
                  target: Optional[float] = None) -> LowRankSolution:
    """Certified lower bound of the SDP relaxation: direct dual ascent, then (if the
    target is not reached) the rank-r factorisation with its multipliers polished.

    ``target``: stop as soon as the certified bound exceeds it; while it does not,
    the rank is doubled (warm-started) up to ``max_rank``. Without a target the dual
    ascent runs to its iteration limit and the primal uses only the starting rank."""
    t0 = time.monotonic()
    deadline = t0 + options.time_limit_s
    d = _Data(problem, options.device, options.dtype)
    zeros = lambda n: torch.zeros(n, dtype=options.dtype, device=options.device)  # noqa: E731
    n_hidden = sum(problem.sizes[1:])
    state = {"lam": zeros(problem.sizes[0] + (len(LAYER_FIELDS) - 1) * n_hidden), "nu": zeros(n_hidden),
             "rho": options.rho, "rounds": 0, "history": [],
             "bound": -float("inf"), "mult": None, "lam_min": float("nan"), "obj": float("nan"),
             "viol": float("inf"), "rank": options.rank}
    fn = DualFunction(problem)
    pol = polish_dual(problem, None, max_iter=options.dual_iter, target=target,
                      time_limit_s=options.time_limit_s, fn=fn)
    state.update(fn=fn, dual_evals=pol.evaluations, bound=pol.bound, mult=pol.multipliers, lam_min=pol.lam_min)
    rank = options.rank
    reached = target is not None and pol.bound > target
    if reached or not options.primal_fallback or time.monotonic() > deadline:
        return LowRankSolution(pol.bound, pol.multipliers, pol.lam_min, 0, float("nan"), float("nan"), 0,
                               time.monotonic() - t0, [], pol.evaluations, "dual")
    blocks = _initial(problem, rank, d, options.seed)
    while True:
        state["rank"] = rank
        blocks = _al_rounds(problem, d, blocks, options, deadline, target, state)
        done = target is None or state["bound"] > target
        if done or rank >= options.max_rank or time.monotonic() > deadline:
            break
        rank = min(2 * rank, options.max_rank)
        blocks = _pad(blocks, rank, options.seed)
    return LowRankSolution(state["bound"], state["mult"], state["lam_min"], rank, state["obj"],
                           state["viol"], state["rounds"], time.monotonic() - t0, state["history"],
                           state["dual_evals"], "primal")
