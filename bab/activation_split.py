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
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from bab.attack import minimiser_candidates
from bab.branching import BRANCHING, ParentDomains, ReluLayout, babsr_branch, fsb_branch, more_branches, neuron_scores
from bab.clip_hooks import SplitClipper
from bab.domains import SplitDomains
from bab.leaf_lp import LeafSolver, decide_leaves
from bab.learned import Nogoods
from bab.narrowing import Narrowed, narrowed_candidates, narrowing_decisions
from bab.problem import (Problem, into_region, pruning_proved, region_box, rows_left_open, rows_problem, rows_status,
                         violations)
from bab.proof import ActivationProofLog, ConjunctionProofs
from bab.search import Bounded, RoundPool, SearchHooks, SearchLimits, SearchOutcome, domain_bytes, run
from bab.tuning import DEFAULT_TUNING, Tuning
from relaxations import BoundOptions, Given, compute_bounds
from relaxations.bounds import rows_proved

__all__ = ["ReluBrancher", "ReluSearch", "activation_split_bab", "relu_brancher", "relu_inputs"]

T = torch.Tensor


def relu_inputs(p: Problem) -> dict[str, str]:
    """Relu node name -> its pre-activation tensor (only plain Relu is split)."""
    return {n.name: n.inputs[0] for n in p.graph.nodes if n.op == "Relu"}


@dataclass(frozen=True)
class ReluSearch:
    """The switches of one activation-split search (`bab.*` keys of verifier/config.py).

    `record_proof`: every proved domain (leaf) is logged with its split decisions, alphas
    and betas (`outcome.proof`) for a certificate; the search itself is the same.
    `branching` picks the neuron to split: "babsr" (score only) or "fsb" (filtered smart
    branching: `fsb_candidates` BaBSR candidates per domain, each child's bound estimated,
    on each domain's `fsb_rows` worst rows where every conjunction is one row; 0: all).
    `relaxed_clip` tightens bounds with the split constraints (see `_bound`); off when a
    proof is recorded, since the certificate checker cannot replay it.
    `warm_start`: children start alpha/beta-CROWN from their parent's best (`ReluBrancher`).
    `per_conjunction`: one search per conjunction the root leaves open (`_per_conjunction`);
    with `record_proof` every conjunction gets a search and a proof log of its own.
    `open_rows`: each round bounds only the rows of conjunctions that some domain of the
    batch leaves open (see `ReluBrancher`); not with `record_proof` either.
    `multi_split`: up to this many further neurons split per domain in a round whose
    children still fit in twice the batch size (the first rounds of a search).
    `learn`: nogoods from proved domains close or split other domains (bab/learned.py;
    not with `record_proof`).
    `leaf_solve`: fully split leaves left unproved are decided by an LP through it
    (`bab.leaf_lp`; not with `record_proof`); None sets them aside (the answer is unknown).
    `leaf_unstable`: domains with at most this many unstable ReLUs left go to that LP too
    (CROWN's lines at those, so it proves but is not exact there): it gives the split
    constraints their best multipliers, which a few beta-CROWN steps may be far from.
    `prune_proved`: alpha/beta-CROWN's later steps leave out the domains of a batch it
    has proved (`BoundOptions.proved`; the other domains' bounds are the same).
    `narrowing_attack`: the root's single decisions that confine the input box give
    counterexample candidates (`bab.narrowing`), with the attack on.
    """

    record_proof: bool = False
    branching: str = "babsr"
    fsb_candidates: int = 4
    fsb_rows: int = 0
    relaxed_clip: bool = False
    warm_start: bool = False
    per_conjunction: bool = False
    open_rows: bool = False
    multi_split: int = 0
    learn: bool = False
    leaf_solve: Optional[LeafSolver] = None
    leaf_unstable: int = 0
    prune_proved: bool = False
    narrowing_attack: bool = False


@dataclass
class ReluBrancher:
    """Activation split as a `bab.search.Brancher`: split one unstable ReLU per domain.

    Each domain carries the split chosen when it was bounded (BaBSR or FSB, see
    bab/branching.py); a round makes its two children (the neuron active, inactive)
    and bounds all children of the batch in one alpha/beta-CROWN call. A domain with
    nothing left to split that is not proved is set aside: it makes the answer unknown.

    With `open_rows`, a round bounds only the spec rows of conjunctions that some domain
    of the batch leaves open; the others keep the parent's bound, which holds over the
    child's smaller region.

    With `warm_start`, each domain keeps the best alphas and betas of its bound (float16,
    at the neurons unstable at the root only: no other slope can matter below it) and
    its children start alpha/beta-CROWN from them instead of from CROWN's slopes and
    zero betas ("Beta-CROWN", section 3.3); the new split's beta starts at 0. A start
    point never affects soundness: compute_bounds projects it into range first.
    """

    problem: Problem
    options: BoundOptions
    how: ReluSearch = ReluSearch()
    attack: bool = True
    tuning: Tuning = DEFAULT_TUNING
    room: int = 0                 # children a round may bound (2 x batch size)
    NARROWING_TRIES = 512         # neurons of each split tensor `_narrowed` tries at most
    CLIP_K = 2                    # relaxed clipping: the most cutting split constraints per domain

    def __post_init__(self) -> None:
        how = self.how
        if how.branching not in BRANCHING:
            raise ValueError(f"branching must be one of {', '.join(BRANCHING)}, not '{how.branching}'")
        if how.record_proof:
            # The certificate checker replays neither relaxed clipping nor LPs; proof logs
            # keep every row's bound and multipliers per leaf; a domain closed or split by
            # a nogood has no leaf of its own.
            how = dataclasses.replace(how, relaxed_clip=False, open_rows=False, learn=False, leaf_solve=None)
        self.how = how
        self.relus = relu_inputs(self.problem)
        self.names = list(self.relus)
        self.shapes = {self.relus[r]: self.problem.graph.shapes[self.relus[r]] for r in self.names}
        # Branching scores neurons with the final pass's coefficients; FSB also reuses each
        # domain's betas in its estimates, and proof logs keep them.
        self.options = dataclasses.replace(
            self.options, coefficients=True,
            keep_betas=how.record_proof or how.branching == "fsb" or how.warm_start)
        self.unstable: dict[str, T] = {}   # split tensor -> flat indices unstable at the root
        self.narrowing: Optional[dict] = None   # decisions that narrow the box (`_narrowed`)
        self.nogoods: Optional[Nogoods] = None
        if how.learn:
            self.nogoods = Nogoods({z: torch.Size(s).numel() for z, s in self.shapes.items()},
                                   self.problem.lower.device)
            self.options = dataclasses.replace(self.options, keep_betas=True)
        self.leaf_stats = {"leaf_lps": 0, "leaf_lp_proved": 0}

    def _leaves(self, splits: dict, lb: T, branch: T, proved: T, table) -> tuple[T, list]:
        """`proved` with the leaves that an LP proves, and the polytope points of the others
        as candidates (`bab.leaf_lp`): fully split domains (no branching choice) and those
        with at most `leaf_unstable` unstable neurons in their bound's `table`."""
        leaf = branch[:, 0] < 0
        if self.how.leaf_unstable > 0:
            N = len(lb)
            n = sum(((table[z].lower < 0) & (table[z].upper > 0)).reshape(N, -1).sum(1) for z in self.shapes)
            rows = sum((s != 0).reshape(N, -1).sum(1) for s in splits.values())
            small = rows * self.problem.lower[0].numel() <= self.tuning.leaf_lp_max_entries
            leaf = leaf | ((n <= self.how.leaf_unstable) & small)
        leaf = leaf & ~proved
        if self.how.leaf_solve is None or not bool(leaf.any()):
            return proved, []
        idx = torch.nonzero(leaf).flatten()
        p = self.problem
        done = torch.zeros(len(idx), p.n_conj, dtype=torch.bool, device=lb.device)
        done = done.scatter_reduce(1, p.owner.expand(len(idx), -1), rows_proved(lb[idx], p.strict), reduce="amax")
        open_conj = ~done
        got, points = decide_leaves(p, {z: s[idx] for z, s in splits.items()}, open_conj, self.options,
                                    self.how.leaf_solve)
        self.leaf_stats["leaf_lps"] += len(idx)
        self.leaf_stats["leaf_lp_proved"] += int(got.sum())
        proved = proved.clone()
        proved[idx] = got.to(proved.device)
        return proved, points

    def _bound(self, splits: dict, alphas: Optional[dict] = None, betas: Optional[dict] = None,
               q: Optional[Problem] = None) -> tuple[T, T, T, Optional[T], object]:
        """Bound a batch of domains of `q` (default: the problem); also choose each one's
        next split (see bab/branching.py).

        With `relaxed_clip`, each split `s z >= 0` and z's linear bound over the input give a
        constraint on the domain's inputs; the `CLIP_K` most cutting ones per domain tighten
        the intermediate bounds and the spec rows' bound (bab/clip_hooks.py, `SplitClipper`).
        `alphas` / `betas` start alpha/beta-CROWN (a warm start; NaN alphas: the default).
        Returns row bounds, the next split [N, 2], `multi_split` further BaBSR choices
        [N, more, 2], the bound's minimisers and the bound result.
        """
        p, how, options, names, relus = q or self.problem, self.how, self.options, self.names, self.relus
        N = next(iter(splits.values())).shape[0]
        box = region_box(p, N)
        clipper = SplitClipper(box.lower, box.upper, self.CLIP_K, precision=options.precision) \
            if how.relaxed_clip else None
        res = compute_bounds(p.graph, box, p.C, pruning_proved(p, options, how.prune_proved), want_upper=False, ev=p.ev,
                             given=Given(splits=splits, clip=clipper, known=p.known or None, alphas=alphas,
                                         betas=betas))
        capture = res.coefficients
        lower = res.lower.detach()
        if clipper is not None:
            with torch.no_grad():
                lower = clipper.final(res.linear, lower)
        lb = lower - p.d
        babsr, inter, offsets = neuron_scores(p, names, relus, res.table, capture, splits, lb)
        if how.branching == "fsb":
            branch = fsb_branch(ParentDomains(p, res, splits, lb), ReluLayout(names, relus, offsets), babsr, inter,
                                options, k=how.fsb_candidates, narrowing=self.narrowing,
                                rows=how.fsb_rows)
        else:
            branch = babsr_branch(babsr, offsets)
        extra = more_branches(babsr, offsets, branch, how.multi_split)
        mins = res.linear.minimizer(res.box or box).detach() if res.linear is not None else None
        if mins is not None and options.tighten_input and res.box is not None:
            # A narrowed box's centre too: a corner of it may lie outside what narrowed it (a
            # distance split active confines the inputs to a ball, whose corners are outside).
            centre = (res.box.lower + res.box.upper) / 2
            mins = torch.cat([mins, centre.unsqueeze(1).to(mins.dtype)], 1)
        return lb, branch, extra, mins, res

    def root(self) -> Bounded:
        dev = self.problem.lower.device
        splits = {z: torch.zeros(1, *s, dtype=torch.int8, device=dev) for z, s in self.shapes.items()}
        lb, branch, more, _, res = self._bound(splits)
        for z in self.shapes:
            b = res.table[z]
            self.unstable[z] = torch.nonzero(((b.lower < 0) & (b.upper > 0)).reshape(-1)).flatten()
        proved, score = rows_status(self.problem, lb)
        # A root its bound proves has no search to narrow and no counterexample to find.
        found = None if bool(proved.all()) else self._narrowed(res)
        if self.options.tighten_input:
            self.narrowing = None if found is None else found.flags
            if self.narrowing is None or not any(bool(m.any()) for m in self.narrowing.values()):
                self.options = dataclasses.replace(self.options, tighten_input=False)
                self.narrowing = None
        proved, leaf_points = self._leaves(splits, lb, branch, proved, res.table)
        pts = obj = None
        if found is not None and self.attack and self.how.narrowing_attack:
            pts, obj = narrowed_candidates(self.problem, found, self.tuning.pgd_focus_activation,
                                           self.tuning.pgd_steps)
        if leaf_points and self.attack:
            pts, obj = _with_points(self.problem, pts, obj, leaf_points)
        alphas, betas = self._keep(res, lb)
        return Bounded(SplitDomains(splits, lb, score, branch, alphas, betas, more), proved, pts, obj,
                       leaf_data=self._leaf_data(res))

    def _narrowed(self, res) -> Optional[Narrowed]:
        """The root's single decisions that narrow the input box (`bab.narrowing`), when
        `tighten_input` or the narrowing attack wants them: at most `NARROWING_TRIES` neurons
        of each split tensor; for the attack alone within `tuning.narrowing_share` of the
        time left (a CIFAR convolution's check costs seconds, and finds nothing there)."""
        tighten, attack = self.options.tighten_input, self.how.narrowing_attack and self.attack
        if not (tighten or attack):
            return None
        deadline = self.options.deadline
        if not tighten and deadline is not None:
            now = time.monotonic()
            deadline = now + self.tuning.narrowing_share * max(0.0, deadline - now)
        return narrowing_decisions(self.problem, res.table, self.unstable, self.shapes, self.NARROWING_TRIES,
                                   deadline)

    def _keep(self, res, lb: T, rows: Optional[T] = None, inherited: Optional[tuple[dict, dict]] = None
              ) -> tuple[dict, dict]:
        """The bound's best alphas and betas at the root's unstable neurons, as float16
        (NaN alpha, zero beta where the bound had none), for the children's warm start.
        With `rows` (lb [N, len(rows)] bounds only those spec rows), the other rows keep
        the `inherited` (parent's) values."""
        if not self.how.warm_start:
            return {}, {}
        N, S = lb.shape

        def compact(v: Optional[T], z: str, fill: float) -> T:
            idx = self.unstable[z]
            if v is None:
                return torch.full((N, S, len(idx)), fill, dtype=torch.float16, device=lb.device)
            # Clamped to float16's range: an inf start would stay inf (a beta that large
            # proves nothing, but would then never move again).
            return v.detach().reshape(N, S, -1)[:, :, idx].clamp(-65504.0, 65504.0).to(torch.float16)

        alphas = {r: compact(res.alphas.get(r), z, float("nan")) for r, z in self.relus.items()}
        betas = {z: compact(res.betas.get(z), z, 0.0) for z in self.shapes}
        if rows is None or inherited is None:
            return alphas, betas

        def merge(old: dict, new: dict) -> dict:
            out = {k: v.clone() for k, v in old.items()}
            for k, v in new.items():
                out[k][:, rows] = v
            return out

        return merge(inherited[0], alphas), merge(inherited[1], betas)

    def _spread(self, v: T, z: str, fill: float) -> T:
        """Compact [N, S, U] values back to [N, S, *shape], `fill` at the other neurons."""
        N, S = v.shape[:2]
        full = torch.full((N, S, torch.Size(self.shapes[z]).numel()), fill, dtype=self.problem.lower.dtype, device=v.device)
        full[:, :, self.unstable[z]] = v.to(full.dtype)
        return full.reshape(N, S, *self.shapes[z])

    def select(self, batch: SplitDomains) -> tuple[SplitDomains, int]:
        done = batch.branch[:, 0] < 0
        n_done = int(done.sum())
        return (batch.take(~done), n_done) if n_done else (batch, 0)

    def _rows_open(self, lb: T) -> Optional[T]:
        """The spec rows to bound in the children (None: all; `rows_left_open`)."""
        return rows_left_open(self.problem, lb) if self.how.open_rows else None

    def _levels(self, batch: SplitDomains) -> list[T]:
        """The decisions [n, 2] this round splits on: the chosen one, then as many of the
        further choices as keep the children within `room` (all domains must have them)."""
        levels = [batch.branch]
        n = len(batch)
        for j in range(batch.more.shape[1] if self.how.multi_split else 0):
            if n * 2 ** (len(levels) + 1) > self.room or not bool((batch.more[:, j, 0] >= 0).all()):
                break
            levels.append(batch.more[:, j])
        return levels

    def split(self, batch: SplitDomains, round_: int) -> dict:
        """Children of every domain: 2 per split decision, 2^k when k neurons are split at
        once (`multi_split`, while the round has room: the first rounds of a search would
        otherwise bound a handful of domains each). Children are ordered by sign block,
        each block in parent order; `src` maps a child to its parent."""
        n = len(batch)
        dev = batch.lb.device
        flat = {z: batch.splits[z].reshape(n, -1) for z in self.shapes}
        z_of = [self.relus[r] for r in self.names]
        src = torch.arange(n, device=dev)
        for dec in self._levels(batch):
            dec = dec[src]
            rows = torch.arange(len(src), device=dev)
            new = {}
            for z, f in flat.items():
                pos, neg = f.clone(), f.clone()
                sel = torch.zeros(len(src), dtype=torch.bool, device=dev)
                for i, zi in enumerate(z_of):
                    if zi == z:
                        sel |= dec[:, 0] == i
                pos[rows[sel], dec[sel, 1]] = 1
                neg[rows[sel], dec[sel, 1]] = -1
                new[z] = torch.cat([pos, neg])
            flat, src = new, torch.cat([src, src])
        children = {z: f.reshape(len(src), *self.shapes[z]) for z, f in flat.items()}
        if self.nogoods is not None and len(self.nogoods):
            X, closed = self.nogoods.apply(self.nogoods.flat(children))
            if bool(closed.all()):
                return None
            children, src = self.nogoods.unflat(X[~closed], self.shapes), src[~closed]
        out = {"splits": children, "rows": self._rows_open(batch.lb), "parent_lb": batch.lb[src]}
        if not self.how.warm_start or not batch.alphas:
            return out
        # Every child starts where its parent ended.
        kept = ({r: v[src] for r, v in batch.alphas.items()}, {z: v[src] for z, v in batch.betas.items()})
        sel = (lambda v: v) if out["rows"] is None else (lambda v: v[:, out["rows"]])  # noqa: E731
        out["alphas"] = {r: self._spread(sel(v), self.relus[r], float("nan")) for r, v in kept[0].items()}
        out["betas"] = {z: self._spread(sel(v), z, 0.0) for z, v in kept[1].items()}
        out["kept"] = kept
        return out

    def bound(self, children: dict, round_: int) -> Bounded:
        p = self.problem
        alphas, betas, rows = children.get("alphas"), children.get("betas"), children.get("rows")
        parent_lb, inherited, children = children["parent_lb"], children.get("kept"), children["splits"]
        q = None if rows is None else rows_problem(p, rows)
        sub, branch, more, mins, res = self._bound(children, alphas, betas, q)
        if rows is None:
            lb = sub
        else:  # the other rows' conjunctions are proved in every parent: keep the parents' bounds
            lb = parent_lb.clone()
            lb[:, rows] = sub
        proved, score = rows_status(p, lb)
        proved, leaf_points = self._leaves(children, lb, branch, proved, res.table)
        pts = obj = None
        if mins is not None and self.attack:
            pts, obj = minimiser_candidates(p, mins, self.tuning.pgd_focus_activation, self.tuning.pgd_steps)
        if leaf_points and self.attack:
            pts, obj = _with_points(p, pts, obj, leaf_points)
        kept_a, kept_b = self._keep(res, sub, rows, inherited)
        if self.nogoods is not None:
            self._learn(children, proved, res)
        return Bounded(SplitDomains(children, lb, score, branch, kept_a, kept_b, more), proved, pts, obj,
                       self._leaf_data(res))

    def _learn(self, splits: dict, proved: T, res) -> None:
        """Strengthen the proved domains' decisions (`Nogoods.strengthened`) and keep the
        shorter sets that a bound of their own proves; the shortest are tried first, at
        most a quarter of a round's room."""
        ng = self.nogoods
        cand = ng.strengthened(ng.flat(splits), res.betas, proved)
        if cand is None:
            return
        cand = cand[torch.argsort((cand != 0).sum(1))][:max(1, self.room // 4)]
        ng.stats["strengthen_tried"] += len(cand)
        p = self.problem
        N = len(cand)
        box = region_box(p, N)
        plain = dataclasses.replace(self.options, coefficients=False, keep_betas=False)
        out = compute_bounds(p.graph, box, p.C, plain, want_upper=False, ev=p.ev,
                             given=Given(splits=ng.unflat(cand, self.shapes), known=p.known or None))
        ok, _ = rows_status(p, out.lower.detach() - p.d)
        ng.add(cand[ok])

    def _leaf_data(self, res) -> dict:
        """What a proof log needs of a bounded batch (only kept when a proof is recorded)."""
        if not self.how.record_proof:
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
        out = {"nogoods": dict(self.nogoods.stats)} if self.nogoods is not None else {}
        return {**out, **self.leaf_stats} if self.leaf_stats["leaf_lps"] else out


def _with_points(p: Problem, pts: Optional[T], obj: Optional[T], points: list) -> tuple[T, T]:
    """The candidates with the leaf LPs' points added (their objective evaluated here)."""
    x = torch.from_numpy(np.stack(points)).to(dtype=p.lower.dtype, device=p.lower.device)
    x = into_region(p, x.reshape(len(points), *p.lower.shape[1:]))
    v = violations(p, x)
    if pts is None:
        return x, v
    return torch.cat([pts, x]), torch.cat([obj, v])


def relu_brancher(p: Problem, options: BoundOptions, limits: SearchLimits, how: ReluSearch, attack: bool,
                  tuning: Tuning = DEFAULT_TUNING) -> ReluBrancher:
    """The brancher `activation_split_bab` searches with (a pool's workers build theirs here too)."""
    return ReluBrancher(p, options, how, attack=attack, tuning=tuning, room=2 * limits.batch_size)


def activation_split_bab(p: Problem, options: BoundOptions, limits: SearchLimits, hooks: SearchHooks = SearchHooks(),
                         how: ReluSearch = ReluSearch(), tuning: Tuning = DEFAULT_TUNING,
                         pool: Optional[RoundPool] = None) -> SearchOutcome:
    """Search until all domains are proved, a counterexample is confirmed (`hooks.confirm`),
    limits are hit, or `hooks.stop()` (checked once per round) is true; `hooks.progress`
    receives the counters after each round (domains bounded and open, the worst open
    domain's gap). `how` holds the search's switches (`ReluSearch`). With a `pool` the
    rounds run on its workers (`bab.search.RoundPool`, each with a `relu_brancher` of the
    same arguments); a search per conjunction stays in this process.
    """
    def make(q: Problem) -> ReluBrancher:
        return relu_brancher(q, options, limits, how, hooks.confirm is not None, tuning)

    brancher = make(p)
    if not brancher.names:
        return SearchOutcome("unknown", stats={"reason": "no ReLU to split"})
    limits = dataclasses.replace(limits, bytes_per_domain=domain_bytes(p))
    if how.per_conjunction and p.n_conj > 1:
        return _per_conjunction(p, brancher, make, limits, hooks, tuning.confirm_limit, how.record_proof)
    log = ActivationProofLog(brancher.names) if how.record_proof else None
    return run(brancher, limits, hooks, log, brancher.record, tuning.confirm_limit, pool)


def conjunction_problem(p: Problem, k: int) -> Problem:
    """The problem of conjunction k alone: its rows, one conjunction."""
    return rows_problem(p, torch.nonzero(p.owner == k).flatten())


def _per_conjunction(p: Problem, brancher: ReluBrancher, make: Callable[[Problem], ReluBrancher],
                     limits: SearchLimits, hooks: SearchHooks, confirm_limit: int,
                     record_proof: bool = False) -> SearchOutcome:
    """The problem is unsat when every conjunction is, so each may get a search of its own.

    A joint search carries every spec row in every domain, and bounds all of them each
    round, although a domain usually leaves one or two conjunctions open; the trees of
    the separate searches also split on what each conjunction needs (alpha,beta-CROWN
    verifies a robustness property label by label for the same reason). The root bound
    decides which conjunctions are open, and the worst goes first: it is the likeliest to
    hold a counterexample. The first sat, timeout or stop ends it all; an unknown (a
    fully split domain not proved) is remembered while the others still run.

    With `record_proof` the conjunctions the root proves get a search too (it ends at its
    root, whose leaf is the proof), so that every conjunction has a proof log.
    """
    root = brancher.root()
    lb = root.domains.lb                                                   # [1, S]
    order = []
    for k in range(p.n_conj):
        q = conjunction_problem(p, k)
        rows = torch.nonzero(p.owner == k).flatten()
        proved, score = rows_status(q, lb[:, rows])
        if record_proof or not bool(proved.all()):
            order.append((float(score[0]), k, q))
    order.sort(key=lambda t: t[0])
    total = SearchOutcome("unsat", domains_bounded=len(root.domains), rounds=0, leaves=0,
                          stats={"conjunctions_searched": len(order)})
    unknown = None
    proofs = ConjunctionProofs()
    for _, k, q in order:
        offset = total.domains_bounded

        def report(f: dict, offset: int = offset) -> None:
            hooks.progress({**f, "bounded": f.get("bounded", 0) + offset})

        sub = make(q)
        log = ActivationProofLog(sub.names) if record_proof else None
        sub_hooks = dataclasses.replace(hooks, progress=report if hooks.progress else None)
        out = run(sub, limits, sub_hooks, log, sub.record, confirm_limit)
        total.domains_bounded += out.domains_bounded
        total.rounds += out.rounds
        total.leaves += out.leaves
        if out.status == "unsat":
            if record_proof:
                proofs.parts.append((k, out.proof))
            continue
        if out.status == "unknown" and "stopped" not in str(out.stats.get("reason", "")):
            unknown = out
            continue
        out.domains_bounded, out.rounds, out.leaves = total.domains_bounded, total.rounds, total.leaves
        out.stats = {**total.stats, **out.stats, "conjunction": k}
        return out
    if unknown is not None:
        unknown.domains_bounded, unknown.rounds, unknown.leaves = total.domains_bounded, total.rounds, total.leaves
        unknown.stats = {**total.stats, **unknown.stats}
        return unknown
    if record_proof:
        proofs.parts.sort(key=lambda t: t[0])
        total.proof = proofs
    return total

