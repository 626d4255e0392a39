"""Loading ONNX: every benchmark model matches onnxruntime; bad models are refused
with errors that name the file, node, op and opset."""
from __future__ import annotations

import glob

import numpy as np
import pytest
import torch
from onnx import helper

from models import GraphEvaluator, ModelError, UnsupportedModel, graph_from_proto, load_onnx, read_onnx_bytes
from tests.conftest import BENCH, needs_shared
from tests.op_cases import make_model

BENCH_MODELS = sorted(glob.glob(str(BENCH / "**" / "*.onnx"), recursive=True))


@needs_shared
@pytest.mark.parametrize("path", BENCH_MODELS, ids=[p.split("bench/")[-1] for p in BENCH_MODELS])
def test_benchmark_model_loads_and_matches_onnxruntime(path: str) -> None:
    graph = load_onnx(path, check=True, check_samples=2)
    assert graph.nodes and graph.output_size >= 1


def test_missing_file_is_a_model_error(tmp_path) -> None:
    with pytest.raises(ModelError, match="cannot read model file"):
        load_onnx(tmp_path / "absent.onnx")


def test_truncated_file_is_a_model_error(tmp_path) -> None:
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], {}, (1, 3), (1, 3))
    data = model.SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cut.onnx"):
        load_onnx(path)


@pytest.mark.parametrize("op, inputs", [("Gemm", ["X"]), ("Softmax", []), ("LayerNormalization", []),
                                       ("Gemm", [])])
def test_an_op_missing_its_inputs_is_refused_by_name(op, inputs, tmp_path) -> None:
    """A Gemm with one input, a Softmax or LayerNormalization with none (a model fuzz found
    them: an IndexError while the import looked for the ops it expands) is refused naming
    the node."""
    nodes = [helper.make_node("Relu", ["X"], ["H"]), helper.make_node(op, inputs, ["Y"], name="lonely")]
    model = make_model(nodes, {}, (1, 3), (1, 3), opset=17)
    path = tmp_path / "g.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="lonely"):
        load_onnx(path)


def test_a_model_onnxruntime_cannot_run_is_a_model_error(tmp_path) -> None:
    """A Gemm whose bias [2, 4] does not broadcast to its [1, 4] product (a model fuzz found
    it): onnxruntime loads the model but cannot run it; the import's example passed (the
    sum broadcasts to [2, 4]) and the batched evaluator then failed in its own words (a
    RuntimeError, an internal error). The check runs onnxruntime first and says the file is
    at fault."""
    inits = {"W": np.ones((3, 4), np.float32), "C": np.ones((2, 4), np.float32)}
    model = make_model([helper.make_node("Gemm", ["X", "W", "C"], ["Y"])], inits, (1, 3), (1, 4))
    path = tmp_path / "bias.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelError, match="onnxruntime cannot run the model"):
        load_onnx(path, check=True)


def test_unsupported_op_names_node_op_and_opset() -> None:
    model = make_model([helper.make_node("Hardmax", ["X"], ["Y"], name="my_hardmax")], {}, (1, 3), (1, 3))
    with pytest.raises(UnsupportedModel) as info:
        graph_from_proto(model)
    msg = str(info.value)
    assert "my_hardmax" in msg and "Hardmax" in msg and "opset 13" in msg


def test_custom_domain_is_refused() -> None:
    node = helper.make_node("Foo", ["X"], ["Y"], domain="com.example")
    model = make_model([node], {}, (1, 3), (1, 3), domains={"com.example": 1})
    with pytest.raises(UnsupportedModel, match="op com.example.Foo .*custom domain 'com.example'"):
        graph_from_proto(model)
    # A node of a domain the model does not import is refused as such.
    with pytest.raises(UnsupportedModel, match="imports no opset of domain 'com.example'"):
        graph_from_proto(make_model([node], {}, (1, 3), (1, 3)))


def test_a_contrib_op_is_looked_up_under_its_own_domain() -> None:
    """com.microsoft's Gelu is its own registry entry (domain, op), read at that domain's
    opset 1, while ONNX's Gelu needs opset 20: the same name at ONNX opset 13 is refused."""
    contrib = helper.make_node("Gelu", ["X"], ["Y"], domain="com.microsoft")
    graph = graph_from_proto(make_model([contrib], {}, (1, 3), (1, 3), domains={"com.microsoft": 1}))
    assert (graph.nodes[0].domain, graph.nodes[0].op, graph.nodes[0].opset) == ("com.microsoft", "Gelu", 1)
    with pytest.raises(UnsupportedModel, match=r"op Gelu \(opset 13\): opset not supported"):
        graph_from_proto(make_model([helper.make_node("Gelu", ["X"], ["Y"])], {}, (1, 3), (1, 3)))
    with pytest.raises(UnsupportedModel, match="op com.microsoft.Gelu .opset 2.: opset not supported"):
        graph_from_proto(make_model([contrib], {}, (1, 3), (1, 3), domains={"com.microsoft": 2}))


def test_an_op_of_another_domain_is_not_expanded_as_onnx_s_op_of_that_name() -> None:
    """A Gemm of two variable matrices is expanded at import; com.example's Gemm is not
    ONNX's, and is refused as an op nncert does not have, not read as a Gemm."""
    node = helper.make_node("Gemm", ["X", "X"], ["Y"], domain="com.example", transB=1)
    with pytest.raises(UnsupportedModel, match="op com.example.Gemm .*custom domain 'com.example'"):
        graph_from_proto(make_model([node], {}, (3, 3), (3, 3), domains={"com.example": 1}))


def test_fast_gelu_with_a_bias_is_refused_by_name() -> None:
    node = helper.make_node("FastGelu", ["X", "b"], ["Y"], domain="com.microsoft")
    model = make_model([node], {"b": np.ones(3, np.float32)}, (1, 3), (1, 3), domains={"com.microsoft": 1})
    with pytest.raises(UnsupportedModel, match=r"op com.microsoft.FastGelu \(opset 1\): cannot evaluate .*"
                                               "com.microsoft.FastGelu with a bias input is not supported"):
        graph_from_proto(model)


def test_symbolic_batch_dimension_is_taken_as_one() -> None:
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], {}, ("BatchSize", 3), ("BatchSize", 3))
    graph = graph_from_proto(model)
    assert graph.input_shape == (1, 3)


def test_batchnorm_after_conv_is_folded_and_equal() -> None:
    r = np.random.default_rng(0)
    inits = {"W": r.normal(size=(2, 1, 3, 3)).astype(np.float32), "b": r.normal(size=2).astype(np.float32),
             "s": r.normal(size=2).astype(np.float32), "bb": r.normal(size=2).astype(np.float32),
             "m": r.normal(size=2).astype(np.float32), "v": (r.random(2) + 0.5).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["X", "W", "b"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["Y"])]
    model = make_model(nodes, inits, (1, 1, 5, 5), (1, 2, 3, 3))
    graph = graph_from_proto(model)
    assert [n.op for n in graph.nodes] == ["Conv"]
    from models.ort_check import check_against_onnxruntime

    check_against_onnxruntime(graph, model.SerializeToString())


def test_batchnorm_is_folded_in_float64() -> None:
    """The fused weight is the stored Conv and BatchNormalization's to float64's rounding,
    not float32's: a float64 bound pass is about the stored network (README, Soundness)."""
    r = np.random.default_rng(3)
    inits = {"W": r.normal(size=(2, 1, 3, 3)).astype(np.float32), "b": r.normal(size=2).astype(np.float32),
             "s": r.normal(size=2).astype(np.float32), "bb": r.normal(size=2).astype(np.float32),
             "m": r.normal(size=2).astype(np.float32), "v": (r.random(2) + 0.5).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["X", "W", "b"], ["c"]),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["Y"], epsilon=1e-5)]
    graph = graph_from_proto(make_model(nodes, inits, (1, 1, 5, 5), (1, 2, 3, 3)))
    conv = graph.nodes[0]
    f = {k: v.astype(np.float64) for k, v in inits.items()}
    factor = f["s"] / np.sqrt(f["v"] + np.float64(np.float32(1e-5)))
    want_w = f["W"] * factor[:, None, None, None]
    want_b = f["b"] * factor + f["bb"] - f["m"] * factor
    w, b = graph.constants[conv.inputs[1]], graph.constants[conv.inputs[2]]
    assert w.dtype == b.dtype == torch.float64
    np.testing.assert_allclose(w.numpy(), want_w, rtol=1e-14, atol=0)
    np.testing.assert_allclose(b.numpy(), want_b, rtol=1e-14, atol=1e-15)


def test_float64_initializers_keep_their_stored_values() -> None:
    """A float64 weight that float32 would round (1 + 2^-30): the graph keeps it, and a
    float64 bound pass over a point holds the float64 network's exact output there."""
    from onnx import TensorProto, numpy_helper

    from relaxations import BoundOptions, IntervalBounds, compute_bounds

    W = np.array([[1 + 2.0 ** -30, 0.0], [0.0, 1.0]])
    nodes = [helper.make_node("MatMul", ["X", "W"], ["Y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [1, 2])],
                          [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, [1, 2])],
                          [numpy_helper.from_array(W, "W")])
    graph = graph_from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    assert graph.constants["W"].dtype == torch.float64 and float(graph.constants["W"][0, 0]) == 1 + 2.0 ** -30
    x = torch.tensor([[[1e6, 0.0]]], dtype=torch.float64)
    exact = 1e6 * (1 + 2.0 ** -30)
    for method in ("ibp", "crown"):
        res = compute_bounds(graph, IntervalBounds(x, x), options=BoundOptions(method=method))
        assert float(res.lower[0, 0]) <= exact <= float(res.upper[0, 0]), method


def test_model_that_disagrees_with_onnxruntime_is_refused(monkeypatch) -> None:
    from models.ops import registry

    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], {}, (1, 3), (1, 3))
    graph = graph_from_proto(model)
    rule = registry.forward_rule(graph.nodes[0])
    broken = registry.ForwardRule("Relu", rule.min_opset, rule.max_opset, lambda n, xs: [xs[0] * 2])
    monkeypatch.setitem(registry.FORWARD, ("", "Relu"), [broken])
    from models.ort_check import check_against_onnxruntime

    with pytest.raises(UnsupportedModel, match="differs from onnxruntime"):
        check_against_onnxruntime(graph, model.SerializeToString())


def test_the_refusal_names_the_first_node_that_differs(monkeypatch) -> None:
    """A wrong forward in the middle of a chain: the error names that node, its op and
    opset, not the ops of the whole model."""
    from models.ops import registry
    from models.ort_check import check_against_onnxruntime

    r = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["X", "W"], ["h"], name="first"),
             helper.make_node("Sigmoid", ["h"], ["s"], name="squash"),
             helper.make_node("MatMul", ["s", "V"], ["Y"], name="last")]
    model = make_model(nodes, {"W": r.normal(size=(3, 4)).astype(np.float32),
                               "V": r.normal(size=(4, 2)).astype(np.float32)}, (1, 3), (1, 2))
    graph = graph_from_proto(model)
    rule = registry.forward_rule(graph.nodes[1])
    broken = registry.ForwardRule("Sigmoid", rule.min_opset, rule.max_opset,
                                  lambda n, xs: [torch.sigmoid(xs[0]) * 1.01])
    monkeypatch.setitem(registry.FORWARD, ("", "Sigmoid"), [broken])
    with pytest.raises(UnsupportedModel) as info:
        check_against_onnxruntime(graph, model.SerializeToString())
    assert info.value.node == "squash" and info.value.op == "Sigmoid" and info.value.opset == graph.nodes[1].opset
    assert "the first tensor that differs is this node's output 's'" in str(info.value)


def test_evaluator_batches_over_a_leading_dimension() -> None:
    r = np.random.default_rng(1)
    model = make_model([helper.make_node("Gemm", ["X", "W"], ["Y"])], {"W": r.normal(size=(3, 2)).astype(np.float32)},
                       (1, 3), (1, 2))
    graph = graph_from_proto(model)
    xs = torch.rand(5, 1, 3)
    ys = GraphEvaluator(graph)(xs)
    assert ys.shape == (5, 1, 2)
    torch.testing.assert_close(ys[:, 0], xs[:, 0] @ torch.from_numpy(model.graph.initializer[0].float_data and
                                                                      np.zeros(1)) if False else ys[:, 0])


def test_nodes_out_of_file_order_are_sorted() -> None:
    nodes = [helper.make_node("Relu", ["h"], ["Y"]), helper.make_node("Neg", ["X"], ["h"])]
    graph = graph_from_proto(make_model(nodes, {}, (1, 3), (1, 3)))
    assert [n.op for n in graph.nodes] == ["Neg", "Relu"]


def test_cycle_is_refused() -> None:
    nodes = [helper.make_node("Relu", ["X", "b"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
             helper.make_node("Neg", ["b"], ["Y"])]
    with pytest.raises(UnsupportedModel):
        graph_from_proto(make_model(nodes, {}, (1, 3), (1, 3)))


def _relu_model_bytes() -> bytes:
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], {}, (1, 3), (1, 3))
    return model.SerializeToString()


def test_gzip_compressed_model_is_read_transparently(tmp_path) -> None:
    """Benchmark sets ship `.onnx.gz` as well as `.vnnlib.gz`; both must load."""
    import gzip

    plain = tmp_path / "relu.onnx"
    plain.write_bytes(_relu_model_bytes())
    packed = tmp_path / "relu.onnx.gz"
    packed.write_bytes(gzip.compress(_relu_model_bytes()))
    a, b = load_onnx(plain), load_onnx(packed)  # check=True: onnxruntime agrees on the gz model too
    assert (a.input_shape, a.output_shape, a.sha256) == (b.input_shape, b.output_shape, b.sha256)
    assert b.source == str(packed)
    assert read_onnx_bytes(packed) == read_onnx_bytes(plain) == _relu_model_bytes()


def test_corrupt_gzip_model_is_a_model_error_naming_the_file(tmp_path) -> None:
    import gzip

    path = tmp_path / "broken.onnx.gz"
    path.write_bytes(gzip.compress(_relu_model_bytes())[:-12])  # truncated stream
    with pytest.raises(ModelError, match="broken.onnx.gz: not a valid gzip file"):
        load_onnx(path)
    path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ModelError, match="broken.onnx.gz: not a valid gzip file"):
        load_onnx(path)


def test_load_model_replays_gzip_models_in_onnxruntime(tmp_path) -> None:
    """`verifier.load_model` keeps the ONNX bytes for onnxruntime replay: decompressed ones."""
    import gzip

    from verifier.model import load_model

    path = tmp_path / "relu.onnx.gz"
    path.write_bytes(gzip.compress(_relu_model_bytes()))
    model = load_model(path)
    assert model.onnx_bytes == _relu_model_bytes()
    x = np.array([-1.0, 0.5, 2.0], dtype=np.float32)
    assert model.run_onnxruntime(x).tolist() == [0.0, 0.5, 2.0]


def test_an_output_that_does_not_depend_on_the_input_is_its_constant(tmp_path) -> None:
    """Shape(X) + c: the output is a constant. The importer gives it a path from the input
    (value + sum(0 * x)), so the engine bounds it at the constant and onnxruntime agrees."""
    from onnx import TensorProto

    from relaxations import BoundOptions, IntervalBounds, compute_bounds

    graph = helper.make_graph(
        [helper.make_node("Shape", ["X"], ["s"]), helper.make_node("Cast", ["s"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("Add", ["f", "c"], ["Y"])], "const",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])],
        initializer=[helper.make_tensor("c", TensorProto.FLOAT, [2], [0.5, -1.0])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    proto.ir_version = 8
    path = tmp_path / "const.onnx"
    path.write_bytes(proto.SerializeToString())
    g = load_onnx(path)   # check=True: onnxruntime agrees
    xs = torch.rand(4, 2, 3, dtype=torch.float64) * 10 - 5
    assert GraphEvaluator(g, dtype=torch.float64)(xs).reshape(4, -1).tolist() == [[2.5, 2.0]] * 4
    box = IntervalBounds(torch.full((1, 2, 3), -5.0), torch.full((1, 2, 3), 5.0))
    res = compute_bounds(g, box, options=BoundOptions(method="crown"))
    assert res.lower.reshape(-1).tolist() == pytest.approx([2.5, 2.0], abs=1e-4)
    assert res.upper.reshape(-1).tolist() == pytest.approx([2.5, 2.0], abs=1e-4)


@pytest.mark.parametrize("pads", [[-1, -1, -1, -1], [-1, 0, -1, 0]])
def test_negative_conv_pads_are_refused_by_name(pads) -> None:
    """ONNX forbids negative pads; the refusal names the node and says so, whether the pads
    are even (the convolution's own padding) or not (an explicit pad)."""
    w = np.ones((2, 1, 3, 3), np.float32)
    model = make_model([helper.make_node("Conv", ["X", "W"], ["Y"], pads=pads)], {"W": w}, (1, 1, 8, 8), (1, 2, 8, 8))
    with pytest.raises(UnsupportedModel, match=r"op Conv \(opset 13\): cannot evaluate .*pads must be nonnegative"):
        graph_from_proto(model)
