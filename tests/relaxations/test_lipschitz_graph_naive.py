"""The naive graph-walk Lipschitz bound is sound on MLPs, CNNs and residual nets (it is at
least every slope that sampling and gradient ascent find), equals the FeedForward naive
bound on ReLU MLPs, and refuses what it cannot bound with the node named."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models import UnsupportedModel
from relaxations.lipschitz import FeedForward
from relaxations.lipschitz import graph_naive
from relaxations.lipschitz.graph_naive import graph_naive_bound
from relaxations.lipschitz.linear_ops import conv_l2_bound
from relaxations.sdp.network import relu_mlp_from_graph
from tests.builders import empirical_lipschitz, export_graph
from verifier.lipschitz import naive_certificate


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _randomise_bn(module: nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.3, 2.0)
                m.weight.uniform_(-2, 2)
                m.bias.uniform_(-1, 1)


class SmallCnn(nn.Module):
    """Conv (stride 2, padding) -> ReLU -> BatchNorm (not fusable) -> overlapping MaxPool ->
    Conv -> Tanh -> AvgPool -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.c2 = nn.Conv2d(4, 3, 2)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(3 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.bn(torch.relu(self.c1(x))))
        h = self.avg(torch.tanh(self.c2(h)))
        return self.fc(h.flatten(1))


class ResNet(nn.Module):
    """Conv stem, a ReLU residual block with BatchNorm, a linear residual block (I + W),
    a Sigmoid/LeakyReLU branch joined by Concat, and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 3, padding=1)
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(3)
        self.b = nn.Conv2d(3, 3, 1)
        self.bn_out = nn.BatchNorm1d(3 * 5 * 5)
        self.head = nn.Linear(2 * 3 * 5 * 5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = h + torch.relu(self.bn_a(self.a(h)))
        h = h + self.b(h)
        h = self.bn_out(h.flatten(1))
        h = torch.cat([torch.sigmoid(h), nn.functional.leaky_relu(h, 0.2)], 1)
        return self.head(h)


def _mlp(act: type[nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 7), act(), nn.Linear(7, 6), act(), nn.Linear(6, 3))


@pytest.mark.parametrize("norm", ["2", "inf"])
@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, nn.Sigmoid])
def test_mlp_bound_is_sound(act, norm, tmp_path) -> None:
    graph = export_graph(_mlp(act, 1), (1, 4), tmp_path / "m.onnx")
    bound = graph_naive_bound(graph, norm).value
    assert bound >= empirical_lipschitz(graph, norm)


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_equals_feedforward_naive_on_relu_mlps(norm, tmp_path) -> None:
    for seed in range(3):
        graph = export_graph(_mlp(nn.ReLU, seed), (1, 4), tmp_path / f"m{seed}.onnx")
        ws, bs = relu_mlp_from_graph(graph)
        reference, _ = naive_certificate(FeedForward(tuple(ws), tuple(bs), "relu"), norm)
        ours = graph_naive_bound(graph, norm).value
        assert reference * (1 - 1e-12) <= ours <= reference * (1 + 1e-9)


def _conv_nets(tmp_path, seed: int):
    """The small CNN and the residual net with random weights and batch-norm statistics."""
    for k, (module, shape) in enumerate([(SmallCnn(), (1, 2, 10, 10)), (ResNet(), (1, 1, 5, 5))]):
        torch.manual_seed(seed + k)
        for p in module.parameters():
            nn.init.normal_(p, std=0.5)
        _randomise_bn(module)
        yield module, export_graph(module, shape, tmp_path / f"g{seed}_{k}.onnx")


@pytest.mark.parametrize("norm", ["2", "inf"])
@pytest.mark.parametrize("explicit", [True, False])
def test_cnn_and_residual_bounds_are_sound(norm, explicit, tmp_path, monkeypatch) -> None:
    """``explicit=False`` forbids explicit matrices: every linear node is bounded on its
    own (Fourier symbol for convolutions, Holder for pooling) and nothing is composed."""
    if not explicit:
        monkeypatch.setattr(graph_naive, "MAX_ENTRIES", 0)
    for k, (module, graph) in enumerate(_conv_nets(tmp_path, 10)):
        bound = graph_naive_bound(graph, norm).value
        found = empirical_lipschitz(graph, norm, seed=k)
        assert bound >= found, (type(module).__name__, bound, found)
        assert bound < 1e4 * found  # sanity: a bound, not a placeholder


def test_composition_is_at_least_as_tight_as_node_by_node(tmp_path, monkeypatch) -> None:
    torch.manual_seed(3)
    graph = export_graph(ResNet(), (1, 1, 5, 5), tmp_path / "r.onnx")
    composed = graph_naive_bound(graph, "2").value
    monkeypatch.setattr(graph_naive, "MAX_ENTRIES", 0)
    separate = graph_naive_bound(graph, "2").value
    assert composed <= separate * (1 + 1e-9)


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 0, 1, 1), (1, 2, 2, 2), (2, 1, 1, 2)])
def test_conv_fourier_bound_dominates_the_exact_norm(stride, padding, dilation, groups) -> None:
    torch.manual_seed(stride + 3 * padding + 7 * dilation)
    conv = nn.Conv2d(4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=False).double()
    shape = (1, 4, 7, 6)
    basis = torch.eye(4 * 7 * 6, dtype=torch.float64).reshape(-1, *shape[1:])
    with torch.no_grad():
        mat = conv(basis).reshape(basis.shape[0], -1).T.numpy()
    exact = float(np.linalg.norm(mat, 2))
    from models import Node

    node = Node("c", "Conv", ("x", "w"), ("y",), {"strides": [stride] * 2, "pads": [padding] * 4,
                                                   "dilations": [dilation] * 2, "group": groups})
    bound = conv_l2_bound(node, conv.weight.detach(), shape)
    assert bound is not None and exact <= bound <= 2.5 * exact


def test_unsupported_op_names_the_node(tmp_path) -> None:
    class Exp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.exp(self.fc(x))

    graph = export_graph(Exp(), (1, 3), tmp_path / "e.onnx")
    exp_node = next(n.name for n in graph.nodes if n.op == "Exp")
    with pytest.raises(UnsupportedModel, match=exp_node):
        graph_naive_bound(graph, "2")


def test_product_of_variables_is_refused(tmp_path) -> None:
    class Square(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * x

    graph = export_graph(Square(), (1, 3), tmp_path / "s.onnx")
    with pytest.raises(UnsupportedModel, match="not globally Lipschitz"):
        graph_naive_bound(graph, "inf")


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_an_affine_op_without_its_own_rule_is_walked_as_its_dense_matrix(norm, tmp_path, monkeypatch) -> None:
    """Every linear node taken by the fallback an affine op new to the registry gets
    (`linear_ops._dense_op`: the matrix read off its forward) instead of its own rule:
    the bounds stay sound and, where the walk composes explicit matrices anyway, equal."""
    from relaxations.lipschitz import linear_ops

    def dense_only(graph, node, out_index=0):
        var = next(i for i, x in enumerate(node.inputs) if x and x not in graph.constants)
        refuse = lambda why: UnsupportedModel(why, node=node.name, op=node.op)  # noqa: E731
        return linear_ops._dense_op(graph, node, var, out_index, tuple(graph.shapes[node.inputs[var]]),
                                    tuple(graph.shapes[node.outputs[out_index]]), refuse)

    for k, (module, graph) in enumerate(_conv_nets(tmp_path, 20)):
        own = graph_naive_bound(graph, norm).value
        with monkeypatch.context() as m:
            m.setattr(graph_naive, "linear_op", dense_only)
            dense = graph_naive_bound(graph, norm).value
        assert dense >= empirical_lipschitz(graph, norm, seed=k), type(module).__name__
        assert dense <= own * (1 + 1e-6)   # the walk composes these nets' layers as explicit matrices
