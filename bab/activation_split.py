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
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from bab.attack import domain_pgd
from bab.branching import BRANCHING, babsr_branch, fsb_branch, neuron_scores
from bab.clip_hooks import SplitClipper
from bab.domains import SplitDomains
from bab.problem import Problem, rows_status, violations
from bab.proof import ActivationProofLog
from bab.search import Bounded, SearchLimits, SearchOutcome, domain_bytes, run
from bab.tuning import DEFAULT_TUNING, Tuning
from relaxations import BoundOptions, IntervalBounds, compute_bounds

__all__ = ["ReluBrancher", "activation_split_bab", "relu_inputs"]

T = torch.Tensor


def relu_inputs(p: Problem) -> dict[str, str]:
    """Relu node name -> its pre-activation tensor (only plain Relu is split)."""
    return {n.name: n.inputs[0] for n in p.graph.nodes if n.op == "Relu"}


def _bound(p: Problem, splits: dict, options: BoundOptions, names: list[str], relus: dict[str, str],
           branching: str = "babsr", fsb_candidates: int = 4, relaxed_clip: bool = False,
           clip_k: int = 2) -> tuple[T, T, Optional[T], object]:
    """Bound a batch of domains; also choose each one's next split (see bab/branching.py).

    With `relaxed_clip`, each split `s z >= 0` and z's linear bound over the input give a
    constraint on the domain's inputs; the `clip_k` most cutting ones per domain tighten
    the intermediate bounds and the spec rows' bound (bab/clip_hooks.py, `SplitClipper`).
    """
    N = next(iter(splits.values())).shape[0]
    box = IntervalBounds(p.lower.expand(N, *p.lower.shape[1:]), p.upper.expand(N, *p.upper.shape[1:]))
    clipper = SplitClipper(box.lower, box.upper, clip_k, precision=options.precision) if relaxed_clip else None
    res = compute_bounds(p.graph, box, p.C, options, want_upper=False, ev=p.ev, splits=splits, clip=clipper,
                         known=p.known or None)
    capture = res.coefficients
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


@dataclass
class ReluBrancher:
    """Activation split as a `bab.search.Brancher`: split one unstable ReLU per domain.

    Each domain carries the split chosen when it was bounded (BaBSR or FSB, see
    bab/branching.py); a round makes its two children (the neuron active, inactive)
    and bounds all children of the batch in one alpha/beta-CROWN call. A domain with
    nothing left to split that is not proved is set aside: it makes the answer unknown.
    """

    problem: Problem
    options: BoundOptions
    branching: str = "babsr"
    fsb_candidates: int = 4
    relaxed_clip: bool = False
    record_proof: bool = False
    attack: bool = True
    tuning: Tuning = DEFAULT_TUNING

    def __post_init__(self) -> None:
        if self.branching not in BRANCHING:
            raise ValueError(f"branching must be one of {', '.join(BRANCHING)}, not '{self.branching}'")
        # The certificate checker cannot replay relaxed clipping.
        self.relaxed_clip = self.relaxed_clip and not self.record_proof
        self.relus = relu_inputs(self.problem)
        self.names = list(self.relus)
        self.shapes = {self.relus[r]: self.problem.graph.shapes[self.relus[r]] for r in self.names}
        # Branching scores neurons with the final pass's coefficients; FSB also reuses each
        # domain's betas in its estimates, and proof logs keep them.
        self.options = dataclasses.replace(self.options, coefficients=True,
                                           keep_betas=self.record_proof or self.branching == "fsb")

    def _bound(self, splits: dict) -> tuple[T, T, Optional[T], object]:
        return _bound(self.problem, splits, self.options, self.names, self.relus, self.branching,
                      self.fsb_candidates, self.relaxed_clip)

    def root(self) -> Bounded:
        dev = self.problem.lower.device
        splits = {z: torch.zeros(1, *s, dtype=torch.int8, device=dev) for z, s in self.shapes.items()}
        lb, branch, _, res = self._bound(splits)
        proved, score = rows_status(self.problem, lb)
        return Bounded(SplitDomains(splits, lb, score, branch), proved, leaf_data=self._leaf_data(res))

    def select(self, batch: SplitDomains) -> tuple[SplitDomains, int]:
        done = batch.branch[:, 0] < 0
        n_done = int(done.sum())
        return (batch.take(~done), n_done) if n_done else (batch, 0)

    def split(self, batch: SplitDomains, round_: int) -> dict:
        n = len(batch)
        rows = torch.arange(n, device=batch.lb.device)
        children = {}
        for i, r in enumerate(self.names):
            z = self.relus[r]
            flat = batch.splits[z].reshape(n, -1)
            pos, neg = flat.clone(), flat.clone()
            sel = batch.branch[:, 0] == i
            pos[rows[sel], batch.branch[sel, 1]] = 1
            neg[rows[sel], batch.branch[sel, 1]] = -1
            children[z] = torch.cat([pos, neg]).reshape(2 * n, *self.shapes[z])
        return children

    def bound(self, children: dict, round_: int) -> Bounded:
        p = self.problem
        lb, branch, mins, res = self._bound(children)
        proved, score = rows_status(p, lb)
        pts = obj = None
        if mins is not None and self.attack:
            pts = mins.reshape(-1, *p.lower.shape[1:])
            obj = violations(p, pts)
            focus = torch.argsort(obj)[:self.tuning.pgd_focus_activation]
            lo = p.lower.expand(len(focus), *p.lower.shape[1:])
            hi = p.upper.expand(len(focus), *p.upper.shape[1:])
            pgd_obj, pgd_x = domain_pgd(p, lo, hi, pts[focus], self.tuning.pgd_steps)
            pts, obj = torch.cat([pts, pgd_x]), torch.cat([obj, pgd_obj])
        return Bounded(SplitDomains(children, lb, score, branch), proved, pts, obj, self._leaf_data(res))

    def _leaf_data(self, res) -> dict:
        """What a proof log needs of a bounded batch (only kept when a proof is recorded)."""
        if not self.record_proof:
            return {}
        unstable = {}
        for z in set(self.relus.values()):
            b = res.table[z]
            unstable[z] = (b.lower < 0) & (b.upper > 0)
        return {"alphas": dict(res.alphas), "betas": dict(res.betas), "unstable": unstable}

    def record(self, log: ActivationProofLog, bounded: Bounded) -> None:
        idx = torch.nonzero(bounded.proved).flatten()
        data = bounded.leaf_data
        pick = lambda m: {k: v[idx] for k, v in m.items()}  # noqa: E731
        log.add_leaves(pick(bounded.domains.splits), self.relus, bounded.domains.lb[idx], pick(data["alphas"]),
                       pick(data["betas"]), pick(data["unstable"]))

    def stats(self) -> dict:
        return {}


def activation_split_bab(p: Problem, options: BoundOptions, deadline: float, batch_size: int = 64,
                         max_domains: int = 200_000, confirm: Optional[Callable[[np.ndarray], bool]] = None,
                         record_proof: bool = False, branching: str = "babsr",
                         fsb_candidates: int = 4, relaxed_clip: bool = False,
                         progress: Optional[Callable[[dict], None]] = None,
                         tuning: Tuning = DEFAULT_TUNING, max_batch_size: Optional[int] = None,
                         stop: Optional[Callable[[], bool]] = None) -> SearchOutcome:
    """Search until all domains are proved, a counterexample is confirmed, limits are hit,
    or `stop()` (checked once per round) is true.

    `progress` receives the counters after each round (domains bounded and open, the
    worst open domain's gap).

    With `record_proof`, every proved domain (leaf) is logged with its split decisions,
    alphas and betas (`outcome.proof`) for a certificate; the search itself is the same.
    `branching` picks the neuron to split: "babsr" (score only) or "fsb" (filtered smart
    branching: `fsb_candidates` BaBSR candidates per domain, each child's bound estimated).
    `relaxed_clip` tightens bounds with the split constraints (see `_bound`); it is off
    when a proof is recorded, since the certificate checker cannot replay it.
    """
    brancher = ReluBrancher(p, options, branching, fsb_candidates, relaxed_clip, record_proof,
                            attack=confirm is not None, tuning=tuning)
    if not brancher.names:
        return SearchOutcome("unknown", stats={"reason": "no ReLU to split"})
    log = ActivationProofLog(brancher.names) if record_proof else None
    limits = SearchLimits(deadline, batch_size, max_domains, max_batch_size, domain_bytes(p))
    return run(brancher, limits, log, brancher.record, confirm, progress, tuning.confirm_limit, stop)

