"""The digits transformer example (examples/digits_transformer.py): trained briefly,
exported to ONNX, loaded by nncert (the onnxruntime check included), bounded soundly,
and verified on a small radius."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    dt = _example("digits_transformer")
    out = tmp_path_factory.mktemp("vit")
    net, xte, yte, acc = dt.train(epochs=3)
    path = out / "vit.onnx"
    dt.export(net, path)
    return dt, net, xte, yte, acc, path, out


def test_the_transformer_loads_with_its_attention_ops(vit) -> None:
    from verifier import load_model

    dt, net, xte, yte, acc, path, out = vit
    assert acc > 0.5
    model = load_model(path)
    ops = {n.op for n in model.graph.nodes}
    # LayerNormalization and Softmax are expanded at import (Exp from the softmax)
    assert {"MatMul", "Exp", "Gelu", "Sqrt", "Reciprocal"} <= ops and not {"LayerNormalization", "Softmax"} & ops
    x = xte[:5]
    torch.testing.assert_close(torch.as_tensor(np.stack([model.run_onnxruntime(v) for v in x])).float().reshape(5, -1),
                               net(torch.from_numpy(x)).detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_the_transformer_bounds_hold_on_samples(vit, method: str) -> None:
    from relaxations import BoundOptions, IntervalBounds, compute_bounds
    from verifier import load_model

    dt, net, xte, yte, acc, path, out = vit
    model = load_model(path)
    x0 = torch.from_numpy(xte[0]).reshape(1, 1, 64)
    box = IntervalBounds((x0 - 0.01).clamp(0, 1), (x0 + 0.01).clamp(0, 1))
    res = compute_bounds(model.graph, box, options=BoundOptions(method=method))
    g = torch.Generator().manual_seed(0)
    xs = box.lower + (box.upper - box.lower) * torch.rand(2000, 1, 64, generator=g)
    with torch.no_grad():
        ys = net(xs.reshape(2000, 64))
    assert bool((res.lower.reshape(1, -1) <= ys.min(0).values + 1e-4).all())
    assert bool((res.upper.reshape(1, -1) >= ys.max(0).values - 1e-4).all())


def test_the_transformer_verifies_a_small_radius(vit) -> None:
    import vnnlib
    from verifier import Config, load_model, verify

    dt, net, xte, yte, acc, path, out = vit
    model = load_model(path)
    with torch.no_grad():
        right = np.nonzero(net(torch.from_numpy(xte)).argmax(1).numpy() == yte)[0]
    i = int(right[0])
    spec_path = dt.write_specs(out, xte[i:i + 1], yte[i:i + 1], 0.001)[0]
    res = verify(model, vnnlib.load(spec_path, model.n_inputs, model.n_outputs), Config(timeout=60))
    assert res.verdict == "unsat", (res.verdict, res.reason, res.stats.get("bounds"))


@pytest.fixture(scope="module")
def tanh_net(tmp_path_factory):
    ex = _example("digits_tanh")
    out = tmp_path_factory.mktemp("tanh")
    net, xte, yte, acc = ex.train(epochs=10, width=32)
    path = out / "tanh.onnx"
    ex.export(net, path)
    return ex, net, xte, yte, acc, path, out


def test_the_tanh_mlp_example_decides_its_properties_by_every_method(tanh_net) -> None:
    """The example's three methods, as its main() runs them: at a small radius each proves
    the property, and the model nncert loaded computes what the torch module does."""
    from verifier import load_model

    ex, net, xte, yte, acc, path, out = tanh_net
    assert acc > 0.8
    model = load_model(path)
    with torch.no_grad():
        right = np.nonzero(net(torch.from_numpy(xte)).argmax(1).numpy() == yte)[0]
    rows = ex.run(model, ex.write_specs(out, xte[right[:2]], yte[right[:2]], 0.002), timeout=30)
    assert [[r[m] for m in ex.METHODS] for r in rows] == [["unsat"] * 3] * 2, rows


def test_s_shaped_tangents_halfway_are_tighter_than_the_crown_papers(tanh_net, monkeypatch) -> None:
    """Plain CROWN through three tanh layers, tangents on crossing intervals started
    halfway (relaxations.ops.smooth.S_CROSSING_INIT) against the CROWN paper's tangent
    through the opposite end (0), and on one-sided intervals leaning to the flat end
    (S_FLAT_LEAN) against the midpoint: the worst margins over 20 test points are higher
    each time, and the bounds hold on samples in all three."""
    from relaxations import BoundOptions, IntervalBounds, compute_bounds
    from relaxations.ops import smooth
    from verifier import load_model

    ex, net, xte, yte, acc, path, out = tanh_net
    model = load_model(path)
    x = torch.from_numpy(xte[:20]).reshape(20, 1, 64)
    box = IntervalBounds((x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1))
    C = torch.stack([torch.eye(10)[int(y)] - torch.eye(10)[[j for j in range(10) if j != y]]
                     for y in yte[:20]])   # [20, 9, 10]: y_label - y_j
    worst = {}
    halfway, lean = smooth.S_CROSSING_INIT, smooth.S_FLAT_LEAN
    for key, (init, side) in {"paper": (0.0, 0.5), "halfway": (halfway, 0.5), "lean": (halfway, lean)}.items():
        monkeypatch.setattr(smooth, "S_CROSSING_INIT", init)
        monkeypatch.setattr(smooth, "S_FLAT_LEAN", side)
        lower = compute_bounds(model.graph, box, C=C, options=BoundOptions(method="crown")).lower
        g = torch.Generator().manual_seed(1)
        xs = box.lower + (box.upper - box.lower) * torch.rand(20, 300, 64, generator=g)
        with torch.no_grad():
            ys = net(xs.reshape(-1, 64)).reshape(20, 300, 10)
        margins = torch.einsum("bso,bno->bns", C, ys).amin(1)
        assert bool((lower <= margins + 1e-4).all())
        worst[key] = float(lower.amin(1).sum())
    assert worst["halfway"] > worst["paper"] + 5.0, worst
    assert worst["lean"] > worst["halfway"], worst   # on one side of 0, leaning to the flat end


needs_parser = pytest.mark.skipif(
    not (__import__("vnnlib.standard", fromlist=["vendor_dir"]).vendor_dir() / "vnnlib" / "__init__.py").is_file(),
    reason="the standard's VNN-LIB parser is not installed beside the venv (`make` installs it)")


@pytest.fixture(scope="module")
def queries(tmp_path_factory):
    ex = _example("vnnlib2_queries")
    out = tmp_path_factory.mktemp("vnnlib2")
    teacher, xte, yte, acc = ex.train_digits()
    table = ex.train_tabular(epochs=40)
    ex.export(teacher, out / "digits.onnx")
    ex.export_tabular(table, out / "tabular.onnx")
    return ex, out, teacher, table, xte[0].astype(np.float64)


def _verify_query(ex, capsys, path, text: str, networks: dict):
    from verifier.cli import main

    path.write_text(text)
    args = ["verify", str(path), "--timeout", "60"]
    for name, net in networks.items():
        args += ["--network", f"{name}={net}"]
    assert main(args) == 0
    return ex.parse_output(capsys.readouterr().out.splitlines())


@needs_parser
def test_global_robustness_of_two_equal_to_copies(queries, capsys) -> None:
    """Two copies of the digits net, inputs within eps of each other pixel by pixel: a
    pair whose argmaxes differ is found (the attack moves its points onto the 128 rows
    that couple the copies) and checked against the torch module; the smaller
    neighbourhood is proved, and 3,000 sampled pairs in it agree."""
    ex, out, teacher, table, x0 = queries
    nets = {"f": out / "digits.onnx"}
    found = _verify_query(ex, capsys, out / "g1.vnnlib", ex.global_robustness(x0, 0.1, 0.05), nets)
    assert found.verdict == "sat"
    v = found.values
    assert ex.replayed(found, {"f": teacher}, lambda v: True)
    assert np.argmax(v["Y"]) != np.argmax(v["Y2"]) and np.abs(v["X"] - v["X2"]).max() <= 0.05
    assert np.abs(v["X"] - x0).max() <= 0.1 + 1e-6
    proved = _verify_query(ex, capsys, out / "g2.vnnlib", ex.global_robustness(x0, 0.05, 0.02), nets)
    assert proved.verdict == "unsat"
    g = np.random.default_rng(0)
    xs = np.clip(x0 + 0.05 * (2 * g.random((3000, 64)) - 1), 0, 1)
    x2 = np.clip(xs + 0.02 * (2 * g.random((3000, 64)) - 1), 0, 1)
    with torch.no_grad():
        a, b = (teacher(torch.from_numpy(z).float()).argmax(1) for z in (xs, x2))
    assert bool((a == b).all())


@needs_parser
def test_monotonicity_and_a_polynomial_output_constraint(queries, capsys) -> None:
    """The tabular model: the first output is non-monotone in feature 1 (a pair found and
    checked), and its squared output norm is proved below twice its sampled peak."""
    ex, out, teacher, table, x0 = queries
    nets = {"f": out / "tabular.onnx"}
    lo, hi = np.zeros(ex.FEATURES), np.ones(ex.FEATURES)
    found = _verify_query(ex, capsys, out / "m.vnnlib", ex.monotonicity(lo, hi, 1, 0.0), nets)
    assert found.verdict == "sat" and ex.replayed(found, {"f": table}, lambda v: ex._mono(v, 1, 0.0))
    with torch.no_grad():
        ys = table(torch.rand(5000, ex.FEATURES, generator=torch.Generator().manual_seed(0))).numpy()
    peak = float((ys ** 2).sum(1).max())
    assert _verify_query(ex, capsys, out / "p.vnnlib", ex.squared_norm(lo, hi, 2 * peak), nets).verdict == "unsat"
    found = _verify_query(ex, capsys, out / "p2.vnnlib", ex.squared_norm(lo, hi, 0.9 * peak), nets)
    assert found.verdict == "sat" and float((found.values["Y"].astype(np.float64) ** 2).sum()) > 0.9 * peak
