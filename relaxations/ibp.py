"""Interval bound propagation through one node, for every kind of rule."""
from __future__ import annotations

from typing import Sequence

import torch

from models import GraphEvaluator, Node
from models.ops import forward_rule
from relaxations.bounds import IntervalBounds
from relaxations.ops.common import batched
from relaxations.registry import OpRule, is_affine_node

__all__ = ["node_interval", "node_inputs"]

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


def node_interval(ev: GraphEvaluator, node: Node, rule: OpRule, ins: Sequence) -> list[IntervalBounds]:
    """Output intervals of a node from its input intervals; NaN is never passed on."""
    variable = [isinstance(x, IntervalBounds) for x in ins]
    if is_affine_node(node, rule, variable):
        result = affine_interval(node, rule, ins)
    elif rule.interval is not None:
        result = rule.interval(node, ins, ev)
    else:
        raise ValueError(f"op {node.op} has no interval rule for this input pattern")
    checked = []
    for b in result:
        lo = torch.nan_to_num(b.lower, nan=-torch.inf, posinf=torch.inf, neginf=-torch.inf)
        hi = torch.nan_to_num(b.upper, nan=torch.inf, posinf=torch.inf, neginf=-torch.inf)
        checked.append(IntervalBounds(lo, hi))
    return checked
