"""Counterexample search: sampled points, then PGD on the spec's margin per region.

The objective for an input is min over conjunctions of max over rows of
(C_i y - d_i): it is <= 0 exactly when some conjunction holds. Candidates are only
candidates; `replay.confirm` decides.

A region cut by rows `A x <= b` (VNN-LIB 2.0's coupled inputs, such as `|X - X2| <= eps`
between two copies of a network) would leave a box search almost no admissible point:
a random point of the box meets 128 such rows by chance almost never. Sampled points
and every PGD step are therefore moved onto the rows (simultaneous projections onto the
violated half-spaces, then the box: cheap, and exact for rows on disjoint coordinates),
and a candidate that still misses a row is repaired by its nearest point of the region
(a HiGHS QP, rows pulled in by their float32 rounding) before it is replayed.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from bab.attack import descent_direction, input_gradient
from bab.problem import onto_rows
from models import GraphEvaluator
from vnnlib import Disjunct
from verifier.config import AttackConfig
from verifier.model import Model
from verifier.replay import confirm
from verifier.solvers.highs import closest_point

__all__ = ["SpecTensors", "spec_tensors", "margin", "attack_disjunct", "repaired"]


class SpecTensors:
    """A disjunct's conjunctions padded into tensors: C [K, R, n_out], d [K, R], valid [K, R]."""

    def __init__(self, disjunct: Disjunct, dtype: torch.dtype, device: torch.device) -> None:
        conjs = disjunct.outputs
        K = len(conjs)
        R = max((c.C.shape[0] for c in conjs), default=0)
        n_out = conjs[0].C.shape[1] if conjs else 0
        C = np.zeros((K, max(R, 1), n_out))
        d = np.zeros((K, max(R, 1)))
        valid = np.zeros((K, max(R, 1)), dtype=bool)
        for k, c in enumerate(conjs):
            r = c.C.shape[0]
            C[k, :r], d[k, :r], valid[k, :r] = c.C, c.d, True
        self.C = torch.tensor(C, dtype=dtype, device=device)
        self.d = torch.tensor(d, dtype=dtype, device=device)
        self.valid = torch.tensor(valid, device=device)


def spec_tensors(disjunct: Disjunct, dtype: torch.dtype, device: torch.device) -> SpecTensors:
    return SpecTensors(disjunct, dtype, device)


def margin(st: SpecTensors, y: torch.Tensor) -> torch.Tensor:
    """[N] objective for outputs y [N, n_out]: <= 0 iff some conjunction holds."""
    v = torch.einsum("krj,nj->nkr", st.C, y) - st.d
    v = torch.where(st.valid, v, torch.full_like(v, -torch.inf))
    return v.amax(-1).amin(-1)


def repaired(disjunct: Disjunct, x: np.ndarray) -> Optional[np.ndarray]:
    """x itself when it meets the region's rows, else the region's nearest point to it with
    every row pulled in by a margin that covers the cast to float32 (None: no such point)."""
    region = disjunct.region
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if region.A is None or region.A.shape[0] == 0 or bool(np.all(region.A @ x <= region.b)):
        return x
    scale = np.maximum(np.abs(region.lower), np.abs(region.upper))
    margin = 1e-6 * (np.abs(region.b) + np.abs(region.A) @ scale) + 1e-12
    out = closest_point(region.A, region.b - margin, region.lower, region.upper, x)
    return None if out is None else out[0]


def _try(model: Model, disjunct: Disjunct, xs: np.ndarray, scores: np.ndarray, limit: int
         ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    for i in np.argsort(scores)[:limit]:
        x = repaired(disjunct, xs[i])
        found = None if x is None else confirm(model, disjunct, x)
        if found is not None:
            return found
    return None


def attack_disjunct(model: Model, ev: GraphEvaluator, disjunct: Disjunct, cfg: AttackConfig,
                    deadline: float, seed: int = 0, extra: Optional[np.ndarray] = None
                    ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Search one disjunct; returns a confirmed (x32, y) or None."""
    if not disjunct.outputs:
        return None
    shape = model.graph.input_shape
    dt, dev = ev.dtype, ev.device
    lo = torch.tensor(disjunct.region.lower, dtype=dt, device=dev)
    hi = torch.tensor(disjunct.region.upper, dtype=dt, device=dev)
    st = spec_tensors(disjunct, dt, dev)
    rows = disjunct.region.A is not None and disjunct.region.A.shape[0] > 0
    A = torch.tensor(disjunct.region.A, dtype=dt, device=dev) if rows else None
    b = torch.tensor(disjunct.region.b, dtype=dt, device=dev) if rows else None
    feasible = (lambda p: onto_rows(p, A, b, lo, hi)) if rows else (lambda p: p)  # noqa: E731
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = max(cfg.samples, 1)
    pts = [((lo + hi) / 2).unsqueeze(0), lo.unsqueeze(0), hi.unsqueeze(0),
           lo + (hi - lo) * torch.rand(n, lo.numel(), generator=gen, dtype=dt).to(dev)]
    corners = torch.rand(n, lo.numel(), generator=gen, dtype=dt).to(dev) < 0.5
    pts.append(torch.where(corners, hi, lo))
    if extra is not None and len(extra):
        pts.append(torch.as_tensor(np.asarray(extra).reshape(len(extra), -1), dtype=dt, device=dev))
    xs = feasible(torch.cat(pts).clamp(lo, hi))
    with torch.no_grad():
        scores = margin(st, ev(xs.reshape(-1, *shape)).reshape(len(xs), -1))
    found = _try(model, disjunct, xs.cpu().numpy(), scores.cpu().numpy(), 3)
    if found is not None or not cfg.enabled or time.monotonic() > deadline:
        return found
    half = (hi - lo) / 2
    starts = xs[torch.argsort(scores)[: max(cfg.restarts // 2, 1)]]
    rand = lo + (hi - lo) * torch.rand(cfg.restarts, lo.numel(), generator=gen, dtype=dt).to(dev)
    x = feasible(torch.cat([starts, rand])).clone()
    best_x, best_s = x.clone(), torch.full((len(x),), torch.inf, dtype=dt, device=dev)
    for step in range(cfg.steps):
        if time.monotonic() > deadline:
            break
        x.requires_grad_(True)
        s = margin(st, ev(x.reshape(-1, *shape)).reshape(len(x), -1))
        grad = input_gradient(s.sum(), x)
        with torch.no_grad():
            better = s < best_s
            best_s = torch.where(better, s, best_s)
            best_x[better] = x[better]
            if grad is None:
                break     # the output is piecewise constant in x: nothing to follow
            size = cfg.step_size * (1e-3 ** (step / max(cfg.steps - 1, 1)))  # geometric decay
            x = feasible((x - size * half * descent_direction(grad, rows)).clamp(lo, hi))
        if bool((best_s <= 0).any()):
            found = _try(model, disjunct, best_x.cpu().numpy(), best_s.cpu().numpy(), 3)
            if found is not None:
                return found
    return _try(model, disjunct, best_x.detach().cpu().numpy(), best_s.cpu().numpy(), 2)
