"""Interval bound propagation through one node, for every kind of rule.

`sound_interval` is the form the engine uses: the node's interval moved outward by what
floating-point rounding may have cost, end by end. An end's margin is
`Precision.margin` of the magnitudes of the terms that were summed to get that end, so a
huge upper end (exp of a wide interval, say [0, 2e23]) does not push a small lower end
far below zero (it would have pushed it to -2e18, and a Sqrt or Reciprocal after it to
an infinite bound):
- selections (fact "selection": reshapes, slices, gathers) copy without rounding;
- affine ops with nonnegative coefficients (fact "monotone", or no radius rule, which
  means the same): each end is the op applied to that end of the inputs, its mass the
  op applied to their magnitudes plus the constant term;
- other affine ops: centre and radius as `affine_interval`; both ends carry the rounding
  of both, so their common mass is |L| max(|l|, |u|) + |constant term|;
- elementwise and nonlinear rules (and affine ones with the fact "elementwise" and an
  interval rule: scaling by a constant, one product per element): each end is a
  function value computed with a small relative error, so its own magnitude; a rule
  whose interval sums terms of both signs (the product of two variable matrices,
  softmax's log-sum-exp) widens itself inside.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from models import GraphEvaluator, Node
from models.ops import forward_rule
from relaxations.bounds import IntervalBounds, Precision, widen_lower
from relaxations.ops.common import batched, monotone_interval
from relaxations.registry import OpRule, is_affine_node

__all__ = ["node_inputs", "sound_interval", "affine_interval"]

T = torch.Tensor


def node_inputs(ev: GraphEvaluator, node: Node, table: dict) -> list:
    """Inputs of `node`: IntervalBounds for variable tensors, constants as tensors."""
    out = []
    for name in node.inputs:
        if name == "":
            out.append(None)
        elif name in ev.constants:
            out.append(ev.constants[name])
        else:
            out.append(table[name])
    return out


def affine_interval(node: Node, rule: OpRule, ins: Sequence) -> list[IntervalBounds]:
    """Centre through the op itself, radius through |L| (the rule's radius or L)."""
    fn = forward_rule(node).fn
    mask = [isinstance(x, IntervalBounds) for x in ins]
    centers = [x.center if isinstance(x, IntervalBounds) else x for x in ins]
    out_c = batched(node, fn, centers, mask)
    radii = [x.radius if isinstance(x, IntervalBounds) else x for x in ins]
    if rule.radius is not None:
        out_r = batched(node, lambda n, a: rule.radius(n, a, mask), radii, mask)
    else:
        zero_out = batched(node, fn, [torch.zeros_like(r) if m else r for r, m in zip(radii, mask)], mask)
        out_r = [r - z for r, z in zip(batched(node, fn, radii, mask), zero_out)]
    return [IntervalBounds(c - r, c + r) for c, r in zip(out_c, out_r)]


def _closed_form_interval(node: Node, rule: OpRule, ins: Sequence) -> Optional[list[IntervalBounds]]:
    """`affine_interval` by the rule's closed form (`OpRule.centre_radius`: dense layers),
    where it has one for these inputs (the first variable, the rest constant); else None.
    Exact arithmetic only: the closed form may round differently from the op's forward."""
    if rule.centre_radius is None or not isinstance(ins[0], IntervalBounds) \
            or any(isinstance(x, IntervalBounds) for x in ins[1:]):
        return None
    b = ins[0]
    out = rule.centre_radius(node, b.center, b.radius, [None, *ins[1:]])
    if out is None:
        return None
    c, r = out
    return [IntervalBounds(c - r, c + r)]


def _stacked(node: Node, fn, ins: Sequence, parts) -> list[list[T]]:
    """`fn` of every variant `parts(x)` of the variable inputs at once (stacked on the batch)."""
    mask = [isinstance(x, IntervalBounds) for x in ins]
    k = None
    args = []
    for x in ins:
        if isinstance(x, IntervalBounds):
            variants = parts(x)
            k = len(variants)
            args.append(torch.cat(variants, 0))
        else:
            args.append(x)
    outs = batched(node, fn, args, mask)
    return [list(o.chunk(k, 0)) for o in outs]


def _monotone_affine(node: Node, ins: Sequence) -> list[tuple[T, T, T, T]]:
    fn = forward_rule(node).fn
    result = []
    for lo, hi, lmag, umag, const in _stacked(
            node, fn, ins, lambda b: (b.lower, b.upper, b.lower.abs(), b.upper.abs(), torch.zeros_like(b.lower))):
        c = const.abs()
        result.append((lo, hi, (lmag - const).abs() + c, (umag - const).abs() + c))
    return result


def _signed_affine(node: Node, rule: OpRule, ins: Sequence) -> list[tuple[T, T, T, T]]:
    fn = forward_rule(node).fn
    mask = [isinstance(x, IntervalBounds) for x in ins]
    centres = _stacked(node, fn, ins, lambda b: (b.center, torch.zeros_like(b.lower)))
    radii = _stacked(node, lambda n, a: rule.radius(n, a, mask), ins,
                     lambda b: (b.radius, torch.maximum(b.lower.abs(), b.upper.abs())))
    result = []
    for (c, const), (r, rmag) in zip(centres, radii):
        mass = const.abs() + rmag
        result.append((c - r, c + r, mass, mass))
    return result


def _plain_interval(ev: GraphEvaluator, node: Node, rule: OpRule, ins: Sequence,
                    variable: list[bool]) -> list[IntervalBounds]:
    """The interval in exact arithmetic (`Precision.none()`): no masses, no widening.
    Affine ops by centre and radius, monotone ones end by end. A NaN end is passed on (a
    loss that becomes NaN says so; `sound_interval` turns it into an infinite end)."""
    if is_affine_node(node, rule, variable) and not ("elementwise" in rule.facts and rule.interval is not None):
        if rule.radius is None or "monotone" in rule.facts:
            outs = monotone_interval(node, ins)
        else:
            outs = _closed_form_interval(node, rule, ins) or affine_interval(node, rule, ins)
    elif rule.interval is not None:
        outs = rule.interval(node, ins, ev)
    else:
        raise ValueError(f"op {node.op} has no interval rule for this input pattern")
    return outs


def sound_interval(ev: GraphEvaluator, node: Node, rule: OpRule, ins: Sequence,
                   precision: Precision) -> list[IntervalBounds]:
    """Output intervals of a node widened for rounding end by end (module docstring).

    NaN is never passed on (a NaN end becomes infinite). With `Precision.none()` the
    interval is not widened at all (`_plain_interval`). An infinite or NaN mass counts
    as 0: it comes from an infinite input end, which makes the end it feeds infinite
    too, or from 0 * inf where a coefficient is zero and the term is absent.
    """
    variable = [isinstance(x, IntervalBounds) for x in ins]
    if "selection" in rule.facts and is_affine_node(node, rule, variable):
        return monotone_interval(node, ins)
    if precision.exact:
        return _plain_interval(ev, node, rule, ins, variable)
    if is_affine_node(node, rule, variable) and not ("elementwise" in rule.facts and rule.interval is not None):
        if rule.radius is None or "monotone" in rule.facts:
            parts = _monotone_affine(node, ins)
        else:
            parts = _signed_affine(node, rule, ins)
    elif rule.interval is not None:
        parts = [(b.lower, b.upper, b.lower.abs(), b.upper.abs()) for b in rule.interval(node, ins, ev)]
    else:
        raise ValueError(f"op {node.op} has no interval rule for this input pattern")
    widened = []
    exact = "exact" in rule.facts
    for lo, hi, mlo, mhi in parts:
        lo = torch.nan_to_num(lo, nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf)
        hi = torch.nan_to_num(hi, nan=torch.inf, posinf=torch.inf, neginf=-torch.inf)
        if exact:
            widened.append(IntervalBounds(lo, hi))
            continue
        mlo = torch.nan_to_num(mlo, nan=0.0, posinf=0.0)
        mhi = torch.nan_to_num(mhi, nan=0.0, posinf=0.0)
        widened.append(IntervalBounds(widen_lower(lo, mlo, precision), -widen_lower(-hi, mhi, precision)))
    return widened
