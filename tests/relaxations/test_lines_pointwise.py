"""Registry-driven: every elementwise rule's lines hold pointwise, for any alpha in range.

`test_registry_soundness` checks the bounds a whole pass concretises; a line that crosses
its function somewhere inside the interval can still pass there. Here each elementwise
node of every case in `tests/op_cases.py` gets its input intervals from a CROWN pass over
the case's boxes, and its lines (the rule's default ones and those of random alphas inside
`alpha_bounds`, the range alpha-CROWN may move in) are evaluated, in float64, at points
spread over each interval, ends included, against the op's own forward."""
from __future__ import annotations

import pytest
import torch

from models import graph_from_proto
from models.ops import forward_rule
from relaxations import BoundOptions, IntervalBounds, compute_bounds
from relaxations.registry import rule_for
from tests.op_cases import CASES

T = torch.Tensor


def _elementwise(graph):
    """(node, consts) of the one-variable-input elementwise nodes with lines."""
    out = []
    for node in graph.nodes:
        rule = rule_for(node)
        variable = [x for x in node.inputs if x and x not in graph.constants]
        if rule.kind == "elementwise" and rule.relax is not None and variable == [node.inputs[0]]:
            out.append((node, [graph.constants.get(x) if x else None for x in node.inputs]))
    return out


_CASES = [c for c in CASES if _elementwise(graph_from_proto(c.model))]


def _points(l: T, u: T, k: int, g: torch.Generator) -> T:
    """k points per element of [l, u]: both ends and the rest uniform, [k, *shape]."""
    t = torch.rand(k, *l.shape, generator=g, dtype=torch.float64)
    t[0], t[1] = 0.0, 1.0
    return l + t * (u - l)


def _check(node, consts, l: T, u: T, alpha, g: torch.Generator, label: str) -> None:
    rule = rule_for(node)
    r = rule.relax(node, l, u, alpha, consts)
    fn = forward_rule(node).fn
    args = [None if c is None else c.double() for c in consts[1:]]
    xs = _points(l, u, 64, g)
    ys = torch.stack([fn(node, [x] + args)[0] for x in xs]).to(torch.float64)  # Cast to bool: 0 or 1
    finite = torch.isfinite(ys)
    for side, slope, bias in (("lower", r.lower_slope, r.lower_bias), ("upper", r.upper_slope, r.upper_bias)):
        line = slope * xs + bias
        usable = finite & torch.isfinite(line)   # a non-finite line is not used: CROWN falls back to the interval
        tol = 1e-6 * (1 + ys.abs() + (slope * xs).abs() + bias.abs())
        bad = (line > ys + tol) if side == "lower" else (line < ys - tol)
        bad = bad & usable
        assert not bool(bad.any()), (label, side, node.op, float(xs[bad][0]), float(ys[bad][0]), float(line[bad][0]))


@pytest.mark.parametrize("case", _CASES, ids=[c.name for c in _CASES])
def test_lines_hold_at_every_sampled_point_for_any_alpha(case) -> None:
    graph = graph_from_proto(case.model)
    g = torch.Generator().manual_seed(len(case.name))
    shape = case.input_shape
    for width in (0.05, 0.5, 2.0):
        center = case.low + (case.high - case.low) * torch.rand(1, *shape, generator=g, dtype=torch.float64)
        radius = width * torch.rand(1, *shape, generator=g, dtype=torch.float64)
        lo = torch.maximum(center - radius, torch.tensor(case.low, dtype=torch.float64))
        hi = torch.minimum(center + radius, torch.tensor(case.high, dtype=torch.float64))
        table = compute_bounds(graph, IntervalBounds(lo, hi), options=BoundOptions(method="crown")).table
        for node, consts in _elementwise(graph):
            iv = table[node.inputs[0]]
            l, u = iv.lower.double(), iv.upper.double()
            keep = torch.isfinite(l) & torch.isfinite(u)
            l, u = torch.where(keep, l, 0.0), torch.where(keep, u, 0.0)
            rule = rule_for(node)
            _check(node, consts, l, u, None, g, f"{case.name}/default")
            if rule.alpha_bounds is None:
                continue
            a_lo, a_hi = rule.alpha_bounds(node, l, u, consts)
            for _ in range(3):
                alpha = a_lo + torch.rand(a_lo.shape, generator=g, dtype=torch.float64) * (a_hi - a_lo)
                _check(node, consts, l, u, alpha, g, f"{case.name}/alpha")
            _check(node, consts, l, u, a_lo.clone(), g, f"{case.name}/alpha-low")
            _check(node, consts, l, u, a_hi.clone(), g, f"{case.name}/alpha-high")
