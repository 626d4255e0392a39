"""certify_sdp: SDP bounds are valid (<= exact MILP minimum), at least as tight as CROWN
on average, and their certificates pass the independent checker; tampering fails it."""
from __future__ import annotations

import ast
import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from relaxations.sdp import mlp_forward
from tests.builders import milp_min, random_mlp_weights
from verifier.checker.sdp import check_sdp_certificate, check_sdp_certificates
from verifier.sdp import SdpOptions, certify_sdp, graph_from_weights, pre_activation_bounds
from verifier.solvers.burer_monteiro import LowRankOptions

torch.set_num_threads(1)


CASES = [((2, 8, 8, 1), s) for s in (0, 1, 2)] + [((3, 10, 10, 2), s) for s in (3, 4)]


@pytest.fixture(scope="module")
def full_sdp_results():
    out = []
    for sizes, seed in CASES:
        ws, bs = random_mlp_weights(seed, sizes)
        lo, hi = -np.ones(sizes[0]), np.ones(sizes[0])
        C = np.eye(sizes[-1]) if sizes[-1] == 1 else np.array([[1.0, -1.0], [0.0, 1.0]])
        res = certify_sdp(graph_from_weights(ws, bs), lo, hi, C, method="sdp")
        pl, pu, _ = pre_activation_bounds(graph_from_weights(ws, bs), lo, hi, C)
        exact = np.array([milp_min(ws, bs, c, lo, hi, pl, pu) for c in C])
        out.append((ws, bs, lo, hi, C, res, exact))
    return out


def test_full_sdp_bounds_are_valid(full_sdp_results):
    for ws, bs, lo, hi, C, res, exact in full_sdp_results:
        xs = np.random.default_rng(0).uniform(lo, hi, size=(20000, len(lo)))
        sampled = (mlp_forward(ws, bs, xs) @ C.T).min(0)
        assert np.all(exact <= sampled + 1e-9)
        assert np.all(res.lower_bounds <= exact + 1e-7), (res.lower_bounds, exact)


def test_full_sdp_at_least_as_tight_as_crown_on_average(full_sdp_results):
    gains = np.concatenate([res.lower_bounds - res.crown_lower for *_, res, _ in full_sdp_results])
    assert gains.mean() >= 0.0
    assert gains.min() >= -1e-4  # with the triangle rows the SDP contains CROWN's LP


def test_full_sdp_certificates_accepted_and_tampering_rejected(full_sdp_results):
    ws, bs, lo, hi, C, res, _ = full_sdp_results[3]
    ok, why = check_sdp_certificates(res.certificate, ws, bs, lo, hi, C)
    assert ok, why
    row = res.certificate["rows"][0]
    raised = copy.deepcopy(row)
    raised["bound"] += 1e-3 * (1 + abs(raised["bound"]))
    assert not check_sdp_certificate(raised, ws, bs, lo, hi, C[0])[0]
    changed = copy.deepcopy(row)
    changed["multipliers"]["layers"][0]["nu"][0] += 0.5
    assert not check_sdp_certificate(changed, ws, bs, lo, hi, C[0])[0]
    negative = copy.deepcopy(row)
    negative["multipliers"]["mu"][0] = -1.0
    assert not check_sdp_certificate(negative, ws, bs, lo, hi, C[0])[0]
    tight = copy.deepcopy(row)
    tight["pre_lower"][0] = (np.asarray(tight["pre_lower"][0]) + 0.5).tolist()
    assert not check_sdp_certificate(tight, ws, bs, lo, hi, C[0])[0]
    assert not check_sdp_certificate(row, ws, bs, lo, hi, C[1])[0]  # another spec row
    assert not check_sdp_certificate(row, ws, bs, lo, hi * 2, C[0])[0]  # a larger box


def test_lowrank_bounds_valid_and_certified():
    opts = LowRankOptions(rank=4, max_rank=4, outer=6, inner=40, time_limit_s=15)
    for sizes, seed in [((2, 8, 8, 1), 0), ((3, 10, 10, 2), 3)]:
        ws, bs = random_mlp_weights(seed, sizes)
        lo, hi = -np.ones(sizes[0]), np.ones(sizes[0])
        C = np.eye(sizes[-1])[:1]
        g = graph_from_weights(ws, bs)
        res = certify_sdp(g, lo, hi, C, method="sdp-lowrank", options=SdpOptions(lowrank=opts))
        pl, pu, _ = pre_activation_bounds(g, lo, hi, C)
        exact = milp_min(ws, bs, C[0], lo, hi, pl, pu)
        assert res.lower_bounds[0] <= exact + 1e-7
        assert np.isfinite(res.lower_bounds[0])
        ok, why = check_sdp_certificates(res.certificate, ws, bs, lo, hi, C)
        assert ok, why


def test_checker_imports_no_producer_code():
    src = Path(__file__).resolve().parents[2] / "verifier" / "checker" / "sdp.py"
    names = set()
    for node in ast.walk(ast.parse(src.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    assert not names & {"relaxations", "bab", "torch", "verifier", "models"}, names


def test_rejects_non_mlp_and_empty_box():
    ws, bs = random_mlp_weights(0, (2, 4, 1))
    g = graph_from_weights(ws, bs)
    with pytest.raises(ValueError, match="empty box"):
        certify_sdp(g, np.ones(2), -np.ones(2), np.eye(1))


def test_options_skip_proved_rows_and_refuse_bad_settings():
    """With skip_proved, a row CROWN already proves keeps CROWN's bound and gets no SDP;
    a bad setting fails before any bounding."""
    ws, bs = random_mlp_weights(1, (2, 8, 8, 1))
    g, lo, hi, C = graph_from_weights(ws, bs), -np.ones(2), np.ones(2), np.eye(1)
    crown = pre_activation_bounds(g, lo, hi, C)[2]
    targets = crown - 1.0       # proved by CROWN
    res = certify_sdp(g, lo, hi, C, targets=targets, options=SdpOptions(skip_proved=True))
    assert [c["kind"] for c in res.certificate["rows"]] == ["crown"] and res.lower_bounds[0] == crown[0]
    res = certify_sdp(g, lo, hi, C, targets=targets)
    assert [c["kind"] for c in res.certificate["rows"]] == ["sdp-relu-mlp"]
    for bad, word in [(dict(solver=3), "solver"), (dict(scs_time_limit_s=-1.0), "scs_time_limit_s"),
                      (dict(scs_time_limit_s=float("nan")), "scs_time_limit_s"), (dict(lowrank={}), "lowrank"),
                      (dict(skip_proved="yes"), "skip_proved")]:
        with pytest.raises(ValueError, match=word):
            SdpOptions(**bad)
    with pytest.raises(TypeError, match="SdpOptions"):
        certify_sdp(g, lo, hi, C, options={"skip_proved": True})
