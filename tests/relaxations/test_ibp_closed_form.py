"""Closed forms of IBP in exact arithmetic (certified training's intervals).

Dense layers take `OpRule.centre_radius` (the layer and |W| as F.linear on the whole
batch) where `affine_interval` maps the op's forward and its radius rule over the
samples; unary elementwise ops are applied to the batch at once. Each must give the
interval the generic path gives, for every attribute and shape it accepts, and hand
back the patterns it does not take.
"""
from __future__ import annotations

from types import MappingProxyType

import pytest
import torch

from models import Node
from models.ops import forward_rule
from relaxations.bounds import IntervalBounds
from relaxations.ibp import _closed_form_interval, affine_interval
from relaxations.ops.common import monotone_interval
from relaxations.registry import rule_for

T = torch.Tensor


def _node(op: str, n_inputs: int, **attrs) -> Node:
    return Node("n", op, tuple(f"i{k}" for k in range(n_inputs)), ("o",), MappingProxyType(attrs))


def _interval(*shape: int, seed: int) -> IntervalBounds:
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(*shape, generator=g, dtype=torch.float64)
    r = torch.rand(*shape, generator=g, dtype=torch.float64)
    return IntervalBounds(c - r, c + r)


def _randn(*shape: int, seed: int) -> T:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


GEMMS = [  # attributes, bias shape (None: no C), sample rows N
    ({}, (4,), 1),
    ({"transB": 1}, (4,), 1),
    ({"transB": 1, "alpha": -0.5, "beta": 2.0}, (4,), 1),
    ({"alpha": 3.0}, (1, 4), 1),
    ({"transB": 1}, (), 1),
    ({"beta": 0.5}, (3, 4), 3),
    ({"transB": 1}, None, 2),
]


@pytest.mark.parametrize("attrs,bias_shape,rows", GEMMS)
def test_gemm_closed_form_equals_the_generic_interval(attrs: dict, bias_shape, rows: int) -> None:
    n, m, B = 5, 4, 6
    w = _randn(*((m, n) if attrs.get("transB") else (n, m)), seed=1)
    consts = [w] if bias_shape is None else [w, _randn(*bias_shape, seed=2)]
    node = _node("Gemm", 1 + len(consts), **attrs)
    ins = [_interval(B, rows, n, seed=3), *consts]
    fast = _closed_form_interval(node, rule_for(node), ins)
    assert fast is not None
    slow = affine_interval(node, rule_for(node), ins)
    torch.testing.assert_close(fast[0].lower, slow[0].lower, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast[0].upper, slow[0].upper, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sample", [(5,), (3, 5), (2, 3, 5)])
def test_matmul_by_a_constant_matrix_closed_form_equals_the_generic_interval(sample: tuple) -> None:
    node = _node("MatMul", 2)
    ins = [_interval(6, *sample, seed=4), _randn(5, 4, seed=5)]
    fast = _closed_form_interval(node, rule_for(node), ins)
    slow = affine_interval(node, rule_for(node), ins)
    assert fast is not None and fast[0].lower.shape == slow[0].lower.shape == (6, *sample[:-1], 4)
    torch.testing.assert_close(fast[0].lower, slow[0].lower, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast[0].upper, slow[0].upper, rtol=1e-12, atol=1e-12)


def test_patterns_without_a_closed_form_are_handed_back() -> None:
    """transA, a constant on the left, a constant vector on the right: the generic path."""
    gemm = _node("Gemm", 3, transA=1)
    assert _closed_form_interval(gemm, rule_for(gemm), [_interval(6, 5, 1, seed=6), _randn(5, 4, seed=7),
                                                        _randn(4, seed=8)]) is None
    matmul = _node("MatMul", 2)
    assert _closed_form_interval(matmul, rule_for(matmul), [_randn(3, 5, seed=9), _interval(6, 5, 4, seed=10)]) is None
    assert _closed_form_interval(matmul, rule_for(matmul), [_interval(6, 3, 5, seed=11), _randn(5, seed=12)]) is None


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Sigmoid", {}), ("Tanh", {})])
def test_unary_elementwise_intervals_on_the_batch_equal_sample_by_sample(op: str, attrs: dict) -> None:
    node = _node(op, 1, **attrs)
    box = _interval(5, 1, 3, 4, seed=13)
    (out,) = monotone_interval(node, [box])
    fn = forward_rule(node).fn
    for i in range(5):
        assert torch.equal(out.lower[i], fn(node, [box.lower[i]])[0])
        assert torch.equal(out.upper[i], fn(node, [box.upper[i]])[0])
