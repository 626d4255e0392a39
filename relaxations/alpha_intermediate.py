"""alpha-CROWN that optimises the intermediate bounds too (`BoundOptions.optimise_intermediate`).

Plain alpha-CROWN (`relaxations.alpha`) optimises the lower slopes of the relaxations
for the final specification rows only; the intervals of the tensors those relaxations
are built from stay as plain CROWN computed them. Here, as in auto_LiRPA's full
alpha-CROWN ("Beta-CROWN: Efficient Bound Propagation with Per-neuron Split
Constraints"; "Fast and Complete: Enabling Complete Neural Network Verification with
Rapid and Massively Parallel Incomplete Verifiers"), every tensor z that CROWN bounds
(the input of a relaxable elementwise op) gets its own alphas: one set per earlier
relaxed node, with one row per bounded element of z and per side (the rows +e_j and
-e_j of `intermediate._crown_tensor`). Rows exist only for the elements that are unstable
in plain CROWN's table, chunked as `_crown_tensor` chunks them (`max_elements`), and
each chunk keeps its own alphas.

Two stages. First plain alpha-CROWN, exactly as with the option off (it costs a
fraction of the second: the final rows only); its best per row, alphas and betas carry
over, so the bound is never looser than without the option. Then the joint stage: each
iteration recomputes, with autograd, every interval in topological order (IBP
from the inputs' intervals, intersected with plain CROWN's table, then CROWN with that
tensor's alphas on its rows), so a later relaxation is built from the differentiable
bounds of its input; then the final rows with their own alphas and the beta terms of
split neurons. The loss is minus the sum of the final lower bounds; one Adam step
moves every alpha (and beta), which is then projected into its rule's range.

Soundness: a relaxation is sound for any alpha in its rule's range over the interval
it is built from. Projection after a step uses plain CROWN's intervals; inside a pass
each alpha is also clamped to the range over the pass's own interval, so a rule whose
range depended on the interval would stay sound (ReLU's, [s, 1], does not). Every
pass's intervals are therefore sound, and so is their per-element best, which is
returned as the table (never looser than plain CROWN's: the passes are intersected
with it). The final bound is the best per row over both stages. An empty interval in any pass proves that a
domain holds no input (its splits are infeasible).

Memory: one iteration keeps the autograd graph of every chunk of every tensor until
its backward step, so `max_elements` bounds each backward pass but not the iteration.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Optional

import torch

from models import Node
from relaxations.alpha import (AlphaResult, BetaTerms, WarmStart, _Adam, _all_above, alpha_fits, alpha_lrs,
                               initial_alphas, optimise_alpha, project_alphas, unstable_index)
from relaxations.bounds import BoundsTable, IntervalBounds, LinearBounds, Precision
from relaxations.crown import (BackwardContext, SparseAlpha, _is_plain_elementwise, backward_lower, is_relaxed,
                               relaxation_domain)
from relaxations.ibp import node_inputs, sound_interval
from relaxations.intermediate import _guard_empty
from relaxations.options import BoundOptions

__all__ = ["optimise_with_intermediate"]

T = torch.Tensor


@dataclass
class _Chunk:
    """Rows of one tensor bounded by one backward pass, with their own alphas.

    rows: flat element indices [r]; alphas: relaxed node -> [B, 2r, *shape] (the
    first r rows bound +z, the last r bound -z), or [B, 2r, k] at the elements `index[node]`
    of a `sparse_alpha` node that are unstable in the reference table (crown.SparseAlpha),
    whose ranges there are `ranges[node]`."""

    rows: T
    alphas: dict[str, T]
    index: dict[str, T] = field(default_factory=dict)
    ranges: dict[str, tuple[T, T]] = field(default_factory=dict)


@dataclass
class _Setup:
    """What every pass reads: the plain CROWN pass's context, the chunks per tensor and
    the final rows' parameters."""

    ctx: BackwardContext            # plain CROWN's context; its table is the reference
    box: IntervalBounds
    A: T                            # the final rows [B, R, *output_shape]
    precision: Precision
    chunks: dict[str, list[_Chunk]]
    alphas: dict[str, T]            # final rows' alphas [B, R, *shape]
    betas: dict[str, T]             # split tensor -> [B, R, *shape]
    signs: dict[str, T]             # split tensor -> float signs [B, 1, *shape]
    guard: frozenset                # tensors whose emptiness is checked (split or CROWN-bounded)
    prepared: dict = field(default_factory=dict)   # BackwardContext.prepared, shared by every pass


def optimise_with_intermediate(ctx: BackwardContext, box: IntervalBounds, A: T, options: BoundOptions,
                               precision: Precision, signs: dict[str, T], capture: Optional[dict],
                               start: WarmStart) -> tuple[AlphaResult, BoundsTable, T]:
    """Plain alpha-CROWN on the final rows `A`, then alpha-CROWN jointly with every
    CROWN-bounded tensor's alphas, started from the first stage's best.

    The arguments are those of `relaxations.alpha.optimise_alpha` (`signs`: its
    `terms.signs`, as no cut reaches here; `start`: the given warm starts); `ctx` is
    plain CROWN's (`compute.intermediate_bounds`) and its table the reference, already
    intersected with known intervals and clamped by splits, so every pass inherits
    both. The intermediate passes ignore betas. The first stage is exactly what the option off
    computes, and the best per row carries over, so the bound is never looser than
    without the option; it costs a fraction of the second (the final rows only).

    Returns the best per row (its alphas and betas are those of the pass that gave it
    and go with that pass's intervals, not necessarily with the returned table), the
    best interval per element, and a mask [B] of domains that some pass proved empty.
    Past `options.deadline` each stage stops with what it has; the second also past
    `options.optimise_deadline`.
    """
    first = optimise_alpha(ctx, box, A, replace(options, keep_betas=True), precision, BetaTerms(signs), capture,
                           start)
    with torch.enable_grad():
        return _optimise(ctx, box, A, options, precision, first, signs, capture)


def _optimise(ctx: BackwardContext, box: IntervalBounds, A: T, options: BoundOptions, precision: Precision,
              first: AlphaResult, signs: dict[str, T], capture: Optional[dict]) -> tuple[AlphaResult, BoundsTable, T]:
    B = A.shape[0]
    infeasible = torch.zeros(B, dtype=torch.bool, device=A.device)
    setup = _setup(ctx, box, A, options, precision, signs, first)
    keep_betas = bool(options.keep_betas) and bool(setup.betas)
    if not setup.chunks:  # no intermediate bound that an alpha could change
        return replace(first, betas=first.betas if keep_betas else {}), ctx.table, infeasible
    best, best_lin = first.lower, first.linear
    best_alphas = {k: v.detach().clone() for k, v in setup.alphas.items()}
    best_betas = {k: v.detach().clone() for k, v in setup.betas.items()} if keep_betas else {}
    lower = {k: b.lower.detach().clone() for k, b in ctx.table.items()}
    upper = {k: b.upper.detach().clone() for k, b in ctx.table.items()}
    params = [*setup.alphas.values(), *setup.betas.values(),
              *(a for cs in setup.chunks.values() for c in cs for a in c.alphas.values())]
    for p in params:
        p.requires_grad_(True)
    lr = options.alpha_lr
    opt = _Adam(params, lr=[*alpha_lrs(ctx, setup.alphas, lr), *[lr] * len(setup.betas),
                            *(x for cs in setup.chunks.values() for c in cs for x in alpha_lrs(ctx, c.alphas, lr))])
    ends = [t for t in (options.deadline, options.optimise_deadline) if t is not None]
    late = (lambda: time.monotonic() > min(ends)) if ends else (lambda: False)
    done = 0
    last = max(1, options.alpha_iterations) - 1
    for it in range(last + 1):
        out = _pass(setup, late, capture if it == last else None)
        if out is None:
            break  # the deadline passed inside the pass: keep the best of the passes before it
        table, lin, empty = out
        done += 1
        lb = lin.concretize(box, precision)
        with torch.no_grad():
            infeasible |= empty
            for k, b in table.items():
                lower[k] = torch.maximum(lower[k], b.lower.detach())
                upper[k] = torch.minimum(upper[k], b.upper.detach())
            improved = lb.detach() > best
            best = torch.where(improved, lb.detach(), best)
            best_lin = LinearBounds(_rowwise(improved, lin.A.detach(), best_lin.A),
                                    torch.where(improved, lin.bias.detach(), best_lin.bias),
                                    torch.where(improved, lin.mass.detach(), best_lin.mass))
            best_alphas = {k: _rowwise(improved, v.detach(), best_alphas[k]) for k, v in setup.alphas.items()}
            if keep_betas:  # for certificates: the multipliers that go with each row's best bound
                best_betas = {k: _rowwise(improved, v.detach(), best_betas[k]) for k, v in setup.betas.items()}
        if it == last or late() or not lb.requires_grad or _all_above(best, options, capture):
            break
        opt.step(torch.autograd.grad(-lb.sum(), params, allow_unused=True))
        _project(setup)
    table, empty = _best_table(ctx.table, lower, upper, setup.guard)
    result = AlphaResult(best, best_lin, best_alphas, best_betas, first.iterations + done)
    return result, table, infeasible | empty


def _rowwise(improved: T, new: T, old: T) -> T:
    """`new` in the rows that improved ([B, R]), `old` elsewhere (rows are dim 1)."""
    return torch.where(improved.reshape(*improved.shape, *([1] * (new.dim() - 2))), new, old)


def _setup(ctx: BackwardContext, box: IntervalBounds, A: T, options: BoundOptions, precision: Precision,
           signs: dict[str, T], first: AlphaResult) -> _Setup:
    """The chunks of every CROWN-bounded tensor with CROWN's slopes, and the final rows'
    alphas and betas where the first stage left them (its best per row)."""
    B, R = A.shape[:2]
    alphas = {k: v.detach().clone() for k, v in (first.alphas or initial_alphas(ctx, B, R)).items()}
    betas = {z: first.betas[z].detach().clone() if z in first.betas else
             torch.zeros(B, R, *s.shape[2:], dtype=A.dtype, device=A.device) for z, s in signs.items()}
    relaxed = _relaxed_unstable(ctx)
    widest = max([box.lower[0].numel()] + [s and torch.Size(s).numel() for s in ctx.graph.shapes.values()])
    size = max(1, options.max_elements // max(1, 2 * B * widest))
    chunks: dict[str, list[_Chunk]] = {}
    consumers = ctx.graph.consumers()
    for name in _crown_bounded(ctx):
        readers = [n for n in consumers.get(name, []) if _is_plain_elementwise(ctx, n, ctx.rules[n.name])]
        before = [n for n in _ancestors(ctx, name) if n.name in relaxed]
        rows = _unstable_rows(ctx, name, readers)
        if not before or rows.numel() == 0:
            continue  # nothing an alpha could change, or no element whose bound matters
        chunks[name] = [_chunk(ctx, before, B, rows[s:s + size], options.sparse_alpha)
                        for s in range(0, rows.numel(), size)]
    guard = frozenset(signs) | frozenset(chunks)
    return _Setup(ctx, box, A, precision, chunks, alphas, betas, signs, guard)


def _crown_bounded(ctx: BackwardContext) -> list[str]:
    """Tensors that `compute.intermediate_bounds` tightens by CROWN, in topological order:
    the node outputs read by a relaxable elementwise op. (The inputs of slot nodes, which
    it also tightens, are not re-optimised here: each pass bounds them by IBP intersected
    with plain CROWN's table, which is sound; their slot nodes' alphas are optimised.)"""
    read = {n.inputs[0] for n in ctx.graph.nodes if _is_plain_elementwise(ctx, n, ctx.rules[n.name])}
    return [o for n in ctx.graph.nodes for o in n.outputs if o in read]


def _relaxed_unstable(ctx: BackwardContext) -> dict[str, Node]:
    """Relaxable nodes with optimisable alphas and some unstable element in the reference
    table: only their alphas can change a bound (a stable element's relaxation is exact)."""
    out = {}
    for node in ctx.graph.nodes:
        rule = ctx.rules[node.name]
        if rule.alpha_init is None or not is_relaxed(ctx, node, rule):
            continue
        if rule.unstable is not None:
            lo, hi = relaxation_domain(ctx, node, rule)
            if not bool(rule.unstable(node, lo, hi, _consts(ctx, node)).any()):
                continue
        out[node.name] = node
    return out


def _consts(ctx: BackwardContext, node: Node) -> list:
    return [ctx.ev.constants.get(x) if x else None for x in node.inputs]


def _ancestors(ctx: BackwardContext, name: str) -> list[Node]:
    """Nodes that `name` depends on, in topological order."""
    producer = {o: n for n in ctx.graph.nodes for o in n.outputs}
    seen: set[str] = set()
    todo = [name]
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        todo.extend(x for x in node.inputs if x and x not in ctx.ev.constants)
    return [n for n in ctx.graph.nodes if n.name in seen and name not in n.outputs]


def _unstable_rows(ctx: BackwardContext, name: str, readers: list[Node]) -> T:
    """Flat indices of the elements of `name` unstable for some reader in some domain of
    the reference table (all elements where a reader's rule says nothing)."""
    b = ctx.table[name]
    B = b.lower.shape[0]
    mask = torch.zeros(b.lower[0].numel(), dtype=torch.bool, device=b.lower.device)
    for node in readers:
        rule = ctx.rules[node.name]
        if rule.unstable is None:
            return torch.arange(mask.numel(), device=mask.device)
        mask |= rule.unstable(node, b.lower, b.upper, _consts(ctx, node)).reshape(B, -1).any(0)
    return mask.nonzero().flatten()


def _chunk(ctx: BackwardContext, nodes: list[Node], B: int, rows: T, sparse: bool) -> _Chunk:
    """The chunk of `rows` with CROWN's slopes of each node on the reference interval, one
    copy per row ([B, 2r, *shape], or [B, 2r, k] at the unstable elements when `sparse`
    and the node allows it); slot nodes whose alphas would exceed their size cap keep
    CROWN's lines."""
    n_rows = 2 * rows.numel()
    chunk = _Chunk(rows, {})
    for node in nodes:
        if not alpha_fits(ctx, node, B, n_rows):
            continue
        rule = ctx.rules[node.name]
        lo, hi = relaxation_domain(ctx, node, rule)
        init = rule.alpha_init(node, lo, hi, _consts(ctx, node)).detach()
        found = unstable_index(ctx, node) if sparse else None
        if found is None:
            chunk.alphas[node.name] = init.unsqueeze(1).expand(B, n_rows, *init.shape[1:]).clone()
            continue
        idx = found[0]

        def gather(t: T) -> T:
            return t.reshape(B, 1, -1).index_select(-1, idx)

        chunk.alphas[node.name] = gather(init).expand(B, n_rows, idx.numel()).clone()
        chunk.index[node.name] = idx
        chunk.ranges[node.name] = tuple(gather(t) for t in rule.alpha_bounds(node, lo, hi, _consts(ctx, node)))
    return chunk


def _pass(setup: _Setup, late: Callable[[], bool], capture: Optional[dict]
          ) -> Optional[tuple[BoundsTable, LinearBounds, T]]:
    """One differentiable pass: every interval in topological order, then the final rows.

    Returns the pass's table, the final linear bound and the domains found empty, or
    None when the deadline passed before the pass was complete.
    """
    ctx, box = setup.ctx, setup.box
    table = BoundsTable({ctx.graph.input_name: box})
    empty = torch.zeros(box.lower.shape[0], dtype=torch.bool, device=box.lower.device)
    for node in ctx.graph.nodes:
        outs = sound_interval(ctx.ev, node, ctx.rules[node.name], node_inputs(ctx.ev, node, table), setup.precision)
        for name, b in zip(node.outputs, outs):
            table[name] = b.intersect(ctx.table[name])
            for chunk in setup.chunks.get(name, []):
                if late():
                    return None
                table[name] = _tighten(setup, table, name, chunk)
            if name in setup.guard:
                table[name], e = _guard_empty(table[name])
                empty |= e
    if late():
        return None
    extra = {k: -setup.betas[k] * setup.signs[k] for k in setup.betas} or None
    octx = BackwardContext(ctx.graph, ctx.ev, table, ctx.rules, _in_range(ctx, table, setup.alphas),
                           cache=None, extra_A=extra, capture=capture, prepared=setup.prepared, balls=ctx.balls)
    return table, backward_lower(octx, ctx.graph.output_name, setup.A), empty


def _tighten(setup: _Setup, table: BoundsTable, name: str, chunk: _Chunk) -> IntervalBounds:
    """The interval of `name` tightened on the chunk's rows by CROWN with the chunk's alphas."""
    ctx = setup.ctx
    current = table[name]
    B = current.lower.shape[0]
    shape = current.lower.shape[1:]
    r = chunk.rows.numel()
    ar = torch.arange(r, device=chunk.rows.device)
    A = torch.zeros(B, 2 * r, shape.numel(), dtype=current.lower.dtype, device=current.lower.device)
    A[:, ar, chunk.rows] = 1.0
    A[:, r + ar, chunk.rows] = -1.0
    zctx = BackwardContext(ctx.graph, ctx.ev, table, ctx.rules, _in_range(ctx, table, chunk.alphas, chunk.index),
                           cache=None, prepared=setup.prepared, balls=ctx.balls)
    lb = backward_lower(zctx, name, A.reshape(B, 2 * r, *shape)).concretize(setup.box, setup.precision)
    lower = current.lower.reshape(B, -1).clone()
    upper = current.upper.reshape(B, -1).clone()
    lower[:, chunk.rows] = torch.maximum(lower[:, chunk.rows], lb[:, :r])
    upper[:, chunk.rows] = torch.minimum(upper[:, chunk.rows], -lb[:, r:])
    return IntervalBounds(lower.reshape(current.lower.shape), upper.reshape(current.upper.shape))


def _in_range(ctx: BackwardContext, table: Mapping[str, IntervalBounds], alphas: dict[str, T],
              index: Optional[dict[str, T]] = None) -> dict:
    """Each alpha clamped to its rule's range over the interval in `table` (see the
    module docstring): the identity after `_project` for ranges that do not depend on it.
    Alphas kept at `index[name]` become a SparseAlpha whose mask is the elements unstable
    in `table` (a subset of those of the reference table)."""
    by_name = {n.name: n for n in ctx.graph.nodes}
    out: dict = {}
    for name, a in alphas.items():
        node = by_name[name]
        l, u = relaxation_domain(ctx, node, ctx.rules[name], table)
        l, u = l.detach(), u.detach()
        lo, hi = ctx.rules[name].alpha_bounds(node, l, u, _consts(ctx, node))
        idx = (index or {}).get(name)
        if idx is None:
            out[name] = torch.clamp(a, lo.unsqueeze(1), hi.unsqueeze(1))
            continue
        B = l.shape[0]

        def gather(t: T) -> T:
            return t.reshape(B, 1, -1).index_select(-1, idx)

        mask = gather(ctx.rules[name].unstable(node, l, u, _consts(ctx, node))).to(a.dtype)
        out[name] = SparseAlpha(torch.clamp(a, gather(lo), gather(hi)), idx, mask)
    return out


def _project(setup: _Setup) -> None:
    """After a step: every alpha into its range over the reference intervals, betas to >= 0."""
    project_alphas(setup.ctx, setup.alphas)
    with torch.no_grad():
        for cs in setup.chunks.values():
            for c in cs:
                project_alphas(setup.ctx, {k: v for k, v in c.alphas.items() if k not in c.index})
                for k, idx in c.index.items():
                    lo, hi = c.ranges[k]
                    c.alphas[k].copy_(torch.maximum(torch.minimum(c.alphas[k], hi), lo))
        for b in setup.betas.values():
            b.clamp_(min=0)


def _best_table(ref: Mapping[str, IntervalBounds], lower: dict[str, T], upper: dict[str, T],
                guard: frozenset) -> tuple[BoundsTable, T]:
    """The best intervals per element as a table, and the domains where one is empty
    (checked on the split and CROWN-bounded tensors, as the passes check them)."""
    table = BoundsTable()
    empty = None
    for k in ref:
        table[k] = IntervalBounds(lower[k], upper[k])
        if k in guard:
            table[k], e = _guard_empty(table[k])
            empty = e if empty is None else empty | e
    if empty is None:
        first = next(iter(ref.values())).lower
        empty = torch.zeros(first.shape[0], dtype=torch.bool, device=first.device)
    return table, empty
