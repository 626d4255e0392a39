"""models.product: networks side by side in one ONNX model compute exactly what each
network computes, on onnxruntime and on our own reading of it."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from models import ModelError, graph_from_proto
from models.evaluate import GraphEvaluator
from models.product import Part, product_model
from tests.op_cases import make_model


def _mlp(seed: int, n_in: int = 3, n_out: int = 2, opset: int = 13):
    r = np.random.default_rng(seed)
    return make_model([helper.make_node("Gemm", ["X", "W", "b"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["Y"])],
                      {"W": r.normal(size=(n_out, n_in)).astype(np.float32), "b": r.normal(size=n_out).astype(np.float32)},
                      (1, n_in), (1, n_out), opset)


def _run(model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: x.astype(np.float32)})[0]


def test_side_by_side_equals_each_network_and_shared_positions_tie_inputs():
    f, g = _mlp(0), _mlp(1)
    x = np.random.default_rng(2).normal(size=(1, 5)).astype(np.float32)
    # f reads x[0:3] and shows its hidden h; g reads x[2], x[3], x[2] (two inputs tied)
    parts = [Part("f", f, ("h",), (np.array([0, 1, 2]),)), Part("g", g, (), (np.array([2, 3, 2]),))]
    model = product_model(parts, echo_input=True, n_inputs=5)
    y = _run(model, x)[0]
    weights = {t.name: numpy_helper.to_array(t) for t in f.graph.initializer}
    h = x[0, :3] @ weights["W"].T + weights["b"]
    want = np.concatenate([h, _run(f, x[:, :3])[0], _run(g, x[:, [2, 3, 2]])[0], x[0]])
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)
    ours = GraphEvaluator(graph_from_proto(model), dtype=torch.float64)(torch.tensor(x[None], dtype=torch.float64))
    np.testing.assert_allclose(ours.reshape(-1).numpy(), y, rtol=1e-5, atol=1e-6)


def test_a_network_with_a_contrib_op_keeps_its_domain_in_the_product():
    """The product imports the contrib domain its networks use (onnxruntime runs it, the
    importer reads it at that domain's opset); two versions of one domain are refused."""
    r = np.random.default_rng(3)
    nodes = [helper.make_node("Gemm", ["X", "W", "b"], ["h"], transB=1),
             helper.make_node("FastGelu", ["h"], ["Y"], domain="com.microsoft")]
    inits = {"W": r.normal(size=(2, 3)).astype(np.float32), "b": r.normal(size=2).astype(np.float32)}
    f = make_model(nodes, inits, (1, 3), (1, 2), domains={"com.microsoft": 1})
    model = product_model([Part("f", f), Part("g", _mlp(1))])
    assert {(o.domain, o.version) for o in model.opset_import} == {("", 13), ("com.microsoft", 1)}
    x = np.random.default_rng(4).normal(size=(1, 6)).astype(np.float32)
    y = _run(model, x)[0]
    np.testing.assert_allclose(y[:2], _run(f, x[:, :3])[0], rtol=1e-6, atol=1e-7)
    graph = graph_from_proto(model)
    assert any(n.key == ("com.microsoft", "FastGelu") and n.opset == 1 for n in graph.nodes)
    ours = GraphEvaluator(graph, dtype=torch.float64)(torch.tensor(x[None], dtype=torch.float64))
    np.testing.assert_allclose(ours.reshape(-1).numpy(), y, rtol=1e-5, atol=1e-6)
    other = make_model(nodes, inits, (1, 3), (1, 2), domains={"com.microsoft": 2})
    with pytest.raises(ModelError, match="different versions of domain 'com.microsoft'"):
        product_model([Part("f", f), Part("g", other)])


def test_mismatched_opsets_and_missing_hidden_names_are_model_errors():
    with pytest.raises(ModelError, match="share an ONNX opset"):
        product_model([Part("f", _mlp(0, opset=13)), Part("g", _mlp(1, opset=17))])
    with pytest.raises(ModelError, match="no node produces the hidden tensor 'nope'"):
        product_model([Part("f", _mlp(0), ("nope",))])
    graph = helper.make_graph([helper.make_node("Identity", ["X"], ["Y"])], "i",
                              [helper.make_tensor_value_info("X", TensorProto.INT64, [1, 2])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT64, [1, 2])])
    ints = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(ModelError, match="is not float32/float64"):
        product_model([Part("i", ints)])


def test_old_ir_versions_get_a_product_onnx_accepts():
    """Before IR 4 every initializer had to be a graph input (the ACAS Xu files are IR 3):
    the product model is IR 4 at least, so its own index and shape initializers are valid."""
    f = _mlp(0)
    f.ir_version = 3
    x = np.random.default_rng(3).normal(size=(1, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(product_model([Part("f", f, ("h",))]), x)[0, 2:], _run(f, x)[0], rtol=1e-6)
