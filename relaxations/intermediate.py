"""Interval bounds of every tensor of the graph, tightened by CROWN where relaxations need them.

Intermediate bounds are built in topological order: every tensor gets an interval by
IBP from its inputs' (already tightened) intervals; the inputs of relaxable
elementwise ops additionally get CROWN bounds on their unstable elements, and the two
sound answers are intersected. Activation splits clamp a tensor's interval before and
after CROWN; a clipping hook (`ClipHook`) may tighten CROWN's rows, and receives the
split neurons' linear bounds (relaxed clipping, bab/clip_hooks.py).

`relaxations.compute.compute_bounds` calls `intermediate_bounds` first and then bounds
`C @ output` from the table it returns; alpha-CROWN over the intermediate bounds
(`relaxations.alpha_intermediate`) starts from that table too.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from models import Graph, GraphEvaluator
from relaxations.bounds import BallBox, BoundsTable, IntervalBounds, LinearBounds, Precision, check_deadline
from relaxations.crown import BackwardContext, _is_plain_elementwise, backward_lower, is_slot_node, rules_for
from relaxations.forward import forward_constant, forward_input, forward_node
from relaxations.ibp import node_inputs, sound_interval
from relaxations.l2 import affine_in_input, tensor_balls
from relaxations.options import BoundOptions, ClipHook
from relaxations.patches import PatchBounds, patches_lower

__all__ = ["intermediate_bounds"]

T = torch.Tensor


def _rows_needing_crown(ctx: BackwardContext) -> dict[str, Optional[T]]:
    """Tensor -> None (all elements) or a boolean mask [B, *shape], for relaxable inputs.

    The variable inputs of slot nodes (products, max-type ops) are included unless a
    relaxed elementwise op produced them: that op's own input is CROWN-bounded already,
    and CROWN through its one relaxation would add little to the interval it gives."""
    needs: dict[str, Optional[T]] = {}
    producer = ctx.graph.producer()
    for node in ctx.graph.nodes:
        rule = ctx.rules[node.name]
        if _is_plain_elementwise(ctx, node, rule):
            needs.setdefault(node.inputs[0], None)
        elif is_slot_node(ctx, node, rule):
            for x in node.inputs:
                if not x or x in ctx.ev.constants or x == ctx.graph.input_name:
                    continue
                p = producer.get(x)
                if p is None or not _is_plain_elementwise(ctx, p, ctx.rules[p.name]):
                    needs.setdefault(x, None)
    return needs


def _crown_tensor(ctx: BackwardContext, name: str, box: IntervalBounds, mask: Optional[T],
                  options: BoundOptions, precision: Precision, sign: Optional[T] = None,
                  clip: Optional[ClipHook] = None) -> IntervalBounds:
    """Tighten the interval of `name` by CROWN on the elements selected by `mask`.

    With `keep` (`clip.split_linear`, when a dict) and split signs `sign` [B, *shape],
    the linear lower bound of `-sign * z` over the input is kept for every neuron split
    in some domain of the batch (such neurons are added to the CROWN rows: after the
    split clamps them they look stable and would otherwise be skipped). On the domain,
    `-sign z <= 0`, so that bound is a linear constraint all its inputs satisfy (relaxed
    clipping). keep[name] = LinearBounds (A [B, K, n_in], bias, mass [B, K]) and a mask
    [B, K] of the domains where each kept neuron is actually split. `clip` may tighten
    each chunk's bounds.
    """
    keep = getattr(clip, "split_linear", None)
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
        # Over an l2 ball the dense walk, which concretises against the ball and takes
        # SDP-CROWN's bias at each ReLU (the patches walk does neither, concretising
        # against the box; what that costs in proofs: BENCHMARKS.md, session 23).
        lin = patches_lower(ctx, name, rows, B) if options.patches and not isinstance(box, BallBox) else None
        if lin is None:
            A = torch.zeros(B, 2 * r, shape.numel(), dtype=lower.dtype, device=lower.device)
            ar = torch.arange(r, device=lower.device)
            A[:, ar, rows] = 1.0
            A[:, r + ar, rows] = -1.0
            lin = backward_lower(ctx, name, A.reshape(B, 2 * r, *shape))
        lb = lin.concretize(box, precision)
        if isinstance(lin, PatchBounds) and (clip is not None or split_any is not None):
            lin = lin.linear()
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
                        splits: Optional[Mapping[str, T]] = None, clip: Optional[ClipHook] = None,
                        known: Optional[Mapping[str, IntervalBounds]] = None
                        ) -> tuple[BoundsTable, BackwardContext, T]:
    """Interval bounds of every tensor, tightened by CROWN where relaxations need them.

    `splits` maps a tensor name to signs [B, *shape] (+1: >= 0, -1: <= 0, 0: free),
    the activation splits of branch and bound; they clamp the tensor's bounds. Returns
    also a mask [B] of domains whose splits are infeasible (some lower > upper): such a
    domain holds no input at all, so any claim about it is vacuously true.
    `clip` tightens CROWN's chunks (`ClipHook`); its `split_linear` receives the split
    neurons' linear bounds. `known` intervals (see `compute_bounds`) are intersected
    with each tensor's interval before CROWN picks its unstable rows, so a neuron an
    LP proved stable is neither bounded again nor relaxed.
    """
    precision = options.precision or Precision.for_dtype(ev.dtype)
    table = BoundsTable({graph.input_name: box})
    ctx = BackwardContext(graph, ev, table, rules_for(graph), cache={}, deadline=options.deadline)
    if isinstance(box, BallBox) and options.sdp_crown and options.method != "ibp":
        ctx.balls = tensor_balls(graph, ev, box, ctx)
    needs = _rows_needing_crown(ctx) if options.method != "ibp" and options.intermediate == "crown" else {}
    # Over an l2 ball the tensors affine in the input are bounded through the ball, every
    # element (IBP goes on from them all), whatever the method (relaxations/l2.py).
    whole = affine_in_input(ctx) if isinstance(box, BallBox) else set()
    for name in whole:
        needs.setdefault(name, None)
    fwd = {graph.input_name: forward_input(box)} \
        if options.method != "ibp" and options.intermediate == "forward" else None
    consumers = graph.consumers()
    B = box.lower.shape[0]
    infeasible = torch.zeros(B, dtype=torch.bool, device=box.lower.device)
    for node in graph.nodes:
        check_deadline(options.deadline)
        rule = ctx.rules[node.name]
        outs = sound_interval(ev, node, rule, node_inputs(ev, node, table), precision)
        lin = forward_node(ev, node, rule, fwd, table) if fwd is not None else None
        for i, (name, b) in enumerate(zip(node.outputs, outs)):
            table[name] = b
            if lin is not None:
                fwd[name] = lin[i]
                table[name] = table[name].intersect(lin[i].concretize(box, precision))
            elif fwd is not None:
                const = forward_constant(table[name], box.lower[0].numel() + 1)
                if const is not None:
                    fwd[name] = const
            if known and name in known:
                table[name] = _intersect_known(table[name], known[name])
            if splits and name in splits:
                table[name] = _apply_split(table[name], splits[name])
            if name in needs:
                every = name in whole or options.crown_every_element
                mask = None if every else _unstable_mask(ctx, name, consumers.get(name, []))
                table[name] = _crown_tensor(ctx, name, box, mask, options, precision,
                                            splits.get(name) if splits else None, clip)
                if splits and name in splits:
                    table[name] = _apply_split(table[name], splits[name])
            if splits and name in splits:
                table[name], empty = _guard_empty(table[name])
                infeasible |= empty
    return table, ctx, infeasible


def _intersect_known(b: IntervalBounds, k: IntervalBounds) -> IntervalBounds:
    """b intersected with a known interval [1 or B, *shape] (broadcast over the batch)."""
    lo = k.lower.to(dtype=b.lower.dtype, device=b.lower.device)
    hi = k.upper.to(dtype=b.upper.dtype, device=b.upper.device)
    return IntervalBounds(torch.maximum(b.lower, lo), torch.minimum(b.upper, hi))


def _guard_empty(b: IntervalBounds) -> tuple[IntervalBounds, T]:
    """Mark domains with an empty interval and give them a harmless point interval."""
    bad = b.lower > b.upper
    empty = bad.reshape(bad.shape[0], -1).any(1)
    if not bool(empty.any()):
        return b, empty
    mid = torch.where(bad, (b.lower + b.upper) / 2, b.lower)
    return IntervalBounds(torch.where(bad, mid, b.lower), torch.where(bad, mid, b.upper)), empty


def _unstable_mask(ctx: BackwardContext, name: str, readers: list) -> Optional[T]:
    """Union of the unstable masks of the tensor's relaxable readers (None: all).

    A slot node's lines are exact on an input element only where its interval is a
    point, so for such a reader every element of nonzero width counts."""
    b = ctx.table[name]
    mask = None
    for node in readers:
        rule = ctx.rules[node.name]
        if is_slot_node(ctx, node, rule):
            m = b.upper > b.lower
        elif not _is_plain_elementwise(ctx, node, rule):
            continue
        elif rule.unstable is None:
            return None
        else:
            consts = [ctx.ev.constants.get(x) if x else None for x in node.inputs]
            m = rule.unstable(node, b.lower, b.upper, consts)
        mask = m if mask is None else mask | m
    return mask
