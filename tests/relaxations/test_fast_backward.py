"""The closed-form backward passes (`relaxations/ops/fast_backward.py`) against the
vector-Jacobian product of each op's own forward, which the generic path computes."""
from __future__ import annotations

import pytest
import torch

from models import Node
from models.ops.registry import forward_rule
from relaxations.ops.fast_backward import add_sub_backward, reduce_backward, transpose_backward, unbroadcast

B, S = 2, 3


def _vjp(node: Node, args: list, shapes: list, A: torch.Tensor) -> list:
    """A [B, S, *out] pulled back onto each variable input (None at constants) by autograd."""
    xs = [torch.randn(s, dtype=torch.float64, requires_grad=True) if a is None else a for a, s in zip(args, shapes)]
    out = forward_rule(node).fn(node, xs)[0]
    pulled = []
    for x, a in zip(xs, args):
        if a is not None:
            pulled.append(None)
            continue
        rows = [torch.autograd.grad(out, x, A[b, s], retain_graph=True)[0] for b in range(B) for s in range(S)]
        pulled.append(torch.stack(rows).reshape(B, S, *x.shape))
    return pulled


def _check(fast, node: Node, args: list, shapes: list, out_shape: tuple) -> None:
    A = torch.randn(B, S, *out_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = fast(node, [A], args, [None if a is not None else s for a, s in zip(args, shapes)])
    assert got is not None
    for g, want in zip(got[0], _vjp(node, args, shapes, A)):
        assert (g is None) == (want is None)
        if g is not None:
            assert g.shape == want.shape
            torch.testing.assert_close(g, want)


@pytest.mark.parametrize("op", ["Add", "Sub"])
@pytest.mark.parametrize("a,b", [((1, 4, 16), (1, 4, 1)), ((1, 4, 1), (1, 4, 16)), ((2, 3, 5), (5,)),
                                 ((3, 1, 5), (1, 4, 5))])
def test_add_sub_with_a_broadcast_variable(op: str, a: tuple, b: tuple) -> None:
    node = Node(name="n", op=op, inputs=("x", "y"), outputs=("z",), opset=14)
    out = torch.broadcast_shapes(a, b)
    _check(add_sub_backward, node, [None, None], [a, b], out)
    c = torch.randn(b, dtype=torch.float64)
    if torch.broadcast_shapes(a, b) == a:       # a constant beside it: the variable keeps its shape
        _check(add_sub_backward, node, [None, c], [a, b], out)


def test_unbroadcast_refuses_shapes_that_do_not_broadcast() -> None:
    assert unbroadcast(torch.zeros(B, S, 4, 3), (2, 3)) is None
    assert unbroadcast(torch.zeros(B, S, 3), (2, 3)) is None


@pytest.mark.parametrize("perm", [None, (0, 2, 1), (2, 0, 1), (1, 2, 0), (-1, 0, 1)])
def test_transpose(perm) -> None:
    attrs = {} if perm is None else {"perm": list(perm)}
    node = Node(name="n", op="Transpose", inputs=("x",), outputs=("z",), attrs=attrs, opset=13)
    shape = (2, 3, 4)
    out = tuple(torch.zeros(shape).permute(*(perm or (2, 1, 0))).shape)
    _check(transpose_backward, node, [None], [shape], out)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum"])
@pytest.mark.parametrize("axes,keep", [([-1], 1), ([1], 0), ([0, 2], 1), ([], 1), ([1, 2], 0)])
@pytest.mark.parametrize("as_input", [False, True])
def test_reductions(op: str, axes: list, keep: int, as_input: bool) -> None:
    shape = (2, 3, 4)
    opset = 18 if as_input else 13
    if op == "ReduceSum" and not as_input:
        opset = 11                         # ReduceSum's axes became an input at opset 13
    attrs = {"keepdims": keep} if as_input else {"keepdims": keep, "axes": axes}
    inputs = ("x", "axes") if as_input and axes else ("x",)
    node = Node(name="n", op=op, inputs=inputs, outputs=("z",), attrs=attrs, opset=opset)
    args = [None] + ([torch.tensor(axes, dtype=torch.int64)] if len(inputs) > 1 else [])
    out = tuple(forward_rule(node).fn(node, [torch.zeros(shape), *args[1:]])[0].shape)
    _check(reduce_backward, node, args, [shape] + [(len(axes),)] * (len(args) - 1), out)
