"""Branch and bound on tiny ReLU nets whose true minimum is known from a dense grid:
thresholds just below it must give unsat, just above it sat, with both split kinds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vnnlib
from models import GraphEvaluator
from tests.helpers import assert_verdicts_bracket, relu_mlp_onnx
from verifier import Config, load_model, verify
from verifier.config import with_overrides


def _net(tmp_path, seed: int, widths=(2, 16, 16, 1)):
    return load_model(relu_mlp_onnx(tmp_path / f"net{seed}.onnx", seed, widths))


def _true_min(model) -> float:
    g = np.linspace(-1, 1, 801)
    xs = np.stack(np.meshgrid(g, g), -1).reshape(-1, 1, 2)
    ev = GraphEvaluator(model.graph, dtype=torch.float64)
    return float(ev(torch.from_numpy(xs)).min())


def _spec(threshold: float) -> vnnlib.Spec:
    """Counterexample: y <= threshold somewhere in [-1, 1]^2."""
    region = vnnlib.InputRegion(np.full(2, -1.0), np.full(2, 1.0))
    conj = vnnlib.OutputConstraints(np.array([[1.0]]), np.array([threshold]), np.array([False]))
    return vnnlib.Spec(2, 1, (vnnlib.Disjunct(region, (conj,)),))


@pytest.mark.parametrize("mode", ["input", "activation"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bab_agrees_with_the_true_minimum(tmp_path, seed: int, mode: str, device: str) -> None:
    model = _net(tmp_path, seed)
    m = _true_min(model)
    spread = 0.05 * (1 + abs(m))
    cfg = with_overrides(Config(timeout=60), [f"bab.mode={mode}", "attack.enabled=false", "attack.samples=1",
                                              f"device={device}"])
    assert_verdicts_bracket(model, _spec, m, spread, cfg)


def test_timeout_gives_timeout_not_unsat(tmp_path) -> None:
    model = _net(tmp_path, 3, widths=(2, 64, 64, 64, 1))
    m = _true_min(model)
    threshold = m - 0.05 * (1 + abs(m))  # safely below the minimum: sat would be wrong
    cfg = with_overrides(Config(timeout=0.5), ["bab.mode=activation", "attack.enabled=false"])
    result = verify(model, _spec(threshold), cfg)
    assert result.verdict in ("timeout", "unknown", "unsat")
    # A zero budget can never produce a verdict: the search stops before proving anything.
    zero = verify(model, _spec(threshold), with_overrides(Config(timeout=0.0), ["attack.enabled=false"]))
    assert zero.verdict == "timeout"


def test_domain_limit_gives_unknown_not_unsat(tmp_path) -> None:
    model = _net(tmp_path, 4, widths=(2, 32, 32, 1))
    m = _true_min(model)
    cfg = with_overrides(Config(timeout=60), ["bab.mode=input", "bab.max_domains=1", "bab.batch_size=1",
                                              "attack.enabled=false"])
    result = verify(model, _spec(m - 1e-3 * (1 + abs(m))), cfg)
    assert result.verdict in ("unknown", "unsat")
    if result.verdict == "unsat":
        pytest.fail("a one-domain budget cannot prove a threshold this close to the minimum")


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_input_split_methods_agree_with_the_true_minimum(tmp_path, method: str) -> None:
    """Both bounding methods of input split; alpha-CROWN's coefficients can ignore an
    input entirely, which once made the search slice the other input forever."""
    model = _net(tmp_path, 0)
    m = _true_min(model)
    spread = 0.05 * (1 + abs(m))
    cfg = with_overrides(Config(timeout=60), ["bab.mode=input", "attack.enabled=false",
                                              f"bab.input_split_method={method}"])
    result = verify(model, _spec(m - spread), cfg)
    assert result.verdict == "unsat", (m, result.reason, result.stats)
    assert result.stats["domains"] < 2000
    above = verify(model, _spec(m + spread), cfg)
    assert above.verdict == "sat"
