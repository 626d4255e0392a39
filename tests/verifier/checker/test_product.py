"""Certificates of VNN-LIB 2.0 queries over several networks: `verify --certificate`
names each network's file by hash, and `nncert check --network NAME=PATH ...` checks it
on the checker's own side-by-side network (verifier/checker/product.py): unsat proofs
and sat counterexamples of equal-to copies, two different networks, hidden nodes and
rows that mix inputs with outputs are accepted; edited files, forged claims and what the
checker cannot read are rejected."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.builders import normalised_mlp_onnx
from verifier import check
from verifier.checker.onnx_net import read_network
from verifier.checker.product import product_network
from verifier.checker.verdict import decode_array, encode_array
from verifier.cli import main
from vnnlib.standard import vendor_dir

needs_parser = pytest.mark.skipif(not (vendor_dir() / "vnnlib" / "__init__.py").is_file(),
                                  reason="the standard's VNN-LIB parser is not installed beside the venv "
                                         "(`make` installs it into .venv/nncert-vendor)")

BOX = "".join(f"(assert (>= {v}[0,{i}] 0.0)) (assert (<= {v}[0,{i}] 1.0))\n" for v in ("X", "X2") for i in (0, 1))
F = "(declare-network f (declare-input X float32 [1,2]) (declare-output Y float32 [1,2]))\n"
COPY = "(declare-network g (equal-to f) (declare-input X2 float32 [1,2]) (declare-output Y2 float32 [1,2]))\n"
OTHER = "(declare-network h (declare-input X2 float32 [1,2]) (declare-output Y2 float32 [1,2]))\n"
TIED = "(assert (== X[0,0] X2[0,0])) (assert (== X[0,1] X2[0,1]))\n"
NEAR = "(assert (== X[0,1] X2[0,1])) (assert (<= X[0,0] (+ X2[0,0] 0.05))) (assert (>= X[0,0] (- X2[0,0] 0.05)))\n"


@pytest.fixture()
def nets(tmp_path):
    """Two 2-16-16-2 ReLU MLPs with unnamed nodes (named by place, as importers do), and
    the grid extremes of y0(f) - y0(h) over [0, 1]^2."""
    import onnxruntime as ort

    f = normalised_mlp_onnx(tmp_path / "f.onnx", [2, 16, 16, 2], 0)
    h = normalised_mlp_onnx(tmp_path / "h.onnx", [2, 16, 16, 2], 1)
    g = np.linspace(0, 1, 101, dtype=np.float32)
    pts = np.stack(np.meshgrid(g, g), -1).reshape(-1, 1, 2)
    runs = [ort.InferenceSession(str(p)) for p in (f, h)]
    y = [np.concatenate([s.run(None, {"x": p})[0] for p in pts])[:, 0] for s in runs]
    return f, h, float((y[0] - y[1]).min()), float((y[0] - y[1]).max())


def _query(tmp_path: Path, name: str, *parts: str) -> Path:
    path = tmp_path / f"{name}.vnnlib"
    path.write_text("(vnnlib-version <2.0>)\n" + "".join(parts))
    return path


def _verify_and_check(capsys, query: Path, files: dict[str, Path], cert: Path) -> tuple[str, object]:
    pairs = [a for name, path in files.items() for a in ("--network", f"{name}={path}")]
    assert main(["verify", str(query), *pairs, "--timeout", "30", "--certificate", str(cert)]) == 0
    verdict = capsys.readouterr().out.splitlines()[0]
    return verdict, check(cert, files, query)


@needs_parser
def test_two_networks_unsat_and_sat_are_accepted(tmp_path, nets, capsys):
    f, h, low, high = nets
    files = {"f": f, "h": h}
    unsat = _query(tmp_path, "unsat", F, OTHER, BOX, TIED, f"(assert (>= (- Y[0,0] Y2[0,0]) {high + 0.02:.4f}))\n")
    verdict, result = _verify_and_check(capsys, unsat, files, tmp_path / "unsat.json")
    assert verdict == "unsat" and result.accepted, result
    cert = json.loads((tmp_path / "unsat.json").read_text())
    assert set(cert["networks"]) == {"f", "h"} and "model_sha256" not in cert
    sat = _query(tmp_path, "sat", F, OTHER, BOX, TIED, f"(assert (>= (- Y[0,0] Y2[0,0]) {high - 0.01:.4f}))\n")
    verdict, result = _verify_and_check(capsys, sat, files, tmp_path / "sat.json")
    assert verdict == "sat" and result.accepted, result
    # The CLI agrees, and wants the networks by name.
    assert main(["check", str(tmp_path / "unsat.json"), "--network", f"f={f}", "--network", f"h={h}",
                 "--spec", str(unsat)]) == 0
    assert capsys.readouterr().out.strip() == "accepted"
    assert main(["check", str(tmp_path / "unsat.json"), "--model", str(f), "--spec", str(unsat)]) == 2
    assert "give each as --network NAME=PATH" in capsys.readouterr().err


@needs_parser
def test_equal_to_copies_hidden_nodes_and_mixed_rows(tmp_path, nets, capsys):
    """An equal-to copy (one file) with inputs near each other, and one network whose
    hidden tensor (behind no alias) and input appear in the property's rows."""
    f = nets[0]
    near = _query(tmp_path, "near", F, COPY, BOX, NEAR, "(assert (>= (- Y[0,0] Y2[0,0]) 0.2))\n")
    verdict, result = _verify_and_check(capsys, near, {"f": f}, tmp_path / "near.json")
    assert verdict == "unsat" and result.accepted, result
    hidden = ("(declare-network f (declare-input X float32 [1,2]) (declare-hidden H float32 [1,16] \"h1\") "
              "(declare-output Y float32 [1,2]))\n")
    box = "".join(f"(assert (>= X[0,{i}] 0.0)) (assert (<= X[0,{i}] 1.0))\n" for i in (0, 1))
    for threshold, want in (("5.0", "unsat"), ("0.0", "sat")):
        q = _query(tmp_path, f"hidden{want}", hidden, box,
                   f"(assert (or (>= H[0,3] {threshold}) (>= (+ Y[0,0] X[0,1]) 1.5)))\n")
        verdict, result = _verify_and_check(capsys, q, {"f": f}, tmp_path / f"hidden{want}.json")
        assert verdict == want and result.accepted, (want, result)


@needs_parser
def test_edited_files_and_forged_claims_are_rejected(tmp_path, nets, capsys):
    f, h, low, high = nets
    q = _query(tmp_path, "q", F, OTHER, BOX, TIED, f"(assert (>= (- Y[0,0] Y2[0,0]) {high + 0.02:.4f}))\n")
    cert = tmp_path / "q.json"
    verdict, result = _verify_and_check(capsys, q, {"f": f, "h": h}, cert)
    assert verdict == "unsat" and result.accepted
    # The networks swapped: each file's hash is checked under its name.
    swapped = check(cert, {"f": h, "h": f}, q)
    assert not swapped.accepted and "network f's file has another sha256" in swapped.reason
    # A claim raised past what the checker derives (2 inputs and a tie: input split or bounds alone).
    data = json.loads(cert.read_text())
    entry = data["disjuncts"][0]
    holder = entry["leaves"] if entry["kind"] == "input-split" else entry
    assert entry["kind"] in ("input-split", "bounds")
    holder["claims"] = encode_array(decode_array(holder["claims"], "claims") + 10.0)
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(data))
    result = check(forged, {"f": f, "h": h}, q)
    assert not result.accepted and "exceeds the re-derived" in result.reason, result
    # A sat certificate whose counterexample does not meet the property.
    sat = {"format": "nncert-certificate", "version": 1, "verdict": "sat", "networks": data["networks"],
           "spec_sha256": data["spec_sha256"], "counterexample": {"x": [0.5, 0.5]}}
    (tmp_path / "sat.json").write_text(json.dumps(sat))
    result = check(tmp_path / "sat.json", {"f": f, "h": h}, q)
    assert not result.accepted and "do not hold" in result.reason


@needs_parser
def test_products_of_variables_are_checked(tmp_path, nets, capsys):
    """POLY: the checker's side-by-side network has a `mul` layer per product (McCormick's
    planes), and the unsat certificate of a squared-norm bound is accepted, its sat too."""
    f = nets[0]
    box = "".join(f"(assert (>= X[0,{i}] 0.0)) (assert (<= X[0,{i}] 1.0))\n" for i in (0, 1))
    for t, want in (("5.0", "unsat"), ("0.001", "sat")):
        q = _query(tmp_path, f"poly{want}", F, box, f"(assert (>= (+ (* Y[0,0] Y[0,0]) (* X[0,0] Y[0,1])) {t}))\n")
        verdict, result = _verify_and_check(capsys, q, {"f": f}, tmp_path / f"poly{want}.json")
        assert verdict == want and result.accepted, (want, result)


def test_the_checker_bounds_a_product_soundly():
    """The `mul` layer's interval and CROWN lines hold on sampled points of random boxes,
    both directions, and the lines are McCormick's: exact where a factor is a point."""
    from verifier.checker.bounds64 import interval_table, row_lower_bounds
    from verifier.checker.onnx_net import Layer, Network

    pick = [np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])]
    layers = (Layer("affine", "a", ("X",), "a", W=pick[0], b=np.zeros(1)),
              Layer("affine", "b", ("X",), "b", W=pick[1], b=np.zeros(1)),
              Layer("mul", "p", ("a", "b"), "p"))
    net = Network("X", "p", (1, 2), 1, layers, {"X": 2, "a": 1, "b": 1, "p": 1})
    rng = np.random.default_rng(0)
    lo = rng.uniform(-2, 1, (50, 2))
    hi = lo + rng.uniform(0, 2, (50, 2))
    hi[0, 0] = lo[0, 0]                          # a point factor
    table = interval_table(net, lo, hi)
    C, d = np.array([[1.0], [-1.0]]), np.zeros(2)
    lb = row_lower_bounds(net, table, C, d)
    u = rng.random((2000, 1, 2))
    xs = lo[None] + (hi - lo)[None] * u           # [2000, 50, 2]
    prod = xs[..., 0] * xs[..., 1]
    assert np.all(table["p"][0][:, 0] <= prod.min(0) + 1e-12) and np.all(prod.max(0) <= table["p"][1][:, 0] + 1e-12)
    assert np.all(lb[:, 0] <= prod.min(0) + 1e-12) and np.all(lb[:, 1] <= -prod.max(0) + 1e-12)
    c = lo[0, 0]                                  # box 0: z = c x1 exactly
    assert lb[0, 0] == pytest.approx(min(c * lo[0, 1], c * hi[0, 1]), abs=1e-9)


def test_the_side_by_side_network_computes_each_network(tmp_path):
    """product_network on two networks and a tied input, evaluated layer by layer in
    float64, equals each network run alone (the placement of y and the prefixes)."""
    from vnnlib.query import parse_query

    f = normalised_mlp_onnx(tmp_path / "f.onnx", [2, 8, 2], 0)
    h = normalised_mlp_onnx(tmp_path / "h.onnx", [2, 8, 2], 1)
    text = ("(vnnlib-version <2.0>)\n" + F + OTHER + BOX + "(assert (== X[0,1] X2[0,1]))\n"
            "(assert (>= Y[0,0] Y2[0,1]))\n")
    query = parse_query(text, "q.vnnlib")
    nf, nh = read_network(f.read_bytes()), read_network(h.read_bytes())
    net = product_network(query, {"f": nf, "h": nh})
    assert net.n_in == 3 and net.n_out == 4
    assert {l.name for l in net.layers if l.kind == "relu"} == {"n0_" + l.name for l in nf.layers
                                                                if l.kind == "relu"} | \
        {"n1_" + l.name for l in nh.layers if l.kind == "relu"}

    def run(network, x):
        from verifier.checker.linear64 import apply

        vals = {network.input: np.asarray(x, np.float64)}
        for layer in network.layers:
            if layer.kind == "relu":
                vals[layer.out] = np.maximum(vals[layer.inputs[0]], 0)
            elif layer.kind == "sum":
                vals[layer.out] = sum(c * vals[i] for c, i in zip(layer.coefs, layer.inputs))
            else:
                vals[layer.out] = apply(layer, vals[layer.inputs[0]])
        return vals[network.output]

    x = np.array([0.3, 0.7, 0.9])    # X = (0.3, 0.7), X2 = (0.9, 0.7): X2[0,1] is X[0,1]'s entry
    y = run(net, x)
    np.testing.assert_allclose(y[:2], run(nf, x[[0, 1]]), rtol=1e-12)
    np.testing.assert_allclose(y[2:], run(nh, x[[2, 1]]), rtol=1e-12)


@needs_parser
def test_bad_input_is_exit_2_not_an_internal_error(tmp_path, nets, capsys):
    """A hidden node the network's file does not produce, and a certificate whose
    `networks` is not a mapping checked with --model: one line on stderr, exit 2."""
    import hashlib

    f = nets[0]
    hidden = ("(declare-network f (declare-input X float32 [1,2]) (declare-hidden H float32 [1,16] \"zz\") "
              "(declare-output Y float32 [1,2]))\n")
    box = "".join(f"(assert (>= X[0,{i}] 0.0)) (assert (<= X[0,{i}] 1.0))\n" for i in (0, 1))
    q = _query(tmp_path, "zz", hidden, box, "(assert (>= H[0,3] 0.0))\n")
    cert = {"format": "nncert-certificate", "version": 1, "verdict": "sat",
            "networks": {"f": hashlib.sha256(f.read_bytes()).hexdigest()},
            "spec_sha256": hashlib.sha256(q.read_bytes()).hexdigest(), "counterexample": {"x": [0.5, 0.5]}}
    path = tmp_path / "zz.json"
    path.write_text(json.dumps(cert))
    assert main(["check", str(path), "--network", f"f={f}", "--spec", str(q)]) == 2
    assert "names 'zz', which no node of" in capsys.readouterr().err
    path.write_text(json.dumps({**cert, "networks": 5}))
    assert main(["check", str(path), "--model", str(f), "--spec", str(q)]) == 2
    assert "give each as --network NAME=PATH" in capsys.readouterr().err


def _two_by_two(path: Path) -> Path:
    """A network with two inputs X1, X2 [1,2] and two outputs: r = relu(X1 W1 + X2 W2),
    Y1 = r V1 [1,3] and Y2 = r V2 [1,1] (unnamed nodes, read by place)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    consts = {n: rng.standard_normal(s).astype(np.float32) for n, s in
              (("W1", (2, 6)), ("W2", (2, 6)), ("V1", (6, 3)), ("V2", (6, 1)))}
    nodes = [helper.make_node("MatMul", ["X1", "W1"], ["a"]), helper.make_node("MatMul", ["X2", "W2"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "V1"], ["Y1"]), helper.make_node("MatMul", ["r", "V2"], ["Y2"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2])
                                             for n in ("X1", "X2")],
                              [helper.make_tensor_value_info("Y1", TensorProto.FLOAT, [1, 3]),
                               helper.make_tensor_value_info("Y2", TensorProto.FLOAT, [1, 1])],
                              [numpy_helper.from_array(v, n) for n, v in consts.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


@needs_parser
def test_a_network_with_two_inputs_and_two_outputs(tmp_path, capsys):
    """Unsat and sat certificates of a query over a network with two inputs and two
    outputs are accepted: the checker reads each input and output by its place."""
    import onnxruntime as ort

    f = _two_by_two(tmp_path / "two.onnx")
    sess = ort.InferenceSession(str(f))
    g = np.random.default_rng(0).random((4000, 2, 2)).astype(np.float32)
    peak = max(float(sess.run(None, {"X1": p[:1], "X2": p[1:]})[0][0, 0]) for p in g)
    head = ("(declare-network f (declare-input A float32 [1,2]) (declare-input B float32 [1,2]) "
            "(declare-output P float32 [1,3]) (declare-output Q float32 [1,1]))\n")
    box = "".join(f"(assert (>= {v}[0,{i}] 0.0)) (assert (<= {v}[0,{i}] 1.0))\n" for v in "AB" for i in (0, 1))
    for name, t, want in (("unsat", peak * 1.5 + 1.0, "unsat"), ("sat", peak * 0.9, "sat")):
        q = _query(tmp_path, name, head, box, f"(assert (>= (+ P[0,0] (* 0.0 Q[0,0])) {t:.4f}))\n")
        verdict, result = _verify_and_check(capsys, q, {"f": f}, tmp_path / f"{name}.json")
        assert verdict == want and result.accepted, (name, result)


@needs_parser
def test_a_file_whose_inputs_do_not_fit_the_query_is_bad_input(tmp_path, capsys):
    """An input declared with another number of elements than the file's: one line,
    exit 2, for a sat and an unsat alike (a sat reached onnxruntime's reshape before)."""
    import hashlib

    f = _two_by_two(tmp_path / "two.onnx")
    head = ("(declare-network f (declare-input A float32 [1,2]) (declare-input B float32 [1,3]) "
            "(declare-output P float32 [1,3]) (declare-output Q float32 [1,1]))\n")
    box = "".join(f"(assert (>= {v}[0,{i}] 0.0)) (assert (<= {v}[0,{i}] 1.0))\n" for v, n in (("A", 2), ("B", 3))
                  for i in range(n))
    q = _query(tmp_path, "misfit", head, box, "(assert (>= P[0,0] -100.0))\n")
    base = {"format": "nncert-certificate", "version": 1, "networks": {"f": hashlib.sha256(f.read_bytes()).hexdigest()},
            "spec_sha256": hashlib.sha256(q.read_bytes()).hexdigest()}
    for extra in ({"verdict": "sat", "counterexample": {"x": [0.5] * 5}}, {"verdict": "unsat", "disjuncts": []}):
        path = tmp_path / "misfit.json"
        path.write_text(json.dumps({**base, **extra}))
        assert main(["check", str(path), "--network", f"f={f}", "--spec", str(q)]) == 2
        assert "B of network f has 3 elements" in capsys.readouterr().err
