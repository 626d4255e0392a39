"""Activation-split (beta-CROWN) certificates: real runs accepted, tamperings rejected."""
from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import vnnlib
from bab.proof import ActivationLeaves
from tests.builders import check_certificate_for, find_activation_split_run
from tests.conftest import BENCH, needs_shared
from verifier import Config, load_model, verify
from verifier.certificates.writer import build_certificate, write_certificate
from verifier.certificates.activation import LeafParameters, LeafRegion, _dense, float64_leaf_bounds
from verifier.checker.linear64 import apply
from verifier.checker.onnx_net import LINEAR_KINDS, read_network
from verifier.checker.splits import leaf_bounds, read_leaves, tree_error
from verifier.checker.verdict import check_certificate, check_files, decode_array, encode_array, spec_rows
from verifier.config import BabConfig, BoundsConfig, LpConfig

# One joint search for all conjunctions: the leaves prove every conjunction (the format
# of a conjunction-by-conjunction proof is tested in test_certificates_conjunctions.py).
ACTIVATION = Config(timeout=60, proof=True, bab=BabConfig(mode="activation", per_conjunction="off"))


def _is_split_run(r) -> bool:
    e = (r.proof or {}).get("disjuncts", [{}])[0]
    return r.verdict == "unsat" and e.get("kind") == "activation-split" and "leaves" in e and len(e["leaves"]) >= 6


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    """About 10-20 leaves, one joint search."""
    return find_activation_split_run(tmp_path_factory.mktemp("asplit"), ACTIVATION, _is_split_run)


def _leaves(cert: dict) -> dict:
    lv = cert["disjuncts"][0]["leaves"]
    out = {k: decode_array(lv[k], k) for k in ("counts", "splits", "betas", "claims")}
    out["splits"] = out["splits"].reshape(-1, 3)
    out["alphas"] = {k: {f: decode_array(v[f], f) for f in ("leaf", "index", "values")} for k, v in lv["alphas"].items()}
    out["relus"] = lv["relus"]
    return out


def _with(cert: dict, lv: dict) -> dict:
    out = copy.deepcopy(cert)
    out["disjuncts"][0]["leaves"] = {
        "relus": lv["relus"], **{k: encode_array(lv[k]) for k in ("counts", "splits", "betas", "claims")},
        "alphas": {k: {f: encode_array(a) for f, a in v.items()} for k, v in lv["alphas"].items()}}
    return out


def _drop_leaf(lv: dict, j: int) -> dict:
    off = np.concatenate([[0], np.cumsum(lv["counts"])]).astype(int)
    keep = np.ones(len(lv["splits"]), bool)
    keep[off[j]:off[j + 1]] = False
    out = {"relus": lv["relus"], "counts": np.delete(lv["counts"], j), "splits": lv["splits"][keep],
           "betas": lv["betas"][keep], "claims": np.delete(lv["claims"], j, 0), "alphas": {}}
    for k, v in lv["alphas"].items():
        m = v["leaf"] != j
        out["alphas"][k] = {"leaf": v["leaf"][m] - (v["leaf"][m] > j), "index": v["index"][m], "values": v["values"][m]}
    return out


def _engine_bounds(model, spec, lv: dict) -> np.ndarray:
    """Row bounds of every leaf by the engine in float64 (an oracle independent of the checker)."""
    C, d = spec_rows(spec.disjuncts[0])[:2]
    leaves = ActivationLeaves(lv["relus"], lv["counts"].astype(int), lv["splits"].astype(int), lv["betas"],
                              {k: (v["leaf"].astype(int), v["index"].astype(int), v["values"])
                               for k, v in lv["alphas"].items()}, lv["claims"])
    tensors = {n.name: n.inputs[0] for n in model.graph.nodes if n.op == "Relu"}
    shapes = {z: tuple(model.graph.shapes[z]) for z in tensors.values()}
    rows = np.arange(len(leaves))
    signs, betas, alphas = _dense(leaves, rows, tensors, shapes, C.shape[0])
    region = spec.disjuncts[0].region
    return float64_leaf_bounds(model, len(rows), LeafRegion(region.lower, region.upper), C, d,
                               LeafParameters(signs, betas, alphas))[0]


def _proves(lb: np.ndarray, spec) -> bool:
    C, d, strict, owner = spec_rows(spec.disjuncts[0])
    ok = np.where(strict, lb >= 0, lb > 0)
    return all(ok[:, owner == k].any(1).all() for k in range(len(spec.disjuncts[0].outputs)))


def test_activation_split_certificate_accepted(split_run, tmp_path) -> None:
    model, path, spec, result = split_run
    cert = build_certificate(model, path, spec, result)
    assert cert["disjuncts"][0]["kind"] == "activation-split"
    res = check_certificate_for(cert, model, path)
    assert res.accepted, res.reason
    assert res.info["disjuncts"][0]["leaves"] == len(result.proof["disjuncts"][0]["leaves"])
    cert_path = tmp_path / "c.json"
    assert write_certificate(cert_path, model, path, spec, result) == "written"
    assert check_files(cert_path, model.path, path).accepted
    other = tmp_path / "other.vnnlib"
    other.write_text(path.read_text() + " ")
    assert check_files(cert_path, model.path, other).reason.startswith("the spec file's sha256")
    swapped = json.loads(cert_path.read_text())
    swapped["model_sha256"], swapped["spec_sha256"] = swapped["spec_sha256"], swapped["model_sha256"]
    cert_path.write_text(json.dumps(swapped))
    assert check_files(cert_path, model.path, path).reason.startswith("the model file's sha256")


def test_recording_the_proof_does_not_change_the_search(split_run) -> None:
    """The search itself is the same; what a run without a certificate adds to it (LP
    refinement, the MILP beside it, optimised root intervals, root intervals in the domains)
    is switched off for the comparison."""
    model, path, spec, result = split_run
    plain = verify(model, spec, dataclasses.replace(ACTIVATION, proof=False, lp=LpConfig(refine=False, milp="off"),
                                                    bounds=BoundsConfig(optimise_intermediate=False),
                                                    bab=BabConfig(mode="activation", domain_intermediate="crown",
                                                                  open_rows=False, per_conjunction="off")))
    assert plain.verdict == "unsat" and plain.stats["domains"] == result.stats["domains"]
    assert plain.proof["disjuncts"][0]["certificate"].startswith("not recorded")
    assert build_certificate(model, path, spec, plain)["certificate"].startswith("not recorded")


def test_tree_tamperings_rejected(split_run) -> None:
    model, path, spec, result = split_run
    cert = build_certificate(model, path, spec, result)
    check = lambda c: check_certificate_for(c, model, path)  # noqa: E731
    lv = _leaves(cert)
    L = len(lv["counts"])
    for j in range(L):
        assert not check(_with(cert, _drop_leaf(lv, j))).accepted
    off = np.concatenate([[0], np.cumsum(lv["counts"])]).astype(int)
    for k in range(len(lv["splits"])):
        bad = copy.deepcopy(lv)
        bad["splits"][k, 2] *= -1
        assert not check(_with(cert, bad)).accepted, k
    bad = copy.deepcopy(lv)  # a leaf that splits one neuron twice
    j = int(np.argmax(lv["counts"]))
    bad["splits"][off[j] + 1] = bad["splits"][off[j]]
    assert not check(_with(cert, bad)).accepted
    bad = copy.deepcopy(lv)  # a split index outside its ReLU
    bad["splits"][0, 1] = 10_000
    assert "outside" in check(_with(cert, bad)).reason
    wrong = copy.deepcopy(cert)
    wrong["disjuncts"][0]["method"] = "crown"
    assert not check(wrong).accepted


def test_claim_and_beta_tamperings(split_run) -> None:
    model, path, spec, result = split_run
    cert = build_certificate(model, path, spec, result)
    check = lambda c: check_certificate_for(c, model, path)  # noqa: E731
    lv = _leaves(cert)
    rng = np.random.default_rng(0)
    for _ in range(20):
        bad = copy.deepcopy(lv)
        i, r = rng.integers(bad["claims"].shape[0]), rng.integers(bad["claims"].shape[1])
        bad["claims"][i, r] += (1 + abs(bad["claims"][i, r])) * rng.uniform(1e-2, 10)
        assert not check(_with(cert, bad)).accepted
    neg = copy.deepcopy(lv)
    neg["betas"][rng.integers(len(neg["betas"])), 0] = -1e-3
    assert "betas must be finite and >= 0" in check(_with(cert, neg)).reason
    huge = copy.deepcopy(lv)
    huge["betas"][:] = 1e4  # a multiplier this big swamps the bound: nothing is proved any more
    assert not _proves(_engine_bounds(model, spec, huge), spec)
    assert not check(_with(cert, huge)).accepted
    accepted = rejected = 0
    for _ in range(40):
        # Other betas, with claims an honest producer would write for them (the engine's bounds):
        # accepted exactly when those betas still prove every leaf.
        bad = copy.deepcopy(lv)
        mask = rng.random(bad["betas"].shape) < rng.choice([0.1, 0.5, 1.0])
        bad["betas"][mask] *= rng.choice([0.0, 0.9, 1.1, 3.0, 30.0])
        engine = _engine_bounds(model, spec, bad)
        bad["claims"] = np.minimum(bad["claims"], engine)
        ok = check(_with(cert, bad)).accepted
        near = np.min(np.abs(engine[np.isfinite(engine)])) < 1e-6
        assert ok == _proves(engine, spec) or near
        accepted += ok
        rejected += not ok
    assert accepted and rejected


def test_sampled_points_lie_in_a_leaf_and_above_its_bounds(split_run) -> None:
    """Soundness by sampling: every input satisfies some leaf's splits (coverage), and on it
    the spec rows are at least the checker's re-derived bounds for that leaf."""
    model, path, spec, result = split_run
    cert = build_certificate(model, path, spec, result)
    net = read_network(model.onnx_bytes)
    C, d = spec_rows(spec.disjuncts[0])[:2]
    leaves = read_leaves(cert["disjuncts"][0]["leaves"], net, C.shape[0], decode_array, ValueError)
    region = spec.disjuncts[0].region
    lb, _ = leaf_bounds(net, leaves, np.arange(len(leaves)), region.lower, region.upper, C, d)
    rng = np.random.default_rng(5)
    x = rng.uniform(region.lower, region.upper, (4000, region.lower.size))
    x[:200] = np.where(rng.random((200, x.shape[1])) < 0.5, region.lower, region.upper)  # corners
    vals = {net.input: x}
    for layer in net.layers:
        if layer.kind in LINEAR_KINDS:
            vals[layer.out] = apply(layer, vals[layer.inputs[0]]) + layer.b
        elif layer.kind == "relu":
            vals[layer.out] = np.maximum(vals[layer.inputs[0]], 0.0)
        else:
            vals[layer.out] = sum(c * vals[i] for i, c in zip(layer.inputs, layer.coefs))
    rows = vals[net.output] @ C.T - d
    inside = np.zeros(len(x), bool)
    for j, dec in enumerate(leaves.decisions):
        member = np.all([s * vals[z][:, i] >= 0 for (z, i), s in dec.items()], axis=0) if dec else np.ones(len(x), bool)
        inside |= member
        assert np.all(rows[member] >= lb[j] - 1e-9), j
    assert inside.all()


def _relu_net(path) -> bytes:
    """y = [relu(x), -relu(x)] + [0, 1] on one input: hand-checkable."""
    inits = [numpy_helper.from_array(np.ones((1, 1), np.float32), "W"),
             numpy_helper.from_array(np.array([[1.0, -1.0]], np.float32), "V"),
             numpy_helper.from_array(np.array([0.0, 1.0], np.float32), "c")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["z"], name="lin"), helper.make_node("Relu", ["z"], ["h"], name="r"),
             helper.make_node("Gemm", ["h", "V", "c"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path.read_bytes()


def test_empty_leaf_is_proved_and_a_live_one_is_not(tmp_path) -> None:
    data = _relu_net(tmp_path / "t.onnx")
    # unsat of y0 <= 0.5 needs relu(x) > 0.5: true for x in [1, 2]; the z <= 0 leaf is empty there.
    text = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n" \
           "(assert (>= X_0 {lo}))\n(assert (<= X_0 2.0))\n(assert (<= Y_0 0.5))\n"
    cert = {"format": "nncert-certificate", "version": 1, "verdict": "unsat", "disjuncts": [{
        "root": {"lower": [1.0], "upper": [2.0]}, "kind": "activation-split", "method": "beta-crown",
        "leaves": {"relus": ["r"], "counts": [1, 1], "splits": [[0, 0, 1], [0, 0, -1]], "betas": [[0.0], [0.0]],
                   "claims": [[0.5], [float("inf")]], "alphas": {}}}]}
    cert["disjuncts"][0]["leaves"]["claims"] = encode_array(np.array([[0.5], [np.inf]]))
    res = check_certificate(cert, data, text.format(lo="1.0"))
    assert res.accepted, res.reason
    assert res.info["disjuncts"][0]["empty_leaves"] == 1
    live = copy.deepcopy(cert)
    live["disjuncts"][0]["root"]["lower"] = [-1.0]
    assert "not proved" in check_certificate(live, data, text.format(lo="-1.0")).reason
    half = copy.deepcopy(cert)  # only the empty leaf: the z >= 0 side is not covered
    half["disjuncts"][0]["leaves"].update(counts=[1], splits=[[0, 0, -1]], betas=[[0.0]], claims=[[0.0]])
    assert "no leaf covers" in check_certificate(half, data, text.format(lo="1.0")).reason


def test_tree_error_on_hand_made_trees() -> None:
    a, b, c = ("z", 0), ("z", 1), ("w", 0)
    full = [{a: 1, b: 1}, {a: 1, b: -1}, {a: -1, c: 1}, {a: -1, c: -1}]
    assert tree_error(full) == ""
    assert tree_error([{}]) == ""
    assert tree_error([{b: 1, a: 1}, {a: -1}, {b: -1, a: 1}]) == ""  # the order of decisions is free
    assert tree_error(full[:3]) != ""
    assert tree_error([{a: 1, b: 1}, {a: 1, b: -1}, {a: -1, b: 1}, {a: -1, c: -1}]) != ""  # children differ
    assert tree_error([{a: 1}, {b: -1}]) != ""
    assert tree_error([]) == "no leaves"


@needs_shared
def test_mnist_activation_split_certificate_end_to_end(tmp_path) -> None:
    net, prop = BENCH / "2022_mnist_fc/onnx/mnist-net_256x2.onnx", BENCH / "2022_mnist_fc/vnnlib/prop_4_0.03.vnnlib"
    model = load_model(net)
    spec = vnnlib.load(prop, model.n_inputs, model.n_outputs)
    result = verify(model, spec, Config(timeout=60, proof=True, bab=BabConfig(per_conjunction="off")))
    assert result.verdict == "unsat" and result.proof["disjuncts"][0]["kind"] == "activation-split"
    cert_path = tmp_path / "c.json"
    assert write_certificate(cert_path, model, prop, spec, result) == "written"
    res = check_files(cert_path, net, prop)
    assert res.accepted, res.reason
    cert = json.loads(cert_path.read_text())
    lv = _leaves(cert)
    check = lambda c: check_certificate(c, model.onnx_bytes, prop.read_text())  # noqa: E731
    assert not check(_with(cert, _drop_leaf(lv, 0))).accepted
    bad = copy.deepcopy(lv)
    bad["claims"][0, 0] += 1.0
    assert not check(_with(cert, bad)).accepted
