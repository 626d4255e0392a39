"""LayerNormalization: expanded at import into the ops it is made of
(`models.passes.expand_layernorm`). The forward must match onnxruntime, and every
bounding method must hold on samples and, through the expansion, improve on IBP."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

from models import GraphEvaluator, UnsupportedModel
from relaxations import BoundOptions, IntervalBounds, compute_bounds
from tests.op_cases import make_model
from verifier import load_model


def _model(tmp_path, opset: int, seq: int, width: int, axis: int, bias: bool = True, outputs: int = 1):
    """X [1, seq, width] -> MatMul -> LayerNormalization(axis) -> Relu -> MatMul -> Y [1, seq, 3]."""
    r = np.random.default_rng(opset + seq + axis)
    inits = {"W1": r.normal(size=(width, width)).astype(np.float32),
             "W2": r.normal(size=(width, 3)).astype(np.float32)}
    norm_shape = (1, seq, width)[axis:]
    inits["g"] = r.uniform(0.5, 1.5, size=norm_shape).astype(np.float32)
    ins = ["h", "g"]
    if bias:
        inits["b"] = r.normal(scale=0.3, size=norm_shape).astype(np.float32)
        ins.append("b")
    outs = ["n", "mean", "inv"][:outputs]
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["h"]),
             helper.make_node("LayerNormalization", ins, outs, axis=axis, epsilon=1e-5),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["Y"])]
    path = tmp_path / f"ln{opset}_{axis}_{bias}_{outputs}.onnx"
    path.write_bytes(make_model(nodes, inits, (1, seq, width), (1, seq, 3), opset).SerializeToString())
    return path


@pytest.mark.parametrize("opset,axis,bias,outputs", [(17, -1, True, 1), (18, -1, False, 1), (18, 1, True, 3),
                                                     (17, 2, True, 1), (18, -2, True, 1)])
def test_layernorm_loads_and_matches_onnxruntime(tmp_path, opset: int, axis: int, bias: bool, outputs: int) -> None:
    model = load_model(_model(tmp_path, opset, 4, 8, axis, bias, outputs))
    assert "LayerNormalization" not in {n.op for n in model.graph.nodes}
    ev = GraphEvaluator(model.graph, dtype=torch.float32)
    x = np.random.default_rng(0).normal(size=(1, 4, 8)).astype(np.float32)
    ours = ev(torch.tensor(x).reshape(1, 1, 4, 8)).detach().numpy().reshape(-1)
    np.testing.assert_allclose(ours, model.run_onnxruntime(x).reshape(-1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
def test_layernorm_bounds_hold_on_samples(tmp_path, method: str) -> None:
    model = load_model(_model(tmp_path, 18, 3, 6, -1))
    g = torch.Generator().manual_seed(1)
    centre = torch.randn(1, 1, 3, 6, generator=g)
    box = IntervalBounds(centre - 0.05, centre + 0.05)
    res = compute_bounds(model.graph, box, options=BoundOptions(method=method))
    x = centre + 0.05 * (2 * torch.rand(3000, 1, 3, 6, generator=g) - 1)
    ev = GraphEvaluator(model.graph, dtype=torch.float32)
    y = ev(x).reshape(3000, -1)
    assert bool((res.lower.reshape(-1) <= y.min(0).values + 1e-4).all())
    assert bool((res.upper.reshape(-1) >= y.max(0).values - 1e-4).all())


@pytest.mark.parametrize("radius", [0.02, 0.1])
def test_crown_through_the_expansion_beats_ibp(tmp_path, radius: float) -> None:
    """Summed output width against IBP's (printed with -s; BENCHMARKS.md quotes them)."""
    model = load_model(_model(tmp_path, 18, 3, 6, -1))
    centre = torch.randn(1, 1, 3, 6, generator=torch.Generator().manual_seed(2))
    box = IntervalBounds(centre - radius, centre + radius)
    width = {}
    for m in ("ibp", "crown", "alpha-crown"):
        r = compute_bounds(model.graph, box, options=BoundOptions(method=m))
        width[m] = float((r.upper - r.lower).sum())
    print(f"LayerNorm block, radius {radius}: CROWN / IBP {width['crown'] / width['ibp']:.3f}, "
          f"alpha-CROWN / IBP {width['alpha-crown'] / width['ibp']:.3f}")
    assert width["alpha-crown"] <= width["crown"] * (1 + 1e-5) and width["crown"] < 0.9 * width["ibp"], width


def test_a_layernorm_it_cannot_expand_is_refused_by_node(tmp_path) -> None:
    path = _model(tmp_path, 18, 4, 8, -1)
    import onnx

    m = onnx.load(str(path))
    m.graph.node[1].attribute.append(helper.make_attribute("stash_type", 0))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(UnsupportedModel, match="stash_type"):
        load_model(bad)
