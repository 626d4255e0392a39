"""The direct dual ascent (``verifier.solvers.sdp_dual``): its value and gradient match the
dense certified bound, its bounds are below the exact MILP minimum on random tiny nets
(also when stopped after a few iterations), and its certificates pass the checker."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from relaxations.sdp import Multipliers, build_problem, certified_bound, mlp_forward, relu_mlp_from_graph
from verifier.checker.sdp import check_sdp_certificate
from verifier.sdp import graph_from_weights, pre_activation_bounds, row_certificate
from verifier.solvers.sdp_dual import DualFunction, crown_multipliers, polish_dual

from tests.builders import milp_min, random_mlp_weights

torch.set_num_threads(1)


def _setup(seed: int, sizes, row: int = 0):
    ws, bs = random_mlp_weights(seed, sizes)
    g = graph_from_weights(ws, bs)
    ws, bs = relu_mlp_from_graph(g)
    lo, hi = -np.ones(sizes[0]), 0.5 * np.ones(sizes[0])
    C = np.eye(sizes[-1])[row:row + 1] if sizes[-1] == 1 else np.array([[1.0, -1.0]])
    pl, pu, crown = pre_activation_bounds(g, lo, hi, C)
    return ws, bs, lo, hi, C[0], pl, pu, float(crown[0])


@pytest.mark.parametrize("seed", [0, 3])
def test_value_and_gradient_match_dense_bound(seed):
    ws, bs, lo, hi, c, pl, pu, _ = _setup(seed, (3, 8, 6, 2))
    p = build_problem(ws, bs, c, lo, hi, pl, pu)
    f = DualFunction(p)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        y = np.maximum(rng.normal(size=f.m), f.lower)
        q, grad, _, _ = f.value_grad(y)
        dense, _, _ = certified_bound(p, Multipliers.unpack(p, np.concatenate([[0.0], y])))
        assert abs(q - dense) <= 1e-7 * (1 + abs(dense))
        e, h = rng.normal(size=f.m), 1e-6
        fd = (f.value_grad(y + h * e)[0] - f.value_grad(y - h * e)[0]) / (2 * h)
        assert abs(fd - grad @ e) <= 1e-4 * (1 + abs(fd))


@pytest.mark.parametrize("sizes,seed", [((2, 8, 8, 1), 0), ((2, 8, 8, 1), 1), ((3, 10, 10, 2), 3),
                                        ((3, 10, 10, 2), 4), ((4, 12, 2), 5)])
def test_polished_bound_below_exact_minimum_and_early_stop_valid(sizes, seed):
    ws, bs, lo, hi, c, pl, pu, crown = _setup(seed, sizes)
    p = build_problem(ws, bs, c, lo, hi, pl, pu)
    exact = milp_min(ws, bs, c, lo, hi, pl, pu)
    xs = np.random.default_rng(seed).uniform(lo, hi, size=(20000, len(lo)))
    assert exact <= float((mlp_forward(ws, bs, xs) @ c).min()) + 1e-9
    full = polish_dual(p, max_iter=400, time_limit_s=20)
    assert full.bound <= exact + 1e-7
    assert full.bound >= crown - 1e-3  # it starts from CROWN's multipliers
    for iters in (1, 3, 10):  # stopped early: looser, still valid
        early = polish_dual(p, max_iter=iters, time_limit_s=20)
        assert np.isfinite(early.bound) and early.bound <= exact + 1e-7
    stopped = polish_dual(p, max_iter=400, time_limit_s=0.0)  # deadline already passed
    assert stopped.bound <= exact + 1e-7


def test_crown_start_is_a_valid_crown_like_bound():
    ws, bs, lo, hi, c, pl, pu, crown = _setup(4, (3, 10, 10, 2))
    p = build_problem(ws, bs, c, lo, hi, pl, pu)
    b, _, _ = certified_bound(p, crown_multipliers(p))
    assert np.isfinite(b) and b <= milp_min(ws, bs, c, lo, hi, pl, pu) + 1e-7


def test_polished_certificate_accepted_and_tampering_rejected():
    ws, bs, lo, hi, c, pl, pu, _ = _setup(3, (3, 10, 10, 2))
    p = build_problem(ws, bs, c, lo, hi, pl, pu)
    res = polish_dual(p, max_iter=300, time_limit_s=20)
    cert = row_certificate(p, res.multipliers, res.bound, "sdp-lowrank", pl, pu)
    ok, why = check_sdp_certificate(cert, ws, bs, lo, hi, c)
    assert ok, why
    raised = copy.deepcopy(cert)
    raised["bound"] += 1e-3 * (1 + abs(raised["bound"]))
    assert not check_sdp_certificate(raised, ws, bs, lo, hi, c)[0]
    t_up = copy.deepcopy(cert)  # a larger t with the same claim: the eigenvalue check fails
    t_up["multipliers"]["t"] += 1.0
    t_up["bound"] = t_up["multipliers"]["t"]
    assert not check_sdp_certificate(t_up, ws, bs, lo, hi, c)[0]
    box = copy.deepcopy(cert)
    box["multipliers"]["layers"][0]["lam_box"][0] = -0.1
    assert not check_sdp_certificate(box, ws, bs, lo, hi, c)[0]
    shrunk = copy.deepcopy(cert)  # tighter pre-activation bounds than the checker's CROWN
    shrunk["pre_upper"][1] = (np.asarray(shrunk["pre_upper"][1]) * 0.5).tolist()
    assert not check_sdp_certificate(shrunk, ws, bs, lo, hi, c)[0]
