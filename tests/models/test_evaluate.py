"""The batched forward: the direct path for broadcasting ops computes what vmap computes."""
from __future__ import annotations

import pytest
import torch

import models.evaluate as evaluate
from models import GraphEvaluator, graph_from_proto
from tests.op_cases import CASES


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_direct_batches_agree_with_vmap(case, monkeypatch) -> None:
    graph = graph_from_proto(case.model)
    g = torch.Generator().manual_seed(0)
    x = case.low + (case.high - case.low) * torch.rand(7, *case.input_shape, generator=g)
    fast = GraphEvaluator(graph, dtype=torch.float64).forward_all(x.double())
    monkeypatch.setattr(evaluate, "BROADCASTING", frozenset())
    slow = GraphEvaluator(graph, dtype=torch.float64).forward_all(x.double())
    for name, v in slow.items():
        assert fast[name].shape == v.shape, name
        torch.testing.assert_close(fast[name], v, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_a_square_constant_on_the_left_is_not_batched_directly() -> None:
    """W @ x with x one-dimensional: the batch would become a matrix operand (wrong values
    with the right shape when B equals the width), so it goes through vmap."""
    import numpy as np
    from onnx import helper

    from tests.op_cases import make_model

    W = np.random.default_rng(0).normal(size=(5, 5)).astype(np.float32)
    node = helper.make_node("MatMul", ["W", "X"], ["Y"])
    graph = graph_from_proto(make_model([node], {"W": W}, (5,), (5,)))
    x = torch.rand(5, 5)
    y = GraphEvaluator(graph)(x)
    torch.testing.assert_close(y, x @ torch.from_numpy(W).T)
