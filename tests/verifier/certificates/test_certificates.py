"""Verdict certificates: real runs are accepted, every tampering that breaks them is rejected."""
from __future__ import annotations

import ast
import copy
import json
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import vnnlib
from tests.builders import check_certificate_for, normalised_mlp_onnx
from tests.conftest import BENCH, needs_shared
from verifier import Config, Result, load_model, verify
from verifier.certificates.writer import (_evaluate, _float64_claims, _proved_leaves, _refine, _refine_alpha,
                                          build_certificate, write_certificate)
from verifier.certificates.writer import _rows as writer_rows
from verifier.checker.bounds64 import interval_table
from verifier.checker.onnx_net import read_network
from verifier.checker.verdict import check_certificate, check_files, decode_array, encode_array, spec_rows
from verifier.cli import main
from verifier.config import BabConfig

CHECKER = Path(__file__).resolve().parents[3] / "verifier" / "checker"


def _instance(tmp: Path, sizes: list[int], seed: int, eps: tuple[float, float], want, config: Config):
    """A run satisfying `want(result)`, by bisecting eps between a proved and an unproved radius.

    Near the largest provable radius the proofs are the hardest: many input-split
    leaves, or alpha-CROWN where CROWN falls short. Returns (model, spec path, spec, result).
    """
    model = load_model(normalised_mlp_onnx(tmp / f"net{seed}.onnx", sizes, seed))
    x0 = np.random.default_rng(seed).uniform(0.2, 0.8, sizes[0])
    label = int(np.argmax(model.run_onnxruntime(x0.astype(np.float32))))
    lo, hi = eps
    found = None
    for k in range(7):
        mid = lo if k == 0 else (lo + hi) / 2
        path = tmp / f"spec{seed}_{k}.vnnlib"
        vnnlib.write_vnnlib(path, vnnlib.robustness_spec(x0, mid, label, sizes[-1]))
        spec = vnnlib.load(path, model.n_inputs, model.n_outputs)
        result = verify(model, spec, config)
        if result.verdict == "unsat":
            lo = mid
            if want(result):
                found = (model, path, spec, result)
        elif k:
            hi = mid
    if found is None:
        pytest.skip(reason=f"no radius in {eps} gives the wanted run")
    return found


def _leaves(cert: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lv = cert["disjuncts"][0]["leaves"]
    return (decode_array(lv["lower"], ""), decode_array(lv["upper"], ""), decode_array(lv["claims"], ""))


def _with_leaves(cert: dict, lo: np.ndarray, hi: np.ndarray, claims: np.ndarray) -> dict:
    """The certificate with other leaves; per-leaf alphas kept when the number of leaves is unchanged."""
    out = copy.deepcopy(cert)
    old = out["disjuncts"][0]["leaves"]
    out["disjuncts"][0]["leaves"] = {"lower": encode_array(lo), "upper": encode_array(hi),
                                     "claims": encode_array(claims)}
    if "alphas" in old and len(lo) == len(decode_array(old["claims"], "")):
        out["disjuncts"][0]["leaves"]["alphas"] = old["alphas"]
    return out


def _tiling_tamperings(cert: dict, check, rng: np.random.Generator, n: int) -> None:
    """Dropping a leaf, moving one leaf face, shrinking the root: rejected every time."""
    lo, hi, cl = _leaves(cert)
    L = len(lo)
    for _ in range(n):
        if L > 1:
            i = rng.integers(L)
            keep = np.arange(L) != i
            assert not check(_with_leaves(cert, lo[keep], hi[keep], cl[keep])).accepted
        i, k = rng.integers(L), rng.integers(lo.shape[1])
        width = hi[i, k] - lo[i, k]
        if width > 0:
            lo2, hi2 = lo.copy(), hi.copy()
            side = hi2 if rng.random() < 0.5 else lo2
            side[i, k] += rng.choice([-1, 1]) * width * rng.uniform(1e-9, 0.5)
            assert not check(_with_leaves(cert, lo2, hi2, cl)).accepted
        shrunk = copy.deepcopy(cert)
        root = shrunk["disjuncts"][0]["root"]
        k = rng.integers(len(root["lower"]))
        w = root["upper"][k] - root["lower"][k]
        root["lower"][k] += w * rng.uniform(1e-6, 0.5) if w > 0 else 1e-6
        assert not check(shrunk).accepted


def _claim_tamperings(cert: dict, check, rng: np.random.Generator, n: int) -> None:
    """Raising one claimed bound clearly above what can be derived is rejected."""
    entry = cert["disjuncts"][0]
    for _ in range(n):
        bad = copy.deepcopy(cert)
        if entry["kind"] == "bounds":
            cl = decode_array(entry["claims"], "")
            j = rng.integers(cl.size)
            cl[j] += (1 + abs(cl[j])) * rng.uniform(1e-2, 10)
            bad["disjuncts"][0]["claims"] = encode_array(cl)
        else:
            lo, hi, cl = _leaves(cert)
            i, j = rng.integers(cl.shape[0]), rng.integers(cl.shape[1])
            cl[i, j] += (1 + abs(cl[i, j])) * rng.uniform(1e-2, 10)
            bad = _with_leaves(cert, lo, hi, cl)
        assert not check(bad).accepted


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("split")
    return _instance(tmp, [3, 32, 32, 32, 3], 3, (0.125, 0.25),
                     lambda r: r.verdict == "unsat" and r.proof["disjuncts"][0]["kind"] == "input-split"
                     and len(r.proof["disjuncts"][0]["claims"]) > 8, Config(timeout=30, proof=True))


def test_input_split_certificate_accepted_and_tamperings_rejected(split_run) -> None:
    model, path, spec, result = split_run
    cert = build_certificate(model, path, spec, result)
    check = lambda c: check_certificate_for(c, model, path)  # noqa: E731
    assert check(cert).accepted, check(cert).reason
    rng = np.random.default_rng(0)
    _tiling_tamperings(cert, check, rng, 250)   # three tamperings each: 750 in all
    _claim_tamperings(cert, check, rng, 250)


def _sibling_hulls(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leaves with each pair of siblings (boxes that differ in one dimension, where they
    touch) replaced by their hull: the same tiling of the root in fewer, larger leaves."""
    taken, out_lo, out_hi = set(), [], []
    for i in range(len(lo)):
        if i in taken:
            continue
        taken.add(i)
        a, b = lo[i], hi[i]
        for j in range(i + 1, len(lo)):
            diff = np.nonzero((lo[i] != lo[j]) | (hi[i] != hi[j]))[0]
            if j not in taken and len(diff) == 1 and (hi[i][diff[0]] == lo[j][diff[0]] or hi[j][diff[0]] == lo[i][diff[0]]):
                taken.add(j)
                a, b = np.minimum(lo[i], lo[j]), np.maximum(hi[i], hi[j])
                break
        out_lo.append(a)
        out_hi.append(b)
    return np.array(out_lo), np.array(out_hi)


@pytest.mark.parametrize("method", ["alpha-crown", "crown"])
def test_unproved_leaves_get_alphas_or_halves(split_run, method: str) -> None:
    """Leaves that the float64 re-derivation does not prove with the search's slopes get
    alphas optimised in float64 (alpha-CROWN proofs), and those still unproved are
    bisected, until every leaf is proved: here the search's alphas are dropped and
    sibling leaves merged, so that CROWN's default slopes leave some leaves unproved and
    some hulls need halving. The rounds reuse the bounds of the checker's chunks that no
    change touched: the claims must be what a fresh evaluation of the final leaves (with
    their alphas) gives, to the bit."""
    model, path, spec, result = split_run
    changed = copy.deepcopy(result)
    entry = changed.proof["disjuncts"][0]
    entry["lower"], entry["upper"] = _sibling_hulls(np.asarray(entry["lower"]), np.asarray(entry["upper"]))
    entry["alphas"] = {}
    entry["method"] = method
    assert len(entry["lower"]) < len(result.proof["disjuncts"][0]["lower"])
    cert = build_certificate(model, path, spec, changed)
    report = check_certificate_for(cert, model, path)
    assert report.accepted, report.reason
    assert cert["disjuncts"][0]["method"] == method
    assert len(_leaves(cert)[0]) > len(entry["lower"]), "no leaf was bisected"
    disjunct = spec.disjuncts[0]
    lo, hi = np.asarray(entry["lower"], float), np.asarray(entry["upper"], float)
    if method == "alpha-crown":
        assert cert["disjuncts"][0]["leaves"]["alphas"], "no leaf needed optimised alphas"
        lo, hi, claims, alphas = _refine_alpha(model, lo, hi, {}, disjunct)
        assert np.array_equal(_evaluate(model, lo, hi, disjunct, alphas)[0], claims)
    else:
        lo, hi, claims = _refine(model, lo, hi, disjunct)
        C, d = spec_rows(disjunct)[:2]
        assert np.array_equal(_float64_claims(model, lo, hi, C, d, rows=writer_rows(disjunct)), claims)


def test_input_split_alpha_certificate_and_changed_alphas(split_run) -> None:
    """Input split with alpha-CROWN: per-leaf alphas are replayed, never trusted."""
    model, path, spec, result = split_run
    assert result.proof["disjuncts"][0]["method"] == "alpha-crown" and result.proof["disjuncts"][0]["alphas"]
    cert = build_certificate(model, path, spec, result)
    check = lambda c: check_certificate_for(c, model, path)  # noqa: E731
    entry = cert["disjuncts"][0]
    assert entry["method"] == "alpha-crown" and check(cert).accepted, check(cert).reason
    plain = copy.deepcopy(cert)
    del plain["disjuncts"][0]["leaves"]["alphas"]  # CROWN's default slopes do not prove every leaf here
    assert "is not proved on leaf" in check(plain).reason
    bad = copy.deepcopy(cert)
    name = next(iter(entry["leaves"]["alphas"]))
    bad["disjuncts"][0]["leaves"]["alphas"][name]["values"] = {"dtype": "float64", "shape": [1],
                                                               "base64": "AAAAAAAA+H8="}
    assert not check(bad).accepted
    bad["disjuncts"][0]["leaves"]["alphas"] = {"no_such_relu": entry["leaves"]["alphas"][name]}
    assert not check(bad).accepted
    dj = spec.disjuncts[0]
    lo, hi, claims = _leaves(cert)
    sparse = {k: tuple(decode_array(v[x], "") for x in ("leaf", "index", "values"))
              for k, v in entry["leaves"]["alphas"].items()}
    rng = np.random.default_rng(4)
    rejected = 0
    for _ in range(30):
        j = rng.integers(len(lo))
        tampered = {k: (l.astype(int), i.astype(int), np.where((l == j)[:, None] & (rng.random(v.shape) < 0.7),
                                                                rng.uniform(-0.5, 1.5, v.shape), v))
                    for k, (l, i, v) in sparse.items()}
        bad = copy.deepcopy(cert)
        bad["disjuncts"][0]["leaves"]["alphas"] = {
            k: {"leaf": encode_array(l), "index": encode_array(i), "values": encode_array(v)}
            for k, (l, i, v) in tampered.items()}
        engine = _evaluate(model, lo, hi, dj, tampered)[0]
        proves = bool(_proved_leaves(engine, dj).all())
        near = np.min(np.abs(engine)) < 1e-6
        if check(bad).accepted:
            assert (proves and (claims <= engine + 1e-4 * (1 + np.abs(engine))).all()) or near
        else:
            rejected += 1
            assert not proves or (claims > engine + 1e-5).any() or near
    assert rejected


def test_hash_mismatch_rejected(split_run, tmp_path) -> None:
    model, path, spec, result = split_run
    cert_path = tmp_path / "c.json"
    assert write_certificate(cert_path, model, path, spec, result) == "written"
    assert check_files(cert_path, model.path, path).accepted
    other = normalised_mlp_onnx(tmp_path / "other.onnx", [3, 32, 32, 32, 3], 2)
    assert check_files(cert_path, other, path).reason.startswith("the model file's sha256")
    spec2 = tmp_path / "s.vnnlib"
    spec2.write_text(path.read_text() + "\n")
    assert check_files(cert_path, model.path, spec2).reason.startswith("the spec file's sha256")


def test_alpha_certificate_and_changed_alphas(tmp_path) -> None:
    config = Config(timeout=30, proof=True, bab=BabConfig(enabled=False))
    model, path, spec, result = _instance(tmp_path, [3, 32, 32, 32, 3], 3, (0.125, 0.1875),
                                          lambda r: r.verdict == "unsat" and r.method == "alpha-crown", config)
    cert = build_certificate(model, path, spec, result)
    check = lambda c: check_certificate_for(c, model, path)  # noqa: E731
    assert check(cert).accepted, check(cert).reason
    rng = np.random.default_rng(1)
    _claim_tamperings(cert, check, rng, 50)
    C, d, strict, owner = spec_rows(spec.disjuncts[0])
    claims = decode_array(cert["disjuncts"][0]["claims"], "")
    region = spec.disjuncts[0].region
    names = list(cert["disjuncts"][0]["alphas"])
    accepted = rejected = 0
    for _ in range(100):
        bad = copy.deepcopy(cert)
        alphas = {k: decode_array(v, "") for k, v in bad["disjuncts"][0]["alphas"].items()}
        a = alphas[names[rng.integers(len(names))]]
        mask = rng.random(a.shape) < rng.choice([0.05, 0.3, 1.0])
        a[mask] = rng.uniform(-0.5, 1.5, mask.sum())
        bad["disjuncts"][0]["alphas"] = {k: encode_array(v) for k, v in alphas.items()}
        engine = _float64_claims(model, region.lower[None], region.upper[None], C, d, alphas)[0]
        ok = check(bad).accepted
        proves = all(np.where(strict, engine >= 0, engine > 0)[owner == k].any() for k in range(len(spec.disjuncts[0].outputs)))
        if ok:
            accepted += 1
            assert proves or np.min(np.abs(engine)) < 1e-6
        else:
            rejected += 1
            assert not proves or (claims > engine + 1e-5).any() or np.min(np.abs(engine)) < 1e-6
    nan = copy.deepcopy(cert)
    nan["disjuncts"][0]["alphas"][names[0]] = {"dtype": "float64", "shape": [1], "base64": "AAAAAAAA+H8="}
    assert not check(nan).accepted
    assert accepted + rejected == 100 and accepted and rejected


def test_sat_certificate_replayed_and_tamperings_rejected(tmp_path) -> None:
    model = load_model(normalised_mlp_onnx(tmp_path / "sat.onnx", [3, 12, 12, 3], 5))
    x0 = np.full(3, 0.5)
    label = int(np.argmax(model.run_onnxruntime(x0.astype(np.float32))))
    path = tmp_path / "sat.vnnlib"
    vnnlib.write_vnnlib(path, vnnlib.robustness_spec(x0, 2.0, label, 3))
    spec = vnnlib.load(path, 3, 3)
    result = verify(model, spec, Config(timeout=30, proof=True))
    assert result.verdict == "sat"
    cert = build_certificate(model, path, spec, result)
    check = lambda c: check_certificate_for(c, model, path)  # noqa: E731
    assert check(cert).accepted, check(cert).reason
    json.loads(json.dumps(cert))  # plain JSON
    region = spec.disjuncts[0].region
    x = np.array(cert["counterexample"]["x"])
    rng = np.random.default_rng(2)
    for _ in range(100):
        bad = copy.deepcopy(cert)
        k = rng.integers(x.size)
        moved = x.copy()
        moved[k] = float(np.nextafter(np.float32(region.upper[k]), np.float32(np.inf))) + rng.uniform(0, 1) \
            if rng.random() < 0.5 else float(np.nextafter(np.float32(region.lower[k]), np.float32(-np.inf)))
        moved[k] = float(np.float32(moved[k]))
        bad["counterexample"]["x"] = moved.tolist()
        if not region.contains(moved):
            assert not check(bad).accepted
    center = ((region.lower + region.upper) / 2).astype(np.float32)
    bad = copy.deepcopy(cert)
    bad["counterexample"]["x"] = [float(v) for v in center]  # the centre is classified correctly
    assert check(bad).reason.startswith("the spec's output constraints do not hold")
    bad["counterexample"]["x"] = [v + 1e-12 for v in cert["counterexample"]["x"]]
    assert not check(bad).accepted


def test_unsupported_op_is_recorded_and_rejected(tmp_path) -> None:
    model = load_model(normalised_mlp_onnx(tmp_path / "s.onnx", [3, 5, 2], 0, op="Sigmoid"))
    spec = vnnlib.robustness_spec(np.zeros(3), 0.1, 0, 2)
    path = tmp_path / "s.vnnlib"
    vnnlib.write_vnnlib(path, spec)
    cert = build_certificate(model, path, spec, Result("unsat", proof={"version": 1, "disjuncts": []}))
    assert cert["certificate"] == "unsupported (Sigmoid)"
    assert check_certificate_for(cert, model, path).line() == "rejected: unsupported (Sigmoid)"


def test_checker_network_matches_onnxruntime_on_conv_bn_residual(tmp_path) -> None:
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(v, n) for n, v in [
        ("K", f(4, 2, 3, 3)), ("kb", f(4)), ("g", f(4)), ("b", f(4)), ("m", f(4)), ("v", np.abs(f(4)) + 0.5),
        ("K2", f(4, 4, 3, 3)), ("s", np.array([2.0], np.float32)), ("W", f(4 * 3 * 3, 5)),
        ("shape", np.array([1, -1], np.int64))]]
    nodes = [helper.make_node("Div", ["x", "s"], ["x1"]),
             helper.make_node("Conv", ["x1", "K", "kb"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "b", "m", "v"], ["n1"]),
             helper.make_node("Relu", ["n1"], ["r1"]),
             helper.make_node("Conv", ["r1", "K2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["a"]), helper.make_node("Relu", ["a"], ["r2"]),
             helper.make_node("Reshape", ["r2", "shape"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8).SerializeToString()
    net = read_network(data)
    import onnxruntime

    sess = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = rng.uniform(-1, 1, (1, 2, 6, 6)).astype(np.float32)
    y_ort = sess.run(None, {"x": x})[0].reshape(-1)
    t = interval_table(net, x.reshape(1, -1).astype(np.float64), x.reshape(1, -1).astype(np.float64))
    lo, hi = t[net.output][:2]
    assert np.allclose(lo[0], y_ort, atol=1e-4) and np.allclose(hi[0], y_ort, atol=1e-4)
    box = interval_table(net, x.reshape(1, -1) - 0.05, x.reshape(1, -1) + 0.05)[net.output]
    assert np.all(box[0][0] <= y_ort + 1e-4) and np.all(y_ort - 1e-4 <= box[1][0])


def test_cli_check_exit_codes(split_run, tmp_path, capsys) -> None:
    model, path, spec, result = split_run
    cert = tmp_path / "c.json"
    write_certificate(cert, model, path, spec, result)
    assert main(["check", str(cert), "--model", model.path, "--spec", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "accepted"
    data = json.loads(cert.read_text())
    data["disjuncts"][0]["root"]["upper"][0] -= 1e-3
    cert.write_text(json.dumps(data))
    assert main(["check", str(cert), "--model", model.path, "--spec", str(path)]) == 3
    assert capsys.readouterr().out.startswith("rejected: disjunct 0: the root region differs")
    assert main(["check", str(tmp_path / "missing.json"), "--model", model.path, "--spec", str(path)]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_checker_imports_no_engine_and_no_torch() -> None:
    for name in ("verdict.py", "onnx_net.py", "linear64.py", "bounds64.py", "tiling.py", "splits.py", "product.py",
                 "region64.py"):
        tree = ast.parse((CHECKER / name).read_text())
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        roots = {m.split(".")[0] for m in mods}
        assert not roots & {"torch", "relaxations", "bab", "models"}, (name, roots)
        assert {m for m in mods if m.startswith("verifier")} <= {f"verifier.checker.{x}" for x in
                                                                  ("onnx_net", "linear64", "bounds64", "tiling",
                                                                   "splits", "verdict", "region64")}


@needs_shared
@pytest.mark.parametrize("net, prop, kind", [
    # 1_2: 95 leaves, written and checked in about a second (1_1's 2,891 leaves took 30 s to
    # write; `test_unproved_leaves_get_alphas_or_halves` covers what made them slow)
    ("2022_acasxu/onnx/ACASXU_run2a_1_2_batch_2000.onnx", "2022_acasxu/vnnlib/prop_3.vnnlib", "input-split"),
    ("2022_mnist_fc/onnx/mnist-net_256x2.onnx", "2022_mnist_fc/vnnlib/prop_0_0.03.vnnlib", "bounds")])
def test_benchmark_certificates_accepted(net: str, prop: str, kind: str, tmp_path) -> None:
    model = load_model(BENCH / net)
    spec = vnnlib.load(BENCH / prop, model.n_inputs, model.n_outputs)
    result = verify(model, spec, Config(timeout=60, proof=True))
    assert result.verdict == "unsat"
    cert_path = tmp_path / "c.json"
    assert write_certificate(cert_path, model, BENCH / prop, spec, result) == "written"
    cert = json.loads(cert_path.read_text())
    assert cert["disjuncts"][0]["kind"] == kind
    if kind == "input-split":  # the search's alpha-CROWN slopes travel with each leaf
        assert cert["disjuncts"][0]["method"] == "alpha-crown" and cert["disjuncts"][0]["leaves"]["alphas"]
    res = check_files(cert_path, BENCH / net, BENCH / prop)
    assert res.accepted, res.reason
    check = lambda c: check_certificate(c, model.onnx_bytes, (BENCH / prop).read_text())  # noqa: E731
    rng = np.random.default_rng(3)
    if kind == "input-split":
        _tiling_tamperings(cert, check, rng, 10)
    else:
        _claim_tamperings(cert, check, rng, 3)
