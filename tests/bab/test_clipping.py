"""Domain clipping (bab.clipping): soundness by sampling, exactness against an LP (HiGHS).

Random instances mix in the degenerate cases on purpose: zero coefficients, zero-width
box dimensions, constraints tangent to the box, infeasible and non-binding constraints.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from bab.clipping import (clip_box, clip_box_one, clip_box_union, constraints_from_rows, constraints_from_splits,
                          min_under_constraint, min_under_constraints, row_constraints)
from relaxations.bounds import IntervalBounds
from tests.builders import clip_instances, clip_lp_min, clip_objective, to_tensor

torch.set_num_threads(1)


def _vertices(lo: np.ndarray, hi: np.ndarray, a: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All vertices of {x in box : a^T x + c <= 0} (an independent exact oracle, small n).

    lo, hi, a: [N, n]; c: [N]. A vertex is a feasible box corner, or a point where the
    hyperplane crosses a box edge (one coordinate free, the others at a corner). Returns
    points [N, P, n] and a validity mask [N, P]; no valid point means the set is empty.
    """
    N, n = lo.shape
    pat = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).astype(float)          # [2^n, n]
    corners = lo[:, None] + pat * (hi - lo)[:, None]                                 # [N, 2^n, n]
    ok_c = np.einsum("nj,npj->np", a, corners) + c[:, None] <= 1e-9
    pts, oks = [corners], [ok_c]
    for j in range(n):
        rest = np.einsum("nj,npj->np", np.delete(a, j, 1), np.delete(corners, j, 2)) + c[:, None]
        aj = a[:, j:j + 1]
        xj = np.divide(-rest, aj, out=np.zeros_like(rest), where=aj != 0)
        ok = (aj != 0) & (xj >= lo[:, j:j + 1] - 1e-9) & (xj <= hi[:, j:j + 1] + 1e-9)
        e = corners.copy()
        e[..., j] = np.clip(xj, lo[:, j:j + 1], hi[:, j:j + 1])
        pts.append(e)
        oks.append(ok)
    return np.concatenate(pts, 1), np.concatenate(oks, 1)


# ------------------------------------------------------------------------ complete clipping


def test_one_constraint_hull_equals_lp() -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for n in (1, 2, 3, 4):
        inst = clip_instances(rng, 100, n)
        nlo, nhi, empty = clip_box_one(to_tensor(inst["lo"], torch.float64), to_tensor(inst["hi"], torch.float64),
                                       to_tensor(inst["a"][:, 0], torch.float64),
                                       to_tensor(inst["c"][:, 0], torch.float64))
        for i in range(100):
            lo, hi, A, c = inst["lo"][i], inst["hi"][i], inst["a"][i], inst["c"][i]
            scale = 1 + np.abs(lo).max() + np.abs(hi).max()
            for j in range(n):
                e = np.zeros(n)
                e[j] = 1.0
                vmin = clip_lp_min(e, lo, hi, A, c)
                if vmin is None:
                    assert bool(empty[i]), f"instance {i}: LP infeasible, clip not empty"
                    break
                assert not bool(empty[i]), f"instance {i}: feasible but clip says empty"
                vmax = -clip_lp_min(-e, lo, hi, A, c)
                assert abs(float(nlo[i, j]) - vmin) <= 1e-6 * scale, (i, j, float(nlo[i, j]), vmin)
                assert abs(float(nhi[i, j]) - vmax) <= 1e-6 * scale, (i, j, float(nhi[i, j]), vmax)
                checked += 1
    assert checked > 300


def test_one_constraint_hull_equals_vertex_oracle() -> None:
    rng = np.random.default_rng(11)
    for n in (1, 2, 3, 4):
        inst = clip_instances(rng, 2000, n)
        lo, hi, a, c = inst["lo"], inst["hi"], inst["a"][:, 0], inst["c"][:, 0]
        nlo, nhi, empty = clip_box_one(*(to_tensor(v, torch.float64) for v in (lo, hi, a, c)))
        pts, ok = _vertices(lo, hi, a, c)
        feasible = ok.any(1)
        assert np.array_equal(~empty.numpy(), feasible), n
        big = np.where(ok[..., None], pts, np.inf).min(1)
        small = np.where(ok[..., None], pts, -np.inf).max(1)
        scale = 1e-6 * (1 + np.abs(lo).max(1, keepdims=True) + np.abs(hi).max(1, keepdims=True))
        f = feasible
        assert (np.abs(nlo.numpy()[f] - big[f]) <= scale[f]).all(), n
        assert (np.abs(nhi.numpy()[f] - small[f]) <= scale[f]).all(), n


def test_several_constraints_contain_lp_hull() -> None:
    rng = np.random.default_rng(1)
    n, K, N = 3, 3, 120
    inst = clip_instances(rng, N, n, K)
    nlo, nhi, empty = clip_box(*(to_tensor(inst[k], torch.float64) for k in ("lo", "hi", "a", "c")))
    for i in range(N):
        lo, hi, A, c = inst["lo"][i], inst["hi"][i], inst["a"][i], inst["c"][i]
        for j in range(n):
            e = np.zeros(n)
            e[j] = 1.0
            vmin = clip_lp_min(e, lo, hi, A, c)
            if vmin is None:
                break       # an infeasible system may or may not be detected by the clip; both sound
            assert not bool(empty[i])
            vmax = -clip_lp_min(-e, lo, hi, A, c)
            assert float(nlo[i, j]) <= vmin + 1e-7 and float(nhi[i, j]) >= vmax - 1e-7


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [1, 2, 4])
def test_clip_keeps_every_feasible_sample(dtype: torch.dtype, K: int) -> None:
    rng = np.random.default_rng(10 + K)
    N, n, P = 2000, 4, 256
    inst = clip_instances(rng, N, n, K)
    # Round the data to the dtype first: the clip must be sound for the numbers it is given.
    lo, hi, a, c = (to_tensor(inst[k], dtype) for k in ("lo", "hi", "a", "c"))
    nlo, nhi, empty = clip_box(lo, hi, a, c)
    lo64, hi64, a64, c64 = lo.double(), hi.double(), a.double(), c.double()
    u = torch.from_numpy(rng.random((N, P, n)))
    u = torch.where(u < 0.1, torch.zeros_like(u), torch.where(u > 0.9, torch.ones_like(u), u))  # corners too
    xs = lo64[:, None] + u * (hi64 - lo64)[:, None]                                 # [N, P, n]
    viol = torch.einsum("nkj,npj->npk", a64, xs) + c64[:, None]
    feasible = (viol <= 0).all(-1)                                                  # [N, P]
    inside = ((xs >= nlo.double()[:, None]) & (xs <= nhi.double()[:, None])).all(-1)
    assert not bool((feasible & ~inside).any()), "a feasible sample left the clipped box"
    assert not bool((feasible.any(1) & empty).any()), "a domain with a feasible sample was declared empty"
    assert bool((nlo <= nhi).all())
    assert float((nhi - nlo).sum()) < float((hi - lo).sum())        # it does clip something
    if K == 1:
        assert bool(empty[torch.from_numpy(inst["kind"][:, 0] == 2)].all())   # infeasible ones are found


def test_clip_union_over_conjunctions() -> None:
    rng = np.random.default_rng(3)
    N, n, K, P = 1000, 3, 4, 256
    inst = clip_instances(rng, N, n, K)
    lo, hi, a, c = (to_tensor(inst[k], torch.float64) for k in ("lo", "hi", "a", "c"))
    owner = torch.tensor([0, 0, 1, 1])
    nlo, nhi, empty = clip_box_union(lo, hi, a, c, owner, 2)
    xs = lo[:, None] + torch.from_numpy(rng.random((N, P, n))) * (hi - lo)[:, None]
    ok = torch.einsum("nkj,npj->npk", a, xs) + c[:, None] <= 0
    feasible = (ok[..., :2].all(-1)) | (ok[..., 2:].all(-1))
    inside = ((xs >= nlo[:, None]) & (xs <= nhi[:, None])).all(-1)
    assert not bool((feasible & ~inside).any())
    assert not bool((feasible.any(1) & empty).any())


def test_clip_ignores_non_finite_constraints() -> None:
    lo, hi = torch.zeros(3, 2), torch.ones(3, 2)
    a = torch.tensor([[[1.0, 0.0]], [[float("nan"), 1.0]], [[1.0, 1.0]]])
    c = torch.tensor([[-0.5], [5.0], [float("inf")]])
    nlo, nhi, empty = clip_box(lo, hi, a, c)
    assert float(nhi[0, 0]) == pytest.approx(0.5, abs=1e-4)
    assert torch.equal(nhi[1:], hi[1:]) and torch.equal(nlo, lo) and not bool(empty.any())


# ------------------------------------------------------------------------ relaxed clipping


def test_dual_equals_lp() -> None:
    rng = np.random.default_rng(4)
    checked = 0
    for n in (1, 2, 3, 5, 8):
        N, M = 80, 3
        inst = clip_instances(rng, N, n)
        w = rng.normal(0, 1, (N, M, n)) * (rng.random((N, M, n)) > 0.2)
        w[:, 2] = w[:, 2] * 0 + inst["a"][:, 0] * rng.uniform(-2, 2, (N, 1))     # parallel to the constraint
        b = rng.normal(0, 1, (N, M))
        got = min_under_constraint(clip_objective(to_tensor(w, torch.float64), to_tensor(b, torch.float64)),
                                   IntervalBounds(to_tensor(inst["lo"], torch.float64),
                                                  to_tensor(inst["hi"], torch.float64)),
                                   to_tensor(inst["a"][:, 0], torch.float64), to_tensor(inst["c"][:, 0], torch.float64))
        for i in range(N):
            lo, hi, A, c = inst["lo"][i], inst["hi"][i], inst["a"][i], inst["c"][i]
            scale = 1 + np.abs(w[i]).sum(-1).max() * (1 + np.abs(lo).max() + np.abs(hi).max()) + np.abs(b[i]).max()
            for m in range(M):
                v = clip_lp_min(w[i, m], lo, hi, A, c)
                if v is None:
                    assert float(got[i, m]) == float("inf"), (i, m)
                    continue
                v += b[i, m]
                assert abs(float(got[i, m]) - v) <= 1e-6 * scale, (n, i, m, float(got[i, m]), v)
                checked += 1
    assert checked > 800


def test_dual_equals_vertex_oracle() -> None:
    rng = np.random.default_rng(12)
    for n in (1, 2, 3, 5):
        N, M = 2000, 3
        inst = clip_instances(rng, N, n)
        lo, hi, a, c = inst["lo"], inst["hi"], inst["a"][:, 0], inst["c"][:, 0]
        w = rng.normal(0, 1, (N, M, n)) * (rng.random((N, M, n)) > 0.2)
        w[:, 2] = a * rng.uniform(-2, 2, (N, 1))
        b = rng.normal(0, 1, (N, M))
        tw, tb, tlo, thi, ta, tc = (to_tensor(v, torch.float64) for v in (w, b, lo, hi, a, c))
        got = min_under_constraint(clip_objective(tw, tb), IntervalBounds(tlo, thi), ta, tc).numpy()
        pts, ok = _vertices(lo, hi, a, c)
        vals = np.where(ok[:, None], np.einsum("nmj,npj->nmp", w, pts), np.inf).min(-1) + b
        feasible = ok.any(1)
        assert np.isinf(got[~feasible]).all() and np.isfinite(got[feasible]).all(), n
        scale = 1e-6 * (1 + np.abs(w).sum(-1) * (1 + np.abs(lo).max(1) + np.abs(hi).max(1))[:, None] + np.abs(b))
        assert (np.abs(got[feasible] - vals[feasible]) <= scale[feasible]).all(), n


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dual_is_below_every_feasible_sample(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(5)
    N, M, n, P = 2000, 4, 5, 256
    inst = clip_instances(rng, N, n)
    lo, hi, a, c = (to_tensor(inst[k], dtype) for k in ("lo", "hi", "a", "c"))
    a, c = a[:, 0], c[:, 0]
    w = to_tensor(rng.normal(0, 1, (N, M, n)), dtype)
    b = to_tensor(rng.normal(0, 1, (N, M)), dtype)
    got = min_under_constraint(clip_objective(w, b), IntervalBounds(lo, hi), a, c).double()
    lo64, hi64 = lo.double(), hi.double()
    u = torch.from_numpy(rng.random((N, P, n)))
    u = torch.where(u < 0.1, torch.zeros_like(u), torch.where(u > 0.9, torch.ones_like(u), u))
    xs = lo64[:, None] + u * (hi64 - lo64)[:, None]
    feasible = torch.einsum("nj,npj->np", a.double(), xs) + c.double()[:, None] <= 0
    vals = torch.einsum("nmj,npj->nmp", w.double(), xs) + b.double()[..., None]
    vals = torch.where(feasible[:, None], vals, torch.full_like(vals, torch.inf))
    assert bool((got <= vals.amin(-1)).all()), "bound above a feasible sample"
    # Never looser than the plain box bound, and strictly tighter on many instances.
    box = (b.double() + torch.minimum(w.double() * lo64[:, None], w.double() * hi64[:, None]).sum(-1))
    mass = b.double().abs() + (w.double().abs() * torch.maximum(lo64.abs(), hi64.abs())[:, None]).sum(-1)
    rel = 3e-5 if dtype == torch.float32 else 3e-12
    assert bool((got >= box - rel * (1 + mass)).all())
    assert float((got > box + 1e-3).double().mean()) > 0.2


def test_several_constraints_take_the_best() -> None:
    rng = np.random.default_rng(6)
    N, M, n, K = 300, 2, 3, 3
    inst = clip_instances(rng, N, n, K)
    lo, hi, a, c = (to_tensor(inst[k], torch.float64) for k in ("lo", "hi", "a", "c"))
    w, b = to_tensor(rng.normal(0, 1, (N, M, n)), torch.float64), to_tensor(rng.normal(0, 1, (N, M)), torch.float64)
    obj, box = clip_objective(w, b), IntervalBounds(lo, hi)
    got = min_under_constraints(obj, box, a, c)
    each = torch.stack([min_under_constraint(obj, box, a[:, k], c[:, k]) for k in range(K)])
    assert torch.equal(got, each.amax(0))
    for i in range(0, N, 5):
        for m in range(M):
            v = clip_lp_min(w[i, m].numpy(), inst["lo"][i], inst["hi"][i], inst["a"][i], inst["c"][i])
            exact = float("inf") if v is None else v + float(b[i, m])
            assert float(got[i, m]) <= exact + 1e-9


def test_allowed_mask_restricts_constraints() -> None:
    rng = np.random.default_rng(13)
    N, M, n, K = 200, 2, 3, 2
    inst = clip_instances(rng, N, n, K)
    lo, hi, a, c = (to_tensor(inst[k], torch.float64) for k in ("lo", "hi", "a", "c"))
    w, b = to_tensor(rng.normal(0, 1, (N, M, n)), torch.float64), to_tensor(rng.normal(0, 1, (N, M)), torch.float64)
    allowed = torch.tensor([[True, False], [False, False]])
    obj, box = clip_objective(w, b), IntervalBounds(lo, hi)
    got = min_under_constraints(obj, box, a, c, allowed=allowed)
    assert torch.equal(got[:, 0], min_under_constraint(obj, box, a[:, 0], c[:, 0])[:, 0])
    plain = min_under_constraints(obj, box, a[:, :0], c[:, :0])
    assert torch.equal(got[:, 1], plain[:, 1])


# ------------------------------------------------------------------------ constraint sources


def _relu_mlp(tmp_path: Path):
    from onnx import TensorProto, helper, numpy_helper
    from models import load_onnx
    rng = np.random.default_rng(7)
    w1, b1 = rng.normal(0, 0.8, (3, 8)).astype(np.float32), rng.normal(0, 0.3, 8).astype(np.float32)
    w2, b2 = rng.normal(0, 0.8, (8, 2)).astype(np.float32), rng.normal(0, 0.3, 2).astype(np.float32)
    inits = [numpy_helper.from_array(v, k) for v, k in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    path = tmp_path / "mlp.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
                     .SerializeToString())
    return load_onnx(path), (w1, b1, w2, b2)


@pytest.mark.parametrize("n_conj", [1, 2])
def test_rows_give_constraints_that_every_counterexample_meets(tmp_path: Path, n_conj: int) -> None:
    """End to end on a ReLU MLP: CROWN row bounds -> constraints -> clip and relaxed bounds."""
    from relaxations import BoundOptions, IntervalBounds, compute_bounds
    graph, (w1, b1, w2, b2) = _relu_mlp(tmp_path)
    rng = np.random.default_rng(8)
    N, P = 64, 4000
    lo = torch.from_numpy(rng.uniform(-1, 0.5, (N, 3)).astype(np.float32))
    hi = lo + torch.from_numpy(rng.uniform(0.1, 1.0, (N, 3)).astype(np.float32))
    if n_conj == 1:      # one conjunction: y0 - y1 <= 0.2 and y1 <= 0.5
        C, d, owner = torch.tensor([[1.0, -1.0], [0.0, 1.0]]), torch.tensor([0.2, 0.5]), torch.tensor([0, 0])
    else:                # (y0 - y1 <= 0.2 and y1 <= 0.5) or (y1 - y0 <= -0.3 and y0 <= 0.4)
        C = torch.tensor([[1.0, -1.0], [0.0, 1.0], [-1.0, 1.0], [1.0, 0.0]])
        d, owner = torch.tensor([0.2, 0.5, -0.3, 0.4]), torch.tensor([0, 0, 1, 1])
    S = len(d)
    res = compute_bounds(graph, IntervalBounds(lo.reshape(N, 1, 3), hi.reshape(N, 1, 3)), C,
                         BoundOptions(method="crown"), want_upper=False)
    lin = res.linear
    A, bias = lin.A.reshape(N, S, -1), lin.bias
    if n_conj == 1:
        a, c = constraints_from_rows(A, bias, d, owner, 1, box=IntervalBounds(lo, hi), mass=lin.mass)
        nlo, nhi, empty = clip_box(lo, hi, a, c)
    else:
        none = constraints_from_rows(A, bias, d, owner, n_conj, box=IntervalBounds(lo, hi))
        assert none[0].shape == (N, 0, 3) and none[1].shape == (N, 0)
        a, c = row_constraints(A, bias, d, lo=lo, hi=hi, mass=lin.mass)
        nlo, nhi, empty = clip_box_union(lo, hi, a, c, owner, n_conj)
    xs = lo.double()[:, None] + torch.from_numpy(rng.random((N, P, 3))) * (hi - lo).double()[:, None]
    h = np.maximum(xs.numpy() @ w1.astype(np.float64) + b1, 0)
    y = torch.from_numpy(h @ w2.astype(np.float64) + b2)
    v = y @ C.double().T - d.double()                                    # [N, P, S]
    conj_ok = torch.stack([(v[..., owner == j] <= 0).all(-1) for j in range(n_conj)], -1)   # [N, P, n_conj]
    cex = conj_ok.any(-1)
    inside = ((xs >= nlo.double()[:, None]) & (xs <= nhi.double()[:, None])).all(-1)
    assert not bool((cex & ~inside).any())
    assert not bool((cex.any(1) & empty).any())
    assert bool(empty.any()) or float((nhi - nlo).sum()) < float((hi - lo).sum())
    # Relaxed clipping: row s tightened by constraints of its own conjunction, on the clipped box.
    lb = min_under_constraints(clip_objective(A, bias - d, lin.mass + d.abs()), IntervalBounds(nlo, nhi), a, c,
                               allowed=owner[:, None] == owner[None, :])
    for s_ in range(S):
        mine = conj_ok[..., int(owner[s_])]
        vs = torch.where(mine, v[..., s_], torch.full_like(v[..., s_], torch.inf))
        assert bool((lb[:, s_].double() <= vs.amin(1)).all()), s_
    from relaxations.bounds import Precision
    plain = lin.concretize(IntervalBounds(lo.reshape(N, 1, 3), hi.reshape(N, 1, 3)), Precision()) - d
    assert bool((lb >= plain - 1e-4).all())            # never looser than the linear bound's plain value
    assert bool((lb > plain + 1e-3).any())             # and tighter somewhere


def test_split_constraints_hold_on_the_split_domain() -> None:
    rng = np.random.default_rng(9)
    N, K, n, P = 500, 3, 4, 512
    lo = torch.from_numpy(rng.uniform(-1, 0, (N, n)))
    hi = lo + torch.from_numpy(rng.uniform(0, 1.5, (N, n)))
    W, z0 = torch.from_numpy(rng.normal(0, 1, (N, K, n))), torch.from_numpy(rng.normal(0, 0.5, (N, K)))
    sign = torch.from_numpy(rng.choice([-1.0, 1.0], (N, K)))
    # z = W x + z0 is linear here, so its lower bound of -sign z is exact: A = -sign W, bias = -sign z0.
    a, c = constraints_from_splits(-sign[..., None] * W, -sign * z0, lo, hi)
    nlo, nhi, empty = clip_box(lo, hi, a, c)
    xs = lo[:, None] + torch.from_numpy(rng.random((N, P, n))) * (hi - lo)[:, None]
    z = torch.einsum("nkj,npj->npk", W, xs) + z0[:, None]
    in_domain = (sign[:, None] * z >= 0).all(-1)
    inside = ((xs >= nlo[:, None]) & (xs <= nhi[:, None])).all(-1)
    assert not bool((in_domain & ~inside).any()) and not bool((in_domain.any(1) & empty).any())


# ------------------------------------------------------------------------ throughput (printed)


@pytest.mark.parametrize("n,N", [(5, 10000), (784, 200)])
def test_throughput_printed(n: int, N: int, record_property: Callable[[str, object], None]) -> None:
    """Measures domains per second on this machine (CPU here); asserts nothing about speed.

    The line is captured, not written between pytest's dots: see it with
    `pytest -rP tests/bab/test_clipping.py -k throughput` (or `-s`); it is also recorded
    as a property in `--junitxml` reports.
    """
    M, K = 100, 4
    gen = torch.Generator().manual_seed(0)
    lo = torch.rand(N, n, generator=gen) - 1
    hi = lo + torch.rand(N, n, generator=gen)
    a = torch.randn(N, K, n, generator=gen)
    c = -(torch.minimum(a * lo[:, None], a * hi[:, None]).sum(-1) + 0.3)
    w = torch.randn(1, M, n, generator=gen).expand(N, M, n)      # shared rows: no N*M*n input copy
    b = torch.zeros(N, M)
    t0 = time.perf_counter()
    clip_box(lo, hi, a, c)
    t1 = time.perf_counter()
    min_under_constraint(clip_objective(w, b), IntervalBounds(lo, hi), a[:, 0], c[:, 0])
    t2 = time.perf_counter()
    record_property("clip_box_domains_per_s", N / (t1 - t0))
    record_property("min_under_constraint_domains_per_s", N / (t2 - t1))
    print(f"[clipping] n={n} N={N} K={K}: clip_box {N / (t1 - t0):,.0f} domains/s; "
          f"min_under_constraint M={M}: {N / (t2 - t1):,.0f} domains/s ({N * M / (t2 - t1):,.0f} rows/s)")
