"""Activation split on any elementwise nonlinearity (GenBaB), for networks beyond ReLU.

A domain is the whole input region plus, at every split tensor (the input `z` of a
relaxed elementwise node: Sigmoid, Tanh, Gelu, Exp, ..., and Relu in a network that
has other nonlinearities too), an interval [lo, hi] that `z` is restricted to. A round
picks one neuron per domain and a point `p` inside its interval, and bounds the two
children, `z <= p` and `z >= p`, in one batched alpha-CROWN call whose intervals of
the split tensors are the children's (`Given.known`): each node's
relaxation is rebuilt on its narrower interval, and every later interval tightens
with it. ("Neural Network Verification with Branch-and-Bound for General
Nonlinearities", Shi et al., 2024.)

Why the children's bounds are sound: every relaxation and interval used for a child
holds for the inputs x whose z(x) lies in the child's interval, so the child's bound
is a lower bound of the spec rows over those inputs; the two children's sets cover
the parent's (every z(x) is <= p or >= p), so a proof of both children proves the
parent. A child whose intervals become empty holds no input and is proved.

A split also enters the bound as a cut, `z >= p` or `z <= p`, that alpha-CROWN dualises
with its own multiplier (`Given.cuts`, as beta-CROWN does for a ReLU split `z >= 0`), so
it tightens the layers before the split node as well as the node's relaxation and what
follows it. Pure ReLU networks keep bab/activation_split.py.

Products of two variable tensors (Mul, MatMul) are split too, on either factor: a
factor's narrower interval brings the McCormick planes of every product it enters
closer (their gap is w_x w_y / 2), and the factors' intervals are kept from the root's
optimised bounds like the activations' inputs. Their score is that gap times |A| at the
product's output, summed back to each factor element through the gather.

Choosing the neuron: the coefficients A at each split node's output (captured by the
final backward pass) times the largest vertical distance between the node's CROWN
lower and upper lines over its interval, summed over the open spec rows: the
bound's looseness that the neuron's relaxation may carry (BaBSR's score, read for any
nonlinearity). Choosing the point: 0 where the function changes shape there (the kink
of Relu-like ops, the inflection of S-shaped ones) and 0 is well inside the interval,
else the midpoint. Neither choice affects soundness, only the number of domains.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

from bab.attack import minimiser_candidates
from bab.domains import Batch
from bab.problem import (Problem, open_rows as open_row_weights, pruning_proved, region_box, rows_left_open, rows_problem,
                         rows_status)
from bab.search import Bounded, SearchHooks, SearchLimits, SearchOutcome, domain_bytes, run
from bab.tuning import DEFAULT_TUNING, Tuning
from models import Graph
from relaxations import BoundOptions, Given, IntervalBounds, compute_bounds
from relaxations.affine_step import affine_backward
from relaxations.crown import BackwardContext, slot_bounds
from relaxations.ops import products
from relaxations.registry import rule_for

__all__ = ["IntervalDomains", "IntervalBrancher", "IntervalSearch", "general_split_bab", "split_nodes", "product_nodes",
           "needs_general_split", "split_point", "SPLIT_AT_ZERO"]

T = torch.Tensor

# Ops whose shape changes at 0 (a kink, or the inflection of an S-shaped function):
# splitting there leaves each child a piece on which the relaxation is much tighter.
SPLIT_AT_ZERO = frozenset({"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Abs", "Sign", "Sigmoid", "Tanh",
                           "Atan", "Erf", "Softsign", "Gelu", "HardSwish", "Softplus", "Sin"})
# Ops split exactly at 0 whenever 0 is inside the interval: each side is then linear.
EXACT_AT_ZERO = frozenset({"Relu", "LeakyRelu", "PRelu", "Abs"})
ZERO_MARGIN = 0.1     # 0 is used when both sides keep at least this share of the width
MIN_WIDTH = 1e-6      # narrower intervals (relative to 1 + |z|) are not split again
WARM_MAX_BYTES = 256 * 1024   # warm-start values kept per domain at most (eran's 6x200 net: 65 kB)


def split_nodes(graph: Graph, constants) -> dict[str, str]:
    """Relaxed elementwise node name -> its variable input (the split tensor)."""
    out = {}
    for n in graph.nodes:
        rule = rule_for(n)
        if rule.kind != "elementwise" or rule.relax is None or len(n.outputs) != 1 or not n.inputs:
            continue
        if any(x and x not in constants for x in n.inputs[1:]) or n.inputs[0] in constants:
            continue
        out[n.name] = n.inputs[0]
    return out


def product_nodes(graph: Graph, constants) -> dict[str, tuple[str, ...]]:
    """Products of two variable tensors (Mul, MatMul: McCormick planes) -> their two
    factors, which the search may split too."""
    out = {}
    for n in graph.nodes:
        rule = rule_for(n)
        if rule.relax_slots is not products.product_relax or len(n.outputs) != 1:
            continue
        factors = tuple(x for x in n.inputs[:2] if x and x not in constants)
        if len(factors) == 2:
            out[n.name] = factors
    return out


def needs_general_split(graph: Graph, constants) -> bool:
    """Whether the network has a splittable nonlinearity other than Relu, or a product of
    two variable tensors (then a ReLU split alone could not decide it)."""
    by_name = {n.name: n for n in graph.nodes}
    return any(by_name[k].op != "Relu" for k in split_nodes(graph, constants)) or bool(product_nodes(graph, constants))


def split_point(op: str, lo: T, hi: T) -> T:
    """Where to cut [lo, hi] (elementwise): 0 for the ops in `SPLIT_AT_ZERO` when both
    sides keep `ZERO_MARGIN` of the width (always, for the ones exact on each side of 0),
    else the midpoint; strictly inside (lo, hi) whenever hi > lo."""
    mid = lo + (hi - lo) / 2
    if op not in SPLIT_AT_ZERO:
        return mid
    w = hi - lo
    margin = 0.0 if op in EXACT_AT_ZERO else ZERO_MARGIN
    zero_ok = (lo + margin * w < 0) & (hi - margin * w > 0)
    return torch.where(zero_ok, torch.zeros_like(mid), mid)


@dataclass(frozen=True)
class IntervalDomains(Batch):
    """N general-split domains over the problem's whole input region.

    lo / hi: split tensor -> [N, *shape], the interval each neuron is restricted to (the
    root's interval where nothing was split); lb [N, S]; score [N]; branch [N, 2]: the
    next split (index into the brancher's tensors, flat neuron index), -1 when nothing
    is left to split; point [N]: where that neuron is cut. cut_lo / cut_hi: split tensor
    -> [N, *shape], the split points themselves (z >= cut_lo, z <= cut_hi; -inf / inf where
    the domain has none), which the bound dualises (`Given.cuts`). alphas /
    betas: with warm starts, the domain's best alpha-CROWN parameters (node / cut key ->
    float16 [N, S, *shape]), which its children start from.
    """

    lo: dict
    hi: dict
    cut_lo: dict
    cut_hi: dict
    lb: T
    score: T
    branch: T
    point: T
    alphas: dict = dataclasses.field(default_factory=dict)
    betas: dict = dataclasses.field(default_factory=dict)


@dataclass
class IntervalBrancher:
    """General activation split as a `bab.search.Brancher` (see the module docstring)."""

    problem: Problem
    options: BoundOptions
    attack: bool = True
    tuning: Tuning = DEFAULT_TUNING
    open_rows: bool = True
    warm_start: bool = False
    split_products: bool = True
    prune_proved: bool = False

    def __post_init__(self) -> None:
        p = self.problem
        self.nodes = split_nodes(p.graph, p.ev.constants)
        self.names = list(self.nodes)
        self.products = product_nodes(p.graph, p.ev.constants) if self.split_products else {}
        self.tensors = list(dict.fromkeys([*self.nodes.values(), *(z for f in self.products.values() for z in f)]))
        by_name = {n.name: n for n in p.graph.nodes}
        self.node_of = {z: by_name[k] for k, fs in reversed(list(self.products.items())) for z in fs}
        self.node_of.update({z: by_name[k] for k, z in reversed(list(self.nodes.items()))})   # first reader
        self.by_name = by_name
        self.rules = {z: rule_for(n) for z, n in self.node_of.items()}
        # Warm starts keep every alpha and cut multiplier per domain and row, in float16;
        # past `WARM_MAX_BYTES` a domain they would crowd the store out, and are left off.
        per_domain = 6 * p.C.shape[0] * sum(torch.Size(p.graph.shapes[z]).numel() for z in self.tensors)
        self.warm_start = self.warm_start and per_domain <= WARM_MAX_BYTES
        self.options = dataclasses.replace(self.options, coefficients=True, keep_betas=self.warm_start)

    # -------------------------------------------------------------- bounding

    def _bound(self, lo: dict, hi: dict, cut_lo: dict, cut_hi: dict, q: Optional[Problem] = None,
               alphas: Optional[dict] = None, betas: Optional[dict] = None) -> tuple[T, T, T, Optional[T], object]:
        p = q or self.problem
        N = next(iter(lo.values())).shape[0]
        box = region_box(p, N)
        known = dict(p.known)
        known.update({z: IntervalBounds(lo[z], hi[z]) for z in self.tensors})
        # Zero signs split nothing; they make compute_bounds mark domains whose clamped
        # intervals are empty (no input satisfies the splits) as infeasible: proved.
        empty_check = {z: torch.zeros(lo[z].shape, dtype=torch.int8, device=lo[z].device) for z in self.tensors}
        res = compute_bounds(p.graph, box, p.C, pruning_proved(p, self.options, self.prune_proved), want_upper=False, ev=p.ev,
                             given=Given(splits=empty_check, known=known, cuts=_cuts(cut_lo, cut_hi), alphas=alphas,
                                         betas=betas))
        lb = res.lower.detach() - p.d
        branch, point = self._choose(res, lb, p)
        mins = res.linear.minimizer(box).detach() if res.linear is not None else None
        return lb, branch, point, mins, res

    def _choose(self, res, lb: T, p: Problem) -> tuple[T, T]:
        """Each domain's next split: the neuron with the highest score, and its point."""
        N = lb.shape[0]
        weight = open_row_weights(p, lb)                                           # [N, S]
        scores, offsets, start = [], [], 0
        for z in self.tensors:
            node = self.node_of[z]
            b = res.table[z]
            lo, hi = b.lower.reshape(N, -1), b.upper.reshape(N, -1)
            offsets.append(start)
            start += lo.shape[1]
            wide = (hi - lo) > MIN_WIDTH * (1 + torch.maximum(lo.abs(), hi.abs()))
            from_products = self._product_scores(res, z, weight, N)
            A = _summed_coefficients(res.coefficients, self.nodes, z, N)
            if A is None:
                if from_products is None:
                    scores.append(torch.full_like(lo, -1.0))
                else:
                    ok = wide & torch.isfinite(from_products)
                    scores.append(torch.where(ok, from_products, torch.full_like(lo, -1.0)))
                continue
            rule = self.rules[z]
            consts = [p.ev.constants.get(x) if x else None for x in node.inputs]
            lo_s, hi_s = b.lower, b.upper
            r = rule.relax(node, lo_s.unsqueeze(1), hi_s.unsqueeze(1), None, consts)
            ds = (r.upper_slope - r.lower_slope).squeeze(1)
            db = (r.upper_bias - r.lower_bias).squeeze(1)
            gap = torch.maximum(ds * lo_s + db, ds * hi_s + db).reshape(N, -1).clamp(min=0)
            loose = rule.unstable(node, lo_s, hi_s, consts).reshape(N, -1) if rule.unstable is not None \
                else torch.ones_like(lo, dtype=torch.bool)
            ok = loose & wide & torch.isfinite(gap)
            Af = (A.reshape(N, A.shape[1], -1) * weight.unsqueeze(-1)).abs().sum(1)
            score = Af * gap + 1e-9 * gap
            if from_products is not None:     # a factor of a product too: either reason counts
                score = score + from_products
                ok = wide & torch.isfinite(score)
            scores.append(torch.where(ok, score, torch.full_like(lo, -1.0)))
        offsets.append(start)
        score = torch.cat(scores, 1)
        val, idx = score.max(1)
        bounds = torch.tensor(offsets[1:-1], device=idx.device, dtype=idx.dtype)
        which = torch.bucketize(idx, bounds, right=True)
        flat = idx - torch.tensor(offsets[:-1], device=idx.device, dtype=idx.dtype)[which]
        valid = val >= 0
        none = torch.full((N, 2), -1, device=idx.device, dtype=idx.dtype)
        branch = torch.where(valid.unsqueeze(1), torch.stack([which, flat], 1), none)
        point = torch.zeros(N, dtype=lb.dtype, device=lb.device)
        for i, z in enumerate(self.tensors):
            sel = torch.nonzero(valid & (which == i)).flatten()
            if not len(sel):
                continue
            b = res.table[z]
            lo = b.lower.reshape(N, -1)[sel, flat[sel]]
            hi = b.upper.reshape(N, -1)[sel, flat[sel]]
            point[sel] = split_point(self.node_of[z].op, lo, hi)
        return branch, point

    def _product_scores(self, res, z: str, weight: T, N: int) -> Optional[T]:
        """[N, n] how much of the bound's looseness the McCormick planes of the products
        that read `z` owe to each of its elements, or None when none does: a product
        x_k y_k's planes are at most w_x w_y / 2 apart (at alpha 1/2), which counts, times
        |A| at the product's output (open rows weighted), for both of its factors;
        the gather's transpose sums it per input element. Halving w_x halves it."""
        total = None
        for name, factors in self.products.items():
            A = res.coefficients.get(name)
            if z not in factors or A is None:
                continue
            node = self.by_name[name]
            rule = rule_for(node)
            ctx = BackwardContext(self.problem.graph, self.problem.ev, res.table, {name: rule})
            lo, hi = slot_bounds(ctx, node, rule)                                  # [N, *out, 2P]
            P = lo.shape[-1] // 2
            w = torch.nan_to_num(hi - lo, nan=0.0, posinf=0.0)
            gap = w[..., :P] * w[..., P:] / 2
            Af = (A.detach() * weight.reshape(N, -1, *[1] * (A.dim() - 2))).abs().sum(1)   # [N, *out]
            per_slot = (Af.unsqueeze(-1) * torch.cat([gap, gap], -1)).unsqueeze(1)       # [N, 1, *out, 2P]
            ins, _, _ = affine_backward(ctx, node, [per_slot], fn=lambda n, xs: [rule.gather(n, xs)], masked=True)
            for x, a in zip(node.inputs, ins):
                if x == z and a is not None:
                    s = a.reshape(N, -1)
                    total = s if total is None else total + s
        return total

    # -------------------------------------------------------------- the Brancher protocol

    def root(self) -> Bounded:
        p = self.problem
        N = 1
        lo, hi = {}, {}
        for z in self.tensors:
            shape = p.graph.shapes[z]
            k = p.known.get(z)
            lo[z] = k.lower.expand(N, *shape).clone() if k is not None else \
                torch.full((N, *shape), -torch.inf, dtype=p.lower.dtype, device=p.lower.device)
            hi[z] = k.upper.expand(N, *shape).clone() if k is not None else \
                torch.full((N, *shape), torch.inf, dtype=p.lower.dtype, device=p.lower.device)
        none = {z: torch.full_like(v, -torch.inf) for z, v in lo.items()}
        cut_lo, cut_hi = none, {z: -v for z, v in none.items()}
        lb, branch, point, _, res = self._bound(lo, hi, cut_lo, cut_hi)
        # Each domain keeps the intervals it was bounded with (the root's, here): children
        # are cut from them, never wider than what the bound already proved.
        lo = {z: res.table[z].lower.detach().clone() for z in self.tensors}
        hi = {z: res.table[z].upper.detach().clone() for z in self.tensors}
        proved, score = rows_status(p, lb)
        alphas, betas = self._keep(res, lb.shape[1])
        return Bounded(IntervalDomains(lo, hi, cut_lo, cut_hi, lb, score, branch, point, alphas, betas), proved)

    def _keep(self, res, S: int, rows: Optional[T] = None, parent: Optional[tuple[dict, dict]] = None
              ) -> tuple[dict, dict]:
        """The bound's alphas and cut multipliers as float16 [N, S, *shape] (with `rows`:
        the bound covered those rows only, the others keep the `parent`'s)."""
        if not self.warm_start:
            return {}, {}
        half = {k: v.detach().clamp(-65504.0, 65504.0).to(torch.float16) for k, v in res.alphas.items()}
        bhalf = {k: v.detach().clamp(0.0, 65504.0).to(torch.float16) for k, v in res.betas.items()
                 if isinstance(k, tuple)}
        if rows is None or parent is None:
            return half, bhalf
        out = []
        for new, old in ((half, parent[0]), (bhalf, parent[1])):
            merged = {k: v.clone() for k, v in old.items()}
            for k, v in new.items():
                if k not in merged:
                    merged[k] = torch.zeros(v.shape[0], S, *v.shape[2:], dtype=v.dtype, device=v.device)
                    if k in half:
                        merged[k].fill_(float("nan"))
                merged[k][:, rows] = v
            out.append(merged)
        return out[0], out[1]

    def select(self, batch: IntervalDomains) -> tuple[IntervalDomains, int]:
        done = batch.branch[:, 0] < 0
        n_done = int(done.sum())
        return (batch.take(~done), n_done) if n_done else (batch, 0)

    def split(self, batch: IntervalDomains, round_: int) -> dict:
        n = len(batch)
        rows = torch.arange(n, device=batch.lb.device)
        two = lambda d: {z: torch.cat([v, v]) for z, v in d.items()}   # noqa: E731
        lo, hi, cut_lo, cut_hi = two(batch.lo), two(batch.hi), two(batch.cut_lo), two(batch.cut_hi)
        for i, z in enumerate(self.tensors):
            sel = rows[batch.branch[:, 0] == i]
            if not len(sel):
                continue
            flat, pt = batch.branch[sel, 1], batch.point[sel]
            for t, k, fn in ((hi[z], sel, torch.minimum), (cut_hi[z], sel, torch.minimum),      # first child: z <= p
                             (lo[z], n + sel, torch.maximum), (cut_lo[z], n + sel, torch.maximum)):  # second: z >= p
                v = t.reshape(2 * n, -1)
                v[k, flat] = fn(v[k, flat], pt)
        rows = self._rows_open(batch.lb)
        kept = (two(batch.alphas), two(batch.betas))
        pick = (lambda v: v.float()) if rows is None else (lambda v: v[:, rows].float())  # noqa: E731
        return {"lo": lo, "hi": hi, "cut_lo": cut_lo, "cut_hi": cut_hi, "parent_lb": torch.cat([batch.lb, batch.lb]),
                "rows": rows, "kept": kept, "alphas": {k: pick(v) for k, v in kept[0].items()} or None,
                "betas": {k: pick(v) for k, v in kept[1].items()} or None}

    def _rows_open(self, lb: T) -> Optional[T]:
        """The spec rows to bound in the children (None: all; `rows_left_open`): the
        others keep the parent's bound, which holds on the smaller child."""
        return rows_left_open(self.problem, lb) if self.open_rows else None

    def bound(self, children: dict, round_: int) -> Bounded:
        p = self.problem
        rows = children["rows"]
        q = None if rows is None else rows_problem(p, rows)
        sub, branch, point, mins, res = self._bound(children["lo"], children["hi"], children["cut_lo"],
                                                    children["cut_hi"], q, children["alphas"], children["betas"])
        # A child's region lies inside its parent's, so the parent's bound holds on it too:
        # without beta terms a child's own bound can come out looser (fewer steps, IBP
        # intervals), and the better of the two is kept.
        lb = children["parent_lb"].clone()
        if rows is None:
            lb = torch.maximum(lb, sub)
        else:
            lb[:, rows] = torch.maximum(lb[:, rows], sub)
        proved, score = rows_status(p, lb)
        lo = {z: res.table[z].lower.detach().clone() for z in self.tensors}
        hi = {z: res.table[z].upper.detach().clone() for z in self.tensors}
        pts = obj = None
        if mins is not None and self.attack:
            pts, obj = minimiser_candidates(p, mins, self.tuning.pgd_focus_activation, self.tuning.pgd_steps)
        alphas, betas = self._keep(res, lb.shape[1], rows, children["kept"])
        return Bounded(IntervalDomains(lo, hi, children["cut_lo"], children["cut_hi"], lb, score, branch, point,
                                       alphas, betas), proved, pts, obj)

    def stats(self) -> dict:
        return {"split": "general"}


def _cuts(cut_lo: dict, cut_hi: dict) -> dict:
    """The domains' split points as `compute_bounds` cuts: (tensor, s, c) with s = +1 for
    z >= c, -1 for z <= c, and s = c = 0 where a domain has no such cut (so that no
    infinite point enters a product)."""
    out = {}
    for side, cuts, sign in (("lo", cut_lo, 1.0), ("hi", cut_hi, -1.0)):
        for z, c in cuts.items():
            on = torch.isfinite(c)
            if not bool(on.any()):
                continue
            s = torch.where(on, torch.full_like(c, sign), torch.zeros_like(c))
            out[(z, side)] = (z, s, torch.where(on, c, torch.zeros_like(c)))
    return out


def _summed_coefficients(capture: dict, nodes: dict[str, str], z: str, N: int) -> Optional[T]:
    """The coefficients [N, S, *shape] at the outputs of the nodes reading `z`, summed
    (None when no reader's were captured)."""
    total = None
    for name, zi in nodes.items():
        if zi != z or capture.get(name) is None:
            continue
        A = capture[name].detach()
        total = A if total is None else total + A
    return total


@dataclass(frozen=True)
class IntervalSearch:
    """The switches of one general-split search (`bab.*` keys of verifier/config.py):
    `open_rows` and `warm_start` as in activation split, `split_products`: the factors
    of products of two variable tensors are split candidates too; `prune_proved` as in
    activation split (`ReluSearch`)."""

    open_rows: bool = True
    warm_start: bool = False
    split_products: bool = True
    prune_proved: bool = False


def general_split_bab(p: Problem, options: BoundOptions, limits: SearchLimits, hooks: SearchHooks = SearchHooks(),
                      how: IntervalSearch = IntervalSearch(), tuning: Tuning = DEFAULT_TUNING) -> SearchOutcome:
    """Search until every domain is proved, a counterexample is confirmed, limits are hit,
    or `hooks.stop()` is true. No proof log: the certificate checker does not replay interval
    splits (the verdict's certificate says so)."""
    brancher = IntervalBrancher(p, options, attack=hooks.confirm is not None, tuning=tuning, open_rows=how.open_rows,
                                warm_start=how.warm_start, split_products=how.split_products,
                                prune_proved=how.prune_proved)
    if not brancher.tensors:
        return SearchOutcome("unknown", stats={"reason": "no nonlinearity to split"})
    limits = dataclasses.replace(limits, bytes_per_domain=domain_bytes(p))
    return run(brancher, limits, hooks, None, None, tuning.confirm_limit)
