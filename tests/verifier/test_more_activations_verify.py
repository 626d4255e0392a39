"""Models with Softplus, Atan, Erf, Elu, HardSigmoid, HardSwish or Gelu through the whole
verifier: a verdict (never an exception) under the bounding modes, a certificate that
says `unsupported (<op>)` instead of a proof the checker cannot read, a checker that
rejects any unsat certificate about such a model, and an LP encoder that declines them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import vnnlib
from verifier import Config, load_model, verify
from verifier.certificates.writer import build_certificate
from verifier.checker.verdict import check_certificate
from verifier.config import BabConfig, BoundsConfig
from verifier.lp.refine import lp_supported

OPS: dict[str, tuple[str, dict, int]] = {
    "Softplus": ("Softplus", {}, 13), "Atan": ("Atan", {}, 13), "Erf": ("Erf", {}, 13),
    "Elu": ("Elu", {"alpha": 0.5}, 13), "HardSigmoid": ("HardSigmoid", {}, 13),
    "HardSwish": ("HardSwish", {}, 14), "Gelu": ("Gelu", {}, 20), "Gelu_tanh": ("Gelu", {"approximate": "tanh"}, 20),
}


def _mlp(path: Path, case: str, relu_too: bool = False) -> Path:
    """2 -> 8 -> op -> 8 -> op (or Relu) -> 2, weights drawn from a fixed seed."""
    op, attrs, opset = OPS[case]
    r = np.random.default_rng(7)
    inits = {"W1": r.normal(size=(2, 8)), "b1": 0.3 * r.normal(size=8), "W2": r.normal(size=(8, 8)) / 2,
             "b2": 0.3 * r.normal(size=8), "W3": r.normal(size=(8, 2)) / 2, "b3": r.normal(size=2)}
    nodes = [helper.make_node("Gemm", ["X", "W1", "b1"], ["h1"]), helper.make_node(op, ["h1"], ["a1"], **attrs),
             helper.make_node("Gemm", ["a1", "W2", "b2"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["a2"]) if relu_too else helper.make_node(op, ["h2"], ["a2"], **attrs),
             helper.make_node("Gemm", ["a2", "W3", "b3"], ["Y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def _robust_instance(tmp_path: Path, case: str, eps: float = 0.02):
    model = load_model(_mlp(tmp_path / f"{case}.onnx", case))
    x0 = np.full(2, 0.3)
    label = int(np.argmax(model.run_onnxruntime(x0.astype(np.float32))))
    path = tmp_path / f"{case}.vnnlib"
    vnnlib.write_vnnlib(path, vnnlib.robustness_spec(x0, eps, label, 2))
    return model, path, vnnlib.load(path, model.n_inputs, model.n_outputs)


@pytest.mark.parametrize("case", sorted(OPS))
def test_lp_encoder_declines_the_op(case: str, tmp_path: Path) -> None:
    graph = load_model(_mlp(tmp_path / "m.onnx", case, relu_too=True)).graph
    reason = lp_supported(graph)
    assert reason is not None and OPS[case][0] in reason


@pytest.mark.parametrize("case", sorted(OPS))
def test_unsat_certificate_is_unsupported_and_never_accepted(case: str, tmp_path: Path) -> None:
    op = OPS[case][0]
    model, path, spec = _robust_instance(tmp_path, case)
    result = verify(model, spec, Config(timeout=30, proof=True))
    assert result.verdict == "unsat", result.reason
    cert = build_certificate(model, path, spec, result)
    assert cert["certificate"] == f"unsupported ({op})"
    checked = check_certificate(cert, model.onnx_bytes, path.read_text(), str(path))
    assert not checked.accepted and op in checked.reason
    # A forged certificate claiming a proof is refused too: the checker cannot read the op.
    forged = {k: v for k, v in cert.items() if k != "certificate"}
    forged["disjuncts"] = [{"kind": "bounds"}]
    checked = check_certificate(forged, model.onnx_bytes, path.read_text(), str(path))
    assert not checked.accepted and f"unsupported ({op})" in checked.reason


@pytest.mark.parametrize("case", ["HardSwish", "Gelu", "Elu", "Atan"])
@pytest.mark.parametrize("mode", ["forward", "ibp-intermediate", "activation-split", "input-split", "no-bab"])
def test_verify_modes_give_a_verdict(case: str, mode: str, tmp_path: Path) -> None:
    """A wide box that bounding alone may not decide: every mode answers with a verdict."""
    model, _, spec = _robust_instance(tmp_path, case, eps=0.6)
    config = {"forward": Config(timeout=15, bounds=BoundsConfig(intermediate="forward")),
              "ibp-intermediate": Config(timeout=15, bounds=BoundsConfig(intermediate="ibp")),
              "activation-split": Config(timeout=15, bab=BabConfig(mode="activation")),
              "input-split": Config(timeout=15, bab=BabConfig(mode="input")),
              "no-bab": Config(timeout=15, bab=BabConfig(enabled=False))}[mode]
    result = verify(model, spec, config)
    assert result.verdict in ("sat", "unsat", "unknown", "timeout"), (result.verdict, result.reason)
