"""Registry-driven: every op rule that declares a Lipschitz constant (`OpRule.lipschitz`,
read by the naive Lipschitz walk) is checked against the op's own forward on sampled
pairs, for every node of that op in `tests/op_cases.py`, so an op added with a rule is
checked here without a new test."""
from __future__ import annotations

import pytest
import torch

from models import graph_from_proto
from models.ops import forward_rule
from relaxations.lipschitz.graph_naive import graph_naive_bound
from relaxations.registry import REGISTRY, rule_for
from tests.op_cases import CASES

_NODES = [(c.name, c, n) for c in CASES for n in graph_from_proto(c.model).nodes
          if rule_for(n).lipschitz is not None]


def test_the_activations_a_lipschitz_walk_meets_declare_a_constant() -> None:
    declared = {n.op for _, _, n in _NODES}
    # (Softmax: the importer expands the cases' small ones into Exp and sums; see below.)
    assert {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Abs", "Clip", "Sin", "Cos", "Softplus", "Atan",
            "Erf", "Elu", "HardSigmoid", "HardSwish", "Gelu"} <= declared
    # Not globally Lipschitz (or not continuous): none declared, so the walk refuses them.
    for op in ("Exp", "Log", "Sqrt", "Reciprocal", "Pow", "Sign", "Floor"):
        assert op not in declared


def _pairs(n: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Far pairs over [-8, 8] and near pairs (1e-3 apart), where a slope peaks."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, width, generator=g, dtype=torch.float64) * 16 - 8
    far = torch.rand(n, width, generator=g, dtype=torch.float64) * 16 - 8
    near = a + (torch.rand(n, width, generator=g, dtype=torch.float64) - 0.5) * 2e-3
    return torch.cat([a, a]), torch.cat([far, near])


@pytest.mark.parametrize("name, case, node", _NODES, ids=[f"{name}-{n.name}" for name, _, n in _NODES])
def test_declared_constant_bounds_the_op_on_sampled_pairs(name, case, node) -> None:
    graph = graph_from_proto(case.model)
    consts = [graph.constants.get(x) if x else None for x in node.inputs]
    L = rule_for(node).lipschitz(node, consts)
    assert L is not None and L > 0
    width = 1
    for s in graph.shapes[node.inputs[0]][1:]:
        width *= s
    a, b = _pairs(4000, width, seed=len(name))
    shape = (len(a), *graph.shapes[node.inputs[0]][1:])
    fwd = forward_rule(node).fn

    def f(x: torch.Tensor) -> torch.Tensor:
        args = [x.reshape(shape)] + [None if c is None else c.double() for c in consts[1:]]
        return fwd(node, args)[0].reshape(len(x), -1)

    fa, fb = f(a), f(b)
    diff = (a - b).abs()
    ok = diff > 1e-9
    ratio = (fa - fb).abs()[ok] / diff[ok]
    assert float(ratio.max()) <= L * (1 + 1e-9), (node.op, float(ratio.max()), L)
    # ...and the constant is not loose by much where the op is smooth or piecewise linear
    # (Sin, Cos, Softplus, Atan reach theirs only at points the samples approach).
    assert float(ratio.max()) >= 0.5 * L, (node.op, float(ratio.max()), L)


def test_softmax_constant_bounds_it_in_both_norms() -> None:
    """A Softmax left whole (wider than the importer expands) meets the walk as one node."""
    L = REGISTRY["", "Softmax"][0].lipschitz(None, [])
    a, b = _pairs(4000, 7, seed=1)
    fa, fb = torch.softmax(a, dim=1), torch.softmax(b, dim=1)
    for p in (2, float("inf")):
        ratio = (fa - fb).norm(p=p, dim=1) / (a - b).norm(p=p, dim=1)
        assert float(ratio.max()) <= L, p


@pytest.mark.parametrize("name, case, node", _NODES[:1] + [x for x in _NODES if x[2].op == "Clip"][:1],
                         ids=lambda x: getattr(x, "name", str(x)))
def test_the_naive_walk_takes_the_registry_constant(name, case, node) -> None:
    """The walk's step for the node is the rule's constant (and a Clip with a variable
    limit would have none: `_clip_lipschitz`)."""
    graph = graph_from_proto(case.model)
    bound = graph_naive_bound(graph, "inf")
    consts = [graph.constants.get(x) if x else None for x in node.inputs]
    L = rule_for(node).lipschitz(node, consts)
    steps = [s for s in bound.steps if s["nodes"] == [node.name]]
    assert steps and steps[0]["kind"] == f"activation slope {L:g}"
