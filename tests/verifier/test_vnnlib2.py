"""The VNN-LIB standard's command line: `verify QUERY --network NAME=PATH`, its output
(first line the verdict; after sat every declared tensor), `supports`, `--name` and
`--version`, and the binding errors the standard requires (exit 2, one line)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.op_cases import make_model
from verifier.cli import main
from verifier.lp.region import check_empty_region, empty_region_proof
from vnnlib.spec import InputRegion
from vnnlib.standard import vendor_dir

ROOT = Path(__file__).resolve().parents[2]
needs_parser = pytest.mark.skipif(not (vendor_dir() / "vnnlib" / "__init__.py").is_file(),
                                  reason="the standard's VNN-LIB parser is not installed beside the venv "
                                         "(`make` installs it into .venv/nncert-vendor)")


@pytest.fixture()
def net(tmp_path):
    """Y = [x0 + x1, x0 - x1] over X float32 [1,2]."""
    W = np.array([[1.0, 1.0], [1.0, -1.0]], np.float32)
    model = make_model([helper.make_node("MatMul", ["X", "W"], ["Y"])], {"W": W}, (1, 2), (1, 2))
    path = tmp_path / "n.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _query(tmp_path: Path, body: str, x: str = "X float32 [1,2]", y: str = "Y float32 [1,2]",
           name: str = "q.vnnlib") -> Path:
    path = tmp_path / name
    path.write_text(f"(vnnlib-version <2.0>)\n(declare-network f (declare-input {x}) (declare-output {y}))\n"
                    "(assert (>= X[0,0] 0.0)) (assert (<= X[0,0] 1.0))\n"
                    "(assert (>= X[0,1] 0.0)) (assert (<= X[0,1] 1.0))\n" + body)
    return path


def _verify(capsys, *args: str) -> tuple[int, list[str], str]:
    code = main(["verify", *args, "--timeout", "30"])
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err.strip()


@needs_parser
def test_sat_prints_every_declared_tensor_in_order(tmp_path, net, capsys):
    query = _query(tmp_path, "(assert (>= Y[0,0] 1.9))")
    code, lines, _ = _verify(capsys, str(query), "--network", f"f={net}")
    assert code == 0 and lines[0] == "sat"
    assert lines[1] == "X float32 [1,2]" and lines[4] == "Y float32 [1,2]" and len(lines) == 7
    x = np.array([float(v) for v in lines[2:4]], np.float32)
    y = np.array([float(v) for v in lines[5:7]], np.float32)
    assert np.all((0 <= x) & (x <= 1)) and y[0] >= 1.9
    np.testing.assert_allclose(y, [x[0] + x[1], x[0] - x[1]], rtol=1e-6)


@needs_parser
def test_unsat_and_the_vnncomp_form(tmp_path, net, capsys):
    query = _query(tmp_path, "(assert (or (> Y[0,0] 2.1) (< Y[0,1] -1.1)))")
    assert _verify(capsys, str(query), "--network", f"f={net}")[:2] == (0, ["unsat"])
    assert _verify(capsys, str(net), str(query))[:2] == (0, ["unsat"])


def _unsat_then_sat(tmp_path: Path, net: Path, capsys, unsat: str, sat: str) -> list[str]:
    """Verify two queries over `net` (the standard's form): the first must be unsat; the
    second's printed lines are returned after checking it is sat."""
    query = _query(tmp_path, unsat)
    assert _verify(capsys, str(query), "--network", f"f={net}")[:2] == (0, ["unsat"])
    code, lines, _ = _verify(capsys, str(_query(tmp_path, sat)), "--network", f"f={net}")
    assert code == 0 and lines[0] == "sat"
    return lines


@needs_parser
def test_coupled_inputs_with_no_point_are_unsat(tmp_path, net, capsys):
    lines = _unsat_then_sat(tmp_path, net, capsys, "(assert (>= (+ (* 0.5 X[0,0]) (* 0.75 X[0,1])) 1.3))",
                            "(assert (>= (+ (* 0.5 X[0,0]) (* 0.75 X[0,1])) 1.2))")
    x = [float(v) for v in lines[2:4]]
    assert 0.5 * x[0] + 0.75 * x[1] >= 1.2


@needs_parser
def test_unbounded_inputs_give_sat_or_unknown_never_unsat(tmp_path, net, capsys):
    path = tmp_path / "free.vnnlib"
    path.write_text("(vnnlib-version <2.0>)\n(declare-network f (declare-input X float32 [1,2]) "
                    "(declare-output Y float32 [1,2]))\n(assert (>= X[0,0] 0.0)) (assert (<= X[0,0] 1.0))\n")
    for body, verdict in (("(assert (> Y[0,0] 100.0))", "unknown"), ("(assert (<= Y[0,0] 0.5))", "sat")):
        path.write_text(path.read_text().split("\n(assert (>= X[0,0]")[0] +
                        "\n(assert (>= X[0,0] 0.0)) (assert (<= X[0,0] 1.0))\n" + body)
        code, lines, err = _verify(capsys, str(path), "--network", f"f={net}")
        assert code == 0 and lines[0] == verdict and "X[0,1] has no lower or upper bound" in err


@needs_parser
@pytest.mark.parametrize("args, needle", [
    ([], "give each --network"),
    (["--network", "g=NET"], "declares no network g"),
    (["--network", "f=NET", "--network", "f=NET"], "given twice"),
    (["--network", "fNET"], "expected NAME=PATH"),
])
def test_network_files_must_match_the_declarations(tmp_path, net, capsys, args, needle):
    query = _query(tmp_path, "(assert (>= Y[0,0] 1.0))")
    code, lines, err = _verify(capsys, str(query), *[a.replace("NET", str(net)) for a in args])
    assert code == 2 and lines == [] and needle in err and len(err.splitlines()) == 1


@needs_parser
@pytest.mark.parametrize("x, y, needle", [
    ("X float16 [1,2]", "Y float16 [1,2]", "X is declared float16, but model input 'X' is float32"),
    ("X float32 [2,1]", "Y float32 [1,2]", "declared with shape [2,1], but model input 'X' has shape [1,2]"),
])
def test_declarations_are_checked_against_the_model(tmp_path, net, capsys, x, y, needle):
    path = tmp_path / "t.vnnlib"
    path.write_text(f"(vnnlib-version <2.0>)\n(declare-network f (declare-input {x}) (declare-output {y}))\n"
                    "(assert (>= X[0,0] 0.0)) (assert (<= X[0,0] 1.0)) (assert (>= Y[0,0] 1.0))")
    code, lines, err = _verify(capsys, str(path), "--network", f"f={net}")
    assert code == 2 and lines == [] and needle in err


@needs_parser
def test_real_declarations_are_accepted(tmp_path, net, capsys):
    query = _query(tmp_path, "(assert (> Y[0,0] 2.1))", x="X real [1,2]", y="Y real [1,2]")
    assert _verify(capsys, str(query), "--network", f"f={net}")[:2] == (0, ["unsat"])


def test_name_and_version_are_one_line_each():
    run = lambda *a: subprocess.run([sys.executable, "-m", "verifier.cli", *a], capture_output=True, text=True,
                                    cwd=ROOT, timeout=120)
    from verifier import __version__

    assert run("--name").stdout == "nncert\n" and run("--version").stdout == f"{__version__}\n"


def _supports(capsys, flag: str) -> list[str]:
    assert main(["supports", flag]) == 0
    return capsys.readouterr().out.split()


def test_supports_answers_from_the_registry(capsys):
    opsets = _supports(capsys, "--onnx-opset-versions")
    assert len(opsets) == 2 and 1 <= int(opsets[0]) <= int(opsets[1])
    ops = _supports(capsys, "--onnx-operators")
    assert {"Relu", "Gemm", "Conv", "Cast", "Shape", "Equal", "Where"} <= set(ops) and "Mod" not in ops
    assert _supports(capsys, "--vnnlib-versions") == ["1.0", "2.0"]
    assert main(["supports", "--onnx-element-types"]) == 0
    types = capsys.readouterr().out.splitlines()
    assert types[:2] == ["float32", "real"] and types[2].startswith("int64 * outputs and hidden nodes only")
    with pytest.raises(SystemExit) as e:
        main(["supports", "--no-such-flag"])
    assert e.value.code == 2


def test_supports_answers_every_standard_flag(capsys):
    from verifier.cli.supports import SUPPORTS_FLAGS

    for flag in SUPPORTS_FLAGS:
        assert main(["supports", flag]) == 0
        assert capsys.readouterr().out.strip(), flag


def test_empty_regions_are_proved_exactly():
    region = InputRegion([0.0, 0.0], [2.0, 2.0], A=[[-0.5, -0.75]], b=[-3.0])   # 0.5 x + 0.75 y >= 3
    proof = empty_region_proof(region)
    assert proof is not None and check_empty_region(region, proof)
    touching = InputRegion([0.0, 0.0], [2.0, 2.0], A=[[-0.5, -0.75]], b=[-2.5])  # one point, (2, 2)
    assert empty_region_proof(touching) is None
    assert not check_empty_region(touching, {"y": [1.0]})
    assert not check_empty_region(region, {"y": [-1.0]}) and not check_empty_region(region, {"y": [0.0]})


MONO = """(vnnlib-version <2.0>)
(declare-network f (declare-input X float32 [1,2]) (declare-output Y float32 [1,2]))
(declare-network g (equal-to f) (declare-input X2 float32 [1,2]) (declare-output Y2 float32 [1,2]))
(assert (>= X[0,0] 0.0)) (assert (<= X[0,0] 1.0)) (assert (>= X[0,1] 0.0)) (assert (<= X[0,1] 1.0))
(assert (>= X2[0,0] 0.0)) (assert (<= X2[0,0] 1.0)) (assert (>= X2[0,1] 0.0)) (assert (<= X2[0,1] 1.0))
(assert (>= X[0,0] X2[0,0])) (assert (== X[0,1] X2[0,1]))
"""


@needs_parser
def test_equal_to_copies_monotonicity(tmp_path, net, capsys):
    """Y0 = x0 + x1 is monotone in x0: with X[0,0] >= X2[0,0] and X[0,1] == X2[0,1] (one
    variable), Y[0,0] < Y2[0,0] - 0.1 has no point (the search clips by the row); Y1 = x0 - x1
    can grow by more than 0.5."""
    path = tmp_path / "mono.vnnlib"
    path.write_text(MONO + "(assert (< Y[0,0] (- Y2[0,0] 0.1)))")
    assert _verify(capsys, str(path), "--network", f"f={net}")[:2] == (0, ["unsat"])
    path.write_text(MONO + "(assert (> Y[0,1] (+ Y2[0,1] 0.5)))")
    code, lines, _ = _verify(capsys, str(path), "--network", f"f={net}")
    assert code == 0 and lines[0] == "sat" and [lines[i] for i in (1, 4, 7, 10)] == [
        "X float32 [1,2]", "Y float32 [1,2]", "X2 float32 [1,2]", "Y2 float32 [1,2]"]
    x, x2 = [float(v) for v in lines[2:4]], [float(v) for v in lines[8:10]]
    y, y2 = [float(v) for v in lines[5:7]], [float(v) for v in lines[11:13]]
    assert x[0] >= x2[0] and x[1] == x2[1] and y[1] > y2[1] + 0.5
    np.testing.assert_allclose([y[1], y2[1]], [x[0] - x[1], x2[0] - x2[1]], rtol=1e-6)


@pytest.fixture()
def two_io(tmp_path):
    """Inputs A [1,2], B [1,1]; outputs S = A + B (broadcast) and D = A - B."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["A", "B"], ["S"]), helper.make_node("Sub", ["A", "B"], ["D"])], "io",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("B", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("S", TensorProto.FLOAT, [1, 2]),
         helper.make_tensor_value_info("D", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "io.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@needs_parser
def test_several_inputs_and_outputs_bind_by_declaration_order(tmp_path, two_io, capsys):
    head = ("(vnnlib-version <2.0>)\n(declare-network n (declare-input P float32 [1,2]) (declare-input Q float32 "
            "[1,1]) (declare-output U float32 [1,2]) (declare-output V float32 [1,2]))\n"
            "(assert (>= P[0,0] 0.0)) (assert (<= P[0,0] 1.0)) (assert (>= P[0,1] 0.0)) (assert (<= P[0,1] 1.0))"
            "(assert (>= Q[0,0] 2.0)) (assert (<= Q[0,0] 3.0))\n")
    path = tmp_path / "io.vnnlib"
    path.write_text(head + "(assert (>= V[0,1] -0.5))")   # V = P - Q <= -1
    assert _verify(capsys, str(path), "--network", f"n={two_io}")[:2] == (0, ["unsat"])
    path.write_text(head + "(assert (>= U[0,1] 3.5))")    # U = P + Q reaches 4
    code, lines, _ = _verify(capsys, str(path), "--network", f"n={two_io}")
    assert lines[0] == "sat" and lines[1] == "P float32 [1,2]" and lines[4] == "Q float32 [1,1]"
    p, q, u = [float(v) for v in lines[2:4]], float(lines[5]), [float(v) for v in lines[7:9]]
    assert lines[6] == "U float32 [1,2]" and lines[9] == "V float32 [1,2]"
    np.testing.assert_allclose(u, [p[0] + q, p[1] + q], rtol=1e-6) and u[1] >= 3.5


@needs_parser
def test_hidden_nodes_and_rows_mixing_them_with_inputs(tmp_path, capsys):
    W = np.array([[2.0, -1.0]], np.float32)
    model = make_model([helper.make_node("MatMul", ["X", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                        helper.make_node("Add", ["r", "one"], ["Y"])],
                       {"W": W, "one": np.array([1.0], np.float32)}, (1, 1), (1, 2))
    onnx_path = tmp_path / "h.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    head = ("(vnnlib-version <2.0>)\n(declare-network n (declare-input X float32 [1,1]) "
            "(declare-hidden R float32 [1,2] \"r\") (declare-output Y float32 [1,2]))\n"
            "(assert (>= X[0,0] -1.0)) (assert (<= X[0,0] 1.0))\n")
    path = tmp_path / "h.vnnlib"
    path.write_text(head + "(assert (< R[0,1] -0.01))")           # a ReLU's output is never negative
    assert _verify(capsys, str(path), "--network", f"n={onnx_path}")[:2] == (0, ["unsat"])
    path.write_text(head + "(assert (> R[0,0] (+ X[0,0] 0.5)))")   # relu(2x) > x + 0.5 for x > 0.5
    code, lines, _ = _verify(capsys, str(path), "--network", f"n={onnx_path}")
    assert lines[0] == "sat" and lines[3] == "R float32 [1,2]" and lines[6] == "Y float32 [1,2]"
    x, r = float(lines[2]), [float(v) for v in lines[4:6]]
    assert r[0] > x + 0.5 and r[0] == pytest.approx(max(2 * x, 0.0), rel=1e-6)
    path.write_text(head + "(assert (> R[0,0] (+ X[0,0] 1.5)))")   # relu(2x) - x <= 1 on [-1, 1]
    assert _verify(capsys, str(path), "--network", f"n={onnx_path}")[:2] == (0, ["unsat"])


@needs_parser
def test_polynomial_assertions(tmp_path, net, capsys):
    """Y = [x0 + x1, x0 - x1] on [0,1]^2: Y0 * Y1 = x0^2 - x1^2 <= 1, reaching 0.9 near (1, 0)."""
    lines = _unsat_then_sat(tmp_path, net, capsys, "(assert (> (* Y[0,0] Y[0,1]) 1.1))",
                            "(assert (>= (* Y[0,0] Y[0,1]) 0.9))")
    y = [float(v) for v in lines[5:7]]
    assert y[0] * y[1] >= 0.9


@needs_parser
def test_a_constant_int64_output_is_decided(tmp_path, capsys):
    """Y = Shape(X): constant [2, 3] whatever X is; declared int64 as the model's output is."""
    graph = helper.make_graph([helper.make_node("Shape", ["X"], ["Y"])], "s",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT64, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx_path = tmp_path / "shape.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    box = "".join(f"(assert (>= X[{i},{j}] 0.0)) (assert (<= X[{i},{j}] 1.0))" for i in range(2) for j in range(3))
    path = tmp_path / "s.vnnlib"
    head = ("(vnnlib-version <2.0>)\n(declare-network n (declare-input X float32 [2,3]) "
            "(declare-output Y int64 [2]))\n" + box + "\n")
    path.write_text(head + "(assert (>= Y[1] 4))")
    assert _verify(capsys, str(path), "--network", f"n={onnx_path}")[:2] == (0, ["unsat"])
    path.write_text(head + "(assert (== Y[0] 2))")
    code, lines, _ = _verify(capsys, str(path), "--network", f"n={onnx_path}")
    assert lines[0] == "sat" and lines[-3:] == ["Y int64 [2]", "2", "3"]


@needs_parser
def test_spec_convert_both_ways(tmp_path, net, capsys):
    import vnnlib

    spec = vnnlib.robustness_spec(np.array([0.5, 0.25]), 0.125, 0, 2)
    v1, v2, back = tmp_path / "p1.vnnlib", tmp_path / "p2.vnnlib", tmp_path / "p1b.vnnlib"
    vnnlib.write_vnnlib(v1, spec)
    assert main(["spec", "convert", str(v1), str(v2), "--model", str(net)]) == 0
    assert "(declare-input X float32 [1,2])" in v2.read_text()
    assert main(["spec", "convert", str(v2), str(back)]) == 0
    assert vnnlib.load(back) == vnnlib.load(v2) == spec
    assert _verify(capsys, str(v2), "--network", f"N={net}")[1][0] == _verify(capsys, str(net), str(v1))[1][0]
    poly = _query(tmp_path, "(assert (>= (* Y[0,0] Y[0,1]) 0.9))")
    capsys.readouterr()
    assert main(["spec", "convert", str(poly), str(back)]) == 2
    assert "`nncert verify` reads it" in capsys.readouterr().err


@needs_parser
def test_serialised_assignments_hold_each_tensor(tmp_path, net, capsys):
    import onnx
    from onnx import numpy_helper

    query = _query(tmp_path, "(assert (>= Y[0,0] 1.9))", y="Y real [1,2]")
    folder = tmp_path / "assign"
    code, lines, _ = _verify(capsys, str(query), "--network", f"f={net}", "--serialise-assignments", str(folder))
    assert code == 0 and lines == ["sat"]                        # the values go to the folder, not stdout
    x = numpy_helper.to_array(onnx.load_tensor(str(folder / "X.pb")))
    y = numpy_helper.to_array(onnx.load_tensor(str(folder / "Y.pb")))
    assert x.dtype == np.float32 and x.shape == (1, 2) and y.dtype == np.float64 and y.shape == (1, 2)
    assert y[0, 0] >= 1.9 and y[0, 0] == pytest.approx(x[0, 0] + x[0, 1], rel=1e-6)


@needs_parser
def test_certificates_of_a_one_network_query_are_checked_like_a_spec(tmp_path, net, capsys):
    """A 2.0 query over one network's own input and output gets a certificate (unsat and
    sat) that `nncert check` accepts against the network file and the query; one that is
    changed after the fact is rejected; one bounded side by side names its network's file."""
    from verifier import check

    for body, verdict in (("(assert (or (> Y[0,0] 2.1) (< Y[0,1] -1.1)))", "unsat"),
                          ("(assert (>= Y[0,0] 1.9))", "sat")):
        query = _query(tmp_path, body)
        cert = tmp_path / f"{verdict}.json"
        code, lines, _ = _verify(capsys, str(query), "--network", f"f={net}", "--certificate", str(cert))
        assert code == 0 and lines[0] == verdict
        assert check(cert, net, query).accepted
        edited = _query(tmp_path, body.replace("2.1", "2.0").replace("1.9", "1.95"), name="edited.vnnlib")
        assert not check(cert, net, edited).accepted   # another property: its hash differs
    # Networks side by side: the certificate names each file (tests/verifier/checker/test_product.py);
    # the proof needs the row that couples the inputs (X[0,0] >= X2[0,0]): over the box alone it fails.
    path = tmp_path / "mono.vnnlib"
    path.write_text(MONO + "(assert (< Y[0,0] (- Y2[0,0] 0.1)))")
    code, lines, _ = _verify(capsys, str(path), "--network", f"f={net}", "--certificate", str(tmp_path / "m.json"))
    assert code == 0 and lines[0] == "unsat"
    assert check(tmp_path / "m.json", {"f": net}, path).accepted


@needs_parser
def test_a_sat_holds_on_the_query_as_written(tmp_path, net, capsys):
    """Two truly unsat queries whose Spec admits a point: X[0,0] < 1 strictly (the Spec's
    box closes it) with Y0 = x0 + x1 >= 2; and Y0 + 2^-60 <= 1 over X >= 0.5, where Y0 >= 1
    (the constant moved across the comparison rounds to 1 - 0). `verify` does not say sat,
    and a sat certificate at the Spec's point, hashes and all, is rejected by the checker."""
    import hashlib
    import json

    from verifier import check

    head = ("(vnnlib-version <2.0>)\n(declare-network f (declare-input X float32 [1,2]) "
            "(declare-output Y float32 [1,2]))\n")
    cases = {"strict": (head + "(assert (>= X[0,0] 0.0)) (assert (< X[0,0] 1.0))\n(assert (>= X[0,1] 0.0)) "
                        "(assert (<= X[0,1] 1.0))\n(assert (>= Y[0,0] 2.0))\n", [1.0, 1.0], [2.0, 0.0]),
             "constant": (head + "(assert (>= X[0,0] 0.5)) (assert (<= X[0,0] 1.0))\n(assert (>= X[0,1] 0.5)) "
                          "(assert (<= X[0,1] 1.0))\n(assert (<= (+ Y[0,0] 0.000000000000000000867361737988403547205962240695953369140625) 1.0))\n",
                          [0.5, 0.5], [1.0, 0.0])}
    for name, (text, x, y) in cases.items():
        query = tmp_path / f"{name}.vnnlib"
        query.write_text(text)
        code, lines, _ = _verify(capsys, str(query), "--network", f"f={net}")
        assert code == 0 and lines[0] != "sat", name
        cert = {"format": "nncert-certificate", "version": 1, "verdict": "sat",
                "model_sha256": hashlib.sha256(net.read_bytes()).hexdigest(),
                "spec_sha256": hashlib.sha256(query.read_bytes()).hexdigest(),
                "counterexample": {"x": x, "y": y}}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(cert))
        result = check(path, net, query)
        assert not result.accepted and "as written" in result.reason, (name, result)


@needs_parser
def test_no_certificate_for_a_query_with_an_unbounded_input(tmp_path, net, capsys):
    """The checker reads the query's box as written and refuses an unbounded input, so
    `verify --certificate` says so at once (exit 2) instead of writing one it cannot check."""
    path = tmp_path / "unb.vnnlib"
    path.write_text("(vnnlib-version <2.0>)\n(declare-network f (declare-input X float32 [1,2]) "
                    "(declare-output Y float32 [1,2]))\n(assert (>= X[0,0] 0.0)) (assert (<= X[0,0] 1.0))\n"
                    "(assert (>= X[0,1] 0.0))\n(assert (>= Y[0,0] 1.5))\n")
    code, _, err = _verify(capsys, str(path), "--network", f"f={net}", "--certificate", str(tmp_path / "c.json"))
    assert code == 2 and "X[0,1] has no lower or upper bound" in err and not (tmp_path / "c.json").exists()
