"""Soundness of the Clarke-Jacobian bounds (relaxations/lipschitz/local.py).

Every bound must be at least the largest gradient dual norm that float64 sampling and
gradient ascent find inside the box; the linear bound must not exceed the interval
one; forward bounds must contain sampled pre-activations, with and without splits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relaxations.lipschitz.local import LocalNet, derivative_ranges, forward_bounds, gradient_bound
from tests.builders import empirical_max_grad_norm, grad_norms, random_feedforward
from verifier.lipschitz import naive_certificate

ACTS = ("relu", "leaky_relu", "sigmoid", "tanh")


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_bound_is_above_sampled_gradients_and_below_naive(act: str, norm: str) -> None:
    for seed in range(3):
        net = random_feedforward(seed, act)
        ln = LocalNet.of(net)
        x0 = np.random.default_rng(100 + seed).standard_normal(4)
        for r in (0.05, 0.4):
            lo, hi = torch.tensor(x0 - r)[None], torch.tensor(x0 + r)[None]
            pre, empty = forward_bounds(ln, lo, hi)
            assert not bool(empty.any())
            C = torch.eye(3, dtype=torch.float64)
            nb = gradient_bound(ln, derivative_ranges(ln, pre), C, norm)
            assert bool((nb.value <= nb.interval).all())
            naive = naive_certificate(net, norm)[0]
            for j in range(3):
                emp = empirical_max_grad_norm(net, x0, r, C[j].numpy(), norm, seed)
                assert emp <= float(nb.value[j]) * (1 + 1e-9), (act, norm, r, j, emp, float(nb.value[j]))
                if act in ("relu", "leaky_relu"):
                    assert float(nb.interval[j]) <= naive * (1 + 1e-9) or norm == "2"


def test_forward_bounds_contain_samples_with_splits() -> None:
    net = random_feedforward(7, "relu", (5, 20, 20, 2))
    ln = LocalNet.of(net)
    x0, r = np.zeros(5), 0.5
    lo, hi = torch.tensor(x0 - r)[None], torch.tensor(x0 + r)[None]
    pre, _ = forward_bounds(ln, lo, hi)
    k, i = next((k, int(j)) for k, (l, u) in enumerate(pre) for j in ((l < 0) & (u > 0))[0].nonzero().flatten())
    X = torch.tensor(x0 + np.random.default_rng(0).uniform(-r, r, (20000, 5)))
    zs, z = [], X
    for w, b in zip(net.weights[:-1], net.biases[:-1]):
        z = z @ torch.tensor(w).T + torch.tensor(b)
        zs.append(z)
        z = torch.relu(z)
    for sign in (-1, 1):
        splits = [torch.zeros(1, w.shape[0], dtype=torch.int8) for w in net.weights[:-1]]
        splits[k][0, i] = sign
        pre_s, empty = forward_bounds(ln, lo, hi, splits)
        assert not bool(empty.any())
        keep = (zs[k][:, i] * sign) >= 0
        for (l, u), zz in zip(pre_s, zs):
            assert bool((zz[keep] >= l[0] - 1e-12).all() and (zz[keep] <= u[0] + 1e-12).all())
        # (not asserted: split bounds inside unsplit ones; CROWN's slopes change, and
        # branch and bound caps every child by its parent instead)


def test_linear_network_part_is_exact_when_everything_is_stable() -> None:
    """A tiny radius makes every neuron stable: the bound is the gradient's norm itself."""
    net = random_feedforward(3, "relu")
    ln = LocalNet.of(net)
    x0 = np.random.default_rng(1).standard_normal(4)
    lo, hi = torch.tensor(x0 - 1e-9)[None], torch.tensor(x0 + 1e-9)[None]
    pre, _ = forward_bounds(ln, lo, hi)
    C = torch.eye(3, dtype=torch.float64)
    for norm in ("inf", "2"):
        nb = gradient_bound(ln, derivative_ranges(ln, pre), C, norm)
        for j in range(3):
            g = float(grad_norms(net, torch.tensor(x0[None], requires_grad=True), C[j], norm)[0])
            assert g <= float(nb.value[j]) <= g * (1 + 1e-6) + 1e-12


def test_a_nan_interval_never_marks_a_domain_empty(monkeypatch) -> None:
    """A NaN end from the bound pass says nothing about the domain: it is not "empty" (a
    caller would drop its gradients from the maximum) but widened to the whole line."""
    import relaxations.lipschitz.local as local

    net = random_feedforward(2, "relu")
    ln = LocalNet.of(net)
    lo, hi = torch.full((1, 4), -0.1, dtype=torch.float64), torch.full((1, 4), 0.1, dtype=torch.float64)
    real = local.intermediate_bounds

    def poisoned(*args, **kwargs):
        table, ctx, infeasible = real(*args, **kwargs)
        iv = table["z0"]
        lower = iv.lower.clone()
        lower[..., 0] = torch.nan
        table["z0"] = type(iv)(lower, iv.upper)
        return table, ctx, infeasible

    monkeypatch.setattr(local, "intermediate_bounds", poisoned)
    pre, empty = forward_bounds(ln, lo, hi)
    assert not bool(empty.any())
    assert float(pre[0][0][0, 0]) == -float("inf")
    dl, du = derivative_ranges(ln, pre)[0]
    assert float(dl[0, 0]) == 0.0 and float(du[0, 0]) == 1.0
