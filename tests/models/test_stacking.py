"""Samples stacked on ONNX's N axis (`stacked_call`) compute what vmap computes, and the
cases where stacking would be wrong are refused (the caller then maps by vmap)."""
from __future__ import annotations

from types import MappingProxyType

import pytest
import torch
from torch.func import vmap

from models.evaluate import map_samples, stacked_call
from models.graph import Node
from models.ops import forward_rule

B = 5


def _node(op: str, n_in: int, **attrs) -> Node:
    return Node(name="n", op=op, inputs=tuple(f"i{k}" for k in range(n_in)), outputs=("o",),
                attrs=MappingProxyType(attrs))


def _vmapped(node: Node, args: list, variable: list) -> list[torch.Tensor]:
    fn = forward_rule(node).fn
    return list(vmap(lambda *xs: tuple(fn(node, list(xs))), in_dims=tuple(0 if v else None for v in variable))(*args))


g = torch.Generator().manual_seed(0)


def _r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# (node, args with stacked variables [B, *sample], variable mask)
STACKABLE = {
    "gemm": (_node("Gemm", 3, transB=1), [_r(B, 1, 6), _r(4, 6), _r(4)], [True, False, False]),
    "gemm-alpha": (_node("Gemm", 3, alpha=0.5, beta=2.0), [_r(B, 1, 6), _r(6, 4), _r(1, 4)], [True, False, False]),
    "conv": (_node("Conv", 3, pads=[1, 1, 1, 1], strides=[2, 2]), [_r(B, 1, 2, 6, 6), _r(3, 2, 3, 3), _r(3)],
             [True, False, False]),
    "conv-transpose": (_node("ConvTranspose", 2, strides=[2, 2]), [_r(B, 1, 3, 4, 4), _r(3, 2, 2, 2)], [True, False]),
    "batchnorm": (_node("BatchNormalization", 5, epsilon=1e-3),
                  [_r(B, 1, 3, 4, 4), _r(3), _r(3), _r(3), _r(3).abs() + 0.1], [True] + [False] * 4),
    "maxpool": (_node("MaxPool", 1, kernel_shape=[2, 2], strides=[2, 2]), [_r(B, 1, 2, 6, 6)], [True]),
    "avgpool": (_node("AveragePool", 1, kernel_shape=[3, 3], pads=[1, 1, 1, 1]), [_r(B, 1, 2, 5, 5)], [True]),
    "global-avgpool": (_node("GlobalAveragePool", 1), [_r(B, 1, 3, 4, 4)], [True]),
    "flatten": (_node("Flatten", 1, axis=1), [_r(B, 1, 2, 3, 4)], [True]),
    "add-const": (_node("Add", 2), [_r(B, 1, 3, 4), _r(1, 3, 4)], [True, False]),
    "mul-lower-rank": (_node("Mul", 2), [_r(B, 1, 3, 4), _r(4)], [True, False]),
    "add-two-variables": (_node("Add", 2), [_r(B, 1, 3), _r(B, 1, 3)], [True, True]),
    "relu": (_node("Relu", 1), [_r(B, 1, 7)], [True]),
}

# Stacking would mix samples or broadcast a constant against them: refused.
REFUSED = {
    "gemm-transA": (_node("Gemm", 2, transA=1), [_r(B, 1, 6), _r(1, 4)], [True, False]),
    "gemm-variable-B": (_node("Gemm", 2), [_r(3, 1), _r(B, 1, 4)], [False, True]),
    "flatten-axis-2": (_node("Flatten", 1, axis=2), [_r(B, 1, 2, 3, 4)], [True]),
    "add-const-reaching-N": (_node("Add", 2), [_r(B, 1, 3), _r(2, 3)], [True, False]),
    "sample-N-not-1": (_node("Relu", 1), [_r(B, 2, 3)], [True]),
    "no-declaration": (_node("Transpose", 1, perm=[1, 0]), [_r(B, 1, 3)], [True]),
    # (B = 5 samples of [1, 5] against [1, 5, 5]: stacked, the lower rank's samples would
    # align with the other's second axis)
    "variables-of-two-ranks": (_node("Add", 2), [_r(B, 1, 5, 5), _r(B, 1, 5)], [True, True]),
}


@pytest.mark.parametrize("case", sorted(STACKABLE))
def test_stacked_equals_vmap(case: str) -> None:
    node, args, variable = STACKABLE[case]
    stacked = stacked_call(node, forward_rule(node).fn, args, variable)
    assert stacked is not None, "this node should be stackable"
    expected = _vmapped(node, args, variable)
    assert len(stacked) == len(expected)
    for s, e in zip(stacked, expected):
        assert s.shape == e.shape
        torch.testing.assert_close(s, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsafe_stacking_is_refused_and_mapped(case: str) -> None:
    node, args, variable = REFUSED[case]
    assert stacked_call(node, forward_rule(node).fn, args, variable) is None
    out = map_samples(node, forward_rule(node).fn, args, variable)
    for s, e in zip(out, _vmapped(node, args, variable)):
        torch.testing.assert_close(s, e)
