"""Input-split branch and bound, for models with few inputs (ACAS Xu, control nets).

Each round takes the worst domains, bisects each along the input dimension where
(width x |coefficient of the linear bound|) is largest for its unproved rows (the
dimension whose halving removes the most looseness from the linear bound), bounds all
children in one batched call, drops proved children and checks the rest for a
counterexample at the bound's minimisers and at their centres.

Domain clipping (Clip-and-Verify, on by default): a bounded domain's spec rows give
linear constraints that every counterexample in it satisfies. They shrink its box at
once; its children inherit them, which clips each half again before it is bounded (a
half with no feasible point is proved without a bound) and tightens the halves'
intermediate CROWN bounds through the exact one-dimensional dual. Every constraint
derived anywhere in the tree holds at every true counterexample, so bounds that are
valid only on the constrained part of a box are all a proof needs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from bab.clip_hooks import ConstraintClipper
from bab.clipping import (clip_box, clip_box_union, hull_under_constraints,
                          min_under_all_constraints, min_under_constraints, row_constraints)
from bab.domains import DomainBatch
from bab.proof import ProofLog
from models import Graph, GraphEvaluator
from relaxations import BoundOptions, IntervalBounds, compute_bounds

__all__ = ["InputSplitProblem", "InputSplitOutcome", "input_split_bab", "rows_status", "objective"]

T = torch.Tensor


@dataclass
class InputSplitProblem:
    """One input region and its conjunctions as padded tensors (C y <= d rows)."""

    graph: Graph
    ev: GraphEvaluator
    lower: T          # [1, *input_shape]
    upper: T
    C: T              # [S, n_out]
    d: T              # [S]
    strict: T         # [S] bool
    owner: T          # [S] long: the conjunction of each row
    n_conj: int


@dataclass
class InputSplitOutcome:
    status: str                      # "unsat", "sat", "timeout", "unknown"
    candidate: Optional[np.ndarray] = None
    domains_bounded: int = 0
    rounds: int = 0
    proof: Optional[ProofLog] = None
    stats: dict = field(default_factory=dict)


def rows_status(p: InputSplitProblem, lb: T) -> tuple[T, T]:
    """(proved [N] bool, score [N]) from row lower bounds lb [N, S] of C y - d.

    A conjunction is proved when one of its rows is positive (non-strict) or nonnegative
    (strict) everywhere; a domain when all conjunctions are. The score is the smallest
    over conjunctions of the best row gap: how far the domain is from proved.
    """
    row_ok = torch.where(p.strict, lb >= 0, lb > 0)
    N = lb.shape[0]
    best = torch.full((N, p.n_conj), -torch.inf, dtype=lb.dtype, device=lb.device)
    best = best.scatter_reduce(1, p.owner.expand(N, -1), lb, reduce="amax")
    ok = torch.zeros((N, p.n_conj), dtype=torch.bool, device=lb.device)
    ok = ok.scatter_reduce(1, p.owner.expand(N, -1), row_ok, reduce="amax")
    return ok.all(1), best.amin(1)


def _bound(p: InputSplitProblem, lower: T, upper: T, options: BoundOptions, clip: bool = False,
           keep: Optional[dict] = None, inherited: Optional[tuple[T, T]] = None, generations: int = 1,
           intermediate: bool = True, joint: bool = False, tally: Optional[dict] = None,
           box: bool = True, box_tally: Optional[dict] = None
           ) -> tuple[T, T, T, T, Optional[T], tuple[T, T]]:
    """Bound the boxes; with `clip`, shrink them afterwards (Clip-and-Verify).

    Returns (lower, upper) of the possibly clipped boxes, row lower bounds [N, S] of
    C y - d, the coefficients [N, S, n_in] that choose the split dimension, the
    minimisers, and the constraints [N, K, n_in], [N, K] the children inherit. With
    alpha-CROWN and several spec rows the split coefficients are CROWN's: each row's
    alphas are tuned to that row's bound on this box, and summing their coefficients
    chose worse dimensions (ACAS Xu 1_1 prop_3: 5,487 domains against 2,493). With one
    row the alpha coefficients branch better (2_2 prop_1: 455 domains against a
    timeout). Clipping always uses the linear function that produced the bound:
    coefficients and bias must belong together. `inherited`: constraints from the
    parents (valid on these boxes), which also tighten the intermediate bounds. With
    `keep` (proof logs), keep["alphas"] receives alpha-CROWN's best slopes per row
    (relu -> [N, S, *shape]) and keep["unstable"] each such ReLU's unstable mask [N, *shape].
    With `box` off (paused), clipping only collects the constraints for the children.
    """
    N = lower.shape[0]
    n = lower[0].numel()
    if inherited is None:
        inherited = (lower.new_zeros(N, 0, n), lower.new_zeros(N, 0))
    hook = None
    if clip and intermediate and inherited[1].shape[1]:
        hook = ConstraintClipper(lower, upper, *inherited, _owners(p, inherited[1].shape[1]), p.n_conj,
                                 options.precision, tally)
    res = compute_bounds(p.graph, IntervalBounds(lower, upper), p.C, options, want_upper=False, ev=p.ev, clip=hook)
    lb = res.lower.detach() - p.d
    S = lb.shape[1]
    if keep is not None:
        keep["alphas"] = res.stats.get("alphas") or {}
        tensors = {n.name: n.inputs[0] for n in p.graph.nodes if n.name in keep["alphas"]}
        keep["unstable"] = {k: (res.table[z].lower < 0) & (res.table[z].upper > 0) for k, z in tensors.items()}
    if res.linear is None:
        return lower, upper, lb, lb.new_zeros(N, S, n), None, inherited
    A = res.linear.A.detach().reshape(N, S, -1)
    split_A = res.stats["crown_linear"].A.detach().reshape(N, S, -1) if "crown_linear" in res.stats and S > 1 else A
    cons = inherited
    if clip:
        lower, upper, lb, cons = _clip(p, lower, upper, lb, A, res.linear.bias.detach(), res.linear.mass.detach(),
                                       inherited, generations, joint, box, box_tally)
    mins = res.linear.minimizer(IntervalBounds(lower, upper)).detach()
    return lower, upper, lb, split_A, mins, cons


def _worth_it(tally: dict, rounds: int, rate: float = 0.01, probe_every: int = 8, min_seen: int = 1) -> bool:
    """Whether to clip (the intermediate bounds, or the boxes) in this round.

    On ACAS Xu clipping tightens 25-34% of the unstable bounds it sees where it saves
    domains (prop_2, 3, 5) and 0-0.02% on the union specs where it saves none (prop_7,
    prop_8), which then paid 10-13% of their time for it. So it runs while the last
    round it ran in tightened at least 1%, and otherwise every 8th round, to notice when
    it starts to help (prop_5 tightens nothing in its first rounds, a quarter later).
    The boxes follow the same rule: where clipping saves domains it shrinks or proves
    about 16% of the boxes it sees (3_3/prop_2, 1_1/prop_5), on prop_1 under 1%, on
    prop_8 none, where clipping a 3-conjunction union's boxes cost 16% of the time.
    A round that saw fewer than `min_seen` items never pauses: a few boxes cost little to
    clip and say little (5_2/prop_3, 25 domains, paused after its first rounds and needed
    21 -> 25 domains, +15% time).
    """
    seen = tally.get("seen", 0)
    return seen < min_seen or tally.get("tightened", 0) >= rate * seen or rounds % probe_every == 0


def _owners(p: InputSplitProblem, K: int) -> T:
    """Conjunction of each stored constraint: slots hold whole generations of spec rows."""
    return p.owner.repeat(K // max(1, len(p.owner)))


def _clip_boxes(p: InputSplitProblem, lo: T, hi: T, a: T, c: T, joint: bool = False) -> tuple[T, T, T]:
    """Box hull (or a superset) of the box's points that meet their conjunction's constraints.

    Sequential closed-form clips first; with `joint`, each coordinate is then bounded by
    the joint dual of all its conjunction's constraints (`hull_under_constraints`).
    """
    owner = _owners(p, c.shape[1])
    if p.n_conj == 1:
        nlo, nhi, empty = clip_box(lo, hi, a, c)
        if joint and c.shape[1] > 1:
            nlo, nhi, e2 = hull_under_constraints(nlo, nhi, a, c)
            empty = empty | e2
        return nlo, nhi, empty
    return clip_box_union(lo, hi, a, c, owner, p.n_conj)


def _count_box_gains(tally: Optional[dict], lo: T, hi: T, nlo: T, nhi: T, empty: T, proved: Optional[T] = None) -> None:
    """Add to `tally` the boxes clipping saw, and those it shrank (some width by over
    0.1%), emptied, or whose rows it proved; `_worth_it` decides from the ratio."""
    if tally is None:
        return
    shrunk = ((nhi - nlo) < 0.999 * (hi - lo)).any(1)
    gained = shrunk | empty if proved is None else shrunk | empty | proved
    tally["seen"] = tally.get("seen", 0) + len(lo)
    tally["tightened"] = tally.get("tightened", 0) + int(gained.sum())


def _clip(p: InputSplitProblem, lower: T, upper: T, lb: T, A: T, bias: T, mass: T, inherited: tuple[T, T],
          generations: int, joint: bool = False, box: bool = True, box_tally: Optional[dict] = None
          ) -> tuple[T, T, T, tuple[T, T]]:
    """Shrink each box to the hull of the points where a counterexample could be.

    Every counterexample of a conjunction satisfies A_s x + bias_s - d_s <= 0 for each of
    its rows s (the linear lower bound is below C_s y), and the constraints its parents
    found. The box hull of the box cut by these constraints keeps every such point, so
    proving the smaller box proves the domain; an empty hull proves it outright. Row
    bounds are then re-concretised under the constraints by the exact one-dimensional
    dual (never looser than before): per constraint, or with `joint` all of a row's
    constraints together by coordinate ascent. The children keep the newest `generations`.
    With `box` off (paused) the boxes and bounds are left as they are: only the
    constraints for the children are collected.
    """
    N = lower.shape[0]
    lo, hi = lower.reshape(N, -1), upper.reshape(N, -1)
    a, c = row_constraints(A, bias, p.d, lo=lo, hi=hi, mass=mass)
    a_all, c_all = torch.cat([a, inherited[0]], 1), torch.cat([c, inherited[1]], 1)
    nlo, nhi = lo, hi
    if box:
        nlo, nhi, empty = _clip_boxes(p, lo, hi, a_all, c_all, joint)
        owner = _owners(p, c_all.shape[1])
        fn = min_under_all_constraints if joint else min_under_constraints
        relaxed = fn(A, bias - p.d, nlo, nhi, a_all, c_all, mass=mass + p.d.abs(),
                     allowed=p.owner[:, None] == owner[None, :])
        before, _ = rows_status(p, lb)
        lb = torch.maximum(lb, relaxed)
        lb = torch.where(empty[:, None], torch.full_like(lb, torch.inf), lb)
        after, _ = rows_status(p, lb)
        open_ = ~before
        _count_box_gains(box_tally, lo[open_], hi[open_], nlo[open_], nhi[open_], empty[open_], after[open_])
    K = len(p.owner) * generations
    if c_all.shape[1] < K:  # young domains: pad with unused constraints (c = nan is ignored)
        pad = K - c_all.shape[1]
        a_all = torch.cat([a_all, a_all.new_zeros(N, pad, a_all.shape[2])], 1)
        c_all = torch.cat([c_all, c_all.new_full((N, pad), torch.nan)], 1)
    return nlo.reshape(lower.shape), nhi.reshape(upper.shape), lb, (a_all[:, :K], c_all[:, :K])


def _split_dims(p: InputSplitProblem, lower: T, upper: T, A: T, lb: T) -> T:
    """Dimension to bisect per domain: largest width * sum |A| over unproved rows."""
    N = lower.shape[0]
    width = (upper - lower).reshape(N, -1)
    open_rows = torch.where(p.strict, lb < 0, lb <= 0).to(A.dtype)       # [N, S]
    weight = (A.abs() * open_rows.unsqueeze(-1)).sum(1)
    # A coefficient of zero does not mean that halving that dimension is useless: it
    # also tightens every intermediate bound. A small share of the total weight keeps
    # every dimension in play, so a bound that ignores one input (alpha-CROWN's
    # slopes can zero it) cannot make the search slice the other ones forever.
    score = width * (weight + 0.05 * weight.sum(1, keepdim=True) + 1e-12)
    score = torch.where(width > 0, score, torch.full_like(score, -torch.inf))
    return score.argmax(1)


def _bisect(lower: T, upper: T, dims: T) -> tuple[T, T]:
    N = lower.shape[0]
    lo = lower.reshape(N, -1)
    hi = upper.reshape(N, -1)
    rows = torch.arange(N, device=lower.device)
    mid = (lo[rows, dims] + hi[rows, dims]) / 2
    left_hi, right_lo = hi.clone(), lo.clone()
    left_hi[rows, dims] = mid
    right_lo[rows, dims] = mid
    new_lo = torch.cat([lo, right_lo]).reshape(2 * N, *lower.shape[1:])
    new_hi = torch.cat([left_hi, hi]).reshape(2 * N, *lower.shape[1:])
    return new_lo, new_hi


def objective(p: InputSplitProblem, y: T) -> T:
    """[M] min over conjunctions of the max over its rows of C y - d: <= 0 iff one holds."""
    v = y.reshape(len(y), -1) @ p.C.T - p.d                 # [M, S]
    M = v.shape[0]
    worst = torch.full((M, p.n_conj), -torch.inf, dtype=v.dtype, device=v.device)
    worst = worst.scatter_reduce(1, p.owner.expand(M, -1), v, reduce="amax")
    return worst.amin(1)


def _violations(p: InputSplitProblem, xs: T) -> tuple[T, T]:
    """Objective at points xs [M, *input_shape]."""
    with torch.no_grad():
        return objective(p, p.ev(xs)), xs


def _domain_pgd(p: InputSplitProblem, lo: T, hi: T, x0: T, steps: int = 12) -> tuple[T, T]:
    """Signed-gradient descent on the objective, each point kept inside its own box."""
    x = x0.clone()
    best_x, best = x.clone(), torch.full((len(x),), torch.inf, dtype=x.dtype, device=x.device)
    half = (hi - lo) / 2
    for step in range(steps):
        x.requires_grad_(True)
        obj = objective(p, p.ev(x))
        grad, = torch.autograd.grad(obj.sum(), x)
        with torch.no_grad():
            better = obj < best
            best = torch.where(better, obj.detach(), best)
            best_x[better] = x[better].detach()
            size = 0.5 * (1e-3 ** (step / max(steps - 1, 1)))  # geometric decay down to fine steps
            x = torch.minimum(torch.maximum(x - size * half * grad.sign(), lo), hi)
    return best, best_x


def input_split_bab(p: InputSplitProblem, options: BoundOptions, deadline: float, batch_size: int = 1024,
                    max_domains: int = 2_000_000, confirm: Optional[Callable[[np.ndarray], bool]] = None,
                    record_proof: bool = False, progress: Optional[Callable[[dict], None]] = None,
                    clip: bool = True, clip_generations: int = 1,
                    clip_intermediate: bool = True, clip_joint: bool = False) -> InputSplitOutcome:
    """Search until every domain is proved, a counterexample is confirmed, or time/memory runs out.

    `progress` receives the counters after each round (domains bounded and open, the
    worst open domain's gap).

    Clipping is switched off when a proof is recorded: clipped leaves no longer tile the
    root region, which the certificate checker requires. With alpha-CROWN the proof
    keeps each proved leaf's best slopes per row at its unstable neurons.
    """
    proof = ProofLog(method=options.method) if record_proof else None
    clip = clip and not record_proof
    logged: Optional[dict] = {} if record_proof else None
    root_lo, root_hi, lb, A, mins, cons = _bound(p, p.lower, p.upper, options, clip, logged,
                                                 generations=clip_generations)
    proved, score = rows_status(p, lb)
    if bool(proved.all()):
        if proof is not None:
            proof.add_leaves(p.lower, p.upper, lb, logged["alphas"], logged["unstable"])
        return InputSplitOutcome("unsat", domains_bounded=1, proof=proof)
    domains = DomainBatch(root_lo, root_hi, lb, score, A, *cons)
    bounded, rounds, preclipped = 1, 0, 0
    tally: dict = {}
    box_tally: dict = {}
    while len(domains):
        if time.monotonic() > deadline:
            return InputSplitOutcome("timeout", domains_bounded=bounded, rounds=rounds,
                                     stats={"domains_left": len(domains)})
        if len(domains) > max_domains:
            return InputSplitOutcome("unknown", domains_bounded=bounded, rounds=rounds,
                                     stats={"reason": "domain limit reached", "domains_left": len(domains)})
        batch, rest = domains.pop_worst(batch_size)
        dims = _split_dims(p, batch.lower, batch.upper, batch.coef, batch.lb)
        lo, hi = _bisect(batch.lower, batch.upper, dims)
        inherited = (torch.cat([batch.cons_a, batch.cons_a]), torch.cat([batch.cons_c, batch.cons_c]))
        box = clip and _worth_it(box_tally, rounds, min_seen=64)
        if box:
            box_tally = {}  # the decision follows the latest round that clipped the boxes
        if box and inherited[1].shape[1]:
            # The parents' constraints hold on the halves: clip them before bounding, and
            # drop the halves where no counterexample is left (proved without a bound).
            flat_lo, flat_hi = lo.reshape(len(lo), -1), hi.reshape(len(hi), -1)
            lo2, hi2, empty = _clip_boxes(p, flat_lo, flat_hi, *inherited, clip_joint)
            _count_box_gains(box_tally, flat_lo, flat_hi, lo2, hi2, empty)
            live = ~empty
            preclipped += int(empty.sum())
            lo, hi = lo2[live].reshape(-1, *lo.shape[1:]), hi2[live].reshape(-1, *hi.shape[1:])
            inherited = (inherited[0][live], inherited[1][live])
            if not len(lo):
                domains = rest
                continue
        use = clip_intermediate and _worth_it(tally, rounds)
        if use:
            tally = {}  # the decision follows the latest round that clipped
        lo, hi, lb, A, mins, cons = _bound(p, lo, hi, options, clip, logged, inherited, clip_generations,
                                           use, clip_joint, tally, box, box_tally)
        bounded += len(lo)
        rounds += 1
        proved, score = rows_status(p, lb)
        candidates = [(lo + hi) / 2]
        if mins is not None:
            candidates.append(mins.reshape(-1, *lo.shape[1:]))
        pts = torch.cat(candidates)
        obj, _ = _violations(p, pts)
        n = len(lo)
        # Empirical objective per child: the smallest value seen at its centre and minimisers.
        emp = obj.reshape(len(candidates) if mins is None else 1 + mins.shape[1], -1)
        emp = emp[0] if mins is None else torch.minimum(emp[0], obj[n:].reshape(n, -1).amin(1))
        if rounds % 2 == 1:  # PGD inside the most promising children, every other round
            focus = torch.argsort(emp)[:64]
            pgd_obj, pgd_x = _domain_pgd(p, lo[focus], hi[focus], pts[focus])
            emp[focus] = torch.minimum(emp[focus], pgd_obj)
            pts, obj = torch.cat([pts, pgd_x]), torch.cat([obj, pgd_obj])
        score = emp  # explore where the objective is smallest: that is where a counterexample lies
        hits = torch.nonzero(obj <= 0).flatten()
        if len(hits) and confirm is not None:
            for i in hits[torch.argsort(obj[hits])][:8].tolist():
                x = pts[i].detach().cpu().numpy().reshape(-1)
                if confirm(x):
                    return InputSplitOutcome("sat", candidate=x, domains_bounded=bounded, rounds=rounds)
        if proof is not None and bool(proved.any()):
            proof.add_leaves(lo[proved], hi[proved], lb[proved], {k: v[proved] for k, v in logged["alphas"].items()},
                             {k: v[proved] for k, v in logged["unstable"].items()})
        keep = ~proved
        domains = rest.concat(DomainBatch(lo[keep], hi[keep], lb[keep], score[keep], A[keep], cons[0][keep],
                                          cons[1][keep]))
        if progress is not None:
            progress({"open": len(domains), "bounded": bounded,
                      "best_lower": float(rows_status(p, domains.lb)[1].min()) if len(domains) else None})
    return InputSplitOutcome("unsat", domains_bounded=bounded, rounds=rounds, proof=proof,
                             stats={"clipped_empty": preclipped, "clip_tally": tally, "box_tally": box_tally})

