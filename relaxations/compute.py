"""Bounds of `C @ output` over input boxes: IBP, CROWN and alpha-CROWN, behind one entry point.

`compute_bounds` is the bounding API of nncert: its `BoundOptions` say what to compute
(method, intermediate method, alpha-CROWN's steps, autograd or not, deadline), its
keyword arguments what restricts or seeds the pass (activation splits, a clipping hook,
given alphas and betas), and it returns a frozen `BoundResult` with typed fields. The
searches, the certificate writers and certified training all call it; none of them
rebuilds a CROWN step or the "best of IBP and CROWN" rule by hand.

Intermediate bounds are built in topological order: every tensor gets an interval by
IBP from its inputs' (already tightened) intervals; the inputs of relaxable
elementwise ops additionally get CROWN bounds on their unstable elements, and the two
sound answers are intersected. The final bound uses the requested method and is
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
from dataclasses import dataclass, field
from typing import Mapping, Optional, Protocol

import torch

from models import Graph, GraphEvaluator
from relaxations.alpha import initial_alphas, optimise_alpha, project_alphas
from relaxations.bounds import BallBox, BoundsTable, IntervalBounds, LinearBounds, Precision, check_deadline, concretize
from relaxations.forward import forward_constant, forward_input, forward_node
from relaxations.crown import BackwardContext, _is_plain_elementwise, backward_lower, is_slot_node, rules_for
from relaxations.ibp import node_inputs, sound_interval
from relaxations.l2 import affine_in_input, tensor_balls
from relaxations.patches import PatchBounds, patches_lower
from relaxations.reverse import tightened_box

__all__ = ["BoundOptions", "BoundResult", "ClipHook", "compute_bounds", "final_lower_from_table",
           "folded_ibp_lower", "intermediate_bounds", "METHODS"]

METHODS = ("ibp", "crown", "alpha-crown")
INTERMEDIATE = ("crown", "ibp", "forward")
T = torch.Tensor


@dataclass(frozen=True)
class BoundOptions:
    """What one bound computation computes (the verifier's config embeds this)."""

    method: str = "crown"
    # How intermediate tensors are bounded: "crown" (backward from each unstable
    # neuron), "ibp", or "forward" (forward-mode linear bounds, cheap when the input
    # has few elements; falls back to intervals where an op has no relaxation).
    intermediate: str = "crown"
    alpha_iterations: int = 20
    alpha_lr: float = 0.25
    max_elements: int = 40_000_000       # A-matrix elements per backward pass (memory guard)
    # None: chosen from the dtype. Precision.none(): no rounding margins, bounds sound in
    # exact arithmetic only (certified training's losses; never for a verdict).
    precision: Optional[Precision] = None
    # time.monotonic() value; past it bound passes raise DeadlineExceeded, except
    # alpha-CROWN's optimisation, which stops early with its best (sound) bound so far.
    deadline: Optional[float] = None
    keep_betas: bool = False               # alpha-CROWN also returns the best betas per row (proof logs)
    # Fold C into the trailing affine ops for the interval bound (see the module
    # docstring). None: IBP folds, CROWN and alpha-CROWN take the plain box bound (the
    # checker re-derives that one), except on graphs with slot nodes (no checker reads
    # those; see `_compute`); True also folds for them (certified training).
    fold: Optional[bool] = None
    # Keep the coefficient at every relaxed elementwise node's output from the final
    # pass (`BoundResult.coefficients`): branching heuristics score neurons with them.
    coefficients: bool = False
    # Keep autograd through the bound (certified training backpropagates through it).
    # False runs the passes under no_grad (alpha-CROWN still differentiates its own steps).
    grad: bool = False
    # alpha-CROWN also optimises the intermediate bounds: alphas per CROWN-bounded tensor
    # and earlier relaxed node, every interval recomputed per step; `BoundResult.table`
    # is then the best interval per element (relaxations/alpha_intermediate.py). Falls
    # back to plain alpha-CROWN with a clip hook or with intermediate != "crown".
    optimise_intermediate: bool = False
    # time.monotonic() value past which that optimisation stops with its best so far (its
    # passes, unlike the ones `deadline` governs, never raise): a share of the budget.
    optimise_deadline: Optional[float] = None
    # Row thresholds [R] (or [B, R]): alpha-CROWN's optimisation stops once its best bound
    # of every row of every domain is above them (the rows are proved: more steps change
    # no answer). Only without `coefficients`, which come from the last step.
    stop_above: Optional[torch.Tensor] = None
    # CROWN's intermediate rows walk back through convolutions as per-row windows
    # (patches, relaxations/patches.py) instead of whole feature maps: the same bound up
    # to float rounding, less work on CNNs. The final rows and alpha passes stay dense.
    patches: bool = True
    # With split decisions: the input box each domain's decisions imply (constraint
    # propagation back through ReLUs and affine nodes, relaxations/reverse.py), and every
    # bound computed again over it where it is smaller (`BoundResult.box`).
    tighten_input: bool = False
    # alpha-CROWN keeps a ReLU's alphas only at its unstable elements when they are few
    # (crown.SparseAlpha): the same bounds, less work per step on wide layers.
    sparse_alpha: bool = True
    # Over an l2 ball (a BallBox input), each ReLU's bias is also SDP-CROWN's where that is
    # higher (relaxations/sdp_crown.py, the balls from relaxations/l2.py).
    sdp_crown: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not '{self.method}'")
        if self.intermediate not in INTERMEDIATE:
            raise ValueError(f"intermediate must be one of {', '.join(INTERMEDIATE)}, not '{self.intermediate}'")

    @property
    def folds(self) -> bool:
        return self.method == "ibp" if self.fold is None else bool(self.fold)


@dataclass(frozen=True)
class BoundResult:
    """Sound bounds of C @ output over each box of the batch, and what produced them.

    lower [B, S] (upper [B, S] when asked) are the best of every bound computed: the
    interval bound, CROWN's and alpha-CROWN's. Domains whose splits are infeasible hold
    no input: their lower bounds are +inf and `infeasible` [B] marks them.
    """

    lower: T
    upper: Optional[T]
    table: BoundsTable                       # intervals of every tensor, keyed by name
    infeasible: T                            # [B] bool
    interval_lower: T                        # [B, S]: the interval part alone (box or folded IBP)
    # The linear bound over the input that gave the CROWN part of the rows (alpha's best
    # per row when optimised): A [B, R, *input_shape], R = S, or 2S with the upper rows.
    linear: Optional[LinearBounds] = None
    crown_linear: Optional[LinearBounds] = None   # plain CROWN's, before alpha-CROWN changed it
    alphas: Mapping[str, T] = field(default_factory=dict)   # node -> [B, R, *shape]: used per row
    betas: Mapping[str, T] = field(default_factory=dict)    # tensor -> [B, R, *shape] (keep_betas)
    coefficients: Mapping[str, T] = field(default_factory=dict)  # node -> A at its output
    alpha_iterations: int = 0
    # The input box the bounds hold over: the given one, or with `tighten_input` the box
    # the split decisions narrowed it to (relaxations/reverse.py).
    box: Optional[IntervalBounds] = None


class ClipHook(Protocol):
    """Relaxed clipping of intermediate bounds (bab/clip_hooks.py builds them).

    Called with a tensor's name, the LinearBounds of a chunk of its rows over the input
    and their plain lower bounds [B, R]; returns lower bounds at least as tight that are
    still sound on the domain. `split_linear`, when a dict, receives the split neurons'
    linear bounds (`_crown_tensor`), filled in topological order, so the hook sees those
    of earlier tensors only; None: nothing is collected.
    """

    split_linear: Optional[dict]

    def __call__(self, name: str, lin: LinearBounds, lb: T) -> T: ...


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
    split_linear = getattr(clip, "split_linear", None)
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
                mask = None if name in whole else _unstable_mask(ctx, name, consumers.get(name, []))
                table[name] = _crown_tensor(ctx, name, box, mask, options, precision,
                                            splits.get(name) if splits else None, split_linear, clip)
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


def compute_bounds(graph: Graph, box: IntervalBounds, C: Optional[T] = None,
                   options: BoundOptions = BoundOptions(), want_upper: bool = True,
                   ev: Optional[GraphEvaluator] = None, *, splits: Optional[Mapping[str, T]] = None,
                   clip: Optional[ClipHook] = None, alphas: Optional[Mapping[str, T]] = None,
                   betas: Optional[Mapping[str, T]] = None,
                   known: Optional[Mapping[str, IntervalBounds]] = None,
                   cuts: Optional[Mapping] = None) -> BoundResult:
    """Sound bounds of C @ output over each box of the batch: the bounding API.

    box: IntervalBounds with tensors [B, *input_shape] (their dtype and device are the
    pass's). C: [B, S, n_out] or [S, n_out] (default: identity, i.e. bounds of every
    output). `splits`: activation split decisions, tensor -> signs [B, *shape] (see
    `intermediate_bounds`); with alpha-CROWN they also get beta multipliers
    (beta-CROWN). `clip`: relaxed clipping of the intermediate bounds (`ClipHook`).
    `alphas` (node -> [B, R, *shape], NaN: the rule's default) and `betas` (split
    tensor -> [B, R, *shape]) are given relaxation parameters per row, R = S (2S with
    `want_upper`): CROWN uses them as they are, alpha-CROWN starts from them. Given
    values are projected into their sound range first (alphas into the rule's bounds,
    betas to >= 0), so no value a caller passes can make a bound unsound.
    `known`: tensor -> IntervalBounds [1 or B, *shape] proved beforehand (an LP
    refinement) over a region that contains every box of the batch; each is
    intersected with the tensor's interval. Unlike alphas they cannot be checked here:
    a caller passing a wrong interval gets a wrong bound.
    `cuts`: key -> (tensor, s, c) [B, *shape] each, constraints s*z >= s*c (where s != 0)
    that the caller knows hold on each box's domain (general activation splits); alpha-CROWN
    dualises them with multipliers like beta-CROWN's (`relaxations.alpha.optimise_alpha`),
    started from `betas[key]` [B, R, *shape] where given.
    Like `known`, they are trusted: a wrong cut gives a wrong bound.
    """
    if tuple(box.lower.shape[1:]) != tuple(graph.input_shape) or box.lower.shape != box.upper.shape:
        raise ValueError(f"box must have shape [B, {', '.join(map(str, graph.input_shape))}], "
                         f"got {tuple(box.lower.shape)} and {tuple(box.upper.shape)}")
    if ev is None:
        ev = GraphEvaluator(graph, dtype=box.lower.dtype, device=box.lower.device)
    with contextlib.nullcontext() if options.grad else torch.no_grad(), _full_float32(ev.device):
        return _compute(graph, ev, box, C, options, want_upper, splits, clip, alphas, betas, known, cuts)


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
             want_upper: bool, splits: Optional[Mapping[str, T]], clip: Optional[ClipHook],
             alphas: Optional[Mapping[str, T]], betas: Optional[Mapping[str, T]],
             known: Optional[Mapping[str, IntervalBounds]] = None, cuts: Optional[Mapping] = None) -> BoundResult:
    precision = options.precision or Precision.for_dtype(ev.dtype)
    B = box.lower.shape[0]
    if C is None:
        C = torch.eye(graph.output_size, dtype=ev.dtype, device=ev.device)
    C = C.to(dtype=ev.dtype, device=ev.device)
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(B, -1, -1)
    S = C.shape[1]
    rows = torch.cat([C, -C], 1) if want_upper else C
    table, ctx, infeasible = intermediate_bounds(graph, ev, box, options, splits, clip, known)
    if options.tighten_input and splits:
        box, table, ctx, infeasible = _tightened(graph, ev, box, options, splits, clip, known, table, ctx,
                                                 infeasible)
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
        # In exact arithmetic |C W| <= |C| |W|: the folded bound alone is never looser.
        best = folded_ibp_lower(ctx, box, A, options, precision)
    else:
        best = concretize(A, table[graph.output_name], precision)
        if options.folds or slots:
            best = torch.maximum(best, folded_ibp_lower(ctx, box, A, options, precision))
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
                from relaxations.alpha_intermediate import optimise_with_intermediate  # it imports this module
                opt, table, empty = optimise_with_intermediate(ctx, box, A, options, precision, signs, capture,
                                                               given_a, given_b)
                infeasible = infeasible | empty
            else:
                opt = optimise_alpha(ctx, box, A, options, precision, signs, capture, given_a, {**given_b, **cut_b},
                                     _batch_cuts(cuts, A.dtype))
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


def _tightened(graph: Graph, ev: GraphEvaluator, box: IntervalBounds, options: BoundOptions, splits, clip,
               known, table: BoundsTable, ctx: BackwardContext, infeasible: T):
    """The box the split decisions imply (`tightened_box`) and, where it is smaller than
    `box`, every interval bounded again over it; by CROWN in the domains whose box shrank
    to under half its width in some input, when the others take IBP's (intervals by IBP
    alone lose over a small box most of what the narrowing gained). Domains found empty
    are infeasible."""
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
