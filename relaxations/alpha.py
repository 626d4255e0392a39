"""alpha-CROWN: optimise relaxation parameters (e.g. ReLU lower slopes) per spec row.

Any alpha inside its bounds gives a sound relaxation, so every iterate is a valid
bound; we keep the best bound seen per row. The starting alpha is CROWN's choice (or
the caller's, e.g. a parent domain's), and the first step's bound is kept, so the
result is never looser than the bound at the starting point.
"""
from __future__ import annotations

import time
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch

from relaxations.bounds import BoundsTable, IntervalBounds, LinearBounds, Precision
import relaxations.crown as crown
from relaxations.crown import (BackwardContext, SparseAlpha, SparseTerm, backward_lower, is_relaxed, is_slot_node,
                               relaxation_domain, slot_count)

__all__ = ["optimise_alpha", "initial_alphas", "project_alphas", "alpha_fits", "alpha_lrs", "AlphaResult",
           "BetaTerms", "WarmStart", "sparse_view", "unstable_index", "SPARSE_SHARE"]

T = torch.Tensor
# A `sparse_alpha` node keeps its alphas at the unstable elements only (crown.SparseAlpha)
# when at most this share of its elements is unstable in some sample of the batch.
SPARSE_SHARE = 0.5
# With `options.proved`, the domains proved so far leave the optimisation once they are at
# least this share of the domains still in it: the later steps then cost less (each step
# costs in proportion to the batch), and a shrink costs a copy of the batch's tensors.
PRUNE_SHARE = 0.1


def alpha_fits(ctx: BackwardContext, node, B: int, S: int) -> bool:
    """Whether a node's alphas for B x S rows are small enough to keep: always for
    elementwise nodes; for slot nodes (at most [B, S, *out, K]) up to `MAX_SLOT_ELEMENTS`,
    above which they keep CROWN's lines (no alpha: sound, and no large tensor at all)."""
    rule = ctx.rules[node.name]
    return not is_slot_node(ctx, node, rule) or B * S * slot_count(ctx, node, rule) <= crown.MAX_SLOT_ELEMENTS


def initial_alphas(ctx: BackwardContext, B: int, S: int) -> dict[str, T]:
    """Alpha tensors [B, S, *shape] for every node whose rule has parameters (elementwise
    nodes: the input's shape; slot nodes: [*out, K'] as their rule's alpha_init gives)."""
    alphas = {}
    for node in ctx.graph.nodes:
        rule = ctx.rules[node.name]
        if rule.alpha_init is None or not is_relaxed(ctx, node, rule):
            continue
        if not alpha_fits(ctx, node, B, S):
            continue
        lo, hi = relaxation_domain(ctx, node, rule)
        consts = [ctx.ev.constants.get(x) if x else None for x in node.inputs]
        init = rule.alpha_init(node, lo, hi, consts)
        alphas[node.name] = init.unsqueeze(1).expand(B, S, *init.shape[1:]).clone()
    return alphas


class _Adam:
    """Adam (Kingma and Ba), written out: constructing torch.optim.Adam imports
    torch._dynamo, which would add seconds to the start-up of every verifier process."""

    def __init__(self, params: list[T], lr, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        """`lr`: one step size, or one per parameter (`alpha_lrs`)."""
        self.params, self.betas, self.eps, self.t = params, betas, eps, 0
        self.lr = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(params)
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads: tuple[Optional[T], ...]) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, g, m, v, lr in zip(self.params, grads, self.m, self.v, self.lr):
            if g is None:
                continue
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m, (v / c2).sqrt_().add_(self.eps), value=-lr / c1)


def alpha_lrs(ctx: BackwardContext, names, base: float) -> list[float]:
    """Adam's step size for each node's alphas: `base` times its rule's `alpha_lr_scale`."""
    return [base * ctx.rules[n].alpha_lr_scale for n in names]


def _alpha_ranges(ctx: BackwardContext, alphas: dict[str, T]) -> dict[str, tuple[T, T]]:
    """Each node's alpha range [B, 1, *shape] (the rule's `alpha_bounds` on its interval)."""
    by_name = {n.name: n for n in ctx.graph.nodes}
    out = {}
    for name in alphas:
        node = by_name[name]
        l, u = relaxation_domain(ctx, node, ctx.rules[name])
        consts = [ctx.ev.constants.get(x) if x else None for x in node.inputs]
        lo, hi = ctx.rules[name].alpha_bounds(node, l, u, consts)
        out[name] = (lo.unsqueeze(1), hi.unsqueeze(1))
    return out


def unstable_index(ctx: BackwardContext, node, table=None) -> Optional[tuple[T, T]]:
    """For a `sparse_alpha` node with few unstable elements in `table` (default the
    context's): their flat index [k] (unstable in some sample) and the mask [B, n] of
    unstable elements per sample; None for any other node."""
    rule = ctx.rules[node.name]
    if not rule.sparse_alpha or rule.unstable is None or is_slot_node(ctx, node, rule):
        return None
    l, u = relaxation_domain(ctx, node, rule, table)
    consts = [ctx.ev.constants.get(x) if x else None for x in node.inputs]
    unstable = rule.unstable(node, l.detach(), u.detach(), consts).reshape(l.shape[0], -1)
    idx = torch.nonzero(unstable.any(0)).flatten()
    return None if idx.numel() > SPARSE_SHARE * unstable.shape[1] else (idx, unstable)


def _sparsify(ctx: BackwardContext, alphas: dict[str, T], ranges: dict[str, tuple[T, T]]
              ) -> tuple[dict[str, T], dict[str, SparseAlpha]]:
    """The parameters Adam moves ([B, S, k] at unstable elements for `sparse_alpha` nodes
    with few of them, the dense tensor otherwise) and their sparse views by node; `ranges`
    is narrowed to the kept elements in place."""
    by_name = {n.name: n for n in ctx.graph.nodes}
    params, sparse = dict(alphas), {}
    for name, a in alphas.items():
        found = unstable_index(ctx, by_name[name])
        if found is None:
            continue
        idx, unstable = found
        B, S = a.shape[:2]
        params[name] = a.reshape(B, S, -1).index_select(-1, idx).detach().clone()
        mask = unstable.index_select(-1, idx).to(a.dtype).unsqueeze(1)
        sparse[name] = SparseAlpha(params[name], idx, mask)
        lo, hi = ranges[name]
        ranges[name] = tuple(t.reshape(t.shape[0], 1, -1).index_select(-1, idx) for t in (lo, hi))
    return params, sparse


def project_alphas(ctx: BackwardContext, alphas: dict[str, T]) -> None:
    """Clamp every alpha into its rule's sound range, in place."""
    with torch.no_grad():
        for name, (lo, hi) in _alpha_ranges(ctx, alphas).items():
            a = alphas[name]
            a.copy_(torch.maximum(torch.minimum(a, hi), lo))


@dataclass(frozen=True)
class AlphaResult:
    """alpha-CROWN's best bound per row and the linear bound, alphas and betas that gave it."""

    lower: T                      # [B, R]
    linear: LinearBounds
    alphas: dict[str, T]
    betas: dict[str, T]           # empty unless `options.keep_betas`
    iterations: int


@dataclass(frozen=True)
class BetaTerms:
    """The constraints known to hold on each domain, each of which gets a multiplier
    beta >= 0: split signs (split tensor -> float signs [B, 1, *shape]) and cuts
    (key -> (tensor, s, c), each [B, 1, *shape]); see `optimise_alpha`."""

    signs: Optional[dict[str, T]] = None
    cuts: Optional[dict] = None


@dataclass(frozen=True)
class WarmStart:
    """Alphas and betas (already in range) that alpha-CROWN starts from instead of
    CROWN's slopes and zero betas; None: that default."""

    alphas: Optional[dict[str, T]] = None
    betas: Optional[dict[str, T]] = None


def _all_above(best: T, options, capture: Optional[dict]) -> bool:
    """Whether every row's best bound is above `options.stop_above` (when it is set and
    no coefficients are captured: those come from the last step)."""
    stop = getattr(options, "stop_above", None)
    if stop is None or capture is not None or stop.shape[-1] != best.shape[-1]:
        return False  # (with upper rows too, R = 2 S: the threshold is for lower rows only)
    return bool((best > stop.to(best.dtype)).all())


def optimise_alpha(ctx: BackwardContext, box: IntervalBounds, A: T, options, precision: Precision,
                   terms: BetaTerms = BetaTerms(), capture: Optional[dict] = None,
                   start: WarmStart = WarmStart()) -> AlphaResult:
    """Best lower bound of A . output over the box found by projected Adam on alpha
    (and, for split neurons, on beta >= 0: the beta-CROWN Lagrange multipliers).

    A split s*z >= 0 (s = +1 active, -1 inactive) holds on the domain, so for any
    beta >= 0, f(x) >= f(x) - beta*s*z(x); the second function is bounded by the same
    backward pass with -beta*s added to z's coefficient. Every iterate is sound.
    `terms.signs`: split tensor -> float signs [B, 1, *shape]. `start` (already in range)
    starts the optimisation instead of CROWN's slopes and zero betas.

    `terms.cuts`: key -> (tensor, s, c), each [B, 1, *shape]: constraints s*z >= s*c that
    hold on the domain where s != 0 (the splits of a general nonlinearity at a point c, both
    sides of one neuron possible). The same argument gives f(x) >= f(x) - beta*s*(z - c):
    -beta*s enters z's coefficient and beta*s*c the bound's constant, with its rounding
    mass. Their multipliers are in the result's `betas` under the same keys.

    `options.proved` (branch and bound's "this domain is decided") lets the steps leave
    out the domains it holds for once they are `PRUNE_SHARE` of those still optimised,
    and stop once it holds for all: a step costs in proportion to its domains, and more
    steps on a proved domain change no answer. Each left-out domain keeps its best bound,
    alphas and betas so far; the others' steps are exactly what they would have been.
    """
    with torch.enable_grad():
        return _optimise(ctx, box, A, options, precision, BetaTerms(terms.signs or {}, terms.cuts or {}), capture,
                         WarmStart(start.alphas, start.betas or {}))


def _terms(signs: dict, cuts: dict) -> dict:
    """key -> (tensor, s, c or None, index or None) for every beta term: a split's sign
    (no constant) or a cut's side and point, [B, 1, *shape] until `_sparse_betas` gathers
    them at the few elements that carry a term ([B, 1, k] with that index)."""
    out = {name: (name, s, None, None) for name, s in signs.items()}
    out.update({k: (z, s, c, None) for k, (z, s, c) in cuts.items()})
    return out


def _sparse_betas(betas: dict, terms: dict) -> tuple[dict, dict]:
    """The beta parameters Adam moves ([B, S, k] at the elements split or cut in some
    domain when they are few, else dense) and the terms gathered to match."""
    params, out = dict(betas), dict(terms)
    for k, b in betas.items():
        z, s, c, _ = terms[k]
        nz = (s != 0).reshape(s.shape[0], -1)
        idx = torch.nonzero(nz.any(0)).flatten()
        if idx.numel() > SPARSE_SHARE * nz.shape[1]:
            continue
        B, S = b.shape[:2]

        def gather(t: T) -> T:
            return t.reshape(t.shape[0], 1, -1).index_select(-1, idx)

        params[k] = b.reshape(B, S, -1).index_select(-1, idx).detach().clone()
        out[k] = (z, gather(s), None if c is None else gather(c), idx)
    return params, out


def _extra(betas: dict, terms: dict) -> Optional[dict]:
    """The beta terms' coefficients per tensor (several terms on one tensor add up)."""
    out: dict = {}
    for k, b in betas.items():
        z, s, _, idx = terms[k]
        term = -b * s if idx is None else SparseTerm(-b * s, idx)
        out[z] = term if z not in out else (out[z] if isinstance(out[z], tuple) else (out[z],)) + (term,)
    return out or None


def _with_cut_constants(lin: LinearBounds, betas: dict, terms: dict) -> LinearBounds:
    """`lin` plus the constants beta*s*c of the cuts (and their rounding mass)."""
    bias, mass = lin.bias, lin.mass
    for k, (_, s, c, _) in terms.items():
        if c is None:
            continue
        t = betas[k] * s * c
        t = t.reshape(t.shape[0], t.shape[1], -1)
        bias = bias + t.sum(-1)
        mass = mass + t.abs().sum(-1)
    return LinearBounds(lin.A, bias, mass)


def sparse_view(ctx: BackwardContext, alphas: dict[str, T], rows: T) -> dict:
    """Alphas [N, S, *shape] for the rows `rows` [R] of `ctx.table` (whose batch is R):
    `SparseAlpha` at the elements unstable in some row where a `sparse_alpha` node has
    few, `alphas[name][rows]` elsewhere. What branching heuristics pass to one backward
    pass over many candidate children, without copying every slope per child."""
    by_name = {n.name: n for n in ctx.graph.nodes}
    out: dict = {}
    for name, v in alphas.items():
        found = unstable_index(ctx, by_name[name])
        if found is None:
            out[name] = v[rows]
            continue
        idx, unstable = found
        values = v.reshape(v.shape[0], v.shape[1], -1).index_select(-1, idx)[rows]
        out[name] = SparseAlpha(values, idx, unstable.index_select(-1, idx).to(values.dtype).unsqueeze(1))
    return out


def _dense(base: dict[str, T], values: dict[str, T], index: dict[str, Optional[T]]) -> dict[str, T]:
    """Tensors [B, S, *shape]: where `index[name]` is set, `values[name]` [B, S, k] written
    into a copy of `base[name]` (whose other elements nothing reads)."""
    out = {}
    for name, v in values.items():
        idx = index.get(name)
        if idx is None:
            out[name] = v
            continue
        d = base[name].detach().clone(memory_format=torch.contiguous_format)
        d.view(d.shape[0], d.shape[1], -1).index_copy_(-1, idx, v.to(d.dtype))
        out[name] = d
    return out


def _optimise(ctx: BackwardContext, box: IntervalBounds, A: T, options, precision: Precision, terms: BetaTerms,
              capture: Optional[dict], start: WarmStart) -> AlphaResult:
    """`optimise_alpha` with `terms`' dicts and `start.betas` never None."""
    signs, cuts, init_alphas, init_betas = terms.signs, terms.cuts, start.alphas, start.betas
    B, S = A.shape[:2]
    alphas = initial_alphas(ctx, B, S) if init_alphas is None else {k: v.detach().clone()
                                                                    for k, v in init_alphas.items()}
    betas: dict = {}
    for name, sign in list(signs.items()) + [(k, v[1]) for k, v in cuts.items()]:
        init = init_betas.get(name)
        betas[name] = init.detach().clone() if init is not None else \
            torch.zeros(B, S, *sign.shape[2:], dtype=A.dtype, device=A.device)
    if not alphas and not betas:
        lin = backward_lower(ctx, ctx.graph.output_name, A)
        return AlphaResult(lin.concretize(box, precision), lin, {}, {}, 0)
    ranges = _alpha_ranges(ctx, alphas)
    terms = _terms(signs, cuts)
    moved, sparse, dense_betas = alphas, {}, betas
    if getattr(options, "sparse_alpha", True):
        moved, sparse = _sparsify(ctx, alphas, ranges)
        betas, terms = _sparse_betas(betas, terms)
    run = _Run(A, box, BackwardContext(ctx.graph, ctx.ev, ctx.table, ctx.rules, {}, cache=None, checked=set(),
                                       prepared={}, balls=ctx.balls),
               moved, {k: v.mask for k, v in sparse.items()}, {k: v.index for k, v in sparse.items()}, ranges,
               betas, terms, None)
    run.start(alpha_lrs(ctx, moved, options.alpha_lr) + [options.alpha_lr] * len(betas))
    track = _Best(bool(getattr(options, "keep_betas", False)) and bool(betas))
    proved_fn = getattr(options, "proved", None)
    pruned = _Pruned(B) if proved_fn is not None and ctx.balls is None and B > 1 else None
    last = max(1, options.alpha_iterations) - 1
    for it in range(last + 1):
        run.octx.extra_A = _extra(run.betas, run.terms)
        run.octx.capture = None if it != last else capture if pruned is None or pruned.act is None else {}
        lin = _with_cut_constants(backward_lower(run.octx, ctx.graph.output_name, run.A), run.betas, run.terms)
        lb = lin.concretize(run.box, precision)
        track.update(lb, lin, run.moved, run.betas)
        late = options.deadline is not None and time.monotonic() > options.deadline
        whole = pruned is None or pruned.act is None    # `stop_above` may be per domain of the batch
        if it == last or not lb.requires_grad or late or (whole and _all_above(track.best, options, capture)):
            break  # last step, or the bound does not depend on any alpha
        done = proved_fn(track.best) if pruned is not None else None
        if done is not None and bool(done.all()):
            break  # every domain is proved: further steps change no answer
        run.step(lb)
        if done is not None and float(done.float().mean()) >= PRUNE_SHARE:
            keep = torch.nonzero(~done).flatten()
            pruned.keep(track, keep)
            run, track = run.take(keep), track.take(keep)
    if pruned is not None and pruned.act is not None:
        if run.octx.capture is not None and capture is not None:
            pruned.scatter_capture(run.octx.capture, capture)
        track = pruned.full(track)
    best_alphas = _dense(alphas, track.alphas, run.index)
    best_betas = _dense(dense_betas, track.betas, {k: t[3] for k, t in run.terms.items()})
    return AlphaResult(track.best, track.lin, best_alphas, best_betas, it + 1)   # the steps taken


@dataclass
class _Run:
    """What alpha-CROWN's steps work on, for the domains still optimised: the rows `A`,
    the box, a backward context over their intervals, and Adam's parameters (`moved`:
    dense alphas, or a sparse node's values [B, S, k] at `index` with `masks` [B, 1, k];
    `betas`, with their `terms`) and state. `take` keeps some domains of all of it."""

    A: T
    box: IntervalBounds
    octx: BackwardContext
    moved: dict
    masks: dict
    index: dict
    ranges: dict
    betas: dict
    terms: dict
    opt: Optional[_Adam]

    def start(self, lrs: list[float]) -> None:
        params = list(self.moved.values()) + list(self.betas.values())
        for p in params:
            p.requires_grad_(True)
        self.opt = _Adam(params, lr=lrs)
        self._view()

    def _view(self) -> None:
        self.octx.alphas = {k: SparseAlpha(v, self.index[k], self.masks[k]) if k in self.index else v
                            for k, v in self.moved.items()}

    def step(self, lb: T) -> None:
        """One projected Adam step up the sum of the rows' bounds."""
        grads = torch.autograd.grad(-lb.sum(), self.opt.params, allow_unused=True)
        self.opt.step(grads)
        with torch.no_grad():
            for k, v in self.moved.items():
                lo, hi = self.ranges[k]
                v.copy_(torch.maximum(torch.minimum(v, hi), lo))
            for b in self.betas.values():
                b.clamp_(min=0)

    def take(self, keep: T) -> "_Run":
        """The same run for the domains `keep` [k] only: every per-domain tensor indexed
        (those with a batch of 1, shared by all domains, stay as they are), new leaf
        parameters, and Adam's moments of the kept domains, so that their steps go on
        exactly as they would have in the whole batch."""
        n = self.A.shape[0]

        def pick(t: Optional[T]) -> Optional[T]:
            return t if t is None or t.dim() == 0 or t.shape[0] != n else t[keep]

        moved = {k: v.detach()[keep] for k, v in self.moved.items()}    # indexing copies: new leaves
        betas = {k: v.detach()[keep] for k, v in self.betas.items()}
        table = BoundsTable({k: IntervalBounds(pick(v.lower), pick(v.upper)) for k, v in self.octx.table.items()})
        octx = dataclasses.replace(self.octx, table=table, alphas=None, extra_A=None, capture=None, prepared={})
        run = _Run(pick(self.A), IntervalBounds(pick(self.box.lower), pick(self.box.upper)), octx, moved,
                   {k: pick(v) for k, v in self.masks.items()}, self.index,
                   {k: (pick(lo), pick(hi)) for k, (lo, hi) in self.ranges.items()}, betas,
                   {k: (z, pick(s), pick(c), idx) for k, (z, s, c, idx) in self.terms.items()}, None)
        old = self.opt
        run.start(old.lr)
        run.opt.t = old.t
        run.opt.m = [pick(m) for m in old.m]
        run.opt.v = [pick(v) for v in old.v]
        return run


@dataclass
class _Best:
    """The best bound per row seen so far, and the linear bound, alphas (as Adam moves
    them) and, with `keep_betas`, betas that gave it."""

    keep_betas: bool
    best: Optional[T] = None
    lin: Optional[LinearBounds] = None
    alphas: dict = field(default_factory=dict)
    betas: dict = field(default_factory=dict)

    @torch.no_grad()
    def update(self, lb: T, lin: LinearBounds, moved: dict, betas: dict) -> None:
        if self.best is None:
            self.best = lb.detach().clone()
            self.lin = LinearBounds(lin.A.detach(), lin.bias.detach(), lin.mass.detach())
            self.alphas = {k: v.detach().clone() for k, v in moved.items()}
            if self.keep_betas:
                self.betas = {k: v.detach().clone() for k, v in betas.items()}
            return
        B, S = lb.shape
        improved = lb > self.best

        def rowwise(new: T, old: T) -> T:
            return torch.where(improved.reshape(B, S, *([1] * (new.dim() - 2))), new.detach(), old)

        self.best = torch.where(improved, lb.detach(), self.best)
        self.lin = LinearBounds(rowwise(lin.A, self.lin.A), torch.where(improved, lin.bias.detach(), self.lin.bias),
                                torch.where(improved, lin.mass.detach(), self.lin.mass))
        self.alphas = {k: rowwise(v, self.alphas[k]) for k, v in moved.items()}
        if self.keep_betas:  # for certificates: the multipliers that go with each row's best bound
            self.betas = {k: rowwise(v, self.betas[k]) for k, v in betas.items()}

    def take(self, keep: T) -> "_Best":
        return _Best(self.keep_betas, self.best[keep], LinearBounds(self.lin.A[keep], self.lin.bias[keep],
                                                                     self.lin.mass[keep]),
                     {k: v[keep] for k, v in self.alphas.items()}, {k: v[keep] for k, v in self.betas.items()})

    def into(self, full: "_Best", at: T) -> "_Best":
        """`full` (the whole batch) with this run's domains written at their places `at`."""
        def put(big: T, small: T) -> T:
            return big.index_put((at,), small)

        return _Best(full.keep_betas, put(full.best, self.best),
                     LinearBounds(put(full.lin.A, self.lin.A), put(full.lin.bias, self.lin.bias),
                                  put(full.lin.mass, self.lin.mass)),
                     {k: put(full.alphas[k], v) for k, v in self.alphas.items()},
                     {k: put(full.betas[k], v) for k, v in self.betas.items()})


class _Pruned:
    """The whole batch's results while alpha-CROWN optimises only the domains not proved
    yet (`options.proved`): `act` maps those to their places in the batch (None: all of
    them are still in), `store` holds every domain's best as it stood when it left."""

    def __init__(self, B: int) -> None:
        self.B = B
        self.act: Optional[T] = None
        self.store: Optional[_Best] = None

    def keep(self, track: _Best, keep: T) -> None:
        """Record `track` (the domains in the run now) and narrow `act` to `keep`."""
        if self.act is None:
            self.store, self.act = track, keep
            return
        self.store = track.into(self.store, self.act)
        self.act = self.act[keep]

    def full(self, track: _Best) -> _Best:
        return track.into(self.store, self.act)

    def scatter_capture(self, got: dict, capture: dict) -> None:
        """The last step's coefficients (of the domains in the run) into `capture` for
        the whole batch; the proved domains' are zero (branching ignores those)."""
        for k, v in got.items():
            full = v.new_zeros((self.B, *v.shape[1:]))
            full[self.act] = v
            capture[k] = full
