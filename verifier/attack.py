"""Counterexample search: sampled points, then PGD on the spec's margin per region.

The objective for an input is min over conjunctions of max over rows of
(C_i y - d_i): it is <= 0 exactly when some conjunction holds. Candidates are only
candidates; `replay.confirm` decides.
"""
from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch

from bab.attack import input_gradient
from models import GraphEvaluator
from vnnlib import Disjunct
from verifier.config import AttackConfig
from verifier.model import Model
from verifier.replay import confirm

__all__ = ["SpecTensors", "spec_tensors", "margin", "attack_disjunct"]


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


def _try(model: Model, disjunct: Disjunct, xs: np.ndarray, scores: np.ndarray, limit: int
         ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    for i in np.argsort(scores)[:limit]:
        found = confirm(model, disjunct, xs[i])
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
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = max(cfg.samples, 1)
    pts = [((lo + hi) / 2).unsqueeze(0), lo.unsqueeze(0), hi.unsqueeze(0),
           lo + (hi - lo) * torch.rand(n, lo.numel(), generator=gen, dtype=dt).to(dev)]
    corners = torch.rand(n, lo.numel(), generator=gen, dtype=dt).to(dev) < 0.5
    pts.append(torch.where(corners, hi, lo))
    if extra is not None and len(extra):
        pts.append(torch.as_tensor(np.asarray(extra).reshape(len(extra), -1), dtype=dt, device=dev))
    xs = torch.cat(pts).clamp(lo, hi)
    with torch.no_grad():
        scores = margin(st, ev(xs.reshape(-1, *shape)).reshape(len(xs), -1))
    found = _try(model, disjunct, xs.cpu().numpy(), scores.cpu().numpy(), 3)
    if found is not None or not cfg.enabled or time.monotonic() > deadline:
        return found
    half = (hi - lo) / 2
    starts = xs[torch.argsort(scores)[: max(cfg.restarts // 2, 1)]]
    rand = lo + (hi - lo) * torch.rand(cfg.restarts, lo.numel(), generator=gen, dtype=dt).to(dev)
    x = torch.cat([starts, rand]).clone()
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
            x = (x - size * half * grad.sign()).clamp(lo, hi)
        if bool((best_s <= 0).any()):
            found = _try(model, disjunct, best_x.cpu().numpy(), best_s.cpu().numpy(), 3)
            if found is not None:
                return found
    return _try(model, disjunct, best_x.detach().cpu().numpy(), best_s.cpu().numpy(), 2)
