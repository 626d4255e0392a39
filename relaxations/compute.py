"""Bounds of `C @ output` over input boxes: IBP, CROWN and alpha-CROWN, behind one entry point.

`compute_bounds` is the bounding API of nncert: its `BoundOptions` say what to compute
(method, intermediate method, alpha-CROWN's steps, autograd or not, deadline), its
keyword arguments what restricts or seeds the pass (activation splits, a clipping hook,
given alphas and betas), and it returns a frozen `BoundResult` with typed fields. The
searches, the certificate writers and certified training all call it; none of them
rebuilds a CROWN step or the "best of IBP and CROWN" rule by hand.

Intermediate bounds come first (`relaxations.intermediate`: IBP per tensor, CROWN on
the unstable inputs of relaxations, the two intersected). The final bound uses the requested method and is
always intersected with the interval one (the box bound `C @ [output]`, or the folded
IBP bound, below): every candidate is sound, so their maximum is.

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

import contextlib
import dataclasses
from typing import Mapping, Optional

import torch

from models import Graph, GraphEvaluator
from models.graph import output_simplices
from relaxations.alpha import BetaTerms, WarmStart, initial_alphas, optimise_alpha, project_alphas
from relaxations.alpha_intermediate import optimise_with_intermediate
from relaxations.bounds import (BoundsTable, IntervalBounds, Precision, check_deadline, concretize, selection_lower,
                                simplex_lower, widen_lower)
from relaxations.crown import BackwardContext, backward_lower, backward_lower_terms, is_slot_node, rules_for
from relaxations.intermediate import intermediate_bounds
from relaxations.options import METHODS, BoundOptions, BoundResult, ClipHook, Given
from relaxations.reverse import tightened_box

__all__ = ["BoundOptions", "BoundResult", "ClipHook", "Given", "compute_bounds", "final_lower_from_table",
           "folded_ibp_lower", "intermediate_bounds", "METHODS"]

T = torch.Tensor


def compute_bounds(graph: Graph, box: IntervalBounds, C: Optional[T] = None,
                   options: BoundOptions = BoundOptions(), want_upper: bool = True,
                   ev: Optional[GraphEvaluator] = None, given: Given = Given()) -> BoundResult:
    """Sound bounds of C @ output over each box of the batch: the bounding API.

    box: IntervalBounds with tensors [B, *input_shape] (their dtype and device are the
    pass's). C: [B, S, n_out] or [S, n_out] (default: identity, i.e. bounds of every
    output). `given`: split decisions, a clipping hook, starting alphas and betas, known
    intervals and cuts (`Given`, which says which of them are checked and which trusted).
    """
    if tuple(box.lower.shape[1:]) != tuple(graph.input_shape) or box.lower.shape != box.upper.shape:
        raise ValueError(f"box must have shape [B, {', '.join(map(str, graph.input_shape))}], "
                         f"got {tuple(box.lower.shape)} and {tuple(box.upper.shape)}")
    if ev is None:
        ev = GraphEvaluator(graph, dtype=box.lower.dtype, device=box.lower.device)
    with contextlib.nullcontext() if options.grad else torch.no_grad(), _full_float32(ev.device):
        return _compute(graph, ev, box, C, options, want_upper, given)


@contextlib.contextmanager
def _full_float32(device: torch.device):
    """No TF32 during a bound pass on CUDA.

    cuDNN runs float32 convolutions in TF32 by default (a 10-bit mantissa, relative
    error near 1e-3), far beyond what `Precision`'s float32 margins (1e-5 of the mass)
    absorb: a bound computed so could be wrong. Both switches are restored afterwards,
    so a user's own training keeps its speed.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _compute(graph: Graph, ev: GraphEvaluator, box: IntervalBounds, C: Optional[T], options: BoundOptions,
             want_upper: bool, given: Given) -> BoundResult:
    splits, clip, alphas, betas, known, cuts = (given.splits, given.clip, given.alphas, given.betas, given.known,
                                                given.cuts)
    precision = options.precision or Precision.for_dtype(ev.dtype)
    B = box.lower.shape[0]
    if C is None:
        C = torch.eye(graph.output_size, dtype=ev.dtype, device=ev.device)
    C = C.to(dtype=ev.dtype, device=ev.device)
    shared = C.dim() == 2    # one C for the whole batch
    if shared:
        C = C.unsqueeze(0).expand(B, -1, -1)
    S = C.shape[1]
    rows = torch.cat([C, -C], 1) if want_upper else C
    table, ctx, infeasible = intermediate_bounds(graph, ev, box, options, splits, clip, known)
    if options.tighten_input and splits:
        box, table, ctx, infeasible = _tightened(graph, ev, box, options, given, (table, ctx, infeasible))
    by_name = {n.name: n for n in graph.nodes}
    check_deadline(options.deadline)  # the final pass, too, can be long
    A = rows.reshape(B, rows.shape[1], *graph.output_shape)
    # With slot nodes (products of variables, max-type ops) CROWN walks through lines that
    # on wide boxes can be looser than the op's interval for some rows; before it could,
    # it stopped there, which gave about the folded bound. Keeping that candidate costs
    # one pass that relaxes nothing, and the certificate checker reads no such graph.
    slots = options.fold is None and options.method != "ibp" and any(
        is_slot_node(ctx, n, ctx.rules[n.name]) for n in graph.nodes)
    if (options.folds or slots) and precision.exact:
        # In exact arithmetic |C W| <= |C| |W|: the folded bound alone is never looser. A C
        # shared by the batch is folded once (batch 1) and concretised by matrix products.
        best = folded_ibp_lower(ctx, box, A[:1] if shared and options.method == "ibp" else A, options, precision)
    else:
        best = concretize(A, table[graph.output_name], precision)
        if not precision.exact:   # rows that pick one output: its interval's end, exactly
            best = torch.maximum(best, selection_lower(A, table[graph.output_name]))
        if options.folds or slots:
            best = torch.maximum(best, folded_ibp_lower(ctx, box, A, options, precision))
    simplices = output_simplices(graph)
    if simplices is not None:   # softmax rows at the output: each sums to exactly 1
        best = torch.maximum(best, simplex_lower(A, table[graph.output_name], simplices, precision))
    interval = best
    linear = crown_linear = None
    used_alphas: Mapping[str, T] = {}
    used_betas: Mapping[str, T] = {}
    coefficients: dict = {}
    iterations = 0
    if options.method != "ibp":
        R = A.shape[1]
        given_a = _given_alphas(ctx, alphas, B, R)
        signs = _split_signs(splits, A.dtype)
        given_b = {z: b.to(A.dtype).clamp(min=0) for z, b in (betas or {}).items() if z in signs}
        # Given multipliers of cuts only start alpha-CROWN (the plain pass bounds f itself).
        cut_b = {k: b.to(A.dtype).clamp(min=0) for k, b in (betas or {}).items() if cuts and k in cuts}
        ctx.alphas = given_a
        ctx.extra_A = {z: -b * signs[z] for z, b in given_b.items()} or None
        ctx.capture = coefficients if options.coefficients else None
        linear = backward_lower(ctx, graph.output_name, A)
        ctx.capture = ctx.alphas = ctx.extra_A = None
        best = torch.maximum(best, linear.concretize(box, precision))
        used_alphas, used_betas = given_a or {}, given_b
        if options.method == "alpha-crown":
            crown_linear = linear
            capture = coefficients if options.coefficients else None
            if options.optimise_intermediate and clip is None and options.intermediate == "crown" and not cuts:
                opt, table, empty = optimise_with_intermediate(ctx, box, A, options, precision, signs, capture,
                                                               WarmStart(given_a, given_b))
                infeasible = infeasible | empty
            else:
                opt = optimise_alpha(ctx, box, A, options, precision, BetaTerms(signs, _batch_cuts(cuts, A.dtype)),
                                     capture, WarmStart(given_a, {**given_b, **cut_b}))
            best = torch.maximum(best, opt.lower)
            linear, used_alphas, used_betas, iterations = opt.linear, opt.alphas, opt.betas, opt.iterations
    if bool(infeasible.any()):
        best = torch.where(infeasible.unsqueeze(1), torch.full_like(best, torch.inf), best)
    # Slot nodes' alphas ([B, R, *out, K], not shaped like the node's input) stay inside:
    # the searches and proof logs read `alphas` as elementwise slopes per input element.
    # A warm start without them starts those nodes from CROWN's lines, which is sound.
    used_alphas = {k: v for k, v in used_alphas.items() if not is_slot_node(ctx, by_name[k], ctx.rules[k])} \
        if used_alphas else used_alphas
    return BoundResult(lower=best[:, :S], upper=-best[:, S:] if want_upper else None, table=table,
                       infeasible=infeasible, interval_lower=interval[:, :S], linear=linear,
                       crown_linear=crown_linear, alphas=used_alphas, betas=used_betas,
                       coefficients=coefficients, alpha_iterations=iterations, box=box)


def _tightened(graph: Graph, ev: GraphEvaluator, box: IntervalBounds, options: BoundOptions, given: Given,
               first: tuple[BoundsTable, BackwardContext, T]):
    """The box the split decisions imply (`tightened_box`) and, where it is smaller than
    `box`, every interval bounded again over it; by CROWN in the domains whose box shrank
    to under half its width in some input, when the others take IBP's (intervals by IBP
    alone lose over a small box most of what the narrowing gained). Domains found empty
    are infeasible. `first`: the table, context and infeasible mask of the first pass."""
    splits, clip, known = given.splits, given.clip, given.known
    table, ctx, infeasible = first
    seeds = {z: (s != 0).reshape(s.shape[0], -1).any(0) for z, s in splits.items() if bool((s != 0).any())}
    if not seeds:
        return box, table, ctx, infeasible
    new, empty = tightened_box(ctx, table, seeds)
    if bool((new.lower > box.lower).any() or (new.upper < box.upper).any()):
        halved = ((new.upper - new.lower) < 0.5 * (box.upper - box.lower)).reshape(len(empty), -1).any(1)
        box = new
        table, ctx, again = intermediate_bounds(graph, ev, box, options, splits, clip, known)
        infeasible = infeasible | again
        idx = torch.nonzero(halved & ~infeasible & ~empty).flatten()
        if options.intermediate == "ibp" and options.method != "ibp" and clip is None and len(idx):
            crown = dataclasses.replace(options, intermediate="crown", optimise_intermediate=False)
            sub, _, bad = intermediate_bounds(graph, ev, IntervalBounds(box.lower[idx], box.upper[idx]), crown,
                                              {z: s[idx] for z, s in splits.items()}, None, known)
            for k, b in sub.items():
                t = table[k]
                table[k] = IntervalBounds(t.lower.index_put((idx,), b.lower.to(t.lower.dtype)),
                                          t.upper.index_put((idx,), b.upper.to(t.upper.dtype)))
            infeasible = infeasible.index_put((idx,), infeasible[idx] | bad)
    return box, table, ctx, infeasible | empty


def _batch_cuts(cuts: Optional[Mapping], dtype: torch.dtype) -> dict:
    """Cuts as optimise_alpha takes them: (tensor, s, c) with a row axis, [B, 1, *shape]."""
    return {k: (z, s.to(dtype).unsqueeze(1), c.to(dtype).unsqueeze(1)) for k, (z, s, c) in (cuts or {}).items()}


def _split_signs(splits: Optional[Mapping[str, T]], dtype: torch.dtype) -> dict[str, T]:
    """Split tensors with some decision, as float signs [B, 1, *shape] for the beta terms."""
    return {z: s.to(dtype).unsqueeze(1) for z, s in (splits or {}).items() if bool((s != 0).any())}


def _given_alphas(ctx: BackwardContext, alphas: Optional[Mapping[str, T]], B: int, R: int
                  ) -> Optional[dict[str, T]]:
    """Given alphas completed by the rules' defaults (where NaN or absent), projected into range.

    None: nothing given (CROWN's own slopes). An empty mapping gives every default
    explicitly, so a caller sees in `BoundResult.alphas` what each row used."""
    if alphas is None:
        return None
    full = initial_alphas(ctx, B, R)
    for k, v in alphas.items():
        if k in full:
            v = v.to(full[k].dtype).reshape(full[k].shape)
            full[k] = torch.where(torch.isnan(v), full[k], v)
    project_alphas(ctx, full)
    return full


def folded_ibp_lower(ctx: BackwardContext, box: IntervalBounds, A: T, options: BoundOptions,
                     precision: Precision) -> T:
    """IBP lower bound [B, S] of `A . output` with A folded into the trailing affine ops
    (A [B, S, *shape], or [1, S, *shape] shared by the batch: folded once).

    A backward walk that relaxes nothing (`relax=False`): affine ops pass A back
    exactly, any other op's output is concretised against its interval in `ctx.table`,
    and what reaches the input against the box; the bias and the rounding mass of
    every term are carried, and `concretize` widens the total outward. Differentiable
    (certified training backpropagates through it). Rows are chunked so that no
    coefficient tensor exceeds `options.max_elements`.
    """
    fctx = BackwardContext(ctx.graph, ctx.ev, ctx.table, ctx.rules, cache=None, relax=False,
                           deadline=options.deadline, masses=not precision.exact)
    B, S = A.shape[:2]
    widest = max([box.lower[0].numel()] + [torch.Size(s).numel() for s in ctx.graph.shapes.values() if s])
    chunk = max(1, options.max_elements // max(1, B * widest))
    parts = [_folded_part(fctx, box, A[:, s:s + chunk], precision) for s in range(0, S, chunk)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, 1)


def _folded_part(fctx: BackwardContext, box: IntervalBounds, A: T, precision: Precision) -> T:
    """One chunk of `folded_ibp_lower`, [B, S]. Where no coefficient reaches the input (the
    walk stopped at intervals everywhere: a ReLU before the last affine layers) the
    bound is the bias, widened for its mass: what concretising a zero A would give, less
    a product with the box (and its backward in training)."""
    A_in, bias, mass = backward_lower_terms(fctx, fctx.graph.output_name, A)
    if A_in is not None:
        return concretize(A_in, box, precision, bias, mass)
    value = bias if precision.exact else widen_lower(bias, mass, precision)
    return value.expand(box.lower.shape[0], -1) if value.shape[0] == 1 else value


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
