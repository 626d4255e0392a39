"""Certified training: IBP and CROWN-IBP losses for a plain `nn.Module`, from a training loop.

    >>> from verifier import certified_loss, CertifiedOptions, EpsilonSchedule, Perturbation
    >>> schedule = EpsilonSchedule(eps_max=0.1, warmup_epochs=2, ramp_epochs=10)
    >>> loss, info = certified_loss(model, x, y, schedule(epoch + step / steps), method="ibp")
    >>> loss.backward()
    >>> options = CertifiedOptions(perturbation=Perturbation(norm="2", lower=-1.0, upper=1.0))
    >>> loss, info = certified_loss(model, x, y, 0.5, method="crown-ibp", options=options)   # l2 balls

The bounds are the verifier's own: the module is turned into our `Graph` (by
`models.from_torch`, whose constants are the module's live parameters) and bounded by
`relaxations`, so a model trained here is bounded at test time by the relaxations that
were optimised during training (there with float rounding's margins, which a loss term
does without: `Precision.none()`, fewer and smaller tensors per step). Nothing is
detached on the way: both losses call `compute_bounds` with `grad=True` (verification
runs it without autograd); its IBP
folds the margin matrix into the last affine layers, as auto_LiRPA's does, and
CROWN-IBP asks it for the folded IBP bound beside CROWN's (`fold=True`).

Loss fusion: the robust cross-entropy is computed from the lower bounds `lb_j` of the
margins `y_true - y_j` directly, as the cross-entropy of the logits `[0, -lb_j]` with
target 0, i.e. `log(1 + sum_j exp(-lb_j))`. This equals the cross-entropy of the
worst-case logits (true class at its lower bound, every other class at its upper
bound relative to it) but needs one bound per margin instead of separate upper and
lower bounds of every logit, and it is tighter because each margin is bounded as one
linear function: the margin matrix is folded into the last affine layer(s) and
concretised against the interval of their input, so an input shared by y_true and
y_j is not counted twice.
"""
from __future__ import annotations

import functools
import inspect
import weakref
from dataclasses import dataclass
from typing import Callable, Optional, ParamSpec, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from models import Graph, GraphEvaluator, Node
from models.from_torch import graph_from_module, structure_key
from relaxations import BallBox, BoundOptions, IntervalBounds, compute_bounds, rule_for
from relaxations.bounds import Precision
from relaxations.ibp import affine_interval, node_inputs
from relaxations.registry import is_affine_node
from verifier.config_checks import instance_of
from verifier.pytorch.perturbation import Perturbation, checked_perturbation

__all__ = ["certified_loss", "CertifiedInfo", "CertifiedOptions", "EpsilonSchedule", "Perturbation", "margin_matrix",
           "margin_bounds", "forward_with_statistics", "adversarial_points", "BOUND_METHODS",
           "ibp_tightness", "module_graph", "pair_rows", "TRAINING_METHODS"]

T = torch.Tensor
P = ParamSpec("P")
R = TypeVar("R")
BOUND_METHODS = ("ibp", "crown-ibp", "crown")
# sabr: IBP over a small box around an adversarial point (Mueller et al., ICLR 2023,
# "Certified Training: Small Boxes are All You Need"); mtl-ibp: a convex mix of the IBP
# loss and an adversarial one (De Palma et al., ICLR 2024, "Expressive Losses for
# Verified Robustness via Convex Combinations").
TRAINING_METHODS = BOUND_METHODS + ("sabr", "mtl-ibp")

# Per-module cache of (structure key, graph). Weights are live, so a graph stays valid
# across optimiser steps; the key changes when the structure or a parameter object does.
_GRAPHS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, Graph]]" = weakref.WeakKeyDictionary()


def module_graph(model: nn.Module, input_shape: tuple[int, ...]) -> Graph:
    """The cached `Graph` of `model` for one example of shape `input_shape` (batch dim 1)."""
    key = structure_key(model, input_shape)
    cached = _GRAPHS.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    graph = graph_from_module(model, input_shape)
    _GRAPHS[model] = (key, graph)
    return graph


def margin_matrix(y: T, n_classes: int, dtype: Optional[torch.dtype] = None) -> T:
    """C [B, K-1, K] with rows e_y - e_j for every j != y (in increasing j), in `dtype`
    (the default dtype when None)."""
    # Each class's rows picked from `pair_rows` by index: a boolean mask would cost a
    # nonzero() and a host sync every training step.
    rows = _pair_rows(n_classes, dtype or torch.get_default_dtype(), y.device)
    return rows.reshape(n_classes, n_classes - 1, n_classes)[y]


def pair_rows(n_classes: int, dtype: torch.dtype, device: torch.device) -> T:
    """The margin rows e_a - e_b of every ordered pair a != b, [K(K-1), K], in the order
    `margin_matrix` lists them: the rows of class a are a * (K-1) .. a * (K-1) + K-2."""
    return _pair_rows(n_classes, dtype, torch.device(device)).clone()


@functools.lru_cache(maxsize=32)
def _pair_rows(n_classes: int, dtype: torch.dtype, device: torch.device) -> T:
    """`pair_rows`, made once per class count, dtype and device: a training step would
    otherwise build it (eye, aranges, an index) twice (BENCHMARKS.md, session 36).
    Shared, so never written to: callers index it or pass it to the bounds, which only read."""
    eye = torch.eye(n_classes, dtype=dtype, device=device)
    j = torch.arange(n_classes - 1, device=device).unsqueeze(0)
    a = torch.arange(n_classes, device=device).unsqueeze(1)
    others = j + (j >= a).to(j.dtype)                                   # [K, K-1]
    return (eye.unsqueeze(1) - eye[others]).reshape(-1, n_classes)


def _valid_range(perturbation: Perturbation, x: T) -> tuple[float | T, float | T]:
    """The perturbation's range for the examples of x [B, *example]: numbers as they are, a
    range per feature [*example] in x's dtype and on its device, for clamping."""
    ends = perturbation.range_for(tuple(x.shape[1:]))
    if all(isinstance(e, float) for e in ends):
        return ends
    # One end a tensor: both are (torch.clamp takes two numbers or two tensors, not one of each).
    return tuple(torch.as_tensor(e, dtype=x.dtype, device=x.device) for e in ends)


def _box(x: T, eps: float | T, perturbation: Perturbation, shape: tuple[int, ...]) -> IntervalBounds:
    """The batch of l-inf boxes x +- eps clipped to the perturbation's range, as
    [B, *shape]; eps a number, or one per example ([B] or [B, 1, ...]). norm "2": that box
    carrying the l2 ball of radius eps around x (a `BallBox`: the region is the ball
    within the range)."""
    xb = x.reshape(x.shape[0], *shape)
    radius = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if radius.dim() >= 1 and radius.numel() == x.shape[0] and x.shape[0] > 1:
        radius = radius.reshape(-1)
        eps = radius.reshape(-1, *([1] * len(shape)))
    lower, upper = _valid_range(perturbation, x)
    lo, hi = (xb - eps).clamp(min=lower, max=upper), (xb + eps).clamp(min=lower, max=upper)
    if perturbation.norm == "2":
        return BallBox(lo, hi, xb, radius.expand(x.shape[0]) if radius.dim() == 0 else radius.reshape(-1))
    return IntervalBounds(lo, hi)


def _crown_lower(graph: Graph, ev: GraphEvaluator, box: IntervalBounds, C: T) -> tuple[T, T]:
    """CROWN-IBP lower bounds of C @ output, with autograd: (max(CROWN, IBP), IBP), each [B, S].

    One call of the bounding API: IBP intervals for every intermediate tensor, one
    CROWN pass from the output, the interval bound folded as method "ibp" folds it, all
    with autograd. `interval_lower` is exactly `compute_bounds(..., method="ibp")`'s bound.
    """
    options = BoundOptions(method="crown", intermediate="ibp", fold=True, grad=True, precision=Precision.none())
    res = compute_bounds(graph, box, C, options, want_upper=False, ev=ev)
    return res.lower, res.interval_lower


def forward_with_statistics(model: nn.Module, x: T) -> tuple[T, dict[str, T]]:
    """`model(x)` and, for every BatchNorm in training mode, the batch's mean and biased
    variance at its input, keyed by the graph constants they stand in for
    ("<module>.running_mean", "<module>.running_var"). The forward is the module's own,
    so it updates running statistics as any training step does."""
    stats: dict[str, T] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            def hook(mod: nn.Module, inputs: tuple, name: str = name) -> None:
                h = inputs[0]
                dims = [0] + list(range(2, h.dim()))
                stats[f"{name}.running_mean"] = h.mean(dims)
                stats[f"{name}.running_var"] = h.var(dims, unbiased=False)
            hooks.append(m.register_forward_pre_hook(hook))
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out, stats


def _batch_statistics(model: nn.Module, x: T) -> dict[str, T]:
    """`forward_with_statistics`'s statistics, leaving the running ones as they were."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if not bns:
        return {}
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in bns]
    try:
        return forward_with_statistics(model, x)[1]
    finally:
        with torch.no_grad():
            for m, buffers in zip(bns, saved):
                for k, v in buffers.items():
                    getattr(m, k).copy_(v)


def margin_bounds(model: nn.Module, x: T, y: T, eps: float | T, method: str = "ibp", beta: float = 1.0,
                  perturbation: Perturbation = Perturbation(), batch_stats: Optional[dict[str, T]] = None) -> T:
    """Lower bounds [B, K-1] of the margins y_true - y_j over each clipped box, with autograd.

    ibp: interval bound propagation with the margin matrix folded into the last affine
    layers. crown: CROWN for every intermediate bound as well as the margins (with the
    folded IBP bound as a floor), the tightest and by far the costliest per step (for
    small nets; BENCHMARKS.md). crown-ibp: beta * max(CROWN, IBP) + (1 - beta) * IBP, where CROWN uses IBP
    intermediate bounds (Zhang et al., "Towards Stable and Efficient Training of
    Verifiably Robust Neural Networks") and IBP is the folded bound of method "ibp"
    (beta 0 runs no CROWN pass). Both are computed without rounding margins
    (`Precision.none()`): they are loss terms, sound in exact arithmetic; `nncert verify`
    bounds the trained model with its margins.
    Taking max(CROWN, IBP) for the CROWN part is still sound and never looser than
    either (the folded IBP bound can beat CROWN on some rows).

    A BatchNorm in training mode normalises by the statistics of the clean batch (as
    auto_LiRPA does): the bounds are those of the network with those statistics as its
    constants, with autograd through them. `batch_stats` (from `forward_with_statistics`)
    saves a forward; without it they are computed here, running statistics untouched.
    `perturbation` (`Perturbation`): the ball's norm and the valid range it is clipped
    to (two numbers, or with norm "inf" a range per feature). norm "2": the region is the l2 ball of radius eps around x within the range; the
    affine layers reading the input are bounded through the ball (dual norm) and CROWN
    concretises against it (SDP-CROWN's ReLU bias is for verification: `verify_module`).
    """
    if method not in BOUND_METHODS:
        raise ValueError(f"method must be one of {', '.join(BOUND_METHODS)}, not '{method}'")
    perturbation = checked_perturbation(perturbation)
    shape = (1, *x.shape[1:])
    graph = module_graph(model, shape)
    K = graph.output_size
    box = _box(x, eps, perturbation, shape)
    ev = GraphEvaluator(graph, dtype=x.dtype, device=x.device)
    stats = _batch_statistics(model, x) if batch_stats is None else batch_stats
    for name, value in stats.items():
        if name in ev.constants:
            ev.constants[name] = value.to(dtype=x.dtype)
    if method == "crown":   # every intermediate bound by CROWN too: tighter, costlier (small nets)
        options = BoundOptions(method="crown", intermediate="crown", fold=True, grad=True,
                               precision=Precision.none(), patches=False)
        return compute_bounds(graph, box, margin_matrix(y, K, x.dtype), options, want_upper=False, ev=ev).lower
    if method == "ibp" or beta == 0.0:   # CROWN-IBP with CROWN's weight at 0 is IBP: no CROWN pass
        options = BoundOptions(method="ibp", grad=True, precision=Precision.none())
        if K <= x.shape[0]:
            # Every class pair's margin, with one C for the batch: IBP folds it once into
            # the last affine layers and concretises by matrix products, where per-sample
            # rows cost a [B, K-1, n] product (and its backward); each sample's K-1 are
            # then picked out. The same bound, computed in another order.
            rows = _pair_rows(K, x.dtype, x.device)
            lower = compute_bounds(graph, box, rows, options, want_upper=False, ev=ev).lower
            pick = y.unsqueeze(1) * (K - 1) + torch.arange(K - 1, device=y.device)
            return lower.gather(1, pick)
        return compute_bounds(graph, box, margin_matrix(y, K, x.dtype), options, want_upper=False, ev=ev).lower
    best, ibp = _crown_lower(graph, ev, box, margin_matrix(y, K, x.dtype))
    return best if beta == 1.0 else beta * best + (1.0 - beta) * ibp


@dataclass(frozen=True)
class CertifiedOptions:
    """What stays fixed across a run's `certified_loss` calls (the newer losses' settings
    at their papers' usual values), where the radius and the method's weights change.

    perturbation: the threat model (`Perturbation`: the ball's norm and the valid input
    range); sabr and mtl-ibp take l-inf balls only (their attack is l-inf).
    sabr_lambda: SABR's small box radius as a share of eps (0 < lambda <= 1; 1 is IBP
    around an adversarial centre). mtl_alpha: MTL-IBP's weight of the IBP loss (1 is IBP,
    0 adversarial training). attack_steps, attack_step: the PGD that finds the
    adversarial points (sign steps of attack_step * radius, from the centre).
    tightness: also fill `CertifiedInfo.tightness` (`ibp_tightness`): a diagnostic for
    logging, off by default since it costs about as much again as the loss and its backward.
    """

    perturbation: Perturbation = Perturbation()
    sabr_lambda: float = 0.4
    mtl_alpha: float = 0.5
    attack_steps: int = 8
    attack_step: float = 0.25
    tightness: bool = False

    def __post_init__(self) -> None:
        checked_perturbation(self.perturbation)
        if not 0.0 < self.sabr_lambda <= 1.0:
            raise ValueError(f"sabr_lambda must be in (0, 1], got {self.sabr_lambda}")
        if not 0.0 <= self.mtl_alpha <= 1.0:
            raise ValueError(f"mtl_alpha must be in [0, 1], got {self.mtl_alpha}")
        if self.attack_steps < 0 or self.attack_step <= 0:
            raise ValueError("attack_steps must be >= 0 and attack_step > 0")


def _checked_options(options: object) -> CertifiedOptions:
    """`options` if it is a `CertifiedOptions`: a clear error for a call written against the
    old signatures, whose range would otherwise land in its place."""
    return instance_of("options", options, CertifiedOptions, "the valid range and norm are its perturbation's")


def adversarial_points(model: nn.Module, x: T, y: T, radius: float | T,
                       options: CertifiedOptions = CertifiedOptions()) -> T:
    """PGD points within `radius` (l-inf) of x and inside the valid range of
    `options.perturbation`, maximising the cross-entropy; detached. The module runs in
    eval mode for the search (no running statistics move) and gets its mode back."""
    if _checked_options(options).perturbation.norm != "inf":
        raise ValueError("adversarial_points searches l-inf balls only (its steps are sign steps)")
    lower, upper = _valid_range(options.perturbation, x)
    r = _per_example(torch.as_tensor(radius, dtype=x.dtype, device=x.device), x)
    lo, hi = (x - r).clamp(min=lower, max=upper), (x + r).clamp(min=lower, max=upper)
    was_training = model.training
    model.eval()
    try:
        adv = x.detach().clone()
        for _ in range(options.attack_steps):
            adv.requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(F.cross_entropy(model(adv), y), adv)
            adv = torch.minimum(torch.maximum(adv.detach() + options.attack_step * r * g.sign(), lo), hi)
    finally:
        model.train(was_training)
    return adv.detach()


def _per_example(r: T, x: T) -> T:
    """A radius (a number, or one per example [B]) shaped to broadcast against x."""
    return r.reshape(-1, *([1] * (x.dim() - 1))) if r.dim() == 1 and r.numel() == x.shape[0] else r


def _fused(lb: T) -> T:
    """log(1 + sum_j exp(-lb_j)), averaged: the cross-entropy of the worst-case logits."""
    zeros = torch.zeros(lb.shape[0], 1, dtype=lb.dtype, device=lb.device)
    return torch.logsumexp(torch.cat([zeros, -lb], 1), 1).mean()


@dataclass(frozen=True)
class CertifiedInfo:
    """Diagnostics of one certified-loss evaluation (plain floats, detached).

    worst_margin: the smallest margin lower bound in the batch (> 0: all verified).
    verified_accuracy: fraction of examples whose every margin lower bound is > 0 (for
    sabr, over its small boxes: an estimate from above, not a certificate).
    clean_accuracy: fraction classified correctly at the centre.
    tightness: the IBP tightness of Mao et al. (see `ibp_tightness`); NaN if not computed.
    eps: the radius used.
    """

    worst_margin: float
    verified_accuracy: float
    clean_accuracy: float
    tightness: float
    eps: float
    robust_loss: float
    natural_loss: float


def _positional_at_most(n: int, instead: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Refuses a call with more than `n` positional arguments by a TypeError that names
    the ones kept and says what to write `instead`.

    For a function whose later parameters became keyword-only when its signature changed:
    Python's own error ("takes from 4 to 6 positional arguments but 7 were given") says
    nothing of where the old arguments went. The signature seen by `help` and
    `inspect.signature` stays the function's own."""
    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        kept = ", ".join(list(inspect.signature(fn).parameters)[:n])

        @functools.wraps(fn)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            if len(args) > n:
                raise TypeError(f"{fn.__name__}() takes at most {n} positional arguments ({kept}), got {len(args)}: "
                                f"{instead}")
            return fn(*args, **kwargs)
        return call
    return wrap


@_positional_at_most(6, "kappa and options are keyword-only (kappa=..., options=...); the old lower, upper, "
                        "tightness and norm are options=CertifiedOptions(perturbation=Perturbation(norm=..., "
                        "lower=..., upper=...), tightness=...)")
def certified_loss(model: nn.Module, x: T, y: T, eps: float | T, method: str = "ibp", beta: float = 1.0, *,
                   kappa: float = 0.0, options: CertifiedOptions = CertifiedOptions()) -> tuple[T, CertifiedInfo]:
    """Robust cross-entropy of `model` over the l-inf boxes x +- eps (clipped), and diagnostics.

    x: [B, *example_shape] on the model's device; y: [B] class indices; eps a number or
    one radius per example. `options.perturbation` sets the valid range the balls are
    clipped to, and its norm "2" trains against l2 balls of radius eps (ibp and
    crown-ibp; see `margin_bounds`). The loss is
    `kappa * CE(model(x), y) + (1 - kappa) * R`. For ibp and crown-ibp, R is
    `log(1 + sum_j exp(-lb_j))` where lb are the margin lower bounds (`margin_bounds`,
    loss fusion); with eps == 0 the bounds are the exact margins and R is the ordinary
    cross-entropy. sabr: R is that of IBP over the box of radius lambda * eps around a
    PGD point found within (1 - lambda) * eps, a box inside the ball. mtl-ibp: R is
    `alpha * R_ibp + (1 - alpha) * CE(model(x_adv), y)` with x_adv from PGD over the
    ball. The bounds are those of the module's inference function (no Dropout), except
    that a BatchNorm in training mode uses the batch's statistics, as its forward does.
    `options.tightness` also fills `info.tightness` (`ibp_tightness`): a diagnostic for
    logging, off by default since it costs about as much again as the loss and its backward.

    `kappa` and `options` are keyword-only: before the `Perturbation` refactor the
    seventh positional argument was `lower`, and a call written then would otherwise run
    with its range as `kappa`; such a call is a TypeError that says what to write instead.
    """
    if method not in TRAINING_METHODS:
        raise ValueError(f"method must be one of {', '.join(TRAINING_METHODS)}, not '{method}'")
    perturbation = _checked_options(options).perturbation
    if perturbation.norm != "inf" and method not in BOUND_METHODS:
        raise ValueError(f"method '{method}' trains against l-inf balls only (its attack is l-inf)")
    logits, stats = forward_with_statistics(model, x)
    natural = F.cross_entropy(logits, y)
    if method == "sabr":
        tau = options.sabr_lambda * torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        centres = adversarial_points(model, x, y, torch.as_tensor(eps, dtype=x.dtype) - tau, options)
        lb = margin_bounds(model, centres, y, _per_example(tau, x), "ibp", 1.0, perturbation, batch_stats=stats)
        robust = _fused(lb)
    elif method == "mtl-ibp":
        lb = margin_bounds(model, x, y, eps, "ibp", 1.0, perturbation, batch_stats=stats)
        adv = adversarial_points(model, x, y, eps, options)
        a = options.mtl_alpha
        robust = a * _fused(lb) + (1.0 - a) * F.cross_entropy(model(adv), y)
    else:
        lb = margin_bounds(model, x, y, eps, method, beta, perturbation, batch_stats=stats)
        robust = _fused(lb)
    loss = kappa * natural + (1.0 - kappa) * robust if kappa else robust
    with torch.no_grad():
        tight = float("nan")
        if options.tightness:
            tight = float(ibp_tightness(model, x).mean())
        info = CertifiedInfo(
            worst_margin=float(lb.min()),
            verified_accuracy=float((lb > 0).all(1).float().mean()),
            clean_accuracy=float((logits.argmax(-1) == y).float().mean()),
            tightness=tight, eps=float(torch.as_tensor(eps, dtype=torch.float64).mean()), robust_loss=float(robust), natural_loss=float(natural))
    return loss, info


def ibp_tightness(model: nn.Module, x: T) -> T:
    """Per-example IBP tightness at the network output (Mao et al., ICLR 2024), [B].

    "Understanding Certified Training with Interval Bound Propagation" defines the
    tightness of IBP as the ratio of the width of the optimal box (the tightest box
    containing the reachable set) to the width of the IBP box. For a ReLU network they
    evaluate it on the local linearisation at the unperturbed input x (the network with
    every activation's slope fixed at its value at x, a deep linear network), where
    both boxes are exact and do not depend on eps:

        optimal radius  = |J| 1              (J: the input Jacobian at x)
        IBP radius      = |W_L| D_{L-1} |W_{L-1}| ... D_1 |W_1| 1

    We return the mean over the outputs of the ratio of the two radii (1 means IBP is
    exact on this linearisation; it is always <= 1). Affine nodes use the registry's
    |L| r rule and elementwise activations the absolute value of their derivative at
    x, and max-type ops the selection of their argmax at x, so any graph of affine,
    elementwise and max-pooling ops is covered; other ops give NaN.
    """
    shape = (1, *x.shape[1:])
    graph = module_graph(model, shape)
    ev = GraphEvaluator(graph, dtype=x.dtype, device=x.device)
    B = x.shape[0]
    with torch.enable_grad():
        xin = x.detach().reshape(B, *shape).clone().requires_grad_(True)
        values = ev.forward_all(xin)
        out = values[graph.output_name].reshape(B, -1)
        rows = []
        for k in range(out.shape[1]):
            (g,) = torch.autograd.grad(out[:, k].sum(), xin, retain_graph=k + 1 < out.shape[1])
            rows.append(g.reshape(B, -1).abs().sum(1))
    optimal = torch.stack(rows, 1).detach()
    ibp = _linearised_ibp_radius(graph, ev, {k: v.detach() for k, v in values.items()}, B)
    if ibp is None:
        return torch.full((B,), float("nan"), dtype=x.dtype, device=x.device)
    ratio = torch.where(ibp > 0, optimal / ibp.clamp_min(torch.finfo(ibp.dtype).tiny), torch.ones_like(ibp))
    return ratio.mean(1)


def _linearised_ibp_radius(graph: Graph, ev: GraphEvaluator, values: dict[str, T], B: int) -> Optional[T]:
    """IBP output radius [B, n_out] of the network linearised at the clean point, unit input radius."""
    radius: dict[str, T] = {graph.input_name: torch.ones_like(values[graph.input_name])}
    for node in graph.nodes:
        rule = rule_for(node)
        variable = [bool(n) and n not in ev.constants for n in node.inputs]
        table = {n: IntervalBounds(-radius[n], radius[n]) for n, v in zip(node.inputs, variable) if v}
        if is_affine_node(node, rule, variable):
            outs = affine_interval(node, rule, node_inputs(ev, node, table))
            for name, b in zip(node.outputs, outs):
                radius[name] = b.radius
        elif rule.kind == "elementwise" and sum(variable) == 1 and variable[0]:
            radius[node.outputs[0]] = radius[node.inputs[0]] * _slope_at(ev, node, values)
        elif node.op in _SELECTING and sum(variable) == 1 and variable[0] and len(node.outputs) == 1:
            # Max-type ops are, at the clean point, a selection of their argmax: a
            # Jacobian of 0s and 1s, so |J| r = J r, a forward-mode product.
            radius[node.outputs[0]] = _selected(ev, node, values, radius[node.inputs[0]])
        else:
            return None
    return radius[graph.output_name].reshape(B, -1)


_SELECTING = frozenset({"MaxPool", "GlobalMaxPool", "ReduceMax"})


def _selected(ev: GraphEvaluator, node: Node, values: dict[str, T], r: T) -> T:
    """J r for the node's Jacobian J at its clean input (a selection for max-type ops)."""
    z = values[node.inputs[0]]
    _, out = torch.func.jvp(lambda t: ev.run_node(node, {**values, node.inputs[0]: t})[0], (z,), (r,))
    return out


def _slope_at(ev: GraphEvaluator, node: Node, values: dict[str, T]) -> T:
    """|f'(z)| of an elementwise node at its clean input z (the linearisation's slope)."""
    with torch.enable_grad():
        z = values[node.inputs[0]].clone().requires_grad_(True)
        out = ev.run_node(node, {**values, node.inputs[0]: z})[0]
        (g,) = torch.autograd.grad(out.sum(), z)
    return g.abs()


class EpsilonSchedule:
    """The radius as a function of the (fractional) epoch: zero, then a ramp, then eps_max.

    Certified training diverges or collapses to a constant classifier when the full
    radius is used from the start; warm-up (eps = 0, plain training) and a gradual ramp
    avoid that (Gowal et al. 2018; Zhang et al. 2020). kind="linear" ramps linearly;
    kind="smooth" uses the smoothstep 3p^2 - 2p^3, which starts and ends with zero slope
    so that the first small radii grow slowly, when the bounds are loosest.
    Monotone non-decreasing, 0 during warm-up, eps_max from warmup + ramp on.
    """

    def __init__(self, eps_max: float, warmup_epochs: float = 0.0, ramp_epochs: float = 0.0,
                 kind: str = "linear") -> None:
        if kind not in ("linear", "smooth"):
            raise ValueError(f"kind must be 'linear' or 'smooth', not '{kind}'")
        if eps_max < 0 or warmup_epochs < 0 or ramp_epochs < 0:
            raise ValueError("eps_max, warmup_epochs and ramp_epochs must be non-negative")
        self.eps_max, self.warmup, self.ramp, self.kind = float(eps_max), float(warmup_epochs), \
            float(ramp_epochs), kind

    def __call__(self, epoch: float) -> float:
        if epoch < self.warmup:
            return 0.0
        if self.ramp == 0 or epoch >= self.warmup + self.ramp:
            return self.eps_max
        p = (epoch - self.warmup) / self.ramp
        if self.kind == "smooth":
            p = p * p * (3.0 - 2.0 * p)
        return self.eps_max * min(max(p, 0.0), 1.0)

    def __repr__(self) -> str:
        return (f"EpsilonSchedule(eps_max={self.eps_max}, warmup_epochs={self.warmup}, "
                f"ramp_epochs={self.ramp}, kind='{self.kind}')")
