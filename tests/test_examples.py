"""The digits transformer example (examples/digits_transformer.py): trained briefly,
exported to ONNX, loaded by nncert (the onnxruntime check included), bounded soundly,
and verified on a small radius."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
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
