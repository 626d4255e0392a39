"""The command line as a user meets it: verdicts exit 0, bad input exits 2 with one
clear line on stderr (file and what was expected), never a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

import vnnlib
from tests.op_cases import make_model

ROOT = Path(__file__).resolve().parents[3]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "verifier.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


@pytest.fixture()
def tiny(tmp_path):
    """y = W x + b with two inputs and two outputs, and a robustness spec around x0."""
    W = np.array([[1.0, -1.0], [0.5, 2.0]], np.float32)
    model = make_model([helper.make_node("Gemm", ["X", "W", "b"], ["h"]), helper.make_node("Relu", ["h"], ["Y"])],
                       {"W": W, "b": np.array([0.1, -0.2], np.float32)}, (1, 2), (1, 2))
    onnx_path = tmp_path / "tiny.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    spec_path = tmp_path / "tiny.vnnlib"
    return tmp_path, onnx_path, spec_path


def _assert_one_clean_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_unsat_and_sat_verdicts_exit_zero_and_write_results(tiny) -> None:
    tmp, onnx_path, spec_path = tiny
    # y0 - y1 >= 0 is impossible to violate? construct: counterexample when y0 <= -1 (relu output >= 0): unsat
    spec = vnnlib.Spec(2, 2, (vnnlib.Disjunct(vnnlib.InputRegion(np.zeros(2), np.ones(2)), (
        vnnlib.OutputConstraints(np.array([[1.0, 0.0]]), np.array([-1.0]), np.array([False])),)),))
    vnnlib.write_vnnlib(spec_path, spec)
    res_file = tmp / "out.txt"
    proc = _run("verify", str(onnx_path), str(spec_path), "--results-file", str(res_file), "--report",
                str(tmp / "r.json"))
    assert proc.returncode == 0 and proc.stdout.strip() == "unsat", (proc.stdout, proc.stderr)
    assert res_file.read_text().splitlines()[0] == "unsat"
    # counterexample when y1 >= 1: reachable (x = (0, 1) gives y1 = 1.8)
    spec2 = vnnlib.Spec(2, 2, (vnnlib.Disjunct(vnnlib.InputRegion(np.zeros(2), np.ones(2)), (
        vnnlib.OutputConstraints(np.array([[0.0, -1.0]]), np.array([-1.0]), np.array([False])),)),))
    vnnlib.write_vnnlib(spec_path, spec2)
    proc = _run("verify", str(onnx_path), str(spec_path), "--results-file", str(res_file))
    assert proc.returncode == 0 and proc.stdout.strip() == "sat", (proc.stdout, proc.stderr)
    verdict, x, y = vnnlib.read_results(res_file)
    assert verdict == "sat" and x is not None and y is not None
    assert np.all(x >= 0) and np.all(x <= 1) and y[1] >= 1.0


def test_missing_model_file(tiny) -> None:
    tmp, _, spec_path = tiny
    vnnlib.write_vnnlib(spec_path, vnnlib.robustness_spec(np.zeros(2), 0.1, 0, 2))
    _assert_one_clean_line(_run("verify", str(tmp / "absent.onnx"), str(spec_path)), "absent.onnx")


def test_truncated_onnx(tiny) -> None:
    tmp, onnx_path, spec_path = tiny
    vnnlib.write_vnnlib(spec_path, vnnlib.robustness_spec(np.zeros(2), 0.1, 0, 2))
    cut = tmp / "cut.onnx"
    cut.write_bytes(onnx_path.read_bytes()[:40])
    _assert_one_clean_line(_run("verify", str(cut), str(spec_path)), "cut.onnx")


def test_spec_with_wrong_number_of_variables(tiny) -> None:
    tmp, onnx_path, spec_path = tiny
    vnnlib.write_vnnlib(spec_path, vnnlib.robustness_spec(np.zeros(3), 0.1, 0, 3))
    _assert_one_clean_line(_run("verify", str(onnx_path), str(spec_path)), "tiny.vnnlib", "3")


def test_malformed_spec_names_line_and_column(tiny) -> None:
    tmp, onnx_path, spec_path = tiny
    spec_path.write_text("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(assert (<= X_0 0.5)\n")
    _assert_one_clean_line(_run("verify", str(onnx_path), str(spec_path)), "tiny.vnnlib:")


def test_unknown_config_key(tiny) -> None:
    tmp, onnx_path, spec_path = tiny
    vnnlib.write_vnnlib(spec_path, vnnlib.robustness_spec(np.zeros(2), 0.1, 0, 2))
    _assert_one_clean_line(_run("verify", str(onnx_path), str(spec_path), "--set", "bounds.metod=crown"),
                           "bounds.metod")
    cfg = tmp / "c.yaml"
    cfg.write_text("attack:\n  restars: 3\n")
    _assert_one_clean_line(_run("verify", str(onnx_path), str(spec_path), "--config", str(cfg)), "attack.restars")


def test_unsupported_op_exits_two(tiny) -> None:
    tmp, _, spec_path = tiny
    model = make_model([helper.make_node("Hardmax", ["X"], ["Y"], name="hardmax_node")], {}, (1, 2), (1, 2))
    bad = tmp / "erf.onnx"
    bad.write_bytes(model.SerializeToString())
    vnnlib.write_vnnlib(spec_path, vnnlib.robustness_spec(np.zeros(2), 0.1, 0, 2))
    _assert_one_clean_line(_run("verify", str(bad), str(spec_path)), "hardmax_node", "Hardmax")


@pytest.mark.parametrize("case", ["mod_of_input", "pow_variable_exponent"])
def test_ops_it_cannot_bound_exit_two_not_internal(tiny, case: str) -> None:
    """A Mod of the input (a forward rule and no bounding rule) and a Pow of a zero
    base to the input's power: where only bounds could answer, both are refused as
    unsupported, naming the node, never an internal error."""
    tmp, _, spec_path = tiny
    # Pow: a zero base (b^x is refused unless b > 0)
    c = {"c": np.array([[0.5, 0.5]] if case == "mod_of_input" else [[0.0, 0.5]], np.float32)}
    nodes = {"mod_of_input": [helper.make_node("Mod", ["X", "c"], ["Y"], name="mod_node", fmod=1)],
             "pow_variable_exponent": [helper.make_node("Pow", ["c", "X"], ["Y"], name="pow_node")]}[case]
    bad = tmp / f"{case}.onnx"
    bad.write_bytes(make_model(nodes, c, (1, 2), (1, 2)).SerializeToString())
    never = "".join(f"(declare-const X_{i} Real)\n(declare-const Y_{i} Real)\n" for i in range(2)) + \
        "".join(f"(assert (>= X_{i} 0.2))\n(assert (<= X_{i} 0.4))\n" for i in range(2)) + "(assert (>= Y_0 5.0))\n"
    spec_path.write_text(never)
    _assert_one_clean_line(_run("verify", str(bad), str(spec_path), "--timeout", "20"),
                           "mod_node" if case == "mod_of_input" else "pow_node")


def test_a_piecewise_constant_output_is_decided(tiny) -> None:
    """Equal then Cast: the output is 0 or 1, a step the attack has no gradient to follow
    (which used to raise inside autograd). Its interval decides Y_0 >= 5 (unsat); where
    a sampled point violates robustness, the attack's sample gives the sat."""
    tmp, _, spec_path = tiny
    nodes = [helper.make_node("Equal", ["X", "c"], ["e"], name="eq"), helper.make_node("Cast", ["e"], ["Y"], to=1)]
    model = tmp / "equal_cast.onnx"
    model.write_bytes(make_model(nodes, {"c": np.array([[0.5, 0.5]], np.float32)}, (1, 2), (1, 2)).SerializeToString())
    spec_path.write_text("".join(f"(declare-const X_{i} Real)\n(declare-const Y_{i} Real)\n" for i in range(2)) +
                         "".join(f"(assert (>= X_{i} 0.2))\n(assert (<= X_{i} 0.4))\n" for i in range(2)) +
                         "(assert (>= Y_0 5.0))\n")
    proc = _run("verify", str(model), str(spec_path), "--timeout", "20")
    assert proc.returncode == 0 and proc.stdout.strip() == "unsat", (proc.stdout, proc.stderr)
    vnnlib.write_vnnlib(spec_path, vnnlib.robustness_spec(np.full(2, 0.3), 0.1, 0, 2))
    proc = _run("verify", str(model), str(spec_path), "--timeout", "20")
    assert proc.returncode == 0 and proc.stdout.strip() == "sat", (proc.stdout, proc.stderr)


def test_config_lists_every_key() -> None:
    proc = _run("config")
    assert proc.returncode == 0
    assert "bounds.method: str = 'alpha-crown'" in proc.stdout and "bab.mode" in proc.stdout


def test_search_box_contains_the_float64_region() -> None:
    """Faces that are not float32 numbers are rounded outward, never inward."""
    import torch

    from verifier.api import outward_box

    lo64 = np.array([0.1, -0.3, 1e-8, 0.5])
    hi64 = np.array([0.2, 0.7, 3e-8, 0.5])
    lo, hi = outward_box(lo64, hi64, torch.float32)
    assert bool((lo.double().numpy() <= lo64).all()) and bool((hi.double().numpy() >= hi64).all())
    assert float(lo[3]) == 0.5 and float(hi[3]) == 0.5


def test_lipschitz_command_bounds_a_relu_mlp(tmp_path) -> None:
    r = np.random.default_rng(0)
    W1, W2 = r.normal(size=(3, 6)).astype(np.float32), r.normal(size=(6, 2)).astype(np.float32)
    model = make_model([helper.make_node("Gemm", ["X", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                        helper.make_node("Gemm", ["r", "W2"], ["Y"])], {"W1": W1, "W2": W2}, (1, 3), (1, 2))
    path = tmp_path / "mlp.onnx"
    path.write_bytes(model.SerializeToString())
    # The two bounds in process (main), the refusal through the CLI's process: the same
    # report either way, one interpreter's start-up instead of three.
    from verifier.cli import main

    assert main(["lipschitz", str(path), "--method", "naive", "--report", str(tmp_path / "l.json")]) == 0
    import json

    value = json.loads((tmp_path / "l.json").read_text())["value"]
    naive = np.linalg.norm(W1.astype(np.float64), 2) * np.linalg.norm(W2.astype(np.float64), 2)
    assert naive <= value <= naive * 1.01
    conv = make_model([helper.make_node("Conv", ["X", "W"], ["Y"])], {"W": np.ones((1, 1, 1, 1), np.float32)},
                      (1, 1, 2, 2), (1, 1, 2, 2))
    cpath = tmp_path / "conv.onnx"
    cpath.write_bytes(conv.SerializeToString())
    # naive bounds any supported graph (here exactly 1); the SDP methods need a ReLU MLP
    assert main(["lipschitz", str(cpath), "--report", str(tmp_path / "c.json")]) == 0
    assert 1.0 <= json.loads((tmp_path / "c.json").read_text())["value"] <= 1.0 + 1e-8
    _assert_one_clean_line(_run("lipschitz", str(cpath), "--method", "sdp-layer"), "ReLU MLP")


def test_out_of_range_config_values_are_bad_input(tiny) -> None:
    tmp, onnx_path, spec_path = tiny
    vnnlib.write_vnnlib(spec_path, vnnlib.robustness_spec(np.zeros(2), 0.1, 0, 2))
    _assert_one_clean_line(_run("verify", str(onnx_path), str(spec_path), "--timeout", "-3"), "timeout", ">= 0")
    _assert_one_clean_line(_run("verify", str(onnx_path), str(spec_path), "--set", "bab.mode=sideways"), "bab.mode")
