"""Activation-split branch and bound with beta-CROWN, for ReLU networks.

A domain is the input region plus split decisions on ReLU pre-activations (+1: the
neuron is active, z >= 0; -1: inactive, z <= 0). Each round takes the worst domains,
splits one unstable neuron in each (chosen by a BaBSR-style score: how much of the
bound's looseness comes from that neuron's triangle relaxation, or by filtered smart
branching, which estimates the children's bounds of a few such candidates; see
bab/branching.py), and bounds all
children in one batched alpha/beta-CROWN call. Children whose splits are infeasible
or whose spec rows are proved are dropped; the bound's minimisers are checked as
counterexample candidates.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from bab.branching import BRANCHING, babsr_branch, fsb_branch, neuron_scores
from bab.clip_hooks import SplitClipper
from bab.input_split import InputSplitProblem, _domain_pgd, objective, rows_status
from bab.proof import ActivationProofLog
from relaxations import BoundOptions, IntervalBounds, compute_bounds

__all__ = ["ActivationSplitOutcome", "activation_split_bab", "relu_inputs"]

T = torch.Tensor


@dataclass
class ActivationSplitOutcome:
    status: str
    candidate: Optional[np.ndarray] = None
    domains_bounded: int = 0
    rounds: int = 0
    leaves: int = 0
    stats: dict = field(default_factory=dict)
    proof: Optional[ActivationProofLog] = None


def relu_inputs(p: InputSplitProblem) -> dict[str, str]:
    """Relu node name -> its pre-activation tensor (only plain Relu is split)."""
    return {n.name: n.inputs[0] for n in p.graph.nodes if n.op == "Relu"}


@dataclass
class _Domains:
    splits: dict          # tensor -> int8 signs [N, *shape]
    lb: T                 # [N, S]
    score: T              # [N]
    branch: T             # [N, 2] (relu index, flat neuron index); -1 when nothing to split

    def __len__(self) -> int:
        return int(self.lb.shape[0])

    def take(self, idx: T) -> "_Domains":
        return _Domains({k: v[idx] for k, v in self.splits.items()}, self.lb[idx], self.score[idx], self.branch[idx])

    def concat(self, other: "_Domains") -> "_Domains":
        return _Domains({k: torch.cat([v, other.splits[k]]) for k, v in self.splits.items()},
                        torch.cat([self.lb, other.lb]), torch.cat([self.score, other.score]),
                        torch.cat([self.branch, other.branch]))


def _bound(p: InputSplitProblem, splits: dict, options: BoundOptions, names: list[str], relus: dict[str, str],
           branching: str = "babsr", fsb_candidates: int = 4, relaxed_clip: bool = False,
           clip_k: int = 2) -> tuple[T, T, Optional[T], object]:
    """Bound a batch of domains; also choose each one's next split (see bab/branching.py).

    With `relaxed_clip`, each split `s z >= 0` and z's linear bound over the input give a
    constraint on the domain's inputs; the `clip_k` most cutting ones per domain tighten
    the intermediate bounds and the spec rows' bound (bab/clip_hooks.py, `SplitClipper`).
    """
    N = next(iter(splits.values())).shape[0]
    box = IntervalBounds(p.lower.expand(N, *p.lower.shape[1:]), p.upper.expand(N, *p.upper.shape[1:]))
    capture: dict = {}
    clipper = SplitClipper(box.lower, box.upper, clip_k, precision=options.precision) if relaxed_clip else None
    res = compute_bounds(p.graph, box, p.C, options, want_upper=False, ev=p.ev, splits=splits, capture=capture,
                         split_linear=clipper.split_linear if clipper else None, clip=clipper)
    lower = res.lower.detach()
    if clipper is not None:
        with torch.no_grad():
            lower = clipper.final(res.linear, lower)
    lb = lower - p.d
    babsr, inter, offsets = neuron_scores(p, names, relus, res.table, capture, splits, lb)
    if branching == "fsb":
        branch = fsb_branch(p, names, relus, res, splits, lb, babsr, inter, offsets, options, k=fsb_candidates)
    else:
        branch = babsr_branch(babsr, offsets)
    mins = res.linear.minimizer(box).detach() if res.linear is not None else None
    return lb, branch, mins, res


def _log_proved(log: Optional[ActivationProofLog], relus: dict[str, str], splits: dict, res, lb: T,
                proved: T) -> None:
    """Record the proved domains of one bounded batch (only when a proof log is kept)."""
    if log is None or not bool(proved.any()):
        return
    idx = torch.nonzero(proved).flatten()
    alphas = {k: v[idx] for k, v in (res.stats.get("alphas") or {}).items()}
    betas = {k: v[idx] for k, v in (res.stats.get("betas") or {}).items()}
    unstable = {}
    for z in set(relus.values()):
        b = res.table[z]
        unstable[z] = ((b.lower < 0) & (b.upper > 0))[idx]
    log.add_leaves({k: v[idx] for k, v in splits.items()}, relus, lb[idx], alphas, betas, unstable)


def activation_split_bab(p: InputSplitProblem, options: BoundOptions, deadline: float, batch_size: int = 64,
                         max_domains: int = 200_000, confirm: Optional[Callable[[np.ndarray], bool]] = None,
                         record_proof: bool = False, branching: str = "babsr",
                         fsb_candidates: int = 4, relaxed_clip: bool = False,
                         progress: Optional[Callable[[dict], None]] = None) -> ActivationSplitOutcome:
    """Search until all domains are proved, a counterexample is confirmed, or limits are hit.

    `progress` receives the counters after each round (domains bounded and open, the
    worst open domain's gap).

    With `record_proof`, every proved domain (leaf) is logged with its split decisions,
    alphas and betas (`outcome.proof`) for a certificate; the search itself is the same.
    `branching` picks the neuron to split: "babsr" (score only) or "fsb" (filtered smart
    branching: `fsb_candidates` BaBSR candidates per domain, each child's bound estimated).
    `relaxed_clip` tightens bounds with the split constraints (see `_bound`); it is off
    when a proof is recorded, since the certificate checker cannot replay it.
    """
    relaxed_clip = relaxed_clip and not record_proof
    if branching not in BRANCHING:
        raise ValueError(f"branching must be one of {', '.join(BRANCHING)}, not '{branching}'")
    relus = relu_inputs(p)
    names = list(relus)
    if not names:
        return ActivationSplitOutcome("unknown", stats={"reason": "no ReLU to split"})
    log = None
    if record_proof:
        log = ActivationProofLog(names)
    if record_proof or branching == "fsb":  # FSB reuses each domain's betas in its estimates
        options = dataclasses.replace(options, keep_betas=True)
    shapes = {relus[r]: p.graph.shapes[relus[r]] for r in names}
    dev = p.lower.device
    root_splits = {z: torch.zeros(1, *s, dtype=torch.int8, device=dev) for z, s in shapes.items()}
    lb, branch, _, res = _bound(p, root_splits, options, names, relus, branching, fsb_candidates, relaxed_clip)
    res = res if log is not None else None
    proved, score = rows_status(p, lb)
    if bool(proved.all()):
        _log_proved(log, relus, root_splits, res, lb, proved)
        return ActivationSplitOutcome("unsat", domains_bounded=1, leaves=1, proof=log)
    domains = _Domains(root_splits, lb, score, branch)
    bounded, rounds, leaves = 1, 0, 0
    stuck = 0  # unproved domains with every neuron split: never dropped, they make the answer unknown
    while len(domains):
        if time.monotonic() > deadline:
            return ActivationSplitOutcome("timeout", domains_bounded=bounded, rounds=rounds,
                                          stats={"domains_left": len(domains)})
        if len(domains) > max_domains:
            return ActivationSplitOutcome("unknown", domains_bounded=bounded, rounds=rounds,
                                          stats={"reason": "domain limit reached"})
        order = torch.argsort(domains.score)
        batch, domains = domains.take(order[:batch_size]), domains.take(order[batch_size:])
        done = batch.branch[:, 0] < 0
        if bool(done.any()):
            # Nothing left to split but not proved (beta did not close the gap): set aside.
            stuck += int(done.sum())
            batch = batch.take(torch.nonzero(~done).flatten())
            if len(batch) == 0:
                continue
        children = {}
        n = len(batch)
        rows = torch.arange(n, device=dev)
        for i, r in enumerate(names):
            z = relus[r]
            flat = batch.splits[z].reshape(n, -1)
            pos, neg = flat.clone(), flat.clone()
            sel = batch.branch[:, 0] == i
            pos[rows[sel], batch.branch[sel, 1]] = 1
            neg[rows[sel], batch.branch[sel, 1]] = -1
            children[z] = torch.cat([pos, neg]).reshape(2 * n, *shapes[z])
        lb, branch, mins, res = _bound(p, children, options, names, relus, branching, fsb_candidates, relaxed_clip)
        res = res if log is not None else None  # the bound tables are only kept for the proof log
        bounded += 2 * n
        rounds += 1
        if mins is not None and confirm is not None:
            pts = mins.reshape(-1, *p.lower.shape[1:])
            with torch.no_grad():
                worst = objective(p, p.ev(pts))
            focus = torch.argsort(worst)[:32]
            lo = p.lower.expand(len(focus), *p.lower.shape[1:])
            hi = p.upper.expand(len(focus), *p.upper.shape[1:])
            pgd_obj, pgd_x = _domain_pgd(p, lo, hi, pts[focus])
            pts, worst = torch.cat([pts, pgd_x]), torch.cat([worst, pgd_obj])
            for j in torch.nonzero(worst <= 0).flatten()[:8].tolist():
                x = pts[j].cpu().numpy().reshape(-1)
                if confirm(x):
                    return ActivationSplitOutcome("sat", candidate=x, domains_bounded=bounded, rounds=rounds)
        proved, score = rows_status(p, lb)
        leaves += int(proved.sum())
        _log_proved(log, relus, children, res, lb, proved)
        keep = ~proved
        kept = _Domains({k: v[keep] for k, v in children.items()}, lb[keep], score[keep], branch[keep])
        domains = kept if len(domains) == 0 else domains.concat(kept)
        if progress is not None:
            progress({"open": len(domains) + stuck, "bounded": bounded,
                      "best_lower": float(domains.score.min()) if len(domains) else None})
    if stuck and time.monotonic() > deadline:
        # Past the deadline alpha-CROWN may stop before capturing coefficients, and a
        # domain then has no branching choice without being fully split: call it a timeout.
        return ActivationSplitOutcome("timeout", domains_bounded=bounded, rounds=rounds,
                                      stats={"domains_left": stuck})
    if stuck:
        return ActivationSplitOutcome("unknown", domains_bounded=bounded, rounds=rounds,
                                      stats={"reason": f"{stuck} fully split domains not proved"})
    return ActivationSplitOutcome("unsat", domains_bounded=bounded, rounds=rounds, leaves=leaves, proof=log)
