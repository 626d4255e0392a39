"""The closed-form backward steps of constant padding and average pooling
(`relaxations/ops/pool_backward.py`) against the generic vmap of the op's vector-Jacobian
product: the same coefficients, bias and mass, and the same gradients under autograd;
and the patterns they leave to the generic step."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import relaxations.affine_step as affine_step
from models import GraphEvaluator
from relaxations.crown import BackwardContext, rules_for
from tests.helpers import assert_same_affine_step
from verifier.pytorch.verify_module import module_model

B, S = 2, 3


class _Pad3d(nn.Module):
    """A zero pad of a 3-D map by `F.pad` (nn.ZeroPad3d exports the same)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, (0, 1, 2, 0, 1, 1))


MODULES = {
    "AveragePool 2x2": (lambda: nn.AvgPool2d(2), (1, 3, 6, 6)),
    "AveragePool 4x4 over 27 (the rest unread)": (lambda: nn.AvgPool2d(4), (1, 2, 27, 27)),
    "AveragePool 3x3 stride 2 (overlapping)": (lambda: nn.AvgPool2d(3, stride=2), (1, 3, 7, 8)),
    "AveragePool 3-D": (lambda: nn.AvgPool3d(2), (1, 2, 4, 4, 4)),
    "GlobalAveragePool": (lambda: nn.AdaptiveAvgPool2d(1), (1, 3, 5, 6)),
    "Pad": (lambda: nn.ZeroPad2d((1, 2, 0, 1)), (1, 3, 6, 6)),
    "Pad 3-D": (_Pad3d, (1, 2, 3, 4, 5)),
}


def _context(name: str):
    make, shape = MODULES[name]
    graph = module_model(nn.Sequential(make()).eval(), shape).graph
    node = next(n for n in graph.nodes if n.op == name.split(" ")[0])
    ctx = BackwardContext(graph, GraphEvaluator(graph, dtype=torch.float64), {}, rules_for(graph))
    return graph, node, ctx


def _closed_form(ctx, node, A):
    rule = ctx.rules[node.name]
    variable = [bool(x) and x not in ctx.ev.constants for x in node.inputs]
    args = [None if (v or not x) else ctx.ev.constants[x] for x, v in zip(node.inputs, variable)]
    shapes = [ctx.graph.shapes.get(x) if v else None for x, v in zip(node.inputs, variable)]
    return rule.backward(node, [A], args, shapes)


@pytest.mark.parametrize("name", list(MODULES))
def test_closed_form_equals_the_generic_transpose(name: str, monkeypatch) -> None:
    torch.manual_seed(0)
    graph, node, ctx = _context(name)
    A = torch.randn(B, S, *graph.shapes[node.outputs[0]], dtype=torch.float64, requires_grad=True)
    got = _closed_form(ctx, node, A)
    assert got is not None, "the closed form takes this pattern"
    monkeypatch.setattr(affine_step, "stacked_backward", lambda *args: None)
    want = affine_step.affine_backward(ctx, node, [A])
    assert_same_affine_step(got, want, A)


def test_pads_of_zero_hand_the_coefficients_through() -> None:
    from models import Node
    from relaxations.ops.pool_backward import pad_backward

    node = Node(name="p", op="Pad", inputs=("x", "pads"), outputs=("y",), opset=13)
    A = torch.randn(B, S, 1, 2, 4, 4, dtype=torch.float64)
    got = pad_backward(node, [A], [None, torch.zeros(8, dtype=torch.int64)], [(1, 2, 4, 4), None])
    assert got[0][0] is A and not got[1].any() and not got[2].any()


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (1, 3, 6, 6)),
    (lambda: nn.AvgPool2d(3, stride=2, padding=1), (1, 3, 6, 6)),
    (lambda: nn.ConstantPad2d((1, 0, 2, 1), 0.5), (1, 3, 6, 6)),
    (lambda: nn.ReflectionPad2d(1), (1, 3, 6, 6)),
], ids=["pooling over pads", "pooling over counted pads", "a nonzero constant", "reflection"])
def test_other_patterns_go_the_generic_way(make, shape) -> None:
    graph = module_model(nn.Sequential(make()).eval(), shape).graph
    node = next(n for n in graph.nodes if n.op in ("AveragePool", "Pad"))
    ctx = BackwardContext(graph, GraphEvaluator(graph, dtype=torch.float64), {}, rules_for(graph))
    A = torch.randn(B, S, *graph.shapes[node.outputs[0]], dtype=torch.float64)
    assert _closed_form(ctx, node, A) is None
    assert affine_step.affine_step(ctx, node, [A])[0][0].shape == (B, S, *shape)
