"""Branch and bound end to end on each device (`device` fixture: cpu, and cuda where
there is one): `verify()` with `device` set, on tiny ReLU nets whose true minimum is
known (a dense grid for 2 inputs, an exact MILP for 6), input split and activation
split; and the memory helpers on the device's real allocator."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from scipy.optimize import Bounds, LinearConstraint, milp

import vnnlib
from bab import DomainBatch
from models import GraphEvaluator
from bab.memory import BatchSizer, free_memory_bytes, is_out_of_memory, release_memory, run_with_retry
from tests.builders import known_answer_min, known_answer_net
from verifier import Config, verify
from verifier.config import with_overrides


def _config(device: str, mode: str) -> Config:
    """The search alone (no exact MILP beside it, which would decide these small nets first)."""
    return with_overrides(Config(device=device, timeout=120), [f"bab.mode={mode}", "attack.enabled=false",
                                                              "attack.samples=1", "lp.milp=off"])


def _spec(n: int, threshold: float) -> vnnlib.Spec:
    """Counterexample: y <= threshold somewhere in [-1, 1]^n."""
    region = vnnlib.InputRegion(np.full(n, -1.0), np.full(n, 1.0))
    conj = vnnlib.OutputConstraints(np.array([[1.0]]), np.array([threshold]), np.array([False]))
    return vnnlib.Spec(n, 1, (vnnlib.Disjunct(region, (conj,)),))


def _exact_min(model) -> float:
    """min of the net's single output over [-1, 1]^n: a big-M MILP with interval bounds
    (variables: the input, then per hidden layer its ReLU outputs and on/off switches)."""
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in onnx.load(str(model.path)).graph.initializer}
    layers = [(inits[f"W{i}"], inits[f"b{i}"]) for i in range(len(inits) // 2)]
    n = layers[0][0].shape[0]
    lo, hi = -np.ones(n), np.ones(n)
    n_var, prev = n, list(range(n))     # indices of the previous layer's variables
    rows, lbs, ubs, var_lo, var_hi, integral = [], [], [], list(lo), list(hi), [0] * n
    for W, b in layers[:-1]:
        m = W.shape[1]
        pre_lo = b + np.minimum(W, 0).T @ hi + np.maximum(W, 0).T @ lo
        pre_hi = b + np.maximum(W, 0).T @ hi + np.minimum(W, 0).T @ lo
        a_idx, s_idx = list(range(n_var, n_var + m)), list(range(n_var + m, n_var + 2 * m))
        n_var += 2 * m
        var_lo += [0.0] * m + [0.0] * m
        var_hi += list(np.maximum(pre_hi, 0)) + [1.0] * m
        integral += [0] * m + [1] * m
        for j in range(m):  # a >= W x + b;  a <= W x + b - l (1 - s);  a <= u s
            row = {a_idx[j]: 1.0, **{p: -W[k, j] for k, p in enumerate(prev)}}
            rows.append(row), lbs.append(b[j]), ubs.append(np.inf)
            row = {a_idx[j]: 1.0, s_idx[j]: -pre_lo[j], **{p: -W[k, j] for k, p in enumerate(prev)}}
            rows.append(row), lbs.append(-np.inf), ubs.append(b[j] - pre_lo[j])
            rows.append({a_idx[j]: 1.0, s_idx[j]: -max(pre_hi[j], 0.0)}), lbs.append(-np.inf), ubs.append(0.0)
        prev, lo, hi = a_idx, np.maximum(pre_lo, 0), np.maximum(pre_hi, 0)
    A = np.zeros((len(rows), n_var))
    for r, row in enumerate(rows):
        for col, v in row.items():
            A[r, col] += v
    W, b = layers[-1]
    c = np.zeros(n_var)
    c[prev] = W[:, 0]
    res = milp(c, constraints=LinearConstraint(A, lbs, ubs), integrality=np.array(integral),
               bounds=Bounds(var_lo, var_hi), options={"mip_rel_gap": 1e-9})
    assert res.success, res.message
    return float(res.fun + b[0])


def _check_both_sides(model, n: int, m: float, config: Config, tmp_path, mode: str) -> None:
    spread = 0.05 * (1 + abs(m))
    for name, threshold, verdict in [("below", m - spread, "unsat"), ("above", m + spread, "sat")]:
        path = tmp_path / f"{mode}_{name}.vnnlib"
        vnnlib.write_vnnlib(path, _spec(n, threshold))
        result = verify(model, vnnlib.load(path, n, 1), config)
        assert result.verdict == verdict, (mode, name, m, result.reason, result.stats)
        if verdict == "unsat":  # bounds alone do not decide these: the search ran on the device
            assert result.method == f"bab-{mode}" and result.stats["domains"] > 1, (result.method, result.stats)
        else:
            assert float(result.y[0]) <= threshold


def test_input_split_on_the_device(device: str, tmp_path) -> None:
    model = known_answer_net(tmp_path, 0)           # 2 inputs: the true minimum from a dense grid
    m = known_answer_min(model)
    assert abs(_exact_min(model) - m) < 1e-3  # the MILP oracle of the activation-split case agrees
    _check_both_sides(model, 2, m, _config(device, "input"), tmp_path, "input")


def test_activation_split_on_the_device(device: str, tmp_path) -> None:
    model = known_answer_net(tmp_path, 5, widths=(6, 12, 12, 1))   # 6 inputs: the exact minimum from a MILP
    m = _exact_min(model)
    xs = torch.rand(20000, 1, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert float(GraphEvaluator(model.graph, dtype=torch.float64)(xs).min()) >= m - 1e-6  # no sample beats it
    _check_both_sides(model, 6, m, _config(device, "activation"), tmp_path, "activation")


def test_memory_helpers_on_the_device(device: str) -> None:
    assert free_memory_bytes(device) > 0
    if device.startswith("cuda"):  # a real allocator failure on the device is classified and released
        before = torch.cuda.memory_allocated(device)
        with pytest.raises(BaseException) as info:
            torch.empty(free_memory_bytes(device) * 4, dtype=torch.uint8, device=device)
        assert is_out_of_memory(info.value), repr(info.value)
        del info
        release_memory(device)
        assert torch.cuda.memory_allocated(device) == before
    n, d = 40, 3
    lo = torch.rand(n, d, device=device)
    batch = DomainBatch(lo, lo + 1, torch.zeros(n, 1, device=device), torch.arange(n, dtype=torch.float32,
                        device=device), torch.zeros(n, 1, d, device=device), torch.zeros(n, 0, d, device=device),
                        torch.zeros(n, 0, device=device))
    seen: list = []

    def step(b: DomainBatch) -> int:
        if len(b) > 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        assert b.score.device.type == torch.device(device).type
        seen.extend(b.score.tolist())
        return len(b)

    sizer = BatchSizer(size=32, max_size=32, grow_after=1000)
    sizer.initial(int(lo[0].numel() * lo.element_size() * 7), device)
    while len(batch):
        _, batch = run_with_retry(step, batch, sizer)
    assert sorted(seen) == list(map(float, range(n)))
