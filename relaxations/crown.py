"""CROWN: backward linear bound propagation over a general graph.

Starting from `A` on one tensor, we walk the nodes in reverse topological order and
carry a lower bound `sum_t A_t . t + bias` back to the input. Affine ops pass A back
exactly by their vector-Jacobian product; elementwise ops use their relaxation lines
(lower line where A > 0, upper line where A < 0); ops with a slot relaxation (products
of two variable tensors, max-type ops; relaxations/registry.py) do the same per output
element over their gathered slots, and the slot coefficients go back to every input
through the transpose of the gather; any other op ends the walk at its output, which
is then bounded by its interval (always sound, sometimes loose). So does a slot op
whose lines are not finite (an infinite input bound) or whose slot coefficients for
one specification row would exceed `MAX_SLOT_ELEMENTS`.

With `relax=False` in the context the walk relaxes nothing: it passes A back through
affine ops only and concretises at the output of every other op. From the network's
output this is IBP with the specification folded into the trailing affine layers
(`compute_bounds(method="ibp")`), which needs no relaxation at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from models import Graph, GraphEvaluator, Node
from relaxations.affine_step import affine_backward, affine_step
from relaxations.bounds import IntervalBounds, LinearBounds, check_deadline, interval_terms
from relaxations.ops.common import batched
from relaxations.registry import OpRule, Relaxation, SlotRelaxation, is_affine_node, rule_for
from relaxations.sdp_crown import sdp_bias

__all__ = ["BackwardContext", "PartialRelaxation", "SparseAlpha", "SparseTerm", "backward_lower", "backward_from",
           "backward_lower_terms", "backward_terms", "is_slot_node", "is_relaxed", "slot_bounds", "slot_count",
           "relaxation_domain", "MAX_SLOT_ELEMENTS"]

T = torch.Tensor
# Elements of the slot coefficients [B, rows, *out, K] one step of a slot op may hold:
# rows are walked in chunks under it; one row above it ends the walk there (interval).
MAX_SLOT_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class SparseAlpha:
    """The alphas of a `sparse_alpha` rule (ReLU, LeakyRelu) kept only where they matter.

    Such a rule's alpha is read only at unstable elements, where the lower line is
    alpha * x; elsewhere CROWN's line is exact. A wide layer with few unstable elements
    then optimises `values` [B, S, k] for the `index` [k] (flat positions in the input's
    shape) unstable in some sample, instead of [B, S, *shape]; `mask` [B, 1, k] is 1 where
    the element is unstable in that sample (elsewhere its value is not read).
    """

    values: T
    index: T
    mask: T


@dataclass(frozen=True)
class SparseTerm:
    """A coefficient on a tensor that is zero outside `index` [k] (flat positions):
    `values` [B, S, k]. beta-CROWN's terms for split neurons are this, and few neurons
    of a layer are split in a batch of domains."""

    values: T
    index: T


@dataclass
class BackwardContext:
    """What a backward pass reads: graph, constants, intervals so far, the rules.

    `alphas` maps a node name to its alpha tensor [B, S, *shape] (optimised slopes).
    `relax=False` ends the walk at every non-affine op (see the module docstring).
    `deadline` (a time.monotonic() value) is checked once per node: past it the pass
    raises DeadlineExceeded. alpha-CROWN's optimisation builds its own contexts without
    one, so that it can stop early with the bound it has instead.
    """

    graph: Graph
    ev: GraphEvaluator
    table: Mapping[str, IntervalBounds]
    rules: Mapping[str, OpRule]
    alphas: Optional[Mapping[str, T]] = None
    cache: Optional[dict] = None
    # extra_A[t] is added to the coefficient of tensor t when the walk reaches it: the
    # beta terms of split constraints (beta-CROWN) enter the bound this way.
    extra_A: Optional[Mapping[str, T]] = None
    # capture, when a dict, receives the coefficient at the output of each node the walk
    # relaxes (node name -> A; elementwise and slot nodes), which branching heuristics
    # score neurons with.
    capture: Optional[dict] = None
    relax: bool = True
    deadline: Optional[float] = None
    # Nodes whose relaxation under alpha was found finite once in this optimisation; later
    # steps skip the check (a scan of [B, S, *shape] per node and step). Skipping it is safe:
    # a non-finite line reaches the bound as inf or nan, which proves nothing. A node with
    # elements that have no finite line is checked (and made partial) at every step.
    checked: Optional[set] = None
    # node name -> (the input's IntervalBounds, what the rule's `prepare` made of it): the
    # alpha-independent part of a relaxation (e.g. tangent points found by bisection),
    # computed once per interval instead of at every alpha step. The entry keeps the
    # interval object alive, so an identity check cannot match a different interval.
    prepared: Optional[dict] = None
    # tensor -> (centre [B, *shape], radius [B]) of an l2 ball holding its values
    # (relaxations/l2.py, over a BallBox input): a ReLU reading such a tensor gets
    # SDP-CROWN's bias where it beats CROWN's (relaxations/sdp_crown.py).
    balls: Optional[Mapping[str, tuple]] = None
    # False: terms that stop at an interval carry no rounding mass (their bound is for a
    # loss term under `Precision.none()`, which widens nothing), so the pass skips the
    # products that sum it; under autograd those are most of a folded IBP step's time.
    masses: bool = True


def _dot(A: T, v: T) -> T:
    """sum over the tensor dims of A [B, S, *shape] * v ([B, 1, *shape] or [B, S, *shape]) -> [B, S]."""
    B, S = A.shape[:2]
    if v.dim() == A.dim() and v.shape[1] == 1:
        return torch.bmm(A.reshape(B, S, -1), v.reshape(B, -1, 1)).squeeze(-1)
    return (A * v).reshape(B, S, -1).sum(-1)


@dataclass(frozen=True)
class PartialRelaxation(Relaxation):
    """Lines that hold except at the `unbounded` elements [B, 1, *shape] (bool), where no
    finite line exists (an overflowing exp, a reciprocal across 0): there the lines are
    zero and the backward pass bounds the element's term by the output's interval."""

    unbounded: T


def _partial(r: Relaxation) -> Relaxation:
    bad = ~(torch.isfinite(r.lower_slope) & torch.isfinite(r.lower_bias)
            & torch.isfinite(r.upper_slope) & torch.isfinite(r.upper_bias))
    bad = bad.any(1, keepdim=True)
    zero = torch.zeros((), dtype=r.lower_slope.dtype, device=r.lower_slope.device)
    return PartialRelaxation(*(torch.where(bad, zero, t) for t in (r.lower_slope, r.lower_bias, r.upper_slope,
                                                                      r.upper_bias)), unbounded=bad)


def _relaxation(ctx: BackwardContext, node: Node, rule: OpRule, alpha: Optional[T]):
    """The node's relaxation lines; without alpha they are cached for the whole pass
    (the input's interval is final before any backward pass goes through the node).
    Elements without finite lines make it a `PartialRelaxation`."""
    if alpha is None and ctx.cache is not None and node.name in ctx.cache:
        return ctx.cache[node.name]
    b = ctx.table[node.inputs[0]]
    consts = [ctx.ev.constants.get(x) if x else None for x in node.inputs]
    l, u = b.lower.unsqueeze(1), b.upper.unsqueeze(1)
    if alpha is not None and rule.prepare is not None and ctx.prepared is not None:
        entry = ctx.prepared.get(node.name)
        if entry is None or entry[0] is not b:
            entry = (b, rule.prepare(node, l, u, consts))
            ctx.prepared[node.name] = entry
        r = rule.relax(node, l, u, alpha, consts, prepared=entry[1])
    else:
        r = rule.relax(node, l, u, alpha, consts)
    if alpha is not None and ctx.checked is not None and node.name in ctx.checked:
        return r
    finite = torch.isfinite(r.lower_slope).all() & torch.isfinite(r.lower_bias).all() \
        & torch.isfinite(r.upper_slope).all() & torch.isfinite(r.upper_bias).all()
    if not bool(finite):  # one host sync per node, not four
        r = _partial(r)
    elif alpha is not None and ctx.checked is not None:
        ctx.checked.add(node.name)
    if alpha is None and ctx.cache is not None:
        ctx.cache[node.name] = r
    return r


def _base_relaxation(ctx: BackwardContext, node: Node, rule: OpRule):
    """CROWN's lines without alpha, computed once per interval within an optimisation
    (kept in `ctx.prepared` beside the rules' prepared parts, identity-keyed alike)."""
    if ctx.prepared is None:
        return _relaxation(ctx, node, rule, None)
    b = ctx.table[node.inputs[0]]
    key = ("base", node.name)
    entry = ctx.prepared.get(key)
    if entry is None or entry[0] is not b:
        entry = (b, _relaxation(ctx, node, rule, None))
        ctx.prepared[key] = entry
    return entry[1]


def _signed_product(pos: T, neg: T, lower_slope: T, upper_slope: T) -> T:
    """A times the lower line's slope where A >= 0 and the upper line's where A < 0, from
    pos = max(A, 0) and neg = min(A, 0): `lower * pos + upper * neg`.

    At each element one of pos and neg is zero, so each entry is one rounded product of
    the slope it should take: the rounding margins cover it as they cover any product.
    (The earlier `upper * A + (lower - upper) * pos` cancelled: with an upper slope some
    1/eps times the lower one, as exp's over a wide interval, the lower slope was lost
    and the line was no lower bound.) Products and a sum, not a select between slopes
    broadcast over the rows (torch.where), which costs several times more on CPU, and in
    its backward (BENCHMARKS.md, session 23).
    """
    return lower_slope * pos + upper_slope * neg


def _elementwise_backward(ctx: BackwardContext, node: Node, rule: OpRule, A: T) -> tuple[T, T, T]:
    """Lower line where A > 0, upper line where A < 0; bias and mass by batched dot products."""
    alpha = None if ctx.alphas is None else ctx.alphas.get(node.name)
    B, S = A.shape[:2]
    # max(A, 0) once for the products below: relu, not clamp, whose backward under
    # autograd (certified training) is a select several times slower.
    pos = torch.relu(A)
    neg = A - pos      # min(A, 0), exactly
    if isinstance(alpha, SparseAlpha):
        # CROWN's lines everywhere ([B, 1, *shape]: no per-row slope tensor), then at the
        # unstable elements the lower line's slope moved from CROWN's to alpha where A > 0.
        # The lower line goes through the origin both ways, so bias and mass are CROWN's.
        r = _base_relaxation(ctx, node, rule)
        A_in = _signed_product(pos, neg, r.lower_slope, r.upper_slope).contiguous()
        idx = alpha.index
        pos_u = pos.reshape(B, S, -1).index_select(-1, idx)
        if isinstance(r, PartialRelaxation):
            pos_u = pos_u * ~r.unbounded.reshape(r.unbounded.shape[0], 1, -1).index_select(-1, idx)
        base = r.lower_slope.reshape(r.lower_slope.shape[0], 1, -1).index_select(-1, idx)
        # In place on a fresh product: autograd keeps A and the slopes for the product, not A_in.
        A_in.view(B, S, -1).index_add_(-1, idx, pos_u * (alpha.values - base) * alpha.mask)
    else:
        r = _relaxation(ctx, node, rule, alpha)
        A_in = _signed_product(pos, neg, r.lower_slope, r.upper_slope)
    bias = torch.zeros(B, S, dtype=A.dtype, device=A.device)
    mass = torch.zeros_like(bias)
    lower_terms, upper_terms = _bias_terms(ctx, node, r)
    if lower_terms is not None:
        b, m = _dot2(pos, lower_terms)
        bias, mass = bias + b, mass + m
    if upper_terms is not None:
        b, m = _dot2(neg, upper_terms)
        bias, mass = bias + b, mass - m
    if isinstance(r, PartialRelaxation):
        b, m = interval_terms(A * r.unbounded, ctx.table[node.outputs[0]], want_mass=ctx.masses)
        m = torch.zeros_like(b) if m is None else m
        bias, mass = bias + b, mass + m
    elif ctx.balls is not None and node.op == "Relu" and node.inputs[0] in ctx.balls:
        # Both are sound biases for the same A_in: per row, the higher one (a finite one:
        # an overflow in SDP-CROWN's terms, a huge lambda on a tiny ball, proves nothing).
        b, m = sdp_bias(A, A_in, *ctx.balls[node.inputs[0]])
        better = (b > bias) & torch.isfinite(b) & torch.isfinite(m)
        bias, mass = torch.where(better, b, bias), torch.where(better, m, mass)
    return A_in, bias, mass


def _bias_terms(ctx: BackwardContext, node: Node, r) -> tuple[Optional[tuple], Optional[tuple]]:
    """Each line's bias as `_dot2` reads it, None where it is zero everywhere (every ReLU
    lower line: its products are skipped). A bias shared across rows [B, 1, ...] becomes
    ("shared", [B, n, 2]): bias and |bias| side by side, one read of A for both; one per
    row stays ("rows", bias). Kept in `ctx.prepared` for the relaxation object, so alpha
    steps whose lines do not move reuse it."""
    key = ("bias", node.name)
    entry = None if ctx.prepared is None else ctx.prepared.get(key)
    if entry is not None and entry[0] is r:
        return entry[1]
    out = []
    for v in (r.lower_bias, r.upper_bias):
        if not bool(v.any()):
            out.append(None)
        elif v.shape[1] == 1:
            vb = v.reshape(v.shape[0], -1)
            out.append(("shared", torch.stack([vb, vb.abs()], -1)))
        else:
            out.append(("rows", v))
    if ctx.prepared is not None:
        ctx.prepared[key] = (r, (out[0], out[1]))
    return out[0], out[1]


def _dot2(A: T, term: tuple) -> tuple[T, T]:
    """(<A, c>, <A, |c|>) per row [B, S] for a bias c prepared by `_bias_terms`."""
    kind, v = term
    if kind == "shared":
        B, S = A.shape[:2]
        out = torch.bmm(A.reshape(B, S, -1), v)
        return out[..., 0], out[..., 1]
    return _dot(A, v), _dot(A, v.abs())


def _is_plain_elementwise(ctx: BackwardContext, node: Node, rule: OpRule) -> bool:
    """Relaxations are for the first input only; other variable inputs mean interval fallback."""
    return (rule.kind == "elementwise" and rule.relax is not None and len(node.outputs) == 1
            and not any(x and x not in ctx.ev.constants for x in node.inputs[1:]))


def is_slot_node(ctx: BackwardContext, node: Node, rule: OpRule) -> bool:
    """Whether CROWN relaxes the node by its slot relaxation: it has one, one output,
    and is not affine in its variable inputs (a Mul by a constant stays affine)."""
    if rule.relax_slots is None or len(node.outputs) != 1:
        return False
    variable = [bool(x) and x not in ctx.ev.constants for x in node.inputs]
    return any(variable) and not is_affine_node(node, rule, variable)


def is_relaxed(ctx: BackwardContext, node: Node, rule: OpRule) -> bool:
    """Whether CROWN walks through the node by a relaxation (elementwise or slots)."""
    return _is_plain_elementwise(ctx, node, rule) or is_slot_node(ctx, node, rule)


def slot_bounds(ctx: BackwardContext, node: Node, rule: OpRule,
                table: Optional[Mapping[str, IntervalBounds]] = None) -> tuple[T, T]:
    """The gathered bounds [B, *out, K] of a slot node's inputs (intervals from `table`,
    default the context's). The gather is a selection, so each slot's interval is that
    of the input element (or constant) it selects."""
    table = ctx.table if table is None else table
    ins = []
    for x in node.inputs:
        ins.append(None if not x else ctx.ev.constants[x] if x in ctx.ev.constants else table[x])
    mask = [isinstance(x, IntervalBounds) for x in ins]

    def gather(n: Node, xs: list) -> list[T]:
        return [rule.gather(n, xs)]

    # The gather's outputs carry a slot axis: mapped per sample, never stacked on N.
    lo = batched(node, gather, [x.lower if isinstance(x, IntervalBounds) else x for x in ins], mask, stack=False)[0]
    hi = batched(node, gather, [x.upper if isinstance(x, IntervalBounds) else x for x in ins], mask, stack=False)[0]
    return lo, hi


def slot_count(ctx: BackwardContext, node: Node, rule: OpRule) -> int:
    """Slot elements per sample (prod(out_shape) * K), from the gather on meta tensors:
    the size caps are checked before anything that large is allocated."""
    args: list = []
    for x in node.inputs:
        if not x:
            args.append(None)
        elif x in ctx.ev.constants:
            c = ctx.ev.constants[x]
            args.append(c.to("meta") if c.is_floating_point() else c)   # integer constants are read as values
        else:
            args.append(torch.empty(ctx.graph.shapes[x], dtype=ctx.ev.dtype, device="meta"))
    return rule.gather(node, args).numel()


def relaxation_domain(ctx: BackwardContext, node: Node, rule: OpRule,
                      table: Optional[Mapping[str, IntervalBounds]] = None) -> tuple[T, T]:
    """What a relaxed node's `alpha_init`, `alpha_bounds` and `unstable` read: the first
    input's interval (elementwise) or the gathered slot bounds (slot nodes)."""
    if is_slot_node(ctx, node, rule):
        return slot_bounds(ctx, node, rule, table)
    b = (ctx.table if table is None else table)[node.inputs[0]]
    return b.lower, b.upper


def _slot_relaxation(ctx: BackwardContext, node: Node, rule: OpRule, alpha: Optional[T]
                     ) -> Optional[SlotRelaxation]:
    """The slot node's lines, or None where they are not finite (the caller then bounds the
    output by its interval); cached without alpha, as `_relaxation` caches."""
    key = ("slots", node.name)
    if alpha is None and ctx.cache is not None and key in ctx.cache:
        return ctx.cache[key]
    lo, hi = slot_bounds(ctx, node, rule)
    consts = [ctx.ev.constants.get(x) if x else None for x in node.inputs]
    r = rule.relax_slots(node, lo.unsqueeze(1), hi.unsqueeze(1), alpha, consts)
    if alpha is not None and ctx.checked is not None:
        if key in ctx.checked:
            return r   # skipping is safe: a non-finite line gives an inf or nan bound, which proves nothing
        ctx.checked.add(key)
    finite = torch.isfinite(r.lower_slope).all() & torch.isfinite(r.lower_bias).all() \
        & torch.isfinite(r.upper_slope).all() & torch.isfinite(r.upper_bias).all()
    if not bool(finite):
        r = None
    if alpha is None and ctx.cache is not None:
        ctx.cache[key] = r
    return r


def _rows(t: T, start: int, size: int) -> T:
    """Rows [start, start + size) of a relaxation tensor [B, 1 or S, ...] (shared when 1)."""
    return t if t.shape[1] == 1 else t[:, start:start + size]


def _slots_backward(ctx: BackwardContext, node: Node, rule: OpRule, A: T
                    ) -> Optional[tuple[list[T | None], T, T]]:
    """Lower slot line where A > 0, upper where A < 0, per output element; the slot
    coefficients G [B, S, *out, K] go back to the inputs through the gather's transpose
    (constant slots add <G, const> to the bias). None: bound the output by its interval."""
    B, S = A.shape[:2]
    per_row = B * slot_count(ctx, node, rule)
    if per_row > MAX_SLOT_ELEMENTS or S == 0:
        return None
    alpha = None if ctx.alphas is None else ctx.alphas.get(node.name)
    r = _slot_relaxation(ctx, node, rule, alpha)
    if r is None:
        return None
    step = max(1, MAX_SLOT_ELEMENTS // per_row)
    parts: list[list[T | None]] = []
    biases, masses = [], []

    def gather(n: Node, xs: list) -> list[T]:
        return [rule.gather(n, xs)]

    for start in range(0, S, step):
        a = A[:, start:start + step]
        pos, neg = a.clamp(min=0), a.clamp(max=0)
        G = pos.unsqueeze(-1) * _rows(r.lower_slope, start, step) \
            + neg.unsqueeze(-1) * _rows(r.upper_slope, start, step)
        lb, ub = pos * _rows(r.lower_bias, start, step), neg * _rows(r.upper_bias, start, step)
        A_ins, b, m = affine_backward(ctx, node, [G], gather, masked=True)
        parts.append(A_ins)
        biases.append(b + lb.flatten(2).sum(-1) + ub.flatten(2).sum(-1))
        masses.append(m + lb.abs().flatten(2).sum(-1) + ub.abs().flatten(2).sum(-1))
    A_ins = [None if p[0] is None else torch.cat(p, 1) if len(p) > 1 else p[0] for p in zip(*parts)]
    bias, mass = (torch.cat(biases, 1), torch.cat(masses, 1)) if len(biases) > 1 else (biases[0], masses[0])
    return A_ins, bias, mass


def _with_extra(a: Optional[T], extra, shape: tuple) -> Optional[T]:
    """`a` plus an extra term (a tensor, a SparseTerm or a tuple of them) on a tensor of
    `shape` (the graph's, without B and S; `a` may be None: nothing reached it yet)."""
    if extra is None:
        return a
    if isinstance(extra, tuple):
        for e in extra:
            a = _with_extra(a, e, shape)
        return a
    if isinstance(extra, SparseTerm):
        v = extra.values
        B, S = v.shape[:2]
        if a is None:
            a = torch.zeros(B, S, *shape, dtype=v.dtype, device=v.device)
        return a.reshape(B, S, -1).index_add(-1, extra.index, v.to(a.dtype)).reshape(a.shape)
    return extra if a is None else a + extra


def backward_lower(ctx: BackwardContext, start: str, A: T) -> LinearBounds:
    """Lower bound of `A . start` as a linear function of the graph input.

    A: [B, S, *shape(start)]. Returns LinearBounds over the input (A may be all zero
    when the start does not depend on the input through relaxable ops).
    """
    return backward_from(ctx, *_walk_start(ctx, start, A))


def backward_lower_terms(ctx: BackwardContext, start: str, A: T) -> tuple[Optional[T], T, T]:
    """`backward_lower` as `backward_terms` gives it: (A at the input or None, bias, mass)."""
    return backward_terms(ctx, *_walk_start(ctx, start, A))


def _walk_start(ctx: BackwardContext, start: str, A: T) -> tuple[dict[str, T], int, T, T]:
    """The arguments of a walk from tensor `start` with coefficients A: (As, stop, bias, mass)."""
    graph = ctx.graph
    bias = torch.zeros(A.shape[:2], dtype=A.dtype, device=A.device)
    stop = next(i for i, n in enumerate(graph.nodes) if start in n.outputs) if start != graph.input_name else -1
    return {start: A}, stop, bias, torch.zeros_like(bias)


def backward_from(ctx: BackwardContext, As: dict[str, T], stop: int, bias: T, mass: T) -> LinearBounds:
    """The walk of `backward_lower` from node `stop` (inclusive) down to the input.

    As: the coefficients [B, S, *shape] held so far, by tensor (consumed); bias, mass
    [B, S]: what earlier steps added. A walk that began in another form (patches,
    relaxations/patches.py) hands over here where its form ends.
    """
    A_in, bias, mass = backward_terms(ctx, As, stop, bias, mass)
    if A_in is None:
        A_in = torch.zeros(bias.shape[0], bias.shape[1], *ctx.graph.input_shape, dtype=bias.dtype, device=bias.device)
    return LinearBounds(A_in, bias, mass)


def backward_terms(ctx: BackwardContext, As: dict[str, T], stop: int, bias: T, mass: T
                   ) -> tuple[Optional[T], T, T]:
    """`backward_from`'s walk as (A at the input or None, bias, mass): None when no
    coefficient reached the input (every path stopped at an interval, as IBP's folded
    specification does), so a caller can take the bias as the bound without
    concretising a zero tensor against the box (a product and, in training, its backward)."""
    graph = ctx.graph
    order = list(graph.nodes)
    for node in reversed(order[:stop + 1]):
        check_deadline(ctx.deadline)
        A_outs = [As.pop(o, None) for o in node.outputs]
        if ctx.extra_A:
            A_outs = [_with_extra(a, ctx.extra_A.get(o), graph.shapes.get(o, ())) for a, o in zip(A_outs, node.outputs)]
        if all(a is None for a in A_outs):
            continue
        rule = ctx.rules[node.name]
        variable = [bool(x) and x not in ctx.ev.constants for x in node.inputs]
        if is_affine_node(node, rule, variable):
            A_ins, b, m = affine_step(ctx, node, A_outs)
            for x, a in zip(node.inputs, A_ins):
                if a is not None:
                    As[x] = As[x] + a if x in As else a
        elif ctx.relax and _is_plain_elementwise(ctx, node, rule):
            if ctx.capture is not None:
                ctx.capture[node.name] = A_outs[0]
            a, b, m = _elementwise_backward(ctx, node, rule, A_outs[0])
            x = node.inputs[0]
            As[x] = As[x] + a if x in As else a
        else:
            step = _slots_backward(ctx, node, rule, A_outs[0]) \
                if ctx.relax and is_slot_node(ctx, node, rule) else None
            if step is not None and ctx.capture is not None:
                ctx.capture[node.name] = A_outs[0]
            if step is not None:
                A_ins, b, m = step
                for x, a in zip(node.inputs, A_ins):
                    if a is not None:
                        As[x] = As[x] + a if x in As else a
            else:
                b = torch.zeros_like(bias)
                m = torch.zeros_like(bias)
                for o, a in zip(node.outputs, A_outs):
                    if a is not None:
                        v, mm = interval_terms(a, ctx.table[o], want_mass=ctx.masses)
                        b, m = b + v, (m if mm is None else m + mm)
        bias, mass = bias + b, mass + m
    A_in = As.pop(graph.input_name, None)
    if ctx.extra_A:
        A_in = _with_extra(A_in, ctx.extra_A.get(graph.input_name), graph.input_shape)
    return A_in, bias, mass


def rules_for(graph: Graph) -> dict[str, OpRule]:
    """The rule of every node, looked up once (raises for an unsupported op)."""
    return {n.name: rule_for(n) for n in graph.nodes}
