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

With an l2 ball in the problem (torch modules verified over l2 balls), every domain is
its box cut by the ball: each bound pass gets a `BallBox`, candidate points are
projected into the ball, and a box the ball misses entirely holds no point of the
region (proved without a bound).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

from bab.attack import domain_pgd, joint_minimisers
from bab.clip_hooks import ConstraintClipper
from bab.clipping import (clip_box, clip_box_union, hull_under_constraints, min_under_all_constraints,
                          min_under_constraints, min_under_region, row_constraints)
from bab.domains import DomainBatch
from bab.problem import Problem, into_region, open_rows, rows_status, violations
from bab.proof import ProofLog
from bab.search import Bounded, RoundPool, SearchHooks, SearchLimits, SearchOutcome, domain_bytes, run
from bab.tuning import DEFAULT_TUNING, Tuning
from relaxations import BallBox, BoundOptions, Given, IntervalBounds, LinearBounds, compute_bounds

__all__ = ["InputBrancher", "InputSearch", "input_split_bab"]

T = torch.Tensor


@dataclass(frozen=True)
class _Clipping:
    """How one bound call clips (Clip-and-Verify). `on`: at all (the search's `clip`);
    `generations`: how many generations of constraints the children keep; `intermediate`:
    the intermediate bounds too, this round; `joint`: the joint multi-constraint dual;
    `box`: the boxes themselves, this round (else only the constraints for the children
    are collected); `tally` / `box_tally`: where the gains are counted (`_worth_it`)."""

    on: bool = False
    generations: int = 1
    intermediate: bool = True
    joint: bool = False
    box: bool = True
    tally: Optional[dict] = None
    box_tally: Optional[dict] = None


def _region(p: Problem, lower: T, upper: T) -> IntervalBounds:
    """The domains' boxes [N, *shape], cut by the problem's l2 ball when it has one."""
    if p.ball is None:
        return IntervalBounds(lower, upper)
    centre, radius = p.ball
    N, shape = lower.shape[0], lower.shape[1:]
    return BallBox(lower, upper, centre.expand(N, *shape), radius.reshape(-1)[:1].expand(N))


def _misses_ball(p: Problem, lower: T, upper: T) -> T:
    """[N] True where the box holds no point of the problem's l2 ball: the distance from
    the centre to the box exceeds the radius, in float64 with room for its rounding."""
    if p.ball is None:
        return torch.zeros(lower.shape[0], dtype=torch.bool, device=lower.device)
    centre, radius = p.ball
    c = centre.double().reshape(1, -1)
    lo, hi = lower.double().reshape(len(lower), -1), upper.double().reshape(len(upper), -1)
    gap = torch.maximum(lo - c, c - hi).clamp(min=0)
    r = float(radius.double().reshape(-1)[0])
    return (gap * gap).sum(1) > r * r * (1 + 1e-9) + 1e-300


def _bound(p: Problem, lower: T, upper: T, options: BoundOptions, clipping: _Clipping = _Clipping(),
           keep: Optional[dict] = None, inherited: Optional[tuple[T, T]] = None, joint_steps: int = 0
           ) -> tuple[T, T, T, T, Optional[T], tuple[T, T]]:
    """Bound the boxes; with `clipping.on`, shrink them afterwards (Clip-and-Verify).

    Returns (lower, upper) of the possibly clipped boxes, row lower bounds [N, S] of
    C y - d, the coefficients [N, S, n_in] that choose the split dimension, the
    minimisers, and the constraints [N, K, n_in], [N, K] the children inherit. With
    alpha-CROWN and several spec rows the split coefficients are CROWN's: each row's
    alphas are tuned to that row's bound on this box, and summing their coefficients
    chose worse dimensions; with one row the alpha coefficients branch better (figures:
    BENCHMARKS.md, "Why the search is tuned as it is"). Clipping always uses the linear function that produced the bound:
    coefficients and bias must belong together. `inherited`: constraints from the
    parents (valid on these boxes), which also tighten the intermediate bounds. With
    `keep` (proof logs), keep["alphas"] receives alpha-CROWN's best slopes per row
    (relu -> [N, S, *shape]) and keep["unstable"] each such ReLU's unstable mask [N, *shape].
    With `clipping.box` off (paused), clipping only collects the constraints for the children.
    With `joint_steps` and a conjunction of several rows, the minimisers [N, S + 1,
    *input_shape] end with each box's `joint_minimisers` point of the bound's rows.
    """
    N = lower.shape[0]
    n = lower[0].numel()
    if inherited is None:
        inherited = (lower.new_zeros(N, 0, n), lower.new_zeros(N, 0))
    hook = None
    if clipping.on and clipping.intermediate and inherited[1].shape[1]:
        hook = ConstraintClipper(lower, upper, *inherited, _owners(p, inherited[1].shape[1]), p.n_conj,
                                 options.precision, clipping.tally)
    res = compute_bounds(p.graph, _region(p, lower, upper), p.C, options, want_upper=False, ev=p.ev,
                         given=Given(clip=hook, known=p.known or None))
    lb = res.lower.detach() - p.d
    S = lb.shape[1]
    if keep is not None:
        keep["alphas"] = dict(res.alphas)
        tensors = {n.name: n.inputs[0] for n in p.graph.nodes if n.name in keep["alphas"]}
        keep["unstable"] = {k: (res.table[z].lower < 0) & (res.table[z].upper > 0) for k, z in tensors.items()}
    if res.linear is None:
        return lower, upper, _off_ball(p, lower, upper, lb), lb.new_zeros(N, S, n), None, inherited
    A = res.linear.A.detach().reshape(N, S, -1)
    split_A = res.crown_linear.A.detach().reshape(N, S, -1) if res.crown_linear is not None and S > 1 else A
    cons = inherited
    if clipping.on:
        lin = (A, res.linear.bias.detach(), res.linear.mass.detach())
        lower, upper, lb, cons = _clip(p, lower, upper, lb, lin, inherited, clipping)
    elif p.region_a is not None:
        # Box clipping off (recording a proof turns it off: clipped leaves would not tile the
        # root): the rows' Lagrangian dual instead, which the certificate checker derives
        # on each leaf itself (verifier/checker/region64.py).
        tight = min_under_region(res.linear, IntervalBounds(lower, upper), p.region_a, p.region_c, options.precision)
        lb = torch.maximum(lb, tight - p.d)
    mins = res.linear.minimizer(IntervalBounds(lower, upper)).detach()
    if joint_steps and p.n_conj < S:   # some conjunction has several rows
        joint = joint_minimisers(p, lower, upper, A, res.linear.bias.detach(), joint_steps)
        mins = torch.cat([mins, joint.reshape(N, 1, *mins.shape[2:]).to(mins.dtype)], 1)
    return lower, upper, _off_ball(p, lower, upper, lb), split_A, mins, cons


def _off_ball(p: Problem, lower: T, upper: T, lb: T) -> T:
    """lb with every row of a box the ball misses at +inf: no point there to violate it."""
    missed = _misses_ball(p, lower, upper)
    return torch.where(missed.unsqueeze(1), torch.full_like(lb, torch.inf), lb) if bool(missed.any()) else lb


def _worth_it(tally: dict, rounds: int, tuning: Tuning, min_seen: int = 1) -> bool:
    """Whether to clip (the intermediate bounds, or the boxes) in this round.

    Clipping runs while the last round it ran in tightened at least `tuning.clip_rate`
    of what it saw, and otherwise every `tuning.clip_probe_every`-th round, to notice
    when it starts to help. The boxes follow the same rule. A round that saw fewer than
    `min_seen` items never pauses: a few boxes cost little to clip and say little.
    """
    seen = tally.get("seen", 0)
    return seen < min_seen or tally.get("tightened", 0) >= tuning.clip_rate * seen \
        or rounds % tuning.clip_probe_every == 0


def _region_clip(p: Problem, lower: T, upper: T) -> tuple[T, T, T]:
    """Boxes clipped by the region's own rows (every box, every round: they are few and
    always valid); (lower, upper, empty)."""
    N = lower.shape[0]
    lo, hi = lower.reshape(N, -1), upper.reshape(N, -1)
    if p.region_a is None:
        return lower, upper, torch.zeros(N, dtype=torch.bool, device=lower.device)
    K = p.region_c.shape[0]
    lo, hi, empty = clip_box(lo, hi, p.region_a.expand(N, K, -1), p.region_c.expand(N, K))
    return lo.reshape(lower.shape), hi.reshape(upper.shape), empty


def _owners(p: Problem, K: int) -> T:
    """Conjunction of each stored constraint: slots hold whole generations of spec rows."""
    return p.owner.repeat(K // max(1, len(p.owner)))


def _clip_boxes(p: Problem, lo: T, hi: T, a: T, c: T, joint: bool = False) -> tuple[T, T, T]:
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


def _clip(p: Problem, lower: T, upper: T, lb: T, lin: tuple[T, T, T], inherited: tuple[T, T],
          clipping: _Clipping) -> tuple[T, T, T, tuple[T, T]]:
    """Shrink each box to the hull of the points where a counterexample could be.

    Every counterexample of a conjunction satisfies A_s x + bias_s - d_s <= 0 for each of
    its rows s (the linear lower bound is below C_s y), and the constraints its parents
    found. The box hull of the box cut by these constraints keeps every such point, so
    proving the smaller box proves the domain; an empty hull proves it outright. Row
    bounds are then re-concretised under the constraints by the exact one-dimensional
    dual (never looser than before): per constraint, or with `joint` all of a row's
    constraints together by coordinate ascent. The children keep the newest `generations`.
    With `box` off (paused) the boxes and bounds are left as they are: only the
    constraints for the children are collected. `lin`: the bound's (A, bias, mass).
    """
    A, bias, mass = lin
    joint, box, generations = clipping.joint, clipping.box, clipping.generations
    N = lower.shape[0]
    lo, hi = lower.reshape(N, -1), upper.reshape(N, -1)
    a, c = row_constraints(A, bias, p.d, lo=lo, hi=hi, mass=mass)
    a_all, c_all = torch.cat([a, inherited[0]], 1), torch.cat([c, inherited[1]], 1)
    nlo, nhi = lo, hi
    if box:
        nlo, nhi, empty = _clip_boxes(p, lo, hi, a_all, c_all, joint)
        owner = _owners(p, c_all.shape[1])
        fn = min_under_all_constraints if joint else min_under_constraints
        relaxed = fn(LinearBounds(A, bias - p.d, mass + p.d.abs()), IntervalBounds(nlo, nhi), a_all, c_all,
                     allowed=p.owner[:, None] == owner[None, :])
        before, _ = rows_status(p, lb)
        lb = torch.maximum(lb, relaxed)
        lb = torch.where(empty[:, None], torch.full_like(lb, torch.inf), lb)
        after, _ = rows_status(p, lb)
        open_ = ~before
        _count_box_gains(clipping.box_tally, lo[open_], hi[open_], nlo[open_], nhi[open_], empty[open_],
                         after[open_])
    K = len(p.owner) * generations
    if c_all.shape[1] < K:  # young domains: pad with unused constraints (c = nan is ignored)
        pad = K - c_all.shape[1]
        a_all = torch.cat([a_all, a_all.new_zeros(N, pad, a_all.shape[2])], 1)
        c_all = torch.cat([c_all, c_all.new_full((N, pad), torch.nan)], 1)
    return nlo.reshape(lower.shape), nhi.reshape(upper.shape), lb, (a_all[:, :K], c_all[:, :K])


def _split_dims(p: Problem, lower: T, upper: T, A: T, lb: T, floor_share: float) -> T:
    """Dimension to bisect per domain: largest width * sum |A| over unproved rows
    (plus `floor_share` of the total weight for every dimension: `Tuning.split_floor_share`)."""
    N = lower.shape[0]
    width = (upper - lower).reshape(N, -1)
    weight = (A.abs() * open_rows(p, lb).to(A.dtype).unsqueeze(-1)).sum(1)
    score = width * (weight + floor_share * weight.sum(1, keepdim=True) + 1e-12)
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


@dataclass
class _Children:
    """Halves of one round's boxes, with the constraints they inherit and the clip decision."""

    lo: T
    hi: T
    inherited: tuple[T, T]
    box: bool


@dataclass(frozen=True)
class InputSearch:
    """The switches of one input-split search (`bab.*` keys of verifier/config.py).

    `record_proof` keeps every proved leaf for a certificate; clipping is then switched
    off (clipped leaves no longer tile the root region, which the checker requires).
    `clip`: Clip-and-Verify's box clipping by the spec rows, `clip_generations` times
    down a branch; `clip_intermediate`: the intermediate bounds clipped too;
    `clip_joint`: the joint multi-constraint dual (see `InputBrancher`).
    """

    record_proof: bool = False
    clip: bool = True
    clip_generations: int = 1
    clip_intermediate: bool = True
    clip_joint: bool = False


@dataclass
class InputBrancher:
    """Input split as a `bab.search.Brancher`: bisect boxes, bound the halves (clipped).

    Each round takes the worst domains, bisects each along the input dimension where
    (width x |coefficient of the linear bound|) is largest for its unproved rows, clips
    the halves with the constraints they inherit (a half with no feasible point is
    closed without a bound), bounds them in one batched call, and scores each child by
    the smallest objective seen in it (centre, bound minimisers, the attack's points):
    the search explores first where a counterexample may lie.
    """

    problem: Problem
    options: BoundOptions
    how: InputSearch = InputSearch()
    tuning: Tuning = DEFAULT_TUNING
    preclipped: int = 0
    tally: dict = field(default_factory=dict)        # intermediate clipping: seen / tightened
    box_tally: dict = field(default_factory=dict)    # box clipping: seen / tightened

    def __post_init__(self) -> None:
        if self.how.record_proof:
            # Clipped leaves no longer tile the root region, which the certificate checker needs.
            self.how = dataclasses.replace(self.how, clip=False)

    def root(self) -> Bounded:
        p = self.problem
        logged: Optional[dict] = {} if self.how.record_proof else None
        lower, upper = p.lower, p.upper
        if self.how.clip:
            lower, upper, _ = _region_clip(p, lower, upper)  # verify() proved the region non-empty or left it
        clipping = _Clipping(on=self.how.clip, generations=self.how.clip_generations)
        lo, hi, lb, A, _, cons = _bound(p, lower, upper, self.options, clipping, logged)
        proved, score = rows_status(p, lb)
        return Bounded(DomainBatch(lo, hi, lb, score, A, *cons), proved, leaf_data=logged or {})

    def select(self, batch: DomainBatch) -> tuple[DomainBatch, int]:
        return batch, 0

    def split(self, batch: DomainBatch, round_: int) -> Optional[_Children]:
        p = self.problem
        dims = _split_dims(p, batch.lower, batch.upper, batch.coef, batch.lb, self.tuning.split_floor_share)
        lo, hi = _bisect(batch.lower, batch.upper, dims)
        inherited = (torch.cat([batch.cons_a, batch.cons_a]), torch.cat([batch.cons_c, batch.cons_c]))
        if self.how.clip and p.region_a is not None:  # halves outside the region's rows hold no counterexample
            lo, hi, empty = _region_clip(p, lo, hi)
            live = ~empty
            self.preclipped += int(empty.sum())
            lo, hi, inherited = lo[live], hi[live], (inherited[0][live], inherited[1][live])
            if not len(lo):
                return None
        box = self.how.clip and _worth_it(self.box_tally, round_, self.tuning, min_seen=self.tuning.box_min_seen)
        if box:
            self.box_tally = {}  # the decision follows the latest round that clipped the boxes
        if box and inherited[1].shape[1]:
            # The parents' constraints hold on the halves: clip them before bounding, and
            # drop the halves where no counterexample is left (proved without a bound).
            flat_lo, flat_hi = lo.reshape(len(lo), -1), hi.reshape(len(hi), -1)
            lo2, hi2, empty = _clip_boxes(p, flat_lo, flat_hi, *inherited, self.how.clip_joint)
            _count_box_gains(self.box_tally, flat_lo, flat_hi, lo2, hi2, empty)
            live = ~empty
            self.preclipped += int(empty.sum())
            lo, hi = lo2[live].reshape(-1, *lo.shape[1:]), hi2[live].reshape(-1, *hi.shape[1:])
            inherited = (inherited[0][live], inherited[1][live])
            if not len(lo):
                return None
        return _Children(lo, hi, inherited, box)

    def bound(self, ch: _Children, round_: int) -> Bounded:
        p, tuning = self.problem, self.tuning
        use = self.how.clip_intermediate and _worth_it(self.tally, round_, tuning)
        if use:
            self.tally = {}  # the decision follows the latest round that clipped
        logged: Optional[dict] = {} if self.how.record_proof else None
        clipping = _Clipping(self.how.clip, self.how.clip_generations, use, self.how.clip_joint, ch.box, self.tally,
                             self.box_tally)
        lo, hi, lb, A, mins, cons = _bound(p, ch.lo, ch.hi, self.options, clipping, logged, ch.inherited,
                                           tuning.joint_steps)
        proved, _ = rows_status(p, lb)
        n = len(lo)
        candidates = [into_region(p, (lo + hi) / 2, lo, hi)]      # each child's centre stays in its box
        if mins is not None:
            candidates.append(into_region(p, mins.reshape(-1, *lo.shape[1:])))
        pts = torch.cat(candidates)
        obj = violations(p, pts)
        # Empirical objective per child: the smallest value seen at its centre and minimisers.
        emp = obj[:n] if mins is None else torch.minimum(obj[:n], obj[n:].reshape(n, -1).amin(1))
        if round_ % tuning.pgd_every == 0:  # the attack, in the most promising children
            focus = torch.argsort(emp)[:tuning.pgd_focus_input]
            pgd_obj, pgd_x = domain_pgd(p, lo[focus], hi[focus], pts[focus], tuning.pgd_steps)
            emp[focus] = torch.minimum(emp[focus], pgd_obj)
            pts, obj = torch.cat([pts, pgd_x]), torch.cat([obj, pgd_obj])
        # Explore where the objective is smallest: that is where a counterexample lies.
        return Bounded(DomainBatch(lo, hi, lb, emp, A, cons[0], cons[1]), proved, pts, obj, logged or {})

    def record(self, log: ProofLog, bounded: Bounded) -> None:
        d, proved = bounded.domains, bounded.proved
        data = bounded.leaf_data
        log.add_leaves(d.lower[proved], d.upper[proved], d.lb[proved],
                       {k: v[proved] for k, v in data.get("alphas", {}).items()},
                       {k: v[proved] for k, v in data.get("unstable", {}).items()})

    def stats(self) -> dict:
        return {"clipped_empty": self.preclipped, "clip_tally": self.tally, "box_tally": self.box_tally}


def input_split_bab(p: Problem, options: BoundOptions, limits: SearchLimits, hooks: SearchHooks = SearchHooks(),
                    how: InputSearch = InputSearch(), tuning: Tuning = DEFAULT_TUNING,
                    pool: Optional[RoundPool] = None) -> SearchOutcome:
    """Search until every domain is proved, a counterexample is confirmed
    (`hooks.confirm`), time/memory runs out or `hooks.stop()` is true; `hooks.progress` receives the counters
    after each round (domains bounded and open, the worst open domain's gap). With
    alpha-CROWN a proof keeps each proved leaf's best slopes per row at its unstable
    neurons. With a `pool` the rounds run on its workers (`bab.search.RoundPool`), each
    holding an InputBrancher built with the same arguments.
    """
    brancher = InputBrancher(p, options, how, tuning)
    log = ProofLog(method=options.method) if how.record_proof else None
    limits = dataclasses.replace(limits, bytes_per_domain=domain_bytes(p))
    return run(brancher, limits, hooks, log, brancher.record, tuning.confirm_limit, pool)
