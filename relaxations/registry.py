"""The op registry: for each ONNX op (domain and type) and opset range, how to bound it.

Rules are keyed by (domain, op), as `models.ops.registry`'s forwards are: an op of
another domain (com.microsoft's Gelu, relaxations/ops/contrib.py) is its own entry,
and its opsets are that domain's versions.

Each rule is data plus small functions (jax_verify style): the propagators in
`ibp.py` and `crown.py` walk the graph and look rules up here, so adding an op means
adding one rule in its family file, and the registry-driven tests cover it at once.

Kinds of rule:
- "affine": the op is affine in its variable inputs (given that the others are
  constants). CROWN passes a linear bound back through it exactly with the op's
  vector-Jacobian product; `radius` gives |L| r for interval propagation.
- "elementwise": one variable input, applied per element; `relax` gives lower and
  upper linear functions over [l, u], optionally parameterised by alpha.
- "nonlinear": anything else; only `interval` is required and CROWN treats the
  output as bounded by its interval (sound, loose).

Slot relaxations (`gather` + `relax_slots`) are for ops that are nonlinear in several
variable inputs: products of two variable tensors (Mul, MatMul; their rules are
"affine" and use the slots only where both factors vary) and max-type ops (Max, Min,
MaxPool, ReduceMax, ...). `gather` puts, for every output element, the input elements
its value is computed from in a trailing "slot" axis: a selection, so every slot is one
input element or a constant, and the slots' intervals are the inputs' intervals
gathered the same way. `relax_slots` gives a lower and an upper linear function of the
slots per output element (`SlotRelaxation`); CROWN (crown.py) applies the one the sign
of the coefficient picks and passes the slot coefficients back to the inputs through
the transpose of `gather`. `alpha_init`, `alpha_bounds` and `unstable` of such a rule
read the gathered bounds [B, *out, K] instead of the first input's interval.

Facts that a pass reads (`ibp.sound_interval`, for the rounding margin of intervals):
"selection" (each output element is an input element, copied exactly), "monotone" on an
affine rule (nonnegative coefficients: each end is the op at that end of its inputs),
"elementwise" on an affine rule with an interval (one product per output element),
"exact" on an elementwise rule (its interval's ends are the op at the input's ends,
computed exactly in floating point, as max(x, 0) is: no margin at all).
"stacked_transpose" on an affine rule (`affine_step.stacked_backward`): where its
`backward` has no closed form for the pattern (or it has none), CROWN may pull A back
through the op by one autograd call over its rows stacked on the batch axis, where the
forward batches; the op's forward costs little beside its transpose (pooling, padding,
batch normalisation; not a transposed convolution).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from models import Node, UnsupportedModel
from models.graph import qualified

__all__ = ["OpRule", "Relaxation", "SlotRelaxation", "REGISTRY", "register_rule", "rule_for", "slope",
           "registered_ops", "rules_of", "is_affine_node", "finite_relaxation"]

T = torch.Tensor


@dataclass(frozen=True)
class Relaxation:
    """Linear lower and upper functions of one elementwise op: l_a*x + l_b <= f(x) <= u_a*x + u_b."""

    lower_slope: T
    lower_bias: T
    upper_slope: T
    upper_bias: T


def finite_relaxation(r: Relaxation, node: Node) -> Relaxation:
    """`r` itself, or ValueError where some element has no finite line (a rule gives an
    infinite bias there: the op is unbounded or overflows on that element's interval).
    For the passes that cannot fall back to the element's interval as CROWN does."""
    finite = torch.isfinite(r.lower_slope).all() & torch.isfinite(r.lower_bias).all() \
        & torch.isfinite(r.upper_slope).all() & torch.isfinite(r.upper_bias).all()
    if not bool(finite):
        raise ValueError(f"node '{node.name}' ({node.op}): the input interval admits no finite linear bound "
                         "(the op is unbounded, undefined or overflows on it)")
    return r


@dataclass(frozen=True)
class SlotRelaxation:
    """Linear lower and upper functions of an op's output over its gathered slots G:
    sum_k l_a[..., k] G[..., k] + l_b <= out <= sum_k u_a[..., k] G[..., k] + u_b.

    Slopes [B, 1 or S, *out_shape, K], biases [B, 1 or S, *out_shape] (S: one per
    specification row, where alpha differs per row)."""

    lower_slope: T
    lower_bias: T
    upper_slope: T
    upper_bias: T


@dataclass(frozen=True)
class OpRule:
    """How one op is bounded. See the module docstring for the kinds."""

    op: str
    kind: str
    min_opset: int = 1
    max_opset: int = 10_000
    domain: str = ""         # "" is ONNX's default domain; opsets are the domain's own
    # affine: radius(node, args, variable) -> [|L| r], per sample, where args hold the
    # radii at variable positions and constants elsewhere (None: L itself, valid when L
    # has no negative coefficient, e.g. selections and averages).
    radius: Optional[Callable[[Node, Sequence[T | None]], T]] = None
    # affine: which input positions may be variable while the op stays affine.
    affine_inputs: Optional[Callable[[Node, Sequence[bool]], bool]] = None
    # elementwise / nonlinear: interval of the output from intervals of the inputs.
    interval: Optional[Callable[..., list]] = None
    # elementwise: relaxation over [l, u]; alpha (if supported) selects among sound ones.
    # Called as relax(node, l, u, alpha, consts) where consts are the node's constant
    # inputs in order (None for variable positions).
    relax: Optional[Callable[..., Relaxation]] = None
    # alpha_init(node, l, u, consts) -> alpha of l's shape; alpha_bounds(...) -> (lo, hi)
    # tensors that alpha is projected onto after each gradient step.
    # elementwise, optional: prepare(node, l, u, consts) -> the part of the relaxation that
    # does not depend on alpha; alpha-CROWN then calls relax(..., prepared=that) at each
    # step on the same interval instead of recomputing it.
    prepare: Optional[Callable[..., object]] = None
    alpha_init: Optional[Callable[..., T]] = None
    # Adam's step size for this rule's alphas, as a multiple of `alpha_lr`: a ReLU's alpha
    # is a slope, an S-shape's a tangent point, which moves its line much further per unit.
    alpha_lr_scale: float = 1.0
    alpha_bounds: Optional[Callable[..., tuple[T, T]]] = None
    # elementwise: alpha is read only where `unstable` holds, and there the lower line is
    # alpha * x (through the origin); alpha-CROWN may then keep alphas at the unstable
    # elements only (crown.SparseAlpha).
    sparse_alpha: bool = False
    # elementwise: unstable(node, l, u, consts) -> mask of elements whose relaxation is
    # not exact; only those need tight (CROWN) input bounds. None: every element.
    unstable: Optional[Callable[..., T]] = None
    # affine, optional fast path: backward(node, A_outs, args, in_shapes) -> (A_ins, bias, mass)
    # or None to use the generic vector-Jacobian product. A_outs: [B, S, *out_shape];
    # args: constants in position, None for variable inputs.
    backward: Optional[Callable[..., Optional[tuple]]] = None
    # affine, optional fast path for intervals in exact arithmetic: centre_radius(node,
    # centre, radius, args) -> (centre, |L| radius) of the output from the first input's
    # centre and radius [B, *shape] (the others constants, in args), or None for a pattern
    # it does not handle. The whole batch at once, where `radius` goes sample by sample.
    centre_radius: Optional[Callable[..., Optional[tuple]]] = None
    # slots (module docstring): gather(node, args) -> [*out_shape, K] for one sample,
    # args as for the forward (constants in place); a selection of input elements and
    # constants. relax_slots(node, lo, hi, alpha, consts) -> SlotRelaxation from the
    # gathered bounds lo, hi [B, 1, *out_shape, K] and alpha [B, S, ...] or None.
    gather: Optional[Callable[..., T]] = None
    relax_slots: Optional[Callable[..., SlotRelaxation]] = None
    facts: frozenset = field(default_factory=frozenset)
    # One variable input, per element (or per row, as Softmax): lipschitz(node, consts) ->
    # a global bound on |f(a) - f(b)| / ||a - b||, the same in l2 and l-inf (the largest
    # |f'| of a scalar function), or None where the node has none (Clip with variable
    # limits). The naive Lipschitz walk (`relaxations.lipschitz`) reads it; an op without
    # it is refused there. The registry-driven tests check it by sampling.
    lipschitz: Optional[Callable[[Node, Sequence], Optional[float]]] = None
    # One variable input, per element: derivative(node, l, u, consts) -> (dl, du), an
    # interval per element holding every (Clarke) derivative of the op over [l, u]: the
    # op's part of the Jacobian relaxation that local Lipschitz bounds
    # (`relaxations.lipschitz.local`) propagate. A kink met only at an end of [l, u] may
    # take its side's derivative alone: where the input sits at the kink on a set of
    # positive measure, its own gradient is zero there and the chain rule multiplies the
    # derivative by it. The registry-driven tests check it by sampling inside [l, u].
    derivative: Optional[Callable[..., tuple[T, T]]] = None


def slope(value: float) -> Callable[[Node, Sequence], float]:
    """A `lipschitz` rule that is one number for every node of the op."""
    return lambda node, consts: value


# Keyed by (domain, op) (`Node.key`), as the forward registry is.
REGISTRY: dict[tuple[str, str], list[OpRule]] = {}


def register_rule(rule: OpRule) -> None:
    """Add a rule; registering an op twice for overlapping opsets is an error."""
    if rule.kind not in ("affine", "elementwise", "nonlinear"):
        raise ValueError(f"unknown rule kind {rule.kind}")
    if (rule.gather is None) != (rule.relax_slots is None):
        raise ValueError(f"rule for {rule.op}: gather and relax_slots go together")
    rules = REGISTRY.setdefault((rule.domain, rule.op), [])
    for r in rules:
        if not (rule.max_opset < r.min_opset or rule.min_opset > r.max_opset):
            raise ValueError(f"bounding rule for {qualified(rule.domain, rule.op)} registered twice")
    rules.append(rule)


def rule_for(node: Node) -> OpRule:
    """The rule for a node, or UnsupportedModel naming node, op and opset."""
    for r in REGISTRY.get(node.key, ()):
        if r.min_opset <= node.opset <= r.max_opset:
            return r
    raise UnsupportedModel("no bounding rule for this op", node=node.name, op=node.qualified_op, opset=node.opset)


def rules_of(op: str, domain: str = "") -> list[OpRule]:
    """Every bounding rule of one op (one per opset range)."""
    return list(REGISTRY.get((domain, op), ()))


def registered_ops() -> list[str]:
    """Every op with a bounding rule: its name, domain-qualified outside the default domain."""
    return sorted(qualified(d, op) for d, op in REGISTRY)


def is_affine_node(node: Node, rule: OpRule, variable: Sequence[bool]) -> bool:
    """Whether the node is affine given which of its inputs are variable."""
    if rule.kind != "affine":
        return False
    return True if rule.affine_inputs is None else rule.affine_inputs(node, variable)
