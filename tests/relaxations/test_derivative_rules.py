"""Registry-driven: every op rule that declares a derivative range (`OpRule.derivative`,
the op's part of the Clarke-Jacobian relaxation that local Lipschitz bounds read) must
hold the op's own derivative at points sampled inside random intervals, in float32 and
float64, for every node of that op in `tests/op_cases.py`."""
from __future__ import annotations

import pytest
import torch

from models import graph_from_proto
from models.ops import forward_rule
from relaxations.registry import rule_for
from tests.op_cases import CASES

_NODES = [(c.name, c, n) for c in CASES for n in graph_from_proto(c.model).nodes
          if rule_for(n).derivative is not None]


def test_the_activations_of_local_lipschitz_declare_a_derivative() -> None:
    assert {"Relu", "LeakyRelu", "Sigmoid", "Tanh"} <= {n.op for _, _, n in _NODES}


def _intervals(n: int, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Wide and narrow intervals, on either side of 0 and across it."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, generator=g, dtype=torch.float64) * 16 - 8
    w = torch.rand(n, generator=g, dtype=torch.float64) * torch.where(torch.arange(n) % 2 == 0, 8.0, 1e-3)
    return a.to(dtype), (a + w).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name, case, node", _NODES, ids=[f"{name}-{n.name}" for name, _, n in _NODES])
def test_declared_range_holds_the_sampled_derivative(name, case, node, dtype) -> None:
    graph = graph_from_proto(case.model)
    consts = [graph.constants.get(x) if x else None for x in node.inputs]
    l, u = _intervals(4000, seed=len(name), dtype=dtype)
    dl, du = rule_for(node).derivative(node, l, u, consts)
    assert dl.shape == l.shape and du.shape == l.shape and bool((dl <= du).all())
    fwd = forward_rule(node).fn
    g = torch.Generator().manual_seed(1)
    for _ in range(8):  # points strictly inside (l, u): the kink's one-sided value is not asked
        t = torch.rand(len(l), generator=g, dtype=torch.float64).clamp(1e-6, 1 - 1e-6)
        x = (l.double() + t * (u.double() - l.double())).requires_grad_(True)
        y = fwd(node, [x] + [None if c is None else c.double() for c in consts[1:]])[0]
        (grad,) = torch.autograd.grad(y.sum(), x)
        assert bool((grad >= dl.double() - 1e-12).all() and (grad <= du.double() + 1e-12).all()), node.op
    # ...and the range is not loose where the interval is a near-point away from a kink
    narrow = (u - l).double() < 1e-2
    assert bool(((du - dl).double()[narrow] <= 0.05 + 1e-3).all() or node.op in ("Relu", "LeakyRelu"))
