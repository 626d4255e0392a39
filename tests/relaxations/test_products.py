"""Slot relaxations (products of two variable tensors, max-type ops): their lines are
sound on random boxes, CROWN walks through them and is tighter than before, and every
other reader of the rules either handles the graphs or refuses them."""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import pytest
import torch
from onnx import helper

import relaxations.crown as crown
from models import Node, graph_from_proto
from relaxations import BoundOptions, IntervalBounds, compute_bounds
from relaxations.bounds import Precision
from relaxations.ops import maxes, products
from relaxations.registry import REGISTRY
from tests.helpers import assert_inside, outputs_float64, sample_box
from tests.op_cases import make_model
from tests.op_cases_products import product_cases

SLOT_OPS = ("Mul", "MatMul", "Max", "Min", "MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin")
CASES = {c.name: c for c in product_cases()}


def _box(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random slot bounds [1, 1, *shape]: a mix of zero-width, narrow, sign-crossing and wide."""
    g = torch.Generator().manual_seed(seed)
    centre = 4 * torch.rand(*shape, generator=g, dtype=torch.float64) - 2
    kind = torch.randint(0, 4, shape, generator=g)
    width = torch.rand(*shape, generator=g, dtype=torch.float64) * torch.tensor([0.0, 0.01, 1.0, 4.0])[kind].double()
    lo, hi = (centre - width / 2).to(dtype), (centre + width / 2).to(dtype)
    return lo.reshape(1, 1, *shape), hi.reshape(1, 1, *shape)


def _points(lo: torch.Tensor, hi: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n points of the box (uniform and corners), in float64, [n, *shape]."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, *lo.shape[2:], generator=g, dtype=torch.float64)
    u[: n // 3] = (u[: n // 3] < 0.5).double()
    l, h = lo[0, 0].double(), hi[0, 0].double()
    return l + (h - l) * u


def _check_lines(r, G: torch.Tensor, f: torch.Tensor, what: str) -> None:
    """lower line <= f <= upper line at every point G [n, *out, K] (f [n, *out]), up to
    the float64 rounding of evaluating the lines here."""
    lo = (r.lower_slope[0].double() * G).sum(-1) + r.lower_bias[0].double()
    up = (r.upper_slope[0].double() * G).sum(-1) + r.upper_bias[0].double()
    tol = 1e-13 * (1 + f.abs().max() + (r.lower_slope.double().abs() * G.abs()).sum(-1).max())
    assert float((lo - f).max()) <= tol, f"{what}: lower line above the function by {float((lo - f).max()):.3g}"
    assert float((f - up).max()) <= tol, f"{what}: upper line below the function by {float((f - up).max()):.3g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("P", [1, 3])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_mccormick_lines_are_sound(dtype: torch.dtype, P: int, with_alpha: bool) -> None:
    node = Node("m", "MatMul", ("a", "b"), ("y",))
    for seed in range(4):
        lo, hi = _box((6, 2 * P), dtype, seed)
        alpha = None
        if with_alpha:
            alpha = torch.rand(1, 2, 6, P, generator=torch.Generator().manual_seed(seed), dtype=dtype)
            alpha[:, 1] = torch.tensor([0.0, 1.0])[torch.randint(0, 2, (6, P))].to(dtype)   # the pure planes
        r = products.product_relax(node, lo, hi, alpha, [])
        G = _points(lo, hi, 400, seed)
        f = (G[..., :P] * G[..., P:]).sum(-1)
        for row in range(r.lower_slope.shape[1]):
            one = type(r)(*(t[:, row:row + 1] for t in (r.lower_slope, r.lower_bias, r.upper_slope, r.upper_bias)))
            _check_lines(one, G, f, f"product P={P} seed={seed} row={row}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("K", [1, 2, 5])
@pytest.mark.parametrize("with_alpha", [False, True])
def test_max_lines_are_sound(dtype: torch.dtype, op: str, K: int, with_alpha: bool) -> None:
    node = Node("m", op, ("a",), ("y",))
    for seed in range(4):
        lo, hi = _box((8, K), dtype, 10 + seed)
        if K > 2 and op == "Max":   # padding slots of MaxPool: -inf, never the maximum
            pad = torch.zeros(8, K, dtype=torch.bool)
            pad[::3, 0] = True
            lo = torch.where(pad, torch.tensor(-torch.inf, dtype=dtype), lo)
            hi = torch.where(pad, torch.tensor(-torch.inf, dtype=dtype), hi)
        alpha = None
        if with_alpha:
            alpha = torch.rand(1, 3, 8, 2 * K, generator=torch.Generator().manual_seed(seed), dtype=dtype)
            alpha[:, 2, :, :K] = 0          # an all-zero simplex part: the default weights
        r = maxes.max_relax(node, lo, hi, alpha, [])
        valid = hi[0, 0] > -torch.inf
        G = torch.where(valid, _points(torch.where(valid, lo, 0), torch.where(valid, hi, 0), 400, seed), -torch.inf)
        f = G.amax(-1) if op == "Max" else G.amin(-1)
        G = torch.where(valid, G, torch.zeros(()))   # slopes are 0 there
        for row in range(r.lower_slope.shape[1]):
            one = type(r)(*(t[:, row:row + 1] for t in (r.lower_slope, r.lower_bias, r.upper_slope, r.upper_bias)))
            _check_lines(one, G, f, f"{op} K={K} seed={seed} row={row}")


def test_exact_cases_give_exact_lines() -> None:
    """A point factor makes a product linear; a dominating slot makes a max exact."""
    node = Node("m", "Mul", ("a", "b"), ("y",))
    lo = torch.tensor([[[[2.0, -1.0]]]], dtype=torch.float64)
    hi = torch.tensor([[[[2.0, 3.0]]]], dtype=torch.float64)
    r = products.product_relax(node, lo, hi, None, [])
    assert torch.equal(r.lower_slope, r.upper_slope) and r.lower_slope[..., 0].item() == 0.0
    assert abs(r.lower_bias.item()) < 1e-12 and abs(r.upper_bias.item()) < 1e-12   # rounding slack only
    node = Node("m", "Max", ("a", "b", "c"), ("y",))
    lo = torch.tensor([[[[1.0, -2.0, 0.5]]]], dtype=torch.float64)
    hi = torch.tensor([[[[2.0, 1.0, 1.0]]]], dtype=torch.float64)
    r = maxes.max_relax(node, lo, hi, None, [])
    assert r.lower_slope.flatten().tolist() == [1.0, 0.0, 0.0] == r.upper_slope.flatten().tolist()
    assert abs(r.upper_bias.item()) < 1e-12 and abs(r.lower_bias.item()) < 1e-12


# ------------------------------------------------------------------ through CROWN

@pytest.fixture
def before(monkeypatch: pytest.MonkeyPatch):
    """The registry as it was before slot relaxations (CROWN stops at these ops)."""
    def apply() -> None:
        for op in SLOT_OPS:
            monkeypatch.setitem(REGISTRY, ("", op), [dataclasses.replace(r, gather=None, relax_slots=None)
                                                     for r in REGISTRY["", op]])
    return apply


def _multihead_attention() -> object:
    """X [1, 2, 4, 3] (two heads, four tokens): S = (X Wq)(X Wk)^T per head, Y = S (X Wv)."""
    r = np.random.default_rng(7)
    w = {k: (r.normal(size=(3, 2)) * 0.7).astype(np.float32) for k in ("Wq", "Wk", "Wv")}
    nodes = [helper.make_node("MatMul", ["X", "Wq"], ["q"]), helper.make_node("MatMul", ["X", "Wk"], ["k"]),
             helper.make_node("MatMul", ["X", "Wv"], ["v"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("MatMul", ["s", "v"], ["Y"])]
    return make_model(nodes, w, (1, 2, 4, 3), (1, 2, 4, 2))


def _graphs() -> dict:
    return {"attention": (graph_from_proto(CASES["MatMul_attention"].model), (4, 3)),
            "multihead": (graph_from_proto(_multihead_attention()), (1, 2, 4, 3)),
            "cnn_maxpool": (graph_from_proto(CASES["MaxPool_cnn"].model), (1, 1, 6, 6))}


def _box_at(shape: tuple[int, ...], eps: float, dtype=torch.float32) -> IntervalBounds:
    c = torch.rand(1, *shape, generator=torch.Generator().manual_seed(3), dtype=dtype) - 0.5
    return IntervalBounds(c - eps, c + eps)


def _width(graph, box: IntervalBounds, method: str) -> torch.Tensor:
    res = compute_bounds(graph, box, options=BoundOptions(method=method, alpha_iterations=10))
    return res.upper - res.lower


@pytest.mark.parametrize("name", ["attention", "multihead", "cnn_maxpool"])
def test_crown_is_sound_and_no_looser_than_ibp(name: str) -> None:
    graph, shape = _graphs()[name]
    for dtype in (torch.float32, torch.float64):
        for eps in (0.0, 0.02, 0.3):
            box = _box_at(shape, eps, dtype)
            ibp = compute_bounds(graph, box, options=BoundOptions(method="ibp"))
            for method in ("crown", "alpha-crown"):
                res = compute_bounds(graph, box, options=BoundOptions(method=method, alpha_iterations=10))
                # on graphs with slot nodes CROWN keeps the folded interval bound as IBP does
                assert bool((res.upper - res.lower <= ibp.upper - ibp.lower).all())
                ys = outputs_float64(graph, sample_box(box.lower, box.upper, 500, 1))
                assert_inside(ys, res.lower[0], res.upper[0], f"{name}/{method}/{dtype}/{eps}",
                              rel=1e-5 if dtype == torch.float32 else 1e-9)
            if eps == 0.02:   # the linear bound by itself (not intersected with the interval one) is tighter
                res = compute_bounds(graph, box, options=BoundOptions(method="crown"))
                lin = res.linear.concretize(box, Precision.for_dtype(dtype))
                S = ibp.lower.shape[1]
                assert float((-lin[:, S:] - lin[:, :S]).sum()) < float((ibp.upper - ibp.lower).sum())


@pytest.mark.parametrize("name", ["attention", "multihead", "cnn_maxpool"])
def test_width_ratio_before_and_after(name: str, before) -> None:
    """CROWN/IBP output width, summed over outputs: with the slot relaxations CROWN walks
    through products and max pooling; before, it stopped there (ratio 1)."""
    graph, shape = _graphs()[name]
    line = []
    for eps in (0.02, 0.2):
        box = _box_at(shape, eps)
        ibp = float(_width(graph, box, "ibp").sum())
        after = float(_width(graph, box, "crown").sum())
        alpha = float(_width(graph, box, "alpha-crown").sum())
        line.append((eps, ibp, after, alpha))
    before()
    for i, (eps, ibp, after, alpha) in enumerate(line):
        old = float(_width(graph, _box_at(shape, eps), "crown").sum())
        print(f"{name} eps={eps}: CROWN/IBP width before {old / ibp:.3f}, after {after / ibp:.3f}, "
              f"alpha-CROWN {alpha / ibp:.3f}")
        assert after <= old * (1 + 1e-6) and alpha <= after * (1 + 1e-6)
        if i == 0:
            assert after < 0.9 * old


def test_size_cap_chunks_rows_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the cap the rows are walked in chunks (same bound); a row above it ends the
    walk at the node, which is then bounded by its interval (sound, as before)."""
    graph, shape = _graphs()["attention"]
    box = _box_at(shape, 0.05, torch.float64)
    full = compute_bounds(graph, box, options=BoundOptions(method="crown"))
    monkeypatch.setattr(crown, "MAX_SLOT_ELEMENTS", 300)       # a few rows per chunk
    chunked = compute_bounds(graph, box, options=BoundOptions(method="crown"))
    assert torch.allclose(full.lower, chunked.lower, rtol=1e-9, atol=1e-9)
    monkeypatch.setattr(crown, "MAX_SLOT_ELEMENTS", 10)        # not even one row fits
    capped = compute_bounds(graph, box, options=BoundOptions(method="alpha-crown", alpha_iterations=3))
    ys = outputs_float64(graph, sample_box(box.lower, box.upper, 300, 2))
    assert_inside(ys, capped.lower[0], capped.upper[0], "capped", rel=1e-9)
    assert float((capped.upper - capped.lower).sum()) >= float((full.upper - full.lower).sum())


# ------------------------------------------------------- other readers of the rules

@pytest.mark.parametrize("name", ["attention", "cnn_maxpool"])
def test_other_bounding_paths_stay_sound(name: str) -> None:
    """Forward-mode intermediates (no slot lines there: intervals), dense instead of
    patches, and alpha-CROWN with optimised intermediate bounds."""
    graph, shape = _graphs()[name]
    box = _box_at(shape, 0.1)
    ys = outputs_float64(graph, sample_box(box.lower, box.upper, 400, 3))
    base = compute_bounds(graph, box, options=BoundOptions(method="crown"))
    for opts in (BoundOptions(method="crown", intermediate="forward"), BoundOptions(method="crown", patches=False),
                 BoundOptions(method="alpha-crown", alpha_iterations=4, optimise_intermediate=True)):
        res = compute_bounds(graph, box, options=opts)
        assert_inside(ys, res.lower[0], res.upper[0], f"{name}/{opts}")
        assert not any(n in res.alphas for n in ("MatMul", "MaxPool"))
    dense = compute_bounds(graph, box, options=BoundOptions(method="crown", patches=False))
    assert torch.allclose(base.lower, dense.lower, rtol=1e-4, atol=1e-4)


def _slot_node_names(graph) -> set:
    return {n.name for n in graph.nodes if n.op in SLOT_OPS}


def test_bound_result_alphas_hold_elementwise_nodes_only() -> None:
    graph, shape = _graphs()["cnn_maxpool"]
    res = compute_bounds(graph, _box_at(shape, 0.1), options=BoundOptions(method="alpha-crown", alpha_iterations=3))
    assert res.alphas and not (set(res.alphas) & _slot_node_names(graph))


@pytest.mark.parametrize("case", sorted(CASES))
def test_lp_and_certificate_checker_refuse_these_graphs(case: str) -> None:
    """The LP encoding and the independent checker read no products of variables and no
    max-type ops: they say so rather than encode or accept them."""
    from verifier.checker.onnx_net import Unsupported, read_network
    from verifier.lp.refine import lp_supported

    model = CASES[case].model
    with pytest.raises(Unsupported, match=r"^unsupported \("):
        read_network(model.SerializeToString())
    assert lp_supported(graph_from_proto(model)) is not None


def test_lp_refuses_a_product_of_two_relu_layers() -> None:
    from verifier.lp.refine import lp_supported

    r = np.random.default_rng(0)
    w = {"W1": r.normal(size=(3, 3)).astype(np.float32), "W2": r.normal(size=(3, 3)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["a"]), helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("MatMul", ["X", "W2"], ["b"]), helper.make_node("Relu", ["b"], ["rb"]),
             helper.make_node("Mul", ["ra", "rb"], ["Y"])]
    reason: Optional[str] = lp_supported(graph_from_proto(make_model(nodes, w, (1, 3), (1, 3))))
    assert reason is not None and "Mul" in reason


@pytest.mark.parametrize("case", ["MaxPool_cnn", "Mul_two_distinct_vars"])
def test_proof_through_slot_relaxations_gets_no_accepted_certificate(case: str, tmp_path) -> None:
    """An unsat verdict on such a model is recorded as `unsupported (<op>)`, which the
    checker rejects: nothing is accepted that it cannot re-derive."""
    import vnnlib
    from verifier import Config, Result, load_model, verify
    from verifier.certificates.writer import build_certificate
    from verifier.checker.verdict import check_certificate

    onnx_path = tmp_path / f"{case}.onnx"
    onnx_path.write_bytes(CASES[case].model.SerializeToString())
    model = load_model(onnx_path)
    x0 = np.random.default_rng(0).uniform(-0.5, 0.5, model.n_inputs)
    label = int(np.argmax(model.run_onnxruntime(x0.astype(np.float32))))
    spec_path = tmp_path / "spec.vnnlib"
    vnnlib.write_vnnlib(spec_path, vnnlib.robustness_spec(x0, 1e-3, label, model.n_outputs))
    spec = vnnlib.load(spec_path, model.n_inputs, model.n_outputs)
    result = verify(model, spec, Config(timeout=60))
    if result.verdict != "unsat":   # the recorded form is what matters: check it on a claimed unsat too
        result = Result("unsat", proof={"version": 1, "disjuncts": []})
    cert = build_certificate(model, spec_path, spec, result)
    assert cert["certificate"].startswith("unsupported (")
    check = check_certificate(cert, model.onnx_bytes, spec_path.read_text(), str(spec_path))
    assert not check.accepted
