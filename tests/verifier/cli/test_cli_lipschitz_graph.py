"""`nncert lipschitz` on graphs that are not plain ReLU MLPs: the Lipschitz-bounded layers of
`models.lipschitz_layers` after ONNX export (residual SLL / Gershgorin blocks included),
and clean refusals (exit code 2, the node named) for what the naive walk cannot bound."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from models import load_onnx
from tests.builders import empirical_lipschitz, export_graph, randomised_lipschitz_module
from verifier.cli import BAD_INPUT, main

LAYERS = ["sandwich", "sandwich_net", "sll", "sll_wide", "gershgorin", "sll_net", "gershgorin_net", "orthogonal_down"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _lipschitz(path: str, norm: str, method: str, report: str) -> tuple[int, float | None]:
    rc = main(["lipschitz", path, "--norm", norm, "--method", method, "--report", report])
    if rc != 0:
        return rc, None
    with open(report) as f:
        return rc, float(json.load(f)["value"])


@pytest.mark.parametrize("norm", ["2", "inf"])
@pytest.mark.parametrize("name", LAYERS)
def test_exported_lipschitz_layers_are_accepted(name: str, norm: str, tmp_path, capsys) -> None:
    """The naive graph bound of the exported model is sound; the layer's own float64
    certificate (module docstrings of `models.lipschitz_layers`), computed from the very
    float32 weights that were exported, is sound as well and is the tight one."""
    module = randomised_lipschitz_module(name, 4)
    path = str(tmp_path / f"{name}.onnx")
    module.export_onnx(path, (1, module.in_features))
    graph = load_onnx(path)
    found = empirical_lipschitz(graph, norm, steps=60)
    rc, naive = _lipschitz(path, norm, "naive", str(tmp_path / "r.json"))
    assert rc == 0, capsys.readouterr().err
    assert naive is not None and naive >= found
    own = module.certified_lipschitz_bound(norm, dtype=torch.float32)
    assert own >= found * (1 - 1e-6)
    assert own <= module.lipschitz_bound(norm) * (1 + 1e-3)


def test_sdp_methods_refuse_residual_graphs(tmp_path, capsys) -> None:
    module = randomised_lipschitz_module("sll", 1)
    path = str(tmp_path / "sll.onnx")
    module.export_onnx(path, (1, module.in_features))
    assert main(["lipschitz", path, "--method", "sdp-layer"]) == BAD_INPUT
    err = capsys.readouterr().err
    assert "ReLU MLP" in err and "--method naive" in err


def test_unsupported_op_exits_2_naming_the_node(tmp_path, capsys) -> None:
    class Exp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.exp(self.fc(x))

    graph = export_graph(Exp(), (1, 3), tmp_path / "exp.onnx")
    node = next(n.name for n in graph.nodes if n.op == "Exp")
    assert main(["lipschitz", str(tmp_path / "exp.onnx")]) == BAD_INPUT
    err = capsys.readouterr().err
    assert node in err and "Exp" in err


def test_cnn_through_the_cli(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(3 * 3 * 3, 4))
    graph = export_graph(cnn, (1, 1, 6, 6), tmp_path / "cnn.onnx")
    for norm in ("2", "inf"):
        rc, value = _lipschitz(str(tmp_path / "cnn.onnx"), norm, "naive", str(tmp_path / "r.json"))
        assert rc == 0 and value is not None and value >= empirical_lipschitz(graph, norm, steps=40)
    assert "graph walk" in capsys.readouterr().out
