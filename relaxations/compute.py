"""Bounds of `C @ output` over input boxes: IBP, CROWN and alpha-CROWN.

Intermediate bounds are built in topological order: every tensor gets an interval by
IBP from its inputs' (already tightened) intervals; the inputs of relaxable
elementwise ops additionally get CROWN bounds on their unstable elements, and the two
sound answers are intersected. The final bound uses the requested method and is also
intersected with the IBP one.

IBP's final bound folds the specification into the last layers: C is passed back
exactly through the trailing affine ops (C @ W, C @ b, as auto_LiRPA does) and
concretised against the interval of the first tensor that would need a relaxation.
|C W| <= |C| |W| makes this never looser in exact arithmetic, and it is intersected
with the plain box bound C @ [output] anyway. For margins e_i - e_j it is much tighter:
the box bound counts every shared input twice.

`BoundOptions.deadline` is cooperative: intermediate_bounds checks it once per node,
`_crown_tensor` once per chunk of rows, backward passes once per node, and
compute_bounds before its final pass; past it they raise DeadlineExceeded (never
caught here: no bound exists, so the caller must not take a verdict). Only
alpha-CROWN's optimisation, which has a sound bound after its first step, stops early
instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from models import Graph, GraphEvaluator
from relaxations.alpha import optimise_alpha
from relaxations.bounds import BoundsTable, IntervalBounds, LinearBounds, Precision, check_deadline, widen_lower
from relaxations.forward import forward_constant, forward_input, forward_node
from relaxations.crown import BackwardContext, _is_plain_elementwise, backward_lower, concretize_at, rules_for
from relaxations.ibp import node_inputs, node_interval

__all__ = ["BoundOptions", "BoundResult", "compute_bounds", "final_lower_from_table", "folded_ibp_lower",
           "intermediate_bounds", "METHODS"]

METHODS = ("ibp", "crown", "alpha-crown")
INTERMEDIATE = ("crown", "ibp", "forward")
T = torch.Tensor


@dataclass(frozen=True)
class BoundOptions:
    """Settings of one bound computation (the verifier's config embeds this)."""

    method: str = "crown"
    # How intermediate tensors are bounded: "crown" (backward from each unstable
    # neuron), "ibp", or "forward" (forward-mode linear bounds, cheap when the input
    # has few elements; falls back to intervals where an op has no relaxation).
    intermediate: str = "crown"
    alpha_iterations: int = 20
    alpha_lr: float = 0.25
    max_elements: int = 40_000_000       # A-matrix elements per backward pass (memory guard)
    precision: Optional[Precision] = None  # None: chosen from the dtype
    # time.monotonic() value; past it bound passes raise DeadlineExceeded, except
    # alpha-CROWN's optimisation, which stops early with its best (sound) bound so far.
    deadline: Optional[float] = None
    keep_betas: bool = False               # alpha-CROWN also returns the best betas per row (proof logs)
    # IBP: fold C into the trailing affine ops (see the module docstring). False gives
    # the plain box bound C @ [output], e.g. to match a checker that re-derives only that.
    fold: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not '{self.method}'")
        if self.intermediate not in INTERMEDIATE:
            raise ValueError(f"intermediate must be one of {', '.join(INTERMEDIATE)}, not '{self.intermediate}'")


@dataclass
class BoundResult:
    """Lower bounds [B, S] of C @ output (and upper, when asked), plus what produced them."""

    lower: T
    upper: Optional[T]
    table: BoundsTable
    linear: Optional[LinearBounds] = None
    stats: dict = field(default_factory=dict)


def _widen_interval(b: IntervalBounds, precision: Precision) -> IntervalBounds:
    mass = torch.maximum(b.lower.abs(), b.upper.abs())
    mass = torch.nan_to_num(mass, nan=0.0, posinf=0.0)
    return IntervalBounds(widen_lower(b.lower, mass, precision), -widen_lower(-b.upper, mass, precision))


def _rows_needing_crown(ctx: BackwardContext) -> dict[str, Optional[T]]:
    """Tensor -> None (all elements) or a boolean mask [B, *shape], for relaxable inputs."""
    needs: dict[str, Optional[T]] = {}
    for node in ctx.graph.nodes:
        rule = ctx.rules[node.name]
        if _is_plain_elementwise(ctx, node, rule):
            needs.setdefault(node.inputs[0], None)
    return needs


# A relaxed-clipping hook: (tensor name, LinearBounds of rows over the input, their
# plain lower bounds [B, R]) -> lower bounds [B, R] that are at least as tight and
# still sound on the domain (bab/activation_split.py builds it from split constraints).
ClipHook = Callable[[str, LinearBounds, T], T]


def _crown_tensor(ctx: BackwardContext, name: str, box: IntervalBounds, mask: Optional[T],
                  options: BoundOptions, precision: Precision, sign: Optional[T] = None,
                  keep: Optional[dict] = None, clip: Optional[ClipHook] = None) -> IntervalBounds:
    """Tighten the interval of `name` by CROWN on the elements selected by `mask`.

    With `keep` (a dict) and split signs `sign` [B, *shape], the linear lower bound of
    `-sign * z` over the input is kept for every neuron split in some domain of the
    batch (such neurons are added to the CROWN rows: after the split clamps them they
    look stable and would otherwise be skipped). On the domain, `-sign z <= 0`, so that
    bound is a linear constraint all its inputs satisfy (relaxed clipping). keep[name] =
    LinearBounds (A [B, K, n_in], bias, mass [B, K]) and a mask [B, K] of the domains
    where each kept neuron is actually split. `clip` may tighten each chunk's bounds.
    """
    current = ctx.table[name]
    B = current.lower.shape[0]
    shape = current.lower.shape[1:]
    flat_mask = torch.ones(shape.numel(), dtype=torch.bool, device=current.lower.device) \
        if mask is None else mask.reshape(B, -1).any(0)
    split_any = None
    if keep is not None and sign is not None:
        sflat = sign.reshape(B, -1)
        split_any = (sflat != 0).any(0)
        flat_mask = flat_mask | split_any
    kept: list[tuple[T, T, T, T]] = []
    idx = flat_mask.nonzero().flatten()
    if idx.numel() == 0:
        return current
    widest = max([box.lower[0].numel()] + [s and torch.Size(s).numel() for s in ctx.graph.shapes.values()])
    chunk = max(1, options.max_elements // max(1, 2 * B * widest))
    lower = current.lower.reshape(B, -1).clone()
    upper = current.upper.reshape(B, -1).clone()
    for start in range(0, idx.numel(), chunk):
        check_deadline(options.deadline)
        rows = idx[start:start + chunk]
        r = rows.numel()
        A = torch.zeros(B, 2 * r, shape.numel(), dtype=lower.dtype, device=lower.device)
        ar = torch.arange(r, device=lower.device)
        A[:, ar, rows] = 1.0
        A[:, r + ar, rows] = -1.0
        lin = backward_lower(ctx, name, A.reshape(B, 2 * r, *shape))
        lb = lin.concretize(box, precision)
        if clip is not None:
            lb = torch.maximum(lb, clip(name, lin, lb))
        lower[:, rows] = torch.maximum(lower[:, rows], lb[:, :r])
        upper[:, rows] = torch.minimum(upper[:, rows], -lb[:, r:])
        if split_any is not None and bool(split_any[rows].any()):
            kept.append(_split_rows(lin, rows, split_any[rows], sflat))
    if split_any is not None:
        keep[name] = (LinearBounds(torch.cat([k[0] for k in kept], 1), torch.cat([k[1] for k in kept], 1),
                                   torch.cat([k[2] for k in kept], 1)), torch.cat([k[3] for k in kept], 1)) \
            if kept else None
    return IntervalBounds(lower.reshape(current.lower.shape), upper.reshape(current.upper.shape))


def _split_rows(lin: LinearBounds, rows: T, sel: T, sflat: T) -> tuple[T, T, T, T]:
    """From one chunk's bounds (rows +z then -z), the lower bound of -sign*z of the split
    neurons `rows[sel]`: (A [B, k, n_in], bias, mass [B, k], split mask [B, k])."""
    B, R = lin.bias.shape
    r = R // 2
    s = sflat[:, rows[sel]]                                              # [B, k]
    A = lin.A.detach().reshape(B, R, -1)
    neg = (s > 0)                                    # active split: -z <= 0, the bound of row -z
    Az, An = A[:, :r][:, sel], A[:, r:][:, sel]
    pick = lambda t: torch.where(neg, t[:, r:][:, sel], t[:, :r][:, sel])   # noqa: E731
    return (torch.where(neg.unsqueeze(-1), An, Az), pick(lin.bias.detach()), pick(lin.mass.detach()), s != 0)


def _apply_split(b: IntervalBounds, sign: T) -> IntervalBounds:
    """Clamp by split decisions: +1 means the tensor is >= 0 there, -1 means <= 0."""
    lower = torch.where(sign > 0, b.lower.clamp(min=0), b.lower)
    upper = torch.where(sign < 0, b.upper.clamp(max=0), b.upper)
    return IntervalBounds(lower, upper)


def intermediate_bounds(graph: Graph, ev: GraphEvaluator, box: IntervalBounds, options: BoundOptions,
                        splits: Optional[dict] = None, split_linear: Optional[dict] = None,
                        clip: Optional[ClipHook] = None) -> tuple[BoundsTable, BackwardContext, T]:
    """Interval bounds of every tensor, tightened by CROWN where relaxations need them.

    `splits` maps a tensor name to signs [B, *shape] (+1: >= 0, -1: <= 0, 0: free),
    the activation splits of branch and bound; they clamp the tensor's bounds. Returns
    also a mask [B] of domains whose splits are infeasible (some lower > upper): such a
    domain holds no input at all, so any claim about it is vacuously true.
    `split_linear` (a dict) receives the split neurons' linear bounds (`_crown_tensor`),
    filled in topological order, so `clip` sees those of earlier tensors only.
    """
    precision = options.precision or Precision.for_dtype(ev.dtype)
    table = BoundsTable({graph.input_name: box})
    ctx = BackwardContext(graph, ev, table, rules_for(graph), cache={}, deadline=options.deadline)
    needs = _rows_needing_crown(ctx) if options.method != "ibp" and options.intermediate == "crown" else {}
    fwd = {graph.input_name: forward_input(box)} \
        if options.method != "ibp" and options.intermediate == "forward" else None
    consumers = graph.consumers()
    B = box.lower.shape[0]
    infeasible = torch.zeros(B, dtype=torch.bool, device=box.lower.device)
    for node in graph.nodes:
        check_deadline(options.deadline)
        rule = ctx.rules[node.name]
        outs = node_interval(ev, node, rule, node_inputs(ev, node, table))
        lin = forward_node(ev, node, rule, fwd, table) if fwd is not None else None
        for i, (name, b) in enumerate(zip(node.outputs, outs)):
            table[name] = _widen_interval(b, precision)
            if lin is not None:
                fwd[name] = lin[i]
                table[name] = table[name].intersect(lin[i].concretize(box, precision))
            elif fwd is not None:
                const = forward_constant(table[name], box.lower[0].numel() + 1)
                if const is not None:
                    fwd[name] = const
            if splits and name in splits:
                table[name] = _apply_split(table[name], splits[name])
            if name in needs:
                mask = _unstable_mask(ctx, name, consumers.get(name, []))
                table[name] = _crown_tensor(ctx, name, box, mask, options, precision,
                                            splits.get(name) if splits else None, split_linear, clip)
                if splits and name in splits:
                    table[name] = _apply_split(table[name], splits[name])
            if splits and name in splits:
                table[name], empty = _guard_empty(table[name])
                infeasible |= empty
    return table, ctx, infeasible


def _guard_empty(b: IntervalBounds) -> tuple[IntervalBounds, T]:
    """Mark domains with an empty interval and give them a harmless point interval."""
    bad = b.lower > b.upper
    empty = bad.reshape(bad.shape[0], -1).any(1)
    if not bool(empty.any()):
        return b, empty
    mid = torch.where(bad, (b.lower + b.upper) / 2, b.lower)
    return IntervalBounds(torch.where(bad, mid, b.lower), torch.where(bad, mid, b.upper)), empty


def _unstable_mask(ctx: BackwardContext, name: str, readers: list) -> Optional[T]:
    """Union of the unstable masks of the tensor's relaxable readers (None: all)."""
    b = ctx.table[name]
    mask = None
    for node in readers:
        rule = ctx.rules[node.name]
        if not _is_plain_elementwise(ctx, node, rule):
            continue
        if rule.unstable is None:
            return None
        consts = [ctx.ev.constants.get(x) if x else None for x in node.inputs]
        m = rule.unstable(node, b.lower, b.upper, consts)
        mask = m if mask is None else mask | m
    return mask


def compute_bounds(graph: Graph, box: IntervalBounds, C: Optional[T] = None,
                   options: BoundOptions = BoundOptions(), want_upper: bool = True,
                   ev: Optional[GraphEvaluator] = None, splits: Optional[dict] = None,
                   capture: Optional[dict] = None, split_linear: Optional[dict] = None,
                   clip: Optional[ClipHook] = None) -> BoundResult:
    """Sound bounds of C @ output over each box of the batch.

    box: IntervalBounds with tensors [B, *input_shape]. C: [B, S, n_out] or [S, n_out]
    (default: identity, i.e. bounds of every output). `splits`: activation split
    decisions (see `intermediate_bounds`); with alpha-CROWN they also get beta
    multipliers (beta-CROWN). Domains whose splits are infeasible get +inf lower bounds
    (they contain no input). `capture` receives the final pass's coefficients at
    elementwise outputs, for branching heuristics. `split_linear` and `clip`: see
    `intermediate_bounds` (relaxed clipping of intermediate bounds).
    """
    if tuple(box.lower.shape[1:]) != tuple(graph.input_shape) or box.lower.shape != box.upper.shape:
        raise ValueError(f"box must have shape [B, {', '.join(map(str, graph.input_shape))}], "
                         f"got {tuple(box.lower.shape)} and {tuple(box.upper.shape)}")
    if ev is None:
        ev = GraphEvaluator(graph, dtype=box.lower.dtype, device=box.lower.device)
    precision = options.precision or Precision.for_dtype(ev.dtype)
    B = box.lower.shape[0]
    n_out = graph.output_size
    if C is None:
        C = torch.eye(n_out, dtype=ev.dtype, device=ev.device)
    C = C.to(dtype=ev.dtype, device=ev.device)
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(B, -1, -1)
    S = C.shape[1]
    rows = torch.cat([C, -C], 1) if want_upper else C
    table, ctx, infeasible = intermediate_bounds(graph, ev, box, options, splits, split_linear, clip)
    check_deadline(options.deadline)  # the final pass, too, can be long
    out_b = table[graph.output_name]
    A = rows.reshape(B, rows.shape[1], *graph.output_shape)
    value, mass = concretize_at(A, out_b)
    best = widen_lower(value, mass, precision)
    linear = None
    stats: dict = {}
    if options.method == "ibp" and options.fold:
        best = torch.maximum(best, folded_ibp_lower(ctx, box, A, options, precision))
    if options.method != "ibp":
        with torch.no_grad():
            ctx.capture = capture
            linear = backward_lower(ctx, graph.output_name, A)
            ctx.capture = None
            crown = linear.concretize(box, precision)
        best = torch.maximum(best, crown)
        if options.method == "alpha-crown":
            crown_linear = linear
            opt_lb, linear, stats = optimise_alpha(ctx, box, A, options, precision, splits, capture)
            stats["crown_linear"] = crown_linear
            best = torch.maximum(best, opt_lb)
    if bool(infeasible.any()):
        best = torch.where(infeasible.unsqueeze(1), torch.full_like(best, torch.inf), best)
        stats["infeasible"] = infeasible
    lower = best[:, :S]
    upper = -best[:, S:] if want_upper else None
    return BoundResult(lower, upper, table, linear, stats)


def folded_ibp_lower(ctx: BackwardContext, box: IntervalBounds, A: T, options: BoundOptions,
                     precision: Precision) -> T:
    """IBP lower bound [B, S] of `A . output` with A folded into the trailing affine ops.

    A backward walk that relaxes nothing (`relax=False`): affine ops pass A back
    exactly, any other op's output is concretised against its interval in `ctx.table`,
    and what reaches the input against the box; the bias and the rounding mass of
    every term are carried, and `concretize` widens the total outward. Differentiable
    (certified training backpropagates through it). Rows are chunked so that no
    coefficient tensor exceeds `options.max_elements`.
    """
    fctx = BackwardContext(ctx.graph, ctx.ev, ctx.table, ctx.rules, cache=None, relax=False,
                           deadline=options.deadline)
    B, S = A.shape[:2]
    widest = max([box.lower[0].numel()] + [torch.Size(s).numel() for s in ctx.graph.shapes.values() if s])
    chunk = max(1, options.max_elements // max(1, B * widest))
    parts = [backward_lower(fctx, ctx.graph.output_name, A[:, s:s + chunk]).concretize(box, precision)
             for s in range(0, S, chunk)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def final_lower_from_table(graph: Graph, ev: GraphEvaluator, box: IntervalBounds, table: BoundsTable, A: T,
                           options: BoundOptions, alphas: Optional[dict] = None,
                           extra_A: Optional[dict] = None) -> T:
    """Lower bound [B, S] of `A . output` from intervals already in `table`: one backward pass.

    Unlike `compute_bounds`, no intermediate bound is recomputed: the caller supplies
    them (with alpha slopes per node [B, S, *shape] and beta terms per tensor as
    `extra_A`, as alpha/beta-CROWN found them). Branching heuristics use this to
    estimate a child's bound cheaply by editing one neuron's interval in a copy of the
    parent's table. The result is sound whenever the table's intervals are, but it is
    only used to rank choices, never as a verdict.
    """
    precision = options.precision or Precision.for_dtype(ev.dtype)
    ctx = BackwardContext(graph, ev, table, rules_for(graph), alphas=alphas, cache={}, extra_A=extra_A)
    with torch.no_grad():
        return backward_lower(ctx, graph.output_name, A).concretize(box, precision)
