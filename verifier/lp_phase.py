"""The LP/MILP phase of `verify()` for ReLU networks: refine, then try the exact MILP, then hand over.

Runs between bound propagation and activation-split branch and bound (`lp.*` keys):

1. LP refinement (`lp.refine`) in `lp.refine_share` of the time left: the unstable
   neurons' intervals tightened by LPs (verifier/refine.py); they reach the search
   as `Problem.known`, so every domain starts from them.
2. The exact MILP (`lp.milp`) when at most `lp.milp_max_unstable` neurons are still
   unstable, in `lp.milp_share` of the time left: per conjunction, a proof (the
   disjunct is unsat when every conjunction is) or a candidate counterexample that
   the caller replays.

Certificates: refined intervals are not yet written into the activation-split
certificate, so with `proof` on (--certificate) refinement is skipped and the search
runs as before; a MILP proof is recorded as a claim that rests on HiGHS, which the
certificate states instead of a checkable proof.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

import numpy as np
import torch

from models import GraphEvaluator
from relaxations import IntervalBounds, compute_bounds
from vnnlib import Disjunct
from verifier.api import bound_options, outward_box
from verifier.config import Config, resolve_device
from verifier.model import Model
from verifier.refine import Intervals, exact_milp, mlp_layers, refine_bounds

__all__ = ["LpOutcome", "lp_phase"]


@dataclasses.dataclass
class LpOutcome:
    """What the phase found: a proof, candidate points, and intervals for the search."""

    proved: bool = False
    known: dict = dataclasses.field(default_factory=dict)       # name -> IntervalBounds [1, *shape]
    candidates: list = dataclasses.field(default_factory=list)  # input points (float64, flat)
    proof: Optional[dict] = None
    stats: dict = dataclasses.field(default_factory=dict)


def _to_known(model: Model, intervals: Intervals, dtype: torch.dtype, device: str) -> dict:
    """float64 intervals as IntervalBounds of the pass's dtype, rounded outward."""
    out = {}
    for name, (lo, hi) in intervals.items():
        shape = model.graph.shapes.get(name) or (len(lo),)
        tlo, thi = outward_box(lo, hi, dtype, device)
        out[name] = IntervalBounds(tlo.reshape(1, *shape), thi.reshape(1, *shape))
    return out


def lp_phase(model: Model, ev: GraphEvaluator, disjunct: Disjunct, C: np.ndarray, d: np.ndarray,
             owner: np.ndarray, config: Config, deadline: float, start: Optional[np.ndarray] = None,
             known: Optional[dict] = None) -> LpOutcome:
    """Refine and try the exact MILP on one disjunct of a ReLU MLP (see the module docstring).

    `known`: intervals already proved over the region (optimised intermediate bounds),
    the starting point. `LpOutcome.known` holds every ReLU input's interval after
    refinement (CROWN over the refined ones), for the search."""
    out = LpOutcome()
    cfg = config.lp
    names = mlp_layers(model.graph)
    if names is None or not (cfg.refine or cfg.milp):
        return out
    dev = resolve_device(config.device)
    dt = ev.dtype
    lo_t, hi_t = outward_box(disjunct.region.lower, disjunct.region.upper, dt, dev)
    shape = model.graph.input_shape
    box = IntervalBounds(lo_t.reshape(1, *shape), hi_t.reshape(1, *shape))
    Ct = torch.tensor(C, dtype=dt, device=dev)
    box_lo = lo_t.double().cpu().numpy().ravel()
    box_hi = hi_t.double().cpu().numpy().ravel()
    opts = dataclasses.replace(bound_options(config.bounds, "crown"), deadline=deadline)

    def table_of(known: dict) -> Intervals:
        res = compute_bounds(model.graph, box, Ct, opts, want_upper=False, ev=ev, known=known or None)
        return {n: (res.table[n].lower[0].double().cpu().numpy().ravel(),
                    res.table[n].upper[0].double().cpu().numpy().ravel()) for n in res.table.keys()}

    given = dict(known or {})
    intervals = table_of(given)
    if cfg.refine and not config.proof:
        until = time.monotonic() + cfg.refine_share * max(0.0, deadline - time.monotonic())
        ref = refine_bounds(model.graph, box_lo, box_hi, intervals, until,
                            rebound=lambda iv: table_of({**given, **_to_known(model, iv, dt, dev)}))
        if ref.intervals:
            given.update(_to_known(model, ref.intervals, dt, dev))
            intervals = table_of(given)
            out.known = _to_known(model, {n: intervals[n] for n in names}, dt, dev)
        out.stats["refine"] = {"lps": ref.lps, "tightened": ref.tightened, "stabilised": ref.stabilised,
                               "unstable_before": ref.unstable_before, "unstable_after": ref.unstable_after,
                               "layers": ref.layers, "complete": ref.complete, "time_s": round(ref.time_s, 3)}
    unstable = int(sum(((intervals[n][0] < 0) & (intervals[n][1] > 0)).sum() for n in names))
    if not cfg.milp or unstable > cfg.milp_max_unstable:
        return out
    until = time.monotonic() + cfg.milp_share * max(0.0, deadline - time.monotonic())
    claims = []
    milp_stats = []
    for k in range(len(disjunct.outputs)):
        sel = owner == k
        res = exact_milp(model.graph, box_lo, box_hi, intervals, C[sel], d[sel], until, start=start)
        milp_stats.append({"status": res.status, "bound": res.bound, "time_s": round(res.time_s, 3),
                           "highs": res.nodes_status})
        if res.point is not None and res.status == "counterexample":
            out.candidates.append(res.point)
        if res.status != "proved":
            break
        claims.append(res.bound)
    out.stats["milp"] = {"unstable": unstable, "conjunctions": milp_stats}
    if len(claims) == len(disjunct.outputs):
        out.proved = True
        out.proof = {"kind": "milp", "method": "milp", "claims": np.asarray(claims),
                     "certificate": "not checkable: this disjunct rests on an exact MILP solved by HiGHS, whose "
                                    "bound has no witness that the checker can verify"}
    return out
