"""Which unstable ReLU to split in each activation-split domain: BaBSR and FSB.

Both start from the coefficients A at every ReLU output that the domain's final
backward pass captured, and from the ReLU inputs' intervals [l, u]:

- BaBSR-like score: |A| (summed over the spec rows still open) times the triangle
  relaxation's gap -l*u/(u-l): how much of the bound's looseness the neuron may carry.
- Intercept score: only the part of A that uses the upper line (A < 0) times the gap;
  that is exactly the bias the relaxation costs the bound at this neuron.

Filtered smart branching (FSB, De Palma et al. 2021; alpha-beta-CROWN's `fsb`) takes
the top candidates by both scores, estimates the bound of each candidate's two
children with one backward pass from the output (the parent's intermediate bounds,
alphas and betas reused; only the split neuron's interval is cut at 0), and picks the
candidate whose worse child is best. The choice of neuron never affects soundness:
every child is bounded in full afterwards; a poor choice only costs domains.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

import torch

from bab.problem import Problem, region_box, rows_status
from relaxations import BoundOptions, BoundResult, IntervalBounds
from relaxations.bounds import BoundsTable, Precision, rows_proved
from relaxations.alpha import sparse_view
from relaxations.compute import Given, compute_bounds, final_lower_from_table
from relaxations.crown import BackwardContext, SparseAlpha, SparseTerm, backward_lower, rules_for
from relaxations.registry import Relaxation

__all__ = ["BRANCHING", "neuron_scores", "babsr_branch", "fsb_branch", "more_branches", "ReluLayout",
           "ParentDomains"]

BRANCHING = ("babsr", "fsb")
T = torch.Tensor


@dataclasses.dataclass(frozen=True)
class ReluLayout:
    """Where each ReLU's neurons sit in the concatenated score vectors of `neuron_scores`:
    the ReLUs in concatenation order, each one's split tensor, and each one's first index
    (with the total last). Every index conversion needs all three together."""

    names: list[str]
    relus: dict[str, str]
    offsets: list[int]


@dataclasses.dataclass(frozen=True)
class ParentDomains:
    """The batch of bounded domains whose children FSB estimates: its problem, its bound
    result (table, alphas, betas, box), its splits and its row bounds `lb`; the children
    reuse all of it but the split neuron's interval."""

    p: Problem
    res: BoundResult
    splits: dict
    lb: T


def neuron_scores(p: Problem, names: list[str], relus: dict[str, str], table, capture: dict,
                  splits: dict, lb: T) -> tuple[T, T, list[int]]:
    """(BaBSR score [N, n], intercept score [N, n], per-ReLU offsets) over all ReLUs' neurons
    concatenated in `names` order; -1 where a neuron cannot be split (stable, already
    split, or its ReLU has no captured coefficients)."""
    N = lb.shape[0]
    open_rows = (~rows_proved(lb, p.strict)).to(lb.dtype)       # [N, S]
    babsr, inter, offsets, start = [], [], [], 0
    for relu in names:
        z = relus[relu]
        b = table[z]
        lo, hi = b.lower.reshape(N, -1), b.upper.reshape(N, -1)
        offsets.append(start)
        start += lo.shape[1]
        A = capture.get(relu)
        if A is None:
            babsr.append(torch.full_like(lo, -1.0))
            inter.append(torch.full_like(lo, -1.0))
            continue
        unstable = (lo < 0) & (hi > 0) & (splits[z].reshape(N, -1) == 0)
        gap = torch.where(unstable, -lo * hi / (hi - lo).clamp(min=1e-12), torch.zeros_like(lo))
        Af = A.detach().reshape(N, A.shape[1], -1) * open_rows.unsqueeze(-1)
        none = torch.full_like(gap, -1.0)
        babsr.append(torch.where(unstable, Af.abs().sum(1) * gap + 1e-9 * gap, none))
        inter.append(torch.where(unstable, (-Af.clamp(max=0)).sum(1) * gap + 1e-9 * gap, none))
    offsets.append(start)
    return torch.cat(babsr, 1), torch.cat(inter, 1), offsets


def _to_pairs(flat: T, valid: T, offsets: list[int]) -> T:
    """Global neuron index [N] -> [N, 2] (relu index, neuron index within it); -1 where not valid."""
    bounds = torch.tensor(offsets[1:-1], device=flat.device, dtype=flat.dtype)
    layer = torch.bucketize(flat, bounds, right=True)
    start = torch.tensor(offsets[:-1], device=flat.device, dtype=flat.dtype)[layer]
    out = torch.stack([layer, flat - start], 1)
    return torch.where(valid.unsqueeze(1), out, torch.full_like(out, -1))


def babsr_branch(babsr: T, offsets: list[int]) -> T:
    """[N, 2] (relu index, neuron): the highest BaBSR score (first on ties, as before FSB)."""
    val, idx = babsr.max(1)
    return _to_pairs(idx, val >= 0, offsets)


def more_branches(babsr: T, offsets: list[int], first: T, k: int) -> T:
    """[N, k, 2]: the k best BaBSR neurons of each domain other than its `first` choice
    [N, 2], best first; -1 where a domain has fewer unstable neurons left. What a round
    splits besides the first choice while its batch has room (see bab/activation_split.py)."""
    N, n = babsr.shape
    if k <= 0 or n == 0:
        return torch.full((N, max(0, k), 2), -1, dtype=torch.long, device=babsr.device)
    score = babsr.clone()
    has = first[:, 0] >= 0
    glob = torch.tensor(offsets[:-1], device=babsr.device)[first[:, 0].clamp(min=0)] + first[:, 1]
    score[torch.nonzero(has).flatten(), glob[has]] = -1.0
    val, idx = score.topk(min(k, n), 1)
    out = torch.stack([_to_pairs(idx[:, j].contiguous(), val[:, j] >= 0, offsets) for j in range(idx.shape[1])], 1)
    if out.shape[1] < k:
        out = torch.cat([out, torch.full((N, k - out.shape[1], 2), -1, dtype=out.dtype, device=out.device)], 1)
    return out


def fsb_branch(parents: ParentDomains, layout: ReluLayout, babsr: T, inter: T, options: BoundOptions,
               k: int = 4, k_intercept: Optional[int] = None, narrowing: Optional[dict] = None,
               rows: int = 0) -> T:
    """[N, 2] (relu index, neuron) by filtered smart branching.

    Candidates per domain: top `k` by BaBSR and top `k_intercept` (default k // 2, at
    least 1) by the intercept score. For each candidate and side (active: l := 0;
    inactive: u := 0) the child's rows are bounded by `final_lower_from_table` and
    scored as `rows_status` scores a domain; the candidate maximising its worse child's
    score wins. Ties keep the BaBSR choice (candidate 0). Proved domains and those with
    nothing to split keep the BaBSR answer, which the search ignores for them anyway;
    so does every domain once `options.deadline` has passed (checked between chunks).

    `rows` > 0, where every conjunction is one row (a robustness property: one row per
    other label): each domain's children are bounded on its `rows` worst rows only. The
    score is the smallest row bound, which the parent's worst rows nearly always give,
    and a pass over 9 rows costs about 4 times one over 2 (BENCHMARKS.md, session 41).
    """
    p, lb, offsets = parents.p, parents.lb, layout.offsets
    N, n = babsr.shape
    best = babsr_branch(babsr, offsets)
    proved, _ = rows_status(p, lb)
    todo = torch.nonzero(~proved & (best[:, 0] >= 0)).flatten()
    late = options.deadline is not None and time.monotonic() > options.deadline
    if todo.numel() == 0 or n == 0 or late:  # past the deadline: do not make the last round longer
        return best
    k1 = max(1, min(k, n))
    k2 = min(n, max(1, k // 2) if k_intercept is None else k_intercept)
    cand = torch.cat([babsr[todo].topk(k1, 1).indices, inter[todo].topk(k2, 1).indices], 1) if k2 > 0 \
        else babsr[todo].topk(k1, 1).indices                            # [M, K] global neuron index
    valid = babsr[todo].gather(1, cand) >= 0                            # unstable and not yet split
    K = cand.shape[1]
    S = p.C.shape[-2]
    worst = None
    if 0 < rows < S and p.n_conj == S and narrowing is None:
        worst = lb[todo].topk(rows, 1, largest=False).indices            # [M, rows]
        S = rows
    widest = max([p.lower[0].numel()] + [torch.Size(s).numel() for s in p.graph.shapes.values() if s])
    chunk = max(1, options.max_elements // max(1, 2 * K * S * widest))
    # Unscored domains keep -inf everywhere: argmax then takes candidate 0, BaBSR's choice.
    value = torch.full((todo.numel(), K), -torch.inf, dtype=lb.dtype, device=lb.device)
    for s in range(0, todo.numel(), chunk):
        if s and options.deadline is not None and time.monotonic() > options.deadline:
            break   # a round that began before the deadline must not run far past it
        doms = todo[s:s + chunk]
        value[s:s + chunk] = _children_scores(parents, layout, doms, cand[s:s + chunk], options, narrowing,
                                              None if worst is None else worst[s:s + chunk])
    value = torch.where(valid, value, torch.full_like(value, -torch.inf))
    pick = value.argmax(1)                                              # first max: BaBSR's on ties
    chosen = cand.gather(1, pick.unsqueeze(1)).squeeze(1)
    ok = valid.gather(1, pick.unsqueeze(1)).squeeze(1)
    best[todo[ok]] = _to_pairs(chosen[ok], torch.ones_like(ok[ok]), offsets)
    return best


def _split_term(beta: T, sign: T, rows: T) -> SparseTerm:
    """beta-CROWN's term -beta * s on a split tensor for rows `rows` of the batch, kept at
    the elements split in some domain (beta [N, S, *shape], sign [N, *shape])."""
    N, S = beta.shape[:2]
    s = sign.reshape(N, -1)
    idx = torch.nonzero((s != 0).any(0)).flatten()
    sides = s.index_select(-1, idx)[rows].to(beta.dtype).unsqueeze(1)
    return SparseTerm(-beta.reshape(N, S, -1).index_select(-1, idx)[rows] * sides, idx)


class _RowsTable(BoundsTable):
    """The parent table's rows `rows` for every child, each tensor copied when first read:
    a backward pass reads few of them (its lines for the split ReLUs come ready)."""

    def __init__(self, parent: BoundsTable, rows: T) -> None:
        super().__init__()
        self.parent, self.rows = parent, rows

    def __missing__(self, key: str) -> IntervalBounds:
        b = self.parent[key]
        out = IntervalBounds(b.lower[self.rows], b.upper[self.rows])
        self[key] = out
        return out

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or key in self.parent


def _child_lines(ctx: BackwardContext, relu: str, parent: IntervalBounds, rows: T, reps: int, r: T,
                 j: T) -> Relaxation:
    """The ReLU's lines for every child: the parent's (domains `rows`, each repeated
    `reps` times) with those of neuron j[i] of child r[i] remade on its cut interval
    (the child table's). The parent's lines are made once per domain, not per child."""
    node = next(n for n in ctx.graph.nodes if n.name == relu)
    rule = ctx.rules[relu]
    consts = [ctx.ev.constants.get(x) if x else None for x in node.inputs]
    par = rule.relax(node, parent.lower[rows].unsqueeze(1), parent.upper[rows].unsqueeze(1), None, consts)
    lines = [t.expand(len(rows), *t.shape[1:]).repeat_interleave(reps, 0) for t in
             (par.lower_slope, par.lower_bias, par.upper_slope, par.upper_bias)]
    if r.numel():
        b = ctx.table[node.inputs[0]]
        lo, hi = b.lower.reshape(b.lower.shape[0], -1)[r, j], b.upper.reshape(b.upper.shape[0], -1)[r, j]
        cut = rule.relax(node, lo.reshape(-1, 1), hi.reshape(-1, 1), None, consts)
        for t, v in zip(lines, (cut.lower_slope, cut.lower_bias, cut.upper_slope, cut.upper_bias)):
            t.reshape(t.shape[0], -1)[r, j] = torch.broadcast_to(v, lo.reshape(-1, 1).shape).reshape(-1).to(t.dtype)
    return Relaxation(*lines)


@dataclasses.dataclass(frozen=True)
class _ChildDecisions:
    """Child i of a scoring pass: domain rep[i] of the batch with global neuron flat[i]
    split to side[i] (+1 active, -1 inactive); the three are indexed together."""

    rep: T
    flat: T
    side: T


def _rebound_narrowed(parents: ParentDomains, layout: ReluLayout, decisions: _ChildDecisions, box: IntervalBounds,
                      narrowing: dict, child: T, options: BoundOptions) -> T:
    """The children whose decision is one that narrows the input box (`narrowing`, from the
    search's root) bounded again by CROWN over their narrowed box with their own
    intervals (compute_bounds with `tighten_input`): the parent's relaxations, made over
    the parent's box, hide what the narrowing gains (a distance neuron split active
    confines the inputs to a small box, over which the rest of the net is nearly linear)."""
    p, splits = parents.p, parents.splits
    names, relus, offsets = layout.names, layout.relus, layout.offsets
    rep, flat, side = decisions.rep, decisions.flat, decisions.side
    hit = torch.zeros(len(rep), dtype=torch.bool, device=rep.device)
    for i, relu in enumerate(names):
        m = narrowing.get(relus[relu])
        sel = (flat >= offsets[i]) & (flat < offsets[i + 1])
        if m is None or not bool(sel.any()):
            continue
        r = torch.nonzero(sel).flatten()
        hit[r] = m[(side[r] < 0).long(), flat[r] - offsets[i]]
    idx = torch.nonzero(hit).flatten()
    if not len(idx):
        return child
    kids = {}
    for i, relu in enumerate(names):
        z = relus[relu]
        sg = splits[z][rep[idx]].reshape(len(idx), -1).clone()
        sel = (flat[idx] >= offsets[i]) & (flat[idx] < offsets[i + 1])
        r = torch.nonzero(sel).flatten()
        sg[r, flat[idx][r] - offsets[i]] = side[idx][r].to(sg.dtype)
        kids[z] = sg.reshape(len(idx), *splits[z].shape[1:])
    sub = IntervalBounds(box.lower[idx], box.upper[idx])
    plain = dataclasses.replace(options, method="crown", coefficients=False, keep_betas=False, tighten_input=True)
    out = compute_bounds(p.graph, sub, p.C, plain, want_upper=False, ev=p.ev,
                         given=Given(splits=kids, known=p.known or None)).lower.detach() - p.d
    child = child.clone()
    child[idx] = torch.maximum(child[idx], out)
    return child


def _pick_rows(x, sel: Optional[T]):
    """x [R, S, ...] (a tensor, or a SparseAlpha / SparseTerm holding one) at rows sel [R, k]
    of each child; unchanged where sel is None or x has one row for all."""
    if sel is None or x is None:
        return x
    if isinstance(x, (SparseAlpha, SparseTerm)):
        return dataclasses.replace(x, values=_pick_rows(x.values, sel))
    if x.shape[1] == 1:
        return x
    return x[torch.arange(x.shape[0], device=x.device).unsqueeze(1), sel]


def _children_scores(parents: ParentDomains, layout: ReluLayout, rows: T, cand: T, options: BoundOptions,
                     narrowing: Optional[dict] = None, worst: Optional[T] = None) -> T:
    """Score [M, K] of the worse child of each candidate of domains `rows` (one backward
    pass), over every row, or over each domain's rows `worst` [M, k] (one-row conjunctions)."""
    p, res, splits = parents.p, parents.res, parents.splits
    names, relus, offsets = layout.names, layout.relus, layout.offsets
    M, K = cand.shape
    R = M * K * 2                                   # order: domain, candidate, side (+1 then -1)
    rep = rows.repeat_interleave(2 * K)
    flat = cand.repeat_interleave(2, 1).reshape(-1)                     # [R]
    side = torch.tensor([1, -1], device=rows.device).repeat(M * K)      # [R]
    ar = torch.arange(R, device=rows.device)
    table = _RowsTable(res.table, rep)
    for i, relu in enumerate(names):
        z = relus[relu]
        sel = (flat >= offsets[i]) & (flat < offsets[i + 1])
        if not bool(sel.any()):
            continue
        b = table[z]
        lo, hi = b.lower.reshape(R, -1).clone(), b.upper.reshape(R, -1).clone()
        j = flat[sel] - offsets[i]
        act, r = side[sel] > 0, ar[sel]
        lo[r[act], j[act]] = 0.0
        hi[r[~act], j[~act]] = 0.0
        table[z] = IntervalBounds(lo.reshape(b.lower.shape), hi.reshape(b.upper.shape))
    if options.tighten_input and res.box is not None:   # the parent's box, narrowed by its decisions
        box = IntervalBounds(res.box.lower[rep], res.box.upper[rep])
    else:
        box = region_box(p, R)
    sel = None if worst is None else worst.repeat_interleave(2 * K, 0)         # [R, k]
    if sel is None:
        C, d = p.C.expand(R, *p.C.shape[-2:]).reshape(R, p.C.shape[-2], *p.graph.output_shape), p.d
    else:
        C, d = p.C.reshape(p.C.shape[-2], -1)[sel].reshape(R, sel.shape[1], *p.graph.output_shape), p.d[sel]
    if not options.sparse_alpha:
        alphas = {k: _pick_rows(v[rep], sel) for k, v in res.alphas.items()} or None
        extra = {z: _pick_rows(-b[rep] * splits[z][rep].to(b.dtype).unsqueeze(1), sel)
                 for z, b in res.betas.items()} or None
        child = final_lower_from_table(p.graph, p.ev, box, table, C, options, alphas, extra) - d
    else:
        ctx = BackwardContext(p.graph, p.ev, table, rules_for(p.graph), cache={})
        ctx.alphas = {k: _pick_rows(v, sel) for k, v in sparse_view(ctx, res.alphas, rep).items()} or None
        ctx.extra_A = {z: _pick_rows(_split_term(b, splits[z], rep), sel) for z, b in res.betas.items()} or None
        for i, relu in enumerate(names):
            if isinstance((ctx.alphas or {}).get(relu), torch.Tensor):
                continue     # a dense alpha: its lines are made from the table in the pass
            sel = (flat >= offsets[i]) & (flat < offsets[i + 1])
            ctx.cache[relu] = _child_lines(ctx, relu, res.table[relus[relu]], rows, 2 * K, ar[sel],
                                           flat[sel] - offsets[i])
        precision = options.precision or Precision.for_dtype(p.ev.dtype)
        with torch.no_grad():
            child = backward_lower(ctx, p.graph.output_name, C).concretize(box, precision) - d
    if sel is not None:     # one-row conjunctions: the score is the smallest row bound
        return child.amin(1).reshape(M, K, 2).amin(2)
    if narrowing is not None and options.tighten_input:
        child = _rebound_narrowed(parents, layout, _ChildDecisions(rep, flat, side), box, narrowing, child, options)
    _, score = rows_status(p, child)
    return score.reshape(M, K, 2).amin(2)
