"""A run keeps its word: every output path is checked before the work, the results file
and the report are written on every exit path (the hard watchdog's included), the
budget covers the certificate, an unknown with time left hands over to another search,
and the Python API leaves no trace in the caller's torch."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import helper

import vnnlib
from tests.op_cases import make_model

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "verifier.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def _net(tmp_path: Path, act: str = "Relu", n_in: int = 2, hidden: int = 8, seed: int = 0, scale: float = 1.0
         ) -> Path:
    """X[1, n_in] -> Gemm -> act -> Gemm -> Y[1, 2] (act "Square": h * h)."""
    r = np.random.default_rng(seed)
    inits = {"W1": (scale * r.standard_normal((hidden, n_in))).astype(np.float32),
             "b1": r.standard_normal(hidden).astype(np.float32),
             "W2": r.standard_normal((2, hidden)).astype(np.float32), "b2": np.zeros(2, np.float32)}
    hidden_act = helper.make_node("Mul", ["h", "h"], ["a"]) if act == "Square" else helper.make_node(act, ["h"], ["a"])
    nodes = [helper.make_node("Gemm", ["X", "W1", "b1"], ["h"], transB=1), hidden_act,
             helper.make_node("Gemm", ["a", "W2", "b2"], ["Y"], transB=1)]
    path = tmp_path / f"{act.lower()}_{n_in}.onnx"
    path.write_bytes(make_model(nodes, inits, (1, n_in), (1, 2)).SerializeToString())
    return path


def _spec(tmp_path: Path, lower, upper, row, d: float) -> Path:
    """Counterexample iff row . y <= d over the box."""
    spec = vnnlib.Spec(len(lower), 2, (vnnlib.Disjunct(vnnlib.InputRegion(np.asarray(lower, float),
                                                                          np.asarray(upper, float)), (
        vnnlib.OutputConstraints(np.array([row], float), np.array([d]), np.array([False])),)),))
    path = tmp_path / "p.vnnlib"
    vnnlib.write_vnnlib(path, spec)
    return path


def _one_line_exit_2(proc: subprocess.CompletedProcess, *needles: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_output_paths_are_checked_before_the_run(tmp_path: Path) -> None:
    model = _net(tmp_path)
    spec = _spec(tmp_path, [0, 0], [1, 1], [1.0, 0.0], -1e6)
    t = time.monotonic()
    _one_line_exit_2(_run("verify", str(model), str(spec), "--results-file", str(tmp_path / "no" / "r.txt")),
                     "does not exist")
    _one_line_exit_2(_run("verify", str(model), str(spec), "--certificate", str(tmp_path)), "directory")
    _one_line_exit_2(_run("verify", str(model), str(spec), "--report", str(tmp_path / "no" / "r.json")), "report")
    _one_line_exit_2(_run("bench", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "no" / "x.csv")), "--out")
    assert not (tmp_path / "no").exists()  # nothing created behind the user's back
    assert time.monotonic() - t < 60


def test_report_and_results_file_are_written_on_bad_input(tmp_path: Path) -> None:
    spec = _spec(tmp_path, [0, 0], [1, 1], [1.0, 0.0], 0.0)
    report, results = tmp_path / "r.json", tmp_path / "res.txt"
    proc = _run("verify", str(tmp_path / "absent.onnx"), str(spec), "--report", str(report),
                "--results-file", str(results))
    _one_line_exit_2(proc, "absent.onnx")
    data = json.loads(report.read_text())
    assert data["schema"] == "nncert-report/1" and data["command"] == "verify"
    assert data["verdict"] == "error" and "absent.onnx" in data["reason"] and "versions" in data
    assert results.read_text().split()[0] == "error"


def test_results_file_gets_the_same_mode_as_the_report(tmp_path: Path) -> None:
    model = _net(tmp_path)
    spec = _spec(tmp_path, [0, 0], [1, 1], [1.0, 0.0], -1e6)
    report, results = tmp_path / "r.json", tmp_path / "res.txt"
    proc = _run("verify", str(model), str(spec), "--report", str(report), "--results-file", str(results))
    assert proc.returncode == 0 and proc.stdout.strip() == "unsat", proc.stderr
    assert (results.stat().st_mode & 0o777) == (report.stat().st_mode & 0o777)
    data = json.loads(report.read_text())
    assert {"startup", "import", "load", "parse", "total"} <= set(data["time"])
    assert data["method"] in ("crown", "alpha-crown") and data["progress"]["phase"] == "done"


def test_version_and_quiet() -> None:
    from verifier import __version__

    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == __version__


_WATCHDOG = """
import argparse, sys, time
from verifier import cli
from verifier.progress import Progress
args = argparse.Namespace(results_file=sys.argv[1], report=sys.argv[2], certificate="c.json")
run = cli._Run("verify", args, time.monotonic(), None)
run.progress = Progress(0)
run.progress.update(bounded=7, open=3)
if sys.argv[3] == "verdict":
    run.final = ("unsat", None, None, {"verdict": "unsat", "reason": "proved", "method": "bab-input"})
run.arm(time.monotonic() + 0.5)
time.sleep(30)  # a computation that never returns
"""


@pytest.mark.parametrize("known", ["none", "verdict"])
def test_hard_watchdog_writes_results_and_report_then_exits(tmp_path: Path, known: str) -> None:
    results, report = tmp_path / "res.txt", tmp_path / "r.json"
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _WATCHDOG, str(results), str(report), known], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t < 15
    data = json.loads(report.read_text())
    assert proc.returncode == 0
    if known == "none":
        assert proc.stdout.strip() == "timeout" and results.read_text().split()[0] == "timeout"
        assert data["verdict"] == "timeout" and data["reason"] == "hard timeout"
        assert data["progress"]["bounded"] == 7 and data["progress"]["open"] == 3
    else:  # a verdict found in time keeps it; only the certificate is lost
        assert proc.stdout.strip() == "unsat" and results.read_text().split()[0] == "unsat"
        assert data["verdict"] == "unsat" and data["certificate"].startswith("not written")


def _input_split_unsat(tmp_path: Path):
    from verifier import Config, load_model, verify

    model = load_model(_net(tmp_path, n_in=2, hidden=16, scale=3.0))
    xs = np.stack(np.meshgrid(np.linspace(-1, 1, 201), np.linspace(-1, 1, 201)), -1).reshape(-1, 2)
    ys = np.stack([model.run_onnxruntime(x.astype(np.float32)) for x in xs[::7]])
    d = float(ys[:, 0].min()) - 0.3
    spec = vnnlib.Spec(2, 2, (vnnlib.Disjunct(vnnlib.InputRegion(-np.ones(2), np.ones(2)), (
        vnnlib.OutputConstraints(np.array([[1.0, 0.0]]), np.array([d]), np.array([False])),)),))
    return model, spec, Config, verify


def test_certificate_past_its_deadline_is_not_written(tmp_path: Path) -> None:
    from verifier.certificates.writer import write_certificate

    model, spec, Config, verify = _input_split_unsat(tmp_path)
    result = verify(model, spec, Config(timeout=60, proof=True, bab=Config().bab.__class__(mode="input")))
    assert result.verdict == "unsat"
    spec_path = tmp_path / "s.vnnlib"
    vnnlib.write_vnnlib(spec_path, spec)
    cert = tmp_path / "c.json"
    said = write_certificate(cert, model, spec_path, spec, result, deadline=time.monotonic() - 1)
    if result.stats.get("domains"):
        assert said.startswith("not written") and not cert.exists()
    assert write_certificate(cert, model, spec_path, spec, result, deadline=time.monotonic() + 60) == "written"


def test_a_deadline_inside_a_bound_pass_is_a_timeout(tmp_path: Path, monkeypatch) -> None:
    from relaxations import DeadlineExceeded

    vv = importlib.import_module("verifier.verify")  # the package's `verify` is the function

    model, spec, Config, verify = _input_split_unsat(tmp_path)

    def late(*a, **k):
        raise DeadlineExceeded("deadline passed")

    monkeypatch.setattr(vv, "compute_bounds", late)
    result = verify(model, spec, Config(timeout=60))
    assert result.verdict == "timeout" and "bound propagation" in result.reason


@pytest.mark.parametrize("exc", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                 RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GB"),
                                 RuntimeError("an unrelated failure")], ids=["cuda", "cpu", "other"])
def test_out_of_memory_in_the_root_bounds_is_unknown_and_nothing_else_is(tmp_path: Path, monkeypatch, exc) -> None:
    """Running out of memory outside a search decides nothing: `unknown` with the reason
    (the search does the same); any other exception still passes through."""
    vv = importlib.import_module("verifier.verify")
    model, spec, Config, verify = _input_split_unsat(tmp_path)

    def short(*a, **k):
        raise exc

    monkeypatch.setattr(vv, "compute_bounds", short)
    if "unrelated" in str(exc):
        with pytest.raises(RuntimeError, match="unrelated"):
            verify(model, spec, Config(timeout=60))
        return
    result = verify(model, spec, Config(timeout=60))
    assert result.verdict == "unknown" and result.reason == "out of memory during bound propagation"


def test_mode_counts_free_input_dimensions() -> None:
    from verifier.config import Config
    from verifier.verify import search_mode, free_dims

    lo = np.zeros(400)
    hi = lo.copy()
    hi[[3, 17]] = 1.0
    disjunct = vnnlib.Disjunct(vnnlib.InputRegion(lo, hi), ())
    assert free_dims(disjunct) == 2

    class Many:
        n_inputs = 400

    assert search_mode(Many(), Config(), disjunct) == "input"
    assert search_mode(Many(), Config(), vnnlib.Disjunct(vnnlib.InputRegion(lo, lo + 1), ())) == "activation"
    # under --method ibp or crown there is no beta-CROWN: input split with that method
    assert search_mode(Many(), Config(bounds=Config().bounds.__class__(method="crown")),
                     vnnlib.Disjunct(vnnlib.InputRegion(lo, lo + 1), ())) == "input"


def test_unknown_with_time_left_hands_over_to_the_other_search(tmp_path: Path) -> None:
    """A net whose only nonlinearity is a product (h * h), with the factors of products not
    split (`bab.split_products=false`), has nothing for the activation split to split;
    input split then proves it."""
    from verifier import Config, load_model, verify
    from verifier.config import BabConfig

    model = load_model(_net(tmp_path, act="Square", n_in=2, hidden=16, scale=1.0, seed=3))
    g = np.linspace(-1, 1, 201)
    xs = np.stack(np.meshgrid(g, g), -1).reshape(-1, 1, 2).astype(np.float32)
    ys = np.stack([model.run_onnxruntime(x) for x in xs[::7]])
    d = float(ys[:, 0].min()) - 0.1 * (1 + abs(float(ys[:, 0].min())))
    spec = vnnlib.Spec(2, 2, (vnnlib.Disjunct(vnnlib.InputRegion(-np.ones(2), np.ones(2)), (
        vnnlib.OutputConstraints(np.array([[1.0, 0.0]]), np.array([d]), np.array([False])),)),))
    config = Config(timeout=120, bab=BabConfig(input_split_max_dims=1, split_products=False))
    result = verify(model, spec, config)
    assert result.verdict == "unsat", result.reason
    assert result.stats.get("fallback") == ["bab-input"] and result.stats["domains"] > 1
    assert result.method == "bab-input"


def test_method_ibp_means_ibp_everywhere(tmp_path: Path, monkeypatch) -> None:
    import bab.input_split as bis
    from verifier import Config, verify
    from verifier.config import BoundsConfig

    vv = importlib.import_module("verifier.verify")
    seen = []
    for mod in (vv, bis):
        real = mod.compute_bounds

        def spy(*a, _real=real, **k):
            opts = k.get("options", a[3] if len(a) > 3 else None)
            seen.append(opts.method)
            return _real(*a, **k)

        monkeypatch.setattr(mod, "compute_bounds", spy)
    model, spec, _, _ = _input_split_unsat(tmp_path)
    result = verify(model, spec, Config(timeout=60, bounds=BoundsConfig(method="ibp")))
    assert result.verdict in ("unsat", "unknown", "timeout")
    assert seen and set(seen) == {"ibp"}, seen


def test_verify_leaves_no_global_state(tmp_path: Path) -> None:
    from verifier import Config

    model, spec, _, verify = _input_split_unsat(tmp_path)
    before_threads = torch.get_num_threads()
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    verify(model, spec, Config(timeout=60, threads=1))
    assert torch.get_num_threads() == before_threads
    assert torch.equal(torch.rand(3), expected)


def test_bounds_of_a_box_of_the_wrong_shape_is_a_typed_error(tmp_path: Path) -> None:
    from verifier import ShapeError, bounds, load_model

    model = load_model(_net(tmp_path, n_in=2))
    with pytest.raises(ShapeError, match=r"expected the model's input shape \(1, 2\)"):
        bounds(model, np.zeros(5), np.ones(5))
    with pytest.raises(ShapeError, match="2 outputs"):
        bounds(model, np.zeros(2), np.ones(2), C=np.ones((1, 3)))
    lo, hi = bounds(model, np.zeros(2), np.ones(2))
    assert lo.shape == hi.shape == (2,)


def test_progress_line_only_on_a_terminal() -> None:
    import io

    from verifier.progress import NORMAL, QUIET, VERBOSE, Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        p = Progress(NORMAL, stream=stream, deadline=time.monotonic() + 30, interval=0.0)
        p.update(phase="bab-input", bounded=10, open=4, best_lower=-0.5)
        p.close()
        assert p.snapshot()["bounded"] == 10
    assert "10 domains bounded" in tty.getvalue() and "4 open" in tty.getvalue()
    assert pipe.getvalue() == ""
    quiet = Tty()
    Progress(QUIET, stream=quiet, interval=0.0).update(bounded=1)
    assert quiet.getvalue() == ""
    loud = io.StringIO()
    Progress(VERBOSE, stream=loud).phase("attack")
    assert "attack" in loud.getvalue()
    # a phase that reports nothing (an SDP solve) still shows a line with the time left
    ticking = Tty()
    p = Progress(NORMAL, stream=ticking, deadline=time.monotonic() + 30, interval=0.05)
    p.phase("sdp-neuron")
    p.start_ticker()
    time.sleep(0.3)
    p.close()
    assert "sdp-neuron" in ticking.getvalue() and "s left" in ticking.getvalue()
    size = len(ticking.getvalue())
    time.sleep(0.2)
    assert len(ticking.getvalue()) == size  # the ticker stopped with close()


_INTERRUPT = """
import importlib, sys
vv = importlib.import_module("verifier.verify")
from verifier import cli
def stop(*a, **k):
    raise KeyboardInterrupt
vv.verify = stop
sys.exit(cli.main(["verify", sys.argv[1], sys.argv[2], "--results-file", sys.argv[3], "--report", sys.argv[4]]))
"""


def test_interrupt_writes_results_file_and_report(tmp_path: Path) -> None:
    model = _net(tmp_path)
    spec = _spec(tmp_path, [0, 0], [1, 1], [1.0, 0.0], 0.0)
    results, report = tmp_path / "res.txt", tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-c", _INTERRUPT, str(model), str(spec), str(results), str(report)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert results.read_text().split()[0] == "unknown"
    assert json.loads(report.read_text())["reason"] == "interrupted by the user"


def test_an_input_fixed_to_a_value_no_float32_equals_is_run_at_its_nearest_float32(tmp_path: Path) -> None:
    """Such a region holds no float32 point; the model can only be run at the rounded value."""
    from verifier import Config, load_model, verify
    from verifier.replay import float32_inside

    assert float(np.float32(0.1)) != 0.1
    x = float32_inside(np.array([0.1, 0.5]), np.array([0.1, 0.0]), np.array([0.1, 1.0]))
    assert x is not None and x[0] == np.float32(0.1) and x[1] == np.float32(0.5)
    assert float32_inside(np.array([0.5]), np.array([0.1]), np.array([0.1 + 1e-12])) is None  # free: stays inside
    model = load_model(_net(tmp_path))
    spec = vnnlib.Spec(2, 2, (vnnlib.Disjunct(vnnlib.InputRegion(np.array([0.1, 0.0]), np.array([0.1, 1.0])), (
        vnnlib.OutputConstraints(np.array([[1.0, 0.0]]), np.array([1e6]), np.array([False])),)),))
    result = verify(model, spec, Config(timeout=60))
    assert result.verdict == "sat" and result.x.reshape(-1)[0] == np.float32(0.1)
    # the independent checker reads the region the same way, and a gzipped model too
    import gzip

    from verifier.certificates.writer import write_certificate
    from verifier.checker.verdict import check_files

    gz = tmp_path / "m.onnx.gz"
    gz.write_bytes(gzip.compress(Path(model.path).read_bytes()))
    model = load_model(gz)
    spec_path, cert = tmp_path / "s.vnnlib", tmp_path / "c.json"
    vnnlib.write_vnnlib(spec_path, spec)
    assert write_certificate(cert, model, spec_path, spec, result) == "written"
    assert check_files(cert, gz, spec_path).accepted


def test_bounds_command_has_a_timeout_and_a_report(tmp_path: Path) -> None:
    model = _net(tmp_path)
    spec = _spec(tmp_path, [0, 0], [1, 1], [1.0, 0.0], 0.0)
    report = tmp_path / "b.json"
    proc = _run("bounds", str(model), str(spec), "--timeout", "30", "--report", str(report))
    assert proc.returncode == 0 and proc.stdout.startswith("y[0] in ["), proc.stderr
    data = json.loads(report.read_text())
    assert data["command"] == "bounds" and data["verdict"] == "bound" and len(data["lower"]) == 2
    _one_line_exit_2(_run("bounds", str(model), str(spec), "--timeout", "nan"), "timeout")


def test_timeout_inf_means_no_limit_and_no_watchdog_crash(tmp_path: Path) -> None:
    model = _net(tmp_path)
    spec = _spec(tmp_path, [0, 0], [1, 1], [1.0, 0.0], -1e6)
    proc = _run("verify", str(model), str(spec), "--timeout", "inf")
    assert proc.returncode == 0 and proc.stdout.strip() == "unsat", proc.stderr
    assert "Error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
