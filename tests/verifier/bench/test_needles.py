"""Needle instances: the files say what the construction proves, and nothing else.

One small family (mlp n = 2, 8, 20; mlp and cnn on an 8x8 image) is generated once per
module. The soundness tests sample in float32 through onnxruntime, the arithmetic the
verifier replays counterexamples in; the margins are recomputed from the weights.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import vnnlib
from models import load_onnx
from tests.helpers import outputs_float64
from verifier.api import bounds
from verifier.bench import expected_for, read_expected, read_instances
from verifier.config import BoundsConfig
from verifier.model import load_model
from verifier.bench.needles import (HALF_WIDTH, KINDS, build_net, count_params, float32_error_bound, forward, generate,
                              prove, to_onnx)

ROOT = Path(__file__).resolve().parents[3]
INPUTS = (2, 8, 20, 64)


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("gen") / "needles"
    return out, generate(out, inputs=INPUTS, kinds=KINDS, seed=0, timeout=7)


def _pairs(instances: list) -> list[tuple]:
    return list(zip(instances[::2], instances[1::2]))


def _session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _run32(session: ort.InferenceSession, xs: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.array([float(session.run(None, {"X": x.reshape(shape).astype(np.float32)})[0].reshape(-1)[0])
                     for x in xs])


def _violates(spec: vnnlib.Spec, ys: np.ndarray) -> np.ndarray:
    """Per output value: does it satisfy the spec's output constraints (a violation)?"""
    conj = spec.disjuncts[0].outputs[0]
    return np.array([conj.holds(np.array([y])) for y in ys])


def _outside_subbox(rng: np.random.Generator, c: np.ndarray, count: int, reach: float) -> np.ndarray:
    """Points in ``[0,1]^n`` within ``reach`` of ``c`` per input but outside ``[c-w, c+w]``."""
    xs = c + rng.uniform(-reach, reach, size=(4 * count, len(c)))
    xs = np.clip(xs, 0.0, 1.0).astype(np.float32)
    outside = (np.abs(xs.astype(np.float64) - c) > HALF_WIDTH).any(axis=1)
    return xs[outside][:count]


def test_family_has_a_sat_and_an_unsat_twin_per_net(family):
    _, instances = family
    nets = [(i.kind, i.n) for i in instances[::2]]
    assert nets == [("mlp", 2), ("mlp", 8), ("mlp", 20), ("mlp", 64), ("cnn", 64)]  # no cnn for non-squares
    for sat, unsat in _pairs(instances):
        assert (sat.expected, unsat.expected) == ("sat", "unsat")
        assert sat.onnx == unsat.onnx == f"onnx/needle_{sat.kind}_n{sat.n}_s0.onnx"
        assert sat.vnnlib.endswith("_sat.vnnlib") and unsat.vnnlib.endswith("_unsat.vnnlib")
        assert sat.threshold < unsat.threshold < sat.threshold * 1.05 + 1.0  # twins differ slightly
        assert np.float32(sat.threshold) == sat.threshold and np.float32(unsat.threshold) == unsat.threshold
        c = np.array(sat.centre)
        assert c.min() >= 0.1 - 1e-6 and c.max() <= 0.9 + 1e-6 and sat.half_width == HALF_WIDTH


def test_onnx_agrees_with_numpy_forward_torch_graph_and_onnxruntime(family):
    _, instances = family
    rng = np.random.default_rng(1)
    for sat, _ in _pairs(instances):
        net, _ = build_net(sat.kind, sat.n, 0)
        assert Path(sat.onnx_path).read_bytes() == to_onnx(net)  # deterministic, and the file is this net
        stored = onnx.load(sat.onnx_path).graph.initializer
        assert sum(numpy_helper.to_array(t).size for t in stored) == count_params(net) == sat.params
        c = net.centre.astype(np.float64)
        xs = np.concatenate([rng.uniform(size=(64, sat.n)), c + rng.uniform(-HALF_WIDTH, HALF_WIDTH, (32, sat.n)),
                             c[None]]).astype(np.float32)
        exact = forward(net, xs)
        y32 = _run32(_session(sat.onnx_path), xs, net.input_shape)
        assert np.abs(y32 - exact).max() <= float32_error_bound(net), sat.onnx
        graph = load_onnx(sat.onnx_path)  # runs the project's own onnxruntime check as well
        ys = outputs_float64(graph, torch.from_numpy(xs.astype(np.float64)).reshape(-1, *graph.input_shape))
        np.testing.assert_allclose(ys.numpy().reshape(-1), exact, rtol=1e-9, atol=1e-9)


def test_files_parse_with_the_vnnlib_loader(family):
    _, instances = family
    for inst in instances:
        spec = vnnlib.load(inst.vnnlib_path, inst.n, 1)
        assert len(spec.disjuncts) == 1
        region = spec.disjuncts[0].region
        assert np.all(region.lower == 0.0) and np.all(region.upper == 1.0)
        assert _violates(spec, np.array([inst.threshold, np.nextafter(inst.threshold, -np.inf)])).tolist() \
            == [True, False]  # Y_0 >= T is the violation


def test_sat_twin_centre_violates_in_float32(family):
    _, instances = family
    for sat, unsat in _pairs(instances):
        shape = build_net(sat.kind, sat.n, 0)[0].input_shape
        y = _run32(_session(sat.onnx_path), np.array([sat.centre]), shape)
        assert _violates(vnnlib.load(sat.vnnlib_path, sat.n, 1), y).all(), sat.vnnlib
        assert not _violates(vnnlib.load(unsat.vnnlib_path, unsat.n, 1), y).any(), unsat.vnnlib


def test_no_violation_outside_the_subbox_and_none_at_all_for_unsat(family):
    _, instances = family
    rng = np.random.default_rng(2)
    for sat, unsat in _pairs(instances):
        shape = build_net(sat.kind, sat.n, 0)[0].input_shape
        session = _session(sat.onnx_path)
        c = np.array(sat.centre)
        far = rng.uniform(size=(1500, sat.n)).astype(np.float32)
        far = far[(np.abs(far - c) > HALF_WIDTH).any(axis=1)]
        near = np.concatenate([_outside_subbox(rng, c, 500, 3 * HALF_WIDTH),
                               _outside_subbox(rng, c, 500, 1.2 * HALF_WIDTH)])
        inside = np.concatenate([c + rng.uniform(-HALF_WIDTH, HALF_WIDTH, size=(500, sat.n)),
                                 c + rng.uniform(-1e-4, 1e-4, size=(500, sat.n)) * HALF_WIDTH]).astype(np.float32)
        y_out = _run32(session, np.concatenate([far, near]), shape)
        y_in = _run32(session, inside, shape)
        sat_spec, unsat_spec = vnnlib.load(sat.vnnlib_path, sat.n, 1), vnnlib.load(unsat.vnnlib_path, sat.n, 1)
        assert not _violates(sat_spec, y_out).any(), sat.vnnlib
        assert not _violates(unsat_spec, np.concatenate([y_out, y_in])).any(), unsat.vnnlib
        assert y_in.max() > y_out.max()  # the needle is what rises above the rest


def test_proof_margins_are_positive_and_recomputed_from_the_weights(family):
    _, instances = family
    for sat, unsat in _pairs(instances):
        net, proof = build_net(sat.kind, sat.n, 0)
        again = prove(net, sat.threshold, unsat.threshold)
        assert again == proof
        assert again.sat_margin > 0 and again.unsat_margin > 0 and sat.margin > 0 and unsat.margin > 0
        assert again.t_sat > again.g_box + again.eps                   # outside the needle: nothing
        assert again.height + again.g_centre - again.eps >= again.t_sat  # at the centre: a counterexample
        assert again.t_unsat > again.height + again.g_needle + again.eps
        # a threshold a hair lower (unsat) or higher (sat) than the proof allows is refused
        assert prove(net, sat.threshold, again.height + again.g_needle).unsat_margin < 0
        assert prove(net, again.height + again.g_centre + 1.0, unsat.threshold).sat_margin < 0


def test_projects_crown_confirms_both_verdicts_independently(family):
    """Outside the sub-box is the union of 2n slabs (x_i <= c_i - w or x_i >= c_i + w); CROWN
    in float64 bounds Y_0 below T_sat on every slab and below T_unsat on the sub-box."""
    _, instances = family
    for sat, unsat in _pairs(instances):
        if (sat.kind, sat.n) == ("mlp", 64):
            continue  # the largest mlp adds time and no new kind of graph
        model = load_model(sat.onnx_path)
        shape, n, c = model.graph.input_shape, sat.n, np.array(sat.centre)
        lower, upper = np.zeros((2 * n, n)), np.ones((2 * n, n))
        upper[np.arange(0, 2 * n, 2), np.arange(n)] = c - HALF_WIDTH
        lower[np.arange(1, 2 * n, 2), np.arange(n)] = c + HALF_WIDTH
        _, slab_upper = bounds(model, lower.reshape(-1, *shape), upper.reshape(-1, *shape), method="crown",
                               device="cpu", config=BoundsConfig(dtype="float64"))
        _, box_upper = bounds(model, (c - HALF_WIDTH).reshape(shape), (c + HALF_WIDTH).reshape(shape),
                              method="crown", device="cpu", config=BoundsConfig(dtype="float64"))
        assert float(slab_upper.max()) < sat.threshold, sat.vnnlib
        assert float(box_upper.max()) < unsat.threshold, unsat.vnnlib


def test_parameter_counts_stay_small_for_every_default_size():
    for kind, n in [("mlp", 2), ("mlp", 20), ("mlp", 784), ("cnn", 784)]:
        net, proof = build_net(kind, n, 3)
        assert 100 <= count_params(net) <= 60_000, (kind, n)
        assert proof.sat_margin > 0 and proof.unsat_margin > 0


def test_cnn_of_a_non_square_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="square"):
        generate(tmp_path, inputs=[20], kinds=["cnn"])


_VERIFY_SCRIPT = textwrap.dedent("""
    # Each instance in a forked child: the CLI's watchdog ends only that child on overrun.
    import os, sys
    import verifier.cli, verifier.verify, verifier.model, vnnlib  # imported once, before forking
    for model, spec, results in zip(*[iter(sys.argv[1:])] * 3):
        pid = os.fork()
        if pid == 0:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)  # the watchdog prints its verdict; the parent's stdout is for exit codes
            os._exit(verifier.cli.main(["verify", model, spec, "--timeout", "1.5", "--results-file", results, "-q"]))
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the script forks one child per instance")
def test_nncert_verify_accepts_the_files_and_is_never_wrong(family, tmp_path):
    _, instances = family
    chosen = [i for i in instances if (i.kind, i.n) in (("mlp", 2), ("cnn", 20))]
    argv = []
    for k, inst in enumerate(chosen):
        argv += [inst.onnx_path, inst.vnnlib_path, str(tmp_path / f"{k}.txt")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _VERIFY_SCRIPT, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0"] * len(chosen), proc.stderr
    for k, inst in enumerate(chosen):
        verdict = vnnlib.read_results(tmp_path / f"{k}.txt")[0]
        assert verdict in ("sat", "unsat", "unknown", "timeout"), (inst.vnnlib, verdict)
        assert verdict in (inst.expected, "unknown", "timeout"), (inst.vnnlib, verdict)


def test_module_command_writes_a_family_the_bench_reads(tmp_path):
    out = tmp_path / "needles"
    proc = subprocess.run([sys.executable, "-m", "verifier.bench.needles", "generate", str(out), "--inputs", "2,16",
                           "--kind", "both", "--seed", "5", "--timeout", "30"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    instances = read_instances(out / "instances.csv")
    assert len(instances) == 6 and {i.family for i in instances} == {"needles"}
    assert all(i.timeout == 30.0 and Path(i.onnx_path).is_file() and Path(i.vnnlib_path).is_file()
               for i in instances)
    table = read_expected(out / "expected.csv")
    assert [expected_for(table, i) for i in instances] == ["sat", "unsat"] * 3
    assert "needle_cnn_n16_s5.onnx" in {Path(i.onnx).name for i in instances}
