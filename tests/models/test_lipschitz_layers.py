"""Lipschitz-by-construction layers: the documented bound holds, the plain module and the
ONNX export compute the same function, and the float64 certificate agrees."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn

from models.lipschitz_layers import (
    ReluCertificate,
    SandwichNet,
    cayley,
    certify_relu_block,
)
from tests.builders import LIPSCHITZ_FACTORIES, randomised_lipschitz_module

TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads only add overhead on a shared machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _pair_ratios(f: Callable[[torch.Tensor], torch.Tensor], n: int, count: int) -> torch.Tensor:
    x = torch.randn(count, n, dtype=torch.float64)
    scales = 10.0 ** torch.empty(count, 1, dtype=torch.float64).uniform_(-3, 0.5)
    y = x + scales * torch.randn(count, n, dtype=torch.float64)
    return (f(x) - f(y)).norm(dim=1) / (x - y).norm(dim=1)


def _pair_ascent(f: Callable[[torch.Tensor], torch.Tensor], n: int, steps: int = 60) -> float:
    """Gradient ascent (autograd) on ``|f(x) - f(y)| / |x - y|`` over a batch of pairs."""
    x = torch.randn(64, n, dtype=torch.float64, requires_grad=True)
    y = (x.detach() + 0.3 * torch.randn(64, n, dtype=torch.float64)).requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=0.05)
    best = 0.0
    for _ in range(steps):
        ratio = (f(x) - f(y)).norm(dim=1) / (x - y).norm(dim=1).clamp_min(1e-9)
        best = max(best, float(ratio.detach().max()))
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    return best


def _jacobian_norm_max(f: Callable[[torch.Tensor], torch.Tensor], n: int, count: int = 64) -> float:
    """The largest Jacobian spectral norm over random points (Jacobians by autograd)."""
    x = torch.randn(count, n, dtype=torch.float64)
    jac = torch.func.vmap(torch.func.jacrev(lambda z: f(z[None])[0]))(x)
    return float(torch.linalg.matrix_norm(jac.detach(), ord=2).max())


def _empirical_lipschitz(module: nn.Module, n: int) -> float:
    module = module.double().requires_grad_(False)
    with torch.no_grad():
        pairs = float(_pair_ratios(module, n, 2000).max())
    return max(pairs, _pair_ascent(module, n), _jacobian_norm_max(module, n))


def test_cayley_has_orthonormal_columns() -> None:
    torch.manual_seed(0)
    q = cayley(torch.randn(4, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64))
    assert q.shape == (7, 4)
    assert torch.allclose(q.T @ q, torch.eye(4, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("name", sorted(LIPSCHITZ_FACTORIES))
def test_empirical_lipschitz_is_within_documented_bound(name: str) -> None:
    for seed in (0, 1):
        module = randomised_lipschitz_module(name, seed)
        bound = module.lipschitz_bound()
        assert _empirical_lipschitz(module, module.in_features) <= bound + TOL


@pytest.mark.parametrize("name", sorted(LIPSCHITZ_FACTORIES))
def test_plain_module_equals_parameterised(name: str) -> None:
    module = randomised_lipschitz_module(name, 2)
    for dtype in (torch.float32, torch.float64):
        module = module.to(dtype)
        plain = module.to_plain()
        assert all(isinstance(m, (nn.Linear, nn.ReLU, nn.Sequential)) or type(m).__name__ == "PlainResidual"
                   for m in plain)
        x = torch.randn(50, module.in_features, dtype=dtype)
        with torch.no_grad():
            torch.testing.assert_close(plain(x), module(x), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("name", sorted(LIPSCHITZ_FACTORIES))
def test_certified_bound_is_tight_and_sound(name: str) -> None:
    module = randomised_lipschitz_module(name, 3)
    bound = module.lipschitz_bound()
    for dtype in (torch.float32, torch.float64):
        certified = module.certified_lipschitz_bound(dtype=dtype)
        assert bound * (1 - 1e-12) <= certified <= bound * (1 + 1e-3)
    plain = module.to_plain(torch.float64)
    empirical = _empirical_lipschitz(plain, module.in_features)
    assert empirical <= module.certified_lipschitz_bound(dtype=torch.float64) + TOL


@pytest.mark.parametrize("name", ["sandwich_net", "sll_net", "gershgorin_net", "sll"])
def test_onnx_export_matches_onnxruntime(name: str, tmp_path) -> None:
    import onnx
    import onnxruntime as ort

    module = randomised_lipschitz_module(name, 4)
    path = str(tmp_path / "model.onnx")
    module.export_onnx(path, (1, module.in_features))
    model = onnx.load(path)
    onnx.checker.check_model(model)
    assert {node.op_type for node in model.graph.node} <= {"Gemm", "MatMul", "Add", "Relu", "Mul"}
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for _ in range(5):
        x = torch.randn(1, module.in_features)
        (got,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, module(x).numpy(), rtol=TOL, atol=TOL)


@pytest.mark.parametrize("name", ["sandwich_net", "sll_net", "gershgorin_net"])
def test_training_keeps_the_guarantee(name: str) -> None:
    """Train adversarially, to *increase* the slope on fixed pairs; the bound must hold."""
    module = randomised_lipschitz_module(name, 5)
    n = module.in_features
    torch.manual_seed(6)
    x, y = torch.randn(128, n), torch.randn(128, n)
    opt = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(25):
        loss = -((module(x) - module(y)).norm(dim=1) / (x - y).norm(dim=1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    bound = module.lipschitz_bound()
    certified = module.certified_lipschitz_bound()
    assert certified <= bound * (1 + 1e-3)
    assert _empirical_lipschitz(module, n) <= bound + TOL


def test_lipschitz_bound_norms() -> None:
    module = SandwichNet(9, [5], 2, gamma=2.0)
    assert module.lipschitz_bound("2") == pytest.approx(2.0)
    assert module.lipschitz_bound("inf") == pytest.approx(6.0)
    with pytest.raises(ValueError):
        module.lipschitz_bound("1")


def test_checker_rejects_a_claim_that_is_too_small() -> None:
    """A certificate only steers the check: a false claim falls back to a sound bound."""
    layer = randomised_lipschitz_module("sll", 7).double()
    plain_branch = layer.to_plain(torch.float64)[0].branch
    u, v = plain_branch[0].weight, plain_branch[2].weight
    lam = layer.relu_certificates()[0].multiplier
    honest = certify_relu_block(u, v, ReluCertificate(lam, 1.0), residual=True)
    false_claim = certify_relu_block(u, v, ReluCertificate(lam, 0.5), residual=True)
    assert honest == pytest.approx(1.0, rel=1e-3)
    assert false_claim >= _empirical_lipschitz(layer, layer.in_features) - TOL


def test_checker_is_sound_for_arbitrary_weights() -> None:
    """Untied residual blocks with arbitrary multipliers: never below the empirical constant."""
    torch.manual_seed(8)
    for _ in range(5):
        u = torch.randn(7, 4, dtype=torch.float64)
        v = 0.3 * torch.randn(4, 7, dtype=torch.float64)
        b = torch.randn(7, dtype=torch.float64)
        lam = torch.rand(7, dtype=torch.float64)
        claim = float(torch.rand(()) * 2)

        def block(z: torch.Tensor) -> torch.Tensor:
            return z + torch.relu(z @ u.T + b) @ v.T

        certified = certify_relu_block(u, v, ReluCertificate(lam, claim), residual=True)
        empirical = max(float(_pair_ratios(block, 4, 2000).max()), _jacobian_norm_max(block, 4))
        assert empirical <= certified + TOL
    with pytest.raises(ValueError):
        certify_relu_block(u, v, ReluCertificate(-lam, 1.0), residual=True)
    assert math.isfinite(certify_relu_block(u, v, None, residual=True))
