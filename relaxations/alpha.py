"""alpha-CROWN: optimise relaxation parameters (e.g. ReLU lower slopes) per spec row.

Any alpha inside its bounds gives a sound relaxation, so every iterate is a valid
bound; we keep the best bound seen per row. The starting alpha is CROWN's choice (or
the caller's, e.g. a parent domain's), and the first step's bound is kept, so the
result is never looser than the bound at the starting point.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import torch

from relaxations.bounds import IntervalBounds, LinearBounds, Precision
import relaxations.crown as crown
from relaxations.crown import (BackwardContext, SparseAlpha, SparseTerm, backward_lower, is_relaxed, is_slot_node,
                               relaxation_domain, slot_count)

__all__ = ["optimise_alpha", "initial_alphas", "project_alphas", "alpha_fits", "alpha_lrs", "AlphaResult",
           "BetaTerms", "WarmStart", "sparse_view", "unstable_index", "SPARSE_SHARE"]

T = torch.Tensor
# A `sparse_alpha` node keeps its alphas at the unstable elements only (crown.SparseAlpha)
# when at most this share of its elements is unstable in some sample of the batch.
SPARSE_SHARE = 0.5


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
    torch._dynamo, which costs about 2 s of start-up in every verifier process."""

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
    params = list(moved.values()) + list(betas.values())
    for p in params:
        p.requires_grad_(True)
    opt = _Adam(params, lr=alpha_lrs(ctx, moved, options.alpha_lr) + [options.alpha_lr] * len(betas))
    octx = BackwardContext(ctx.graph, ctx.ev, ctx.table, ctx.rules, {k: sparse.get(k, v) for k, v in moved.items()},
                           cache=None, checked=set(), prepared={}, balls=ctx.balls)
    best = None
    best_lin = None
    best_alphas: dict[str, T] = {}
    best_betas: dict[str, T] = {}
    keep_betas = bool(getattr(options, "keep_betas", False)) and bool(betas)
    for it in range(max(1, options.alpha_iterations)):
        octx.extra_A = _extra(betas, terms)
        octx.capture = capture if it == options.alpha_iterations - 1 else None
        lin = _with_cut_constants(backward_lower(octx, ctx.graph.output_name, A), betas, terms)
        lb = lin.concretize(box, precision)
        with torch.no_grad():
            if best is None:
                best = lb.detach().clone()
                best_lin = LinearBounds(lin.A.detach(), lin.bias.detach(), lin.mass.detach())
                best_alphas = {k: v.detach().clone() for k, v in moved.items()}
                if keep_betas:
                    best_betas = {k: v.detach().clone() for k, v in betas.items()}
            else:
                improved = lb > best
                best = torch.where(improved, lb.detach(), best)
                keep = improved.reshape(B, S, *([1] * (lin.A.dim() - 2)))
                best_lin = LinearBounds(torch.where(keep, lin.A.detach(), best_lin.A),
                                        torch.where(improved, lin.bias.detach(), best_lin.bias),
                                        torch.where(improved, lin.mass.detach(), best_lin.mass))
                for k, v in moved.items():
                    mask = improved.reshape(B, S, *([1] * (v.dim() - 2)))
                    best_alphas[k] = torch.where(mask, v.detach(), best_alphas[k])
                if keep_betas:  # for certificates: the multipliers that go with each row's best bound
                    for k, v in betas.items():
                        mask = improved.reshape(B, S, *([1] * (v.dim() - 2)))
                        best_betas[k] = torch.where(mask, v.detach(), best_betas[k])
        late = options.deadline is not None and time.monotonic() > options.deadline
        if it == options.alpha_iterations - 1 or not lb.requires_grad or late or _all_above(best, options, capture):
            break  # last step, or the bound does not depend on any alpha
        grads = torch.autograd.grad(-lb.sum(), params, allow_unused=True)
        opt.step(grads)
        with torch.no_grad():
            for k, v in moved.items():
                lo, hi = ranges[k]
                v.copy_(torch.maximum(torch.minimum(v, hi), lo))
            for b in betas.values():
                b.clamp_(min=0)
    best_alphas = _dense(alphas, best_alphas, {k: v.index for k, v in sparse.items()})
    best_betas = _dense(dense_betas, best_betas, {k: t[3] for k, t in terms.items()})
    return AlphaResult(best, best_lin, best_alphas, best_betas, it + 1)   # the steps taken
