"""Every certified bound is above the largest slope found by attack, and the
checker accepts the certificates but rejects tampered ones."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from relaxations.lipschitz import FeedForward
from verifier.checker.lipschitz import check_lipschitz_certificate
from verifier.lipschitz import lipschitz_of_network

ACTS = ["relu", "tanh", "sigmoid", "leaky_relu", "maxmin"]


def _net(act: str, seed: int) -> FeedForward:
    rng = np.random.default_rng(seed)
    widths = (3, 6, 6, 2)
    ws = tuple(rng.standard_normal((widths[k + 1], widths[k])) for k in range(3))
    bs = tuple(rng.standard_normal(widths[k + 1]) for k in range(3))
    return FeedForward(ws, bs, act, negative_slope=0.1)


def _torch_forward(net: FeedForward, x: torch.Tensor) -> torch.Tensor:
    z = x
    for k, (w, b) in enumerate(zip(net.weights, net.biases)):
        z = z @ torch.tensor(w).T + torch.tensor(b)
        if k == net.depth - 1:
            break
        if net.activation == "relu":
            z = torch.relu(z)
        elif net.activation == "leaky_relu":
            z = torch.nn.functional.leaky_relu(z, net.negative_slope)
        elif net.activation == "sigmoid":
            z = torch.sigmoid(z)
        elif net.activation == "tanh":
            z = torch.tanh(z)
        else:
            p = z.reshape(*z.shape[:-1], -1, 2)
            z = torch.stack([p.max(-1).values, p.min(-1).values], -1).reshape(z.shape)
    return z


def _attack(net: FeedForward, norm: str, seed: int = 0) -> float:
    """Largest |f(x) - f(x')| / |x - x'| found by sampling and gradient ascent."""
    g = torch.Generator().manual_seed(seed)
    p = 2 if norm == "2" else float("inf")
    x = (torch.randn(256, 3, generator=g, dtype=torch.float64) * 2).requires_grad_()
    d = (torch.randn(256, 3, generator=g, dtype=torch.float64) * 1e-2).requires_grad_()
    opt = torch.optim.Adam([x, d], lr=0.05)
    best = 0.0
    for _ in range(150):
        num = torch.linalg.vector_norm(_torch_forward(net, x + d) - _torch_forward(net, x), ord=p, dim=1)
        ratio = num / torch.linalg.vector_norm(d, ord=p, dim=1).clamp_min(1e-12)
        best = max(best, float(ratio.detach().max()))
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    return best


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_certified_bounds_dominate_attack_and_pass_checker(act, norm):
    net = _net(act, seed=ACTS.index(act))
    found = _attack(net, norm)
    methods = ["naive", "sdp-neuron", "sdp-layerwise"] + (["sdp-layer"] if norm == "2" else [])
    for method in methods:
        r = lipschitz_of_network(net, norm, method)
        assert r.value >= found * (1 - 1e-9), (method, r.value, found)
        cert = json.loads(json.dumps(r.certificate))
        ok, why = check_lipschitz_certificate(cert, net.weights, act, 0.1)
        assert ok, (method, why)


def _tamper_cases(cert: dict) -> list[dict]:
    out = []
    low = copy.deepcopy(cert)
    low["L"] = cert["L"] * 0.99
    if "rho" in low:
        low["rho"] = cert["rho"] * 0.98
    out.append(low)
    if cert["kind"] == "lipschitz-sdp":
        flip = copy.deepcopy(cert)
        mults = flip["multipliers"] if "multipliers" in flip else flip["per_output"][0]["multipliers"]
        first = mults[0][0]
        if isinstance(first, list):
            first[0] = -abs(first[0]) - 1.0
        else:
            mults[0][0] = -abs(first) - 1.0
        out.append(flip)
    else:
        fake = copy.deepcopy(cert)
        fake["layer_norms"][0] *= 0.5
        fake["L"] *= 0.5
        out.append(fake)
    return out


@pytest.mark.parametrize("act", ["relu", "maxmin"])
@pytest.mark.parametrize("method", ["naive", "sdp-neuron"])
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_checker_rejects_tampering(act, method, norm):
    net = _net(act, seed=7)
    cert = lipschitz_of_network(net, norm, method).certificate
    assert check_lipschitz_certificate(cert, net.weights, act)[0]
    for bad in _tamper_cases(cert):
        assert not check_lipschitz_certificate(bad, net.weights, act)[0]
    perturbed = [w.copy() for w in net.weights]
    perturbed[0][0, 0] += 1e-6
    assert not check_lipschitz_certificate(cert, perturbed, act)[0]
    scaled = [w * 1.5 for w in net.weights]
    forged = dict(cert, network_sha256=__import__("verifier.checker.lipschitz", fromlist=["x"]).weights_sha256(scaled))
    assert not check_lipschitz_certificate(forged, scaled, act)[0]
    other = "tanh" if act == "relu" else "relu"
    assert not check_lipschitz_certificate(cert, net.weights, other)[0]


def test_checker_rejects_claimed_sigmoid_on_relu_network():
    net = _net("relu", seed=3)
    sig = FeedForward(net.weights, net.biases, "sigmoid")
    cert = lipschitz_of_network(sig, "2", "sdp-layerwise").certificate
    assert not check_lipschitz_certificate(cert, net.weights, "relu")[0]


def test_checker_never_raises_on_garbage():
    net = _net("relu", seed=1)
    for junk in ({}, {"version": 1}, {"version": 1, "activation": "relu", "network_sha256": "x"}):
        ok, why = check_lipschitz_certificate(junk, net.weights)
        assert not ok and why
