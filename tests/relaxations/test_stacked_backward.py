"""The transpose of a batch-wise affine op by one autograd call over the rows stacked on
its batch axis (`relaxations.affine_step.stacked_backward`) against the generic vmap of its
vector-Jacobian product, which it replaces for pooling, padding and batch normalisation:
the same coefficients, bias and mass, and the same gradients."""
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


def _batchnorm() -> nn.Module:
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
    return bn


MODULES = {
    "AveragePool": lambda: nn.AvgPool2d(2),
    "AveragePool, pads not counted": lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
    "Pad": lambda: nn.ZeroPad2d((1, 2, 0, 1)),
    "Pad, a constant": lambda: nn.ConstantPad2d((1, 0, 2, 1), 0.5),
    "BatchNormalization": _batchnorm,
    "GlobalAveragePool": lambda: nn.AdaptiveAvgPool2d(1),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_stacked_backward_equals_the_vmap_of_the_vjp(name: str, monkeypatch) -> None:
    torch.manual_seed(0)
    graph = module_model(nn.Sequential(MODULES[name]()).eval(), (1, 3, 6, 6)).graph
    node = next(n for n in graph.nodes if n.op == name.split(",")[0])
    ev = GraphEvaluator(graph, dtype=torch.float64)
    ctx = BackwardContext(graph, ev, {}, rules_for(graph))
    A = torch.randn(B, S, *graph.shapes[node.outputs[0]], dtype=torch.float64, requires_grad=True)
    got = affine_step.stacked_backward(ctx, node, [A])
    assert got is not None, "the op qualifies for the stacked transpose"
    monkeypatch.setattr(affine_step, "stacked_backward", lambda *args: None)
    want = affine_step.affine_backward(ctx, node, [A])
    assert_same_affine_step(got, want, A)


def test_pad_on_the_batch_axis_is_not_stacked() -> None:
    """A Pad that pads axis 0 does not treat it as the batch: the generic path takes it."""
    from models import Node
    from models.ops.registry import forward_rule

    node = Node(name="p", op="Pad", inputs=("x", "pads"), outputs=("y",), opset=13)
    pads = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0])
    assert not forward_rule(node).batches(node, [True, False], [torch.zeros(1, 3, 4, 4), pads])
    ok = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    assert forward_rule(node).batches(node, [True, False], [torch.zeros(1, 3, 4, 4), ok])


def test_a_transposed_convolution_keeps_the_vmap_path() -> None:
    """ConvTranspose batches too, but its forward over the stacked rows would cost as much
    as the transpose: it is not stacked."""
    graph = module_model(nn.Sequential(nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1)).eval(), (1, 3, 6, 6)).graph
    node = next(n for n in graph.nodes if n.op == "ConvTranspose")
    ctx = BackwardContext(graph, GraphEvaluator(graph, dtype=torch.float64), {}, rules_for(graph))
    A = torch.randn(B, S, *graph.shapes[node.outputs[0]], dtype=torch.float64)
    assert affine_step.stacked_backward(ctx, node, [A]) is None


def test_a_zero_bias_under_training_keeps_its_gradient() -> None:
    """A fresh BatchNorm (zero mean and shift) is zero at zero: its bias term is zero, but
    in certified training the shift is a weight, and the term's gradient reaches it."""
    graph = module_model(nn.Sequential(nn.BatchNorm2d(3)).eval(), (1, 3, 4, 4)).graph
    node = next(n for n in graph.nodes if n.op == "BatchNormalization")
    ev = GraphEvaluator(graph, dtype=torch.float64)
    shift = ev.constants[node.inputs[2]].clone().requires_grad_(True)
    ev.constants[node.inputs[2]] = shift
    A = torch.randn(B, S, *graph.shapes[node.outputs[0]], dtype=torch.float64)
    got = affine_step.stacked_backward(ctx=BackwardContext(graph, ev, {}, rules_for(graph)), node=node, A_outs=[A])
    assert not got[1].detach().any()
    grad, = torch.autograd.grad(got[1].sum(), shift)
    torch.testing.assert_close(grad, A.sum(dim=(0, 1, 2, 4, 5)))
