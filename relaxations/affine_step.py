"""How a backward (CROWN) pass crosses an affine node: the transpose of its linear part
applied to the coefficients, and the coefficients' product with its constant term.

`affine_step` takes the rule's closed form where it has one (`OpRule.backward`: dense
layers, convolutions, reshapes), then one plain autograd call for ops that batch
(`stacked_backward`), then the generic vmap over a vector-Jacobian product
(`affine_backward`), which is right for every affine op and the costliest. `affine_rows`
is the same step with the identity for coefficients: an affine node's matrix rows
(relaxations/reverse.py). The backward pass itself is relaxations/crown.py.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch.func import vjp, vmap

from models import Node
from models.ops import forward_rule

if TYPE_CHECKING:   # crown.py imports this module
    from relaxations.crown import BackwardContext

__all__ = ["affine_step", "affine_rows", "affine_backward", "stacked_backward"]

T = torch.Tensor


def affine_backward(ctx: BackwardContext, node: Node, A_outs: list[T | None],
                     fn: Optional[Callable[..., list]] = None, masked: bool = False) -> tuple[list[T | None], T, T]:
    """Transpose of the node's linear part applied to A, and <A, f(0)> for the bias.

    fn(node, args) -> list of outputs: the node's forward by default, or a slot op's
    gather. `masked`: a zero coefficient hides a non-finite constant of f(0) (a gather's
    -inf padding), as in `interval_terms`."""
    if fn is None and not masked:
        stacked = stacked_backward(ctx, node, A_outs)
        if stacked is not None:
            return stacked
    fn = forward_rule(node).fn if fn is None else fn
    consts = ctx.ev.constants
    variable = [bool(x) and x not in consts for x in node.inputs]
    primals = [torch.zeros(ctx.graph.shapes[x], dtype=ctx.ev.dtype, device=ctx.ev.device)
               for x, v in zip(node.inputs, variable) if v]

    def f(*vs: T) -> tuple[T, ...]:
        it = iter(vs)
        args = [next(it) if v else (None if x == "" else consts[x]) for x, v in zip(node.inputs, variable)]
        return tuple(fn(node, args))

    outs, pullback = vjp(f, *primals)
    ref = next(a for a in A_outs if a is not None)
    B, S = ref.shape[:2]
    cot = tuple((a if a is not None else torch.zeros(B, S, *o.shape, dtype=o.dtype, device=o.device))
                .reshape(B * S, *o.shape) for a, o in zip(A_outs, outs))
    pulled = vmap(pullback)(cot)
    bias = torch.zeros(B, S, dtype=ref.dtype, device=ref.device)
    mass = torch.zeros_like(bias)
    for a, o in zip(A_outs, outs):
        if a is not None and o.is_floating_point():
            term = (a.reshape(B, S, -1) * o.reshape(1, 1, -1))
            if masked:
                term = torch.where(a.reshape(B, S, -1) == 0, torch.zeros_like(term), term)
            bias = bias + term.sum(-1)
            mass = mass + term.abs().sum(-1)
    result: list[T | None] = []
    it = iter(pulled)
    for v, x in zip(variable, node.inputs):
        result.append(next(it).reshape(B, S, *ctx.graph.shapes[x]) if v else None)
    return result, bias, mass


def stacked_backward(ctx: BackwardContext, node: Node, A_outs: list[T | None]
                      ) -> Optional[tuple[list[T | None], T, T]]:
    """`affine_backward` by one plain autograd call, for a one-output node whose rule
    declares "stacked_transpose" (relaxations/registry.py), whose only variable input is
    the first and whose forward rule treats axis 0 as the batch (`batches`). The B x S
    rows of A become that batch, and the transpose is the gradient of the op at zero
    inputs. vmap over a vjp computes the same with more
    overhead per call, and its first call imports torch._dynamo, which a verify then pays
    inside its budget (BENCHMARKS.md, session 36). None when the node does not qualify
    (the caller uses vmap)."""
    if "stacked_transpose" not in ctx.rules[node.name].facts:
        return None
    rule = forward_rule(node)
    consts = ctx.ev.constants
    variable = [bool(x) and x not in consts for x in node.inputs]
    A = A_outs[0] if len(A_outs) == 1 else None
    if rule.batches is None or A is None or not variable or not variable[0] or any(variable[1:]):
        return None
    in_shape, out_shape = ctx.graph.shapes.get(node.inputs[0]), ctx.graph.shapes.get(node.outputs[0])
    if not in_shape or not out_shape or in_shape[0] != 1 or out_shape[0] != 1:
        return None
    args = [None if x == "" else consts.get(x) for x in node.inputs]
    args[0] = torch.zeros(in_shape, dtype=ctx.ev.dtype, device=ctx.ev.device)
    if not rule.batches(node, variable, args):
        return None
    B, S = A.shape[:2]
    differentiable = torch.is_grad_enabled() and (A.requires_grad or any(
        a is not None and a.requires_grad for a in args[1:]))
    with torch.enable_grad():
        x = torch.zeros((B * S, *in_shape[1:]), dtype=ctx.ev.dtype, device=ctx.ev.device, requires_grad=True)
        out = rule.fn(node, [x, *args[1:]])[0]
        if tuple(out.shape) != (B * S, *out_shape[1:]) or not out.is_floating_point():
            return None
        A_in, = torch.autograd.grad(out, x, A.reshape(B * S, *out_shape[1:]), create_graph=differentiable)
    constant = out[:1].reshape(1, 1, -1)   # f(0), the same for every row
    if not differentiable:
        constant = constant.detach()
    # A linear op (a pooling, a zero pad) has no bias; but where f(0) depends on weights
    # under training (a fresh BatchNorm's is exactly 0), its gradient must still flow.
    if not constant.requires_grad and not bool(constant.any()):
        zero = torch.zeros(B, S, dtype=A.dtype, device=A.device)
        return [A_in.reshape(B, S, *in_shape), *([None] * (len(node.inputs) - 1))], zero, zero.clone()
    term = A.reshape(B, S, -1) * constant
    return [A_in.reshape(B, S, *in_shape), *([None] * (len(node.inputs) - 1))], term.sum(-1), term.abs().sum(-1)


def affine_step(ctx: BackwardContext, node: Node, A_outs: list[T | None]) -> tuple[list[T | None], T, T]:
    """`affine_backward` by the rule's closed form (`OpRule.backward`: dense layers,
    reshapes, ...) where it has one for the pattern, else by the generic transpose."""
    rule = ctx.rules[node.name]
    if rule.backward is not None:
        variable = [bool(x) and x not in ctx.ev.constants for x in node.inputs]
        args = [None if (v or not x) else ctx.ev.constants[x] for x, v in zip(node.inputs, variable)]
        in_shapes = [ctx.graph.shapes.get(x) if v else None for x, v in zip(node.inputs, variable)]
        fast = rule.backward(node, A_outs, args, in_shapes)
        if fast is not None:
            return fast
    return affine_backward(ctx, node, A_outs)


def affine_rows(ctx: BackwardContext, node: Node, A: T) -> tuple[list[T | None], T, T]:
    """The affine node's linear part transposed applied to A [B, S, *out_shape], per
    variable input (None elsewhere), and <A, f(0)> with its mass: with A the identity,
    the node's matrix rows and constant term (relaxations/reverse.py reads them so).
    By the rule's closed form where there is one: the generic one's vmap costs more per
    call, and its first call imports torch._dynamo (seconds)."""
    return affine_step(ctx, node, [A])
