"""Forward-mode linear bounds: every tensor bounded by linear functions of the input.

For a model with few inputs (ACAS Xu has 5) each tensor element t gets two linear
functions of the flattened input x, lo(x) <= t <= up(x) on the box, stored as
coefficient tensors [B, K, *shape] with K = n_in + 1 (the last column is the
constant). One forward sweep costs about (n_in + 1) evaluations of the network, which
is far less than CROWN's backward pass from every unstable neuron of every layer
(O(layers^2 * width^3) per domain), at the price of some tightness: the relaxation of
each layer is applied to the previous layer's linear functions rather than composed
backwards. Branch and bound on the input recovers the difference by splitting, and
the final spec bound is still CROWN's backward pass over these intermediate bounds.

Soundness: an affine node y = L z + b maps z in [lo, up] to
[L mid - |L| rad, L mid + |L| rad] + b with mid, rad the centre and half-width
functions; this is exact interval arithmetic applied column by column, so it uses
each rule's own |L| (`radius`) and forward function, the same code as IBP. An
elementwise node uses its relaxation lines over the concrete interval of its input:
a line with slope s >= 0 is applied to lo (lower line) or up (upper line), with s < 0
to the other one. Rounding is absorbed by widening each concretised bound by the
project's Precision margins relative to a magnitude bound `mag` of every partial sum
(propagated as |L| mag + |b|), as CROWN's `mass` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from models import GraphEvaluator, Node
from models.ops import forward_rule
from relaxations.bounds import IntervalBounds, Precision, widen_lower
from relaxations.ibp import affine_interval, node_inputs
from relaxations.ops.common import batched
from relaxations.registry import OpRule, finite_relaxation, is_affine_node

__all__ = ["ForwardBounds", "forward_node", "forward_input", "forward_constant"]

T = torch.Tensor


@dataclass(frozen=True)
class ForwardBounds:
    """lo, up: [B, K, *shape] coefficients (last column constant); mag: [B, *shape] >= |partial sums|."""

    lo: T
    up: T
    mag: T

    def concretize(self, box: IntervalBounds, precision: Precision) -> IntervalBounds:
        """The interval these functions give over the box, widened outward for rounding."""
        B, K = self.lo.shape[:2]
        shape = self.lo.shape[2:]
        xl = box.lower.reshape(B, K - 1, 1)
        xu = box.upper.reshape(B, K - 1, 1)
        lo = self.lo.reshape(B, K, -1)
        up = self.up.reshape(B, K, -1)
        lo_min = (lo[:, :-1].clamp(min=0) * xl + lo[:, :-1].clamp(max=0) * xu).sum(1) + lo[:, -1]
        up_max = (up[:, :-1].clamp(min=0) * xu + up[:, :-1].clamp(max=0) * xl).sum(1) + up[:, -1]
        xmag = torch.maximum(xl.abs(), xu.abs())
        mass = torch.maximum((lo[:, :-1].abs() * xmag).sum(1) + lo[:, -1].abs(),
                             (up[:, :-1].abs() * xmag).sum(1) + up[:, -1].abs())
        mass = torch.maximum(mass, self.mag.reshape(B, -1))
        lower = widen_lower(lo_min, mass, precision)
        upper = -widen_lower(-up_max, mass, precision)
        return IntervalBounds(lower.reshape(B, *shape), upper.reshape(B, *shape))


def forward_input(box: IntervalBounds) -> ForwardBounds:
    """The input bounded by itself: identity coefficients, no constant."""
    B = box.lower.shape[0]
    shape = box.lower.shape[1:]
    n = shape.numel()
    eye = torch.eye(n, dtype=box.lower.dtype, device=box.lower.device)
    coef = torch.cat([eye, torch.zeros(1, n, dtype=eye.dtype, device=eye.device)])   # [K, n]
    coef = coef.reshape(1, n + 1, *shape).expand(B, -1, *shape)
    mag = torch.maximum(box.lower.abs(), box.upper.abs())
    return ForwardBounds(coef, coef, mag)


def forward_constant(b: IntervalBounds, K: int) -> Optional[ForwardBounds]:
    """An interval as constant functions (for tensors of ops without a relaxation)."""
    if not bool(torch.isfinite(b.lower).all() & torch.isfinite(b.upper).all()):
        return None
    zeros = torch.zeros(b.lower.shape[0], K - 1, *b.lower.shape[1:], dtype=b.lower.dtype, device=b.lower.device)
    lo = torch.cat([zeros, b.lower.unsqueeze(1)], 1)
    up = torch.cat([zeros, b.upper.unsqueeze(1)], 1)
    return ForwardBounds(lo, up, torch.maximum(b.lower.abs(), b.upper.abs()))


def _fold(x: T) -> T:
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _affine(ev: GraphEvaluator, node: Node, rule: OpRule, ins: list) -> list[ForwardBounds]:
    """Column-wise interval arithmetic through the op; the op's constant term only in column K-1."""
    B, K = next(x.lo.shape[:2] for x in ins if isinstance(x, ForwardBounds))
    fn = forward_rule(node).fn
    mask = [isinstance(x, ForwardBounds) for x in ins]
    folded = [IntervalBounds(_fold(x.lo), _fold(x.up)) if isinstance(x, ForwardBounds) else x for x in ins]
    outs = affine_interval(node, rule, folded)
    zeros = [torch.zeros_like(x.lo[:1, 0]) if m else x for x, m in zip(ins, mask)]
    f0 = batched(node, fn, zeros, mask)                   # the constant term f(0), [1, *out]
    mags = [x.mag if isinstance(x, ForwardBounds) else x for x in ins]
    radius = affine_interval(node, rule, [IntervalBounds(-m, m) if ok else m for m, ok in zip(mags, mask)])
    result = []
    for out, c0, r in zip(outs, f0, radius):
        lo = out.lower.reshape(B, K, *out.lower.shape[1:])
        up = out.upper.reshape(B, K, *out.upper.shape[1:])
        not_const = torch.ones(K, dtype=lo.dtype, device=lo.device)
        not_const[-1] = 0
        shift = (not_const.reshape(1, K, *[1] * (lo.dim() - 2)) * c0.unsqueeze(1))
        mag = (r.upper - r.lower) / 2 + c0.abs()          # |L| mag + |f(0)|
        result.append(ForwardBounds(lo - shift, up - shift, mag))
    return result


def _elementwise(ev: GraphEvaluator, node: Node, rule: OpRule, x: ForwardBounds, b: IntervalBounds
                 ) -> ForwardBounds:
    """Relaxation lines over the concrete input interval b, applied to the linear functions."""
    consts = [ev.constants.get(n) if n else None for n in node.inputs]
    r = finite_relaxation(rule.relax(node, b.lower, b.upper, None, consts), node)
    K = x.lo.shape[1]
    shape = b.lower.shape
    r = type(r)(*(torch.broadcast_to(t, shape) for t in (r.lower_slope, r.lower_bias, r.upper_slope, r.upper_bias)))
    ls, us = r.lower_slope.unsqueeze(1), r.upper_slope.unsqueeze(1)
    lo = torch.where(ls >= 0, ls * x.lo, ls * x.up)
    up = torch.where(us >= 0, us * x.up, us * x.lo)
    last = torch.zeros(K, dtype=lo.dtype, device=lo.device)
    last[-1] = 1
    last = last.reshape(1, K, *[1] * (lo.dim() - 2))
    lo = lo + last * r.lower_bias.unsqueeze(1)
    up = up + last * r.upper_bias.unsqueeze(1)
    mag = torch.maximum(r.lower_slope.abs() * x.mag + r.lower_bias.abs(),
                        r.upper_slope.abs() * x.mag + r.upper_bias.abs())
    return ForwardBounds(lo, up, mag)


def forward_node(ev: GraphEvaluator, node: Node, rule: OpRule, fwd: dict[str, ForwardBounds],
                 table: dict) -> Optional[list[ForwardBounds]]:
    """Linear bounds of the node's outputs from its inputs' (None when not supported)."""
    if any(x and x not in ev.constants and x not in fwd for x in node.inputs):
        return None
    ins = node_inputs(ev, node, fwd)
    variable = [isinstance(x, ForwardBounds) for x in ins]
    if is_affine_node(node, rule, variable):
        return _affine(ev, node, rule, ins)
    if rule.kind == "elementwise" and rule.relax is not None and len(node.outputs) == 1 and not any(variable[1:]):
        if not bool(torch.isfinite(table[node.inputs[0]].lower).all() & torch.isfinite(table[node.inputs[0]].upper).all()):
            return None
        return [_elementwise(ev, node, rule, ins[0], table[node.inputs[0]])]
    # Slot relaxations (products of two variables, max-type ops) are not applied in
    # forward mode: the caller bounds such an output by its interval, as before.
    return None
