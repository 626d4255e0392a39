"""LP refinement and the exact MILP (HiGHS): sound by sampling, exact against a grid, and in `verify()`."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import GraphEvaluator
from relaxations import BoundOptions, IntervalBounds, compute_bounds
from relaxations.sdp.network import NotReluMlp
from tests.helpers import relu_mlp_onnx, sample_box
from verifier.model import load_model
from verifier.lp.refine import MilpNetwork, exact_milp, lp_supported, refine_bounds


def _net(tmp_path, seed: int, widths):
    return load_model(relu_mlp_onnx(tmp_path / f"n{seed}.onnx", seed, widths))


def _crown_table(model, lo, hi):
    shape = (1, *model.graph.input_shape)
    box = IntervalBounds(torch.tensor(lo, dtype=torch.float32).reshape(shape),
                         torch.tensor(hi, dtype=torch.float32).reshape(shape))
    res = compute_bounds(model.graph, box, None, BoundOptions(method="crown"), want_upper=False)
    return {k: (v.lower[0].double().numpy().ravel(), v.upper[0].double().numpy().ravel()) for k, v in res.table.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_refined_intervals_contain_every_sampled_value(tmp_path, seed: int) -> None:
    model = _net(tmp_path, seed, (3, 24, 24, 24, 2))
    lo, hi = -np.ones(3), np.ones(3)
    table = _crown_table(model, lo, hi)
    ref = refine_bounds(model.graph, lo, hi, table, deadline=float("inf"))
    assert ref.complete and ref.lps > 0
    shape = (1, *model.graph.input_shape)
    xs = sample_box(torch.tensor(lo).reshape(shape), torch.tensor(hi).reshape(shape), 4000, seed)
    values = GraphEvaluator(model.graph, dtype=torch.float64).forward_all(xs)
    for name, (rlo, rhi) in ref.intervals.items():
        v = values[name].reshape(len(xs), -1).numpy()
        assert np.all(v >= rlo - 1e-9) and np.all(v <= rhi + 1e-9), f"a sample escapes the refined {name}"
        assert np.all(rlo >= table[name][0]) and np.all(rhi <= table[name][1]), "refinement loosened an interval"
    assert ref.tightened > 0, "the LP tightened nothing on a deep random net (CROWN is not exact there)"


def test_refinement_ends_when_stopped(tmp_path) -> None:
    """The MILP's thread refines beside the search; a stopped runner must not keep
    solving LPs after the run: `stop()` ends refinement as the deadline does."""
    model = _net(tmp_path, 0, (3, 24, 24, 24, 2))
    lo, hi = -np.ones(3), np.ones(3)
    calls = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 3

    ref = refine_bounds(model.graph, lo, hi, _crown_table(model, lo, hi), deadline=float("inf"), stop=stop)
    assert not ref.complete and ref.lps == 6, (ref.complete, ref.lps)


def _grid_min(model, C, d, n: int = 401) -> float:
    g = np.linspace(-1, 1, n)
    xs = torch.tensor(np.stack(np.meshgrid(g, g), -1).reshape(-1, *model.graph.input_shape))
    y = GraphEvaluator(model.graph, dtype=torch.float64)(xs).reshape(len(xs), -1).numpy()
    return float(np.max(y @ C.T - d, axis=1).min())


@pytest.mark.parametrize("seed", [3, 4])
def test_milp_finds_the_minimum_of_a_two_input_net(tmp_path, seed: int) -> None:
    """The MILP's bound is at most the true minimum (sampled on a grid) and its point attains it."""
    model = _net(tmp_path, seed, (2, 16, 16, 3))
    lo, hi = -np.ones(2), np.ones(2)
    table = _crown_table(model, lo, hi)
    C = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    true_min = _grid_min(model, C, np.zeros(2))
    for d in (np.full(2, true_min - 0.05), np.full(2, true_min + 0.05)):   # just unsat, just sat
        res = exact_milp(MilpNetwork(model.graph, lo, hi, table), C, d, deadline=float("inf"))
        assert res.bound <= _grid_min(model, C, d) + 1e-6
        if d[0] < true_min:
            assert res.status == "proved"
        else:
            assert res.status == "counterexample"
            y = GraphEvaluator(model.graph, dtype=torch.float64)(torch.tensor(res.point).reshape(1, *model.graph.input_shape)).numpy().ravel()
            assert np.max(C @ y - d) <= 1e-5


def test_graphs_the_lp_cannot_encode_are_refused(tmp_path) -> None:
    from onnx import helper

    from tests.op_cases import make_model

    nodes = [helper.make_node("Sigmoid", ["X"], ["Y"])]
    path = tmp_path / "sig.onnx"
    path.write_bytes(make_model(nodes, {}, (1, 2), (1, 2)).SerializeToString())
    model = load_model(path)
    assert lp_supported(model.graph) is not None
    with pytest.raises(NotReluMlp):
        refine_bounds(model.graph, -np.ones(2), np.ones(2), {}, deadline=float("inf"))


@pytest.fixture(scope="module")
def needle_pair(tmp_path_factory):
    from verifier.bench.needles import generate

    return generate(tmp_path_factory.mktemp("needles"), inputs=[20], kinds=["mlp"], timeout=60)


@pytest.mark.parametrize("milp", ["parallel", "before"])
def test_verify_decides_a_20_input_needle_pair_by_the_milp(needle_pair, milp: str) -> None:
    """A 20-input needle (the search alone times out on both twins at 60 s, BENCHMARKS.md):
    the MILP beside the search decides both; the MILP before it, after LP refinement, the
    unsat twin (the sat one takes the same code path)."""
    import vnnlib
    from verifier.config import Config, with_overrides
    from verifier.verify import verify

    refine = "true" if milp == "before" else "false"      # one variant goes through LP refinement first
    # Generous: the MILP takes 3-10 s here, but a loaded machine must not make the test flaky.
    # The narrowing attack off: it meets the sat twin at the search's root, before the MILP (tests/bab/test_narrowing.py).
    cfg = with_overrides(Config(timeout=120), [f"lp.milp={milp}", f"lp.refine={refine}", "lp.refine_share=0.1",
                                               "bab.narrowing_attack=false"])
    for inst in needle_pair if milp == "parallel" else [i for i in needle_pair if i.expected == "unsat"]:
        model = load_model(inst.onnx_path)
        spec = vnnlib.load(inst.vnnlib_path, model.n_inputs, model.n_outputs)
        res = verify(model, spec, cfg)
        assert res.verdict == inst.expected and res.method == "milp", (inst.vnnlib, res.verdict, res.reason)
        if res.verdict == "unsat":
            assert res.proof["disjuncts"][0]["kind"] == "milp"
            assert "not checkable" in res.proof["disjuncts"][0]["certificate"]


def test_the_milp_thread_refines_first_on_an_mlp_not_by_the_first_layer_rule(tmp_path) -> None:
    """64-input needles. On the MLP (at most lp.milp_max_unstable unstable neurons) the
    thread's LP refinement (lp.milp_refine, on by default) tightens the MILP's big-M
    constants first. On the CNN the MILP runs by the first-layer rule, whose intervals LPs
    cannot tighten: no refinement, and the MILP decides both twins (with its cutoff in
    well under a second; the refinement's LPs took longer than the MILP)."""
    import vnnlib
    from verifier.config import Config, with_overrides
    from verifier.bench.needles import generate
    from verifier.verify import verify

    made = generate(tmp_path, inputs=[64], kinds=["mlp", "cnn"], timeout=60)
    cases = [i for i in made if "cnn" in i.onnx_path] + [i for i in made if "mlp" in i.onnx_path
                                                           and i.expected == "unsat"]
    assert len(cases) == 3
    # The narrowing attack off: it meets the sat twin at the search's root, before the MILP.
    cfg = with_overrides(Config(timeout=120), ["bab.narrowing_attack=false"])
    for inst in cases:
        model = load_model(inst.onnx_path)
        res = verify(model, vnnlib.load(inst.vnnlib_path, model.n_inputs, model.n_outputs), cfg)
        assert res.verdict == inst.expected and res.method == "milp", (inst.vnnlib_path, res.verdict, res.reason)
        milp = res.stats["lp"][0]["milp"]
        if "cnn" in inst.onnx_path:
            assert "refine" not in milp, milp
        else:
            assert milp["refine"]["tightened"] > 0, milp


def test_a_milp_unsat_says_so_and_its_certificate_says_it_cannot_be_checked(tmp_path) -> None:
    """A threshold just above a 2-input net's maximum: CROWN cannot prove it, the MILP does;
    the reason names the MILP and the certificate refuses to pretend it is checkable."""
    import vnnlib
    from verifier.certificates.writer import build_certificate
    from verifier.config import Config, with_overrides
    from verifier.verify import verify

    model = _net(tmp_path, 3, (2, 16, 16, 3))
    g = np.linspace(-1, 1, 401)
    xs = torch.tensor(np.stack(np.meshgrid(g, g), -1).reshape(-1, *model.graph.input_shape))
    top = float(GraphEvaluator(model.graph, dtype=torch.float64)(xs).reshape(len(xs), -1)[:, 0].max())
    spec_path = tmp_path / "p.vnnlib"
    spec_path.write_text("".join(f"(declare-const X_{i} Real)\n" for i in range(2))
                         + "".join(f"(declare-const Y_{i} Real)\n" for i in range(3))
                         + "".join(f"(assert (>= X_{i} -1))\n(assert (<= X_{i} 1))\n" for i in range(2))
                         + f"(assert (>= Y_0 {top + 0.02:.6f}))\n")
    spec = vnnlib.load(spec_path, 2, 3)
    cfg = with_overrides(Config(timeout=60, proof=True),
                         ["lp.milp=before", "bab.input_split_max_dims=0", "attack.enabled=false"])
    res = verify(model, spec, cfg)
    assert res.verdict == "unsat" and res.method == "milp", (res.verdict, res.reason, res.stats.get("bounds"))
    assert "MILP" in res.reason
    cert = build_certificate(model, spec_path, spec, res)
    assert cert["certificate"].startswith("not checkable") and "disjuncts" not in cert


def _two_input_cnn(tmp_path, seed: int):
    """Conv (1x1, 12 channels) -> Relu -> Pad -> AveragePool -> Flatten -> Gemm over a 1x2
    image: one hidden layer, every ReLU fed by the input through affine ops alone, and an
    affine tail of three nodes that the LP reads as one matrix."""
    from onnx import helper

    from tests.op_cases import make_model

    r = np.random.default_rng(seed)
    inits = {"W": r.normal(size=(12, 1, 1, 1)).astype(np.float32), "b": (0.3 * r.normal(size=12)).astype(np.float32),
             "p": np.array([0, 0, 0, 0, 0, 0, 0, 1], np.int64), "G": r.normal(size=(24, 3)).astype(np.float32),
             "c": r.normal(size=3).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["X", "W", "b"], ["c0"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]), helper.make_node("Pad", ["r0", "p"], ["p0"]),
             helper.make_node("AveragePool", ["p0"], ["a0"], kernel_shape=[1, 2]),
             helper.make_node("Flatten", ["a0"], ["f0"]), helper.make_node("Gemm", ["f0", "G", "c"], ["Y"])]
    path = tmp_path / f"cnn{seed}.onnx"
    path.write_bytes(make_model(nodes, inits, (1, 1, 1, 2), (1, 3)).SerializeToString())
    return load_model(path)


@pytest.mark.parametrize("seed", [5, 6])
def test_milp_finds_the_minimum_of_a_two_input_cnn(tmp_path, seed: int) -> None:
    """The LP of a CNN has columns only at the input, the ReLU and the output (its affine tail
    read as one matrix); the MILP over it proves just below the true minimum and finds a
    point just above it."""
    model = _two_input_cnn(tmp_path, seed)
    assert lp_supported(model.graph) is None
    lo, hi = -np.ones(2), np.ones(2)
    table = _crown_table(model, lo, hi)
    C = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    true_min = _grid_min(model, C, np.zeros(2))
    for d in (np.full(2, true_min - 0.05), np.full(2, true_min + 0.05)):
        res = exact_milp(MilpNetwork(model.graph, lo, hi, table), C, d, deadline=float("inf"))
        assert res.bound <= _grid_min(model, C, d) + 1e-6
        assert res.status == ("proved" if d[0] < true_min else "counterexample"), (d, res)
        if res.status == "counterexample":
            y = GraphEvaluator(model.graph, dtype=torch.float64)(
                torch.tensor(res.point).reshape(1, *model.graph.input_shape)).numpy().ravel()
            assert np.max(C @ y - d) <= 1e-5


def test_one_milp_answers_each_conjunction(tmp_path) -> None:
    """`SpecMilp` writes the network once and solves conjunction by conjunction: each answer
    is the one a MILP of that conjunction alone gives, and a proof's bound never exceeds
    the conjunction's true minimum."""
    from verifier.lp.refine import SpecMilp

    model = _two_input_cnn(tmp_path, 7)
    lo, hi = -np.ones(2), np.ones(2)
    net = MilpNetwork(model.graph, lo, hi, _crown_table(model, lo, hi))
    rows = [np.array([[1.0, -1.0, 0.0]]), np.array([[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0]]), np.array([[0.0, 0.0, 1.0]])]
    mins = [_grid_min(model, R, np.zeros(len(R))) for R in rows]
    ds = [np.full(len(R), m + s) for R, m, s in zip(rows, mins, (-0.05, 0.05, -0.05))]
    milp = SpecMilp(net, np.concatenate(rows), np.concatenate(ds), np.repeat(np.arange(3), [len(R) for R in rows]))
    for k, (R, d) in enumerate(zip(rows, ds)):
        together, alone = milp.solve(k, float("inf")), exact_milp(net, R, d, deadline=float("inf"))
        assert together.status == alone.status == ("proved" if k != 1 else "counterexample"), (k, together, alone)
        assert together.bound <= _grid_min(model, R, d) + 1e-6


def test_a_chain_too_large_to_read_is_refused() -> None:
    """A convolution from a 3x64x64 image to 16x64x64 channels is 12,288 x 65,536 pairs to
    probe: lp_supported says which node ends the chain, and the LP phase is skipped."""
    from onnx import helper

    from models import graph_from_proto
    from tests.op_cases import make_model

    r = np.random.default_rng(0)
    inits = {"W": r.normal(size=(16, 3, 3, 3)).astype(np.float32), "G": r.normal(size=(16 * 64 * 64, 2)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["X", "W"], ["c0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]), helper.make_node("Flatten", ["r0"], ["f0"]),
             helper.make_node("Gemm", ["f0", "G"], ["Y"])]
    graph = graph_from_proto(make_model(nodes, inits, (1, 3, 64, 64), (1, 2)))
    assert "'Conv_0' (Conv) ends an affine map too large" in (lp_supported(graph) or ""), lp_supported(graph)


@pytest.mark.parametrize("weight, runs", [(0.02, True), (1.0, False)])
def test_first_layer_neurons_count_less_against_the_milp_limit(tmp_path, weight: float, runs: bool) -> None:
    """Unstable neurons in a ReLU fed by the input alone count `lp.milp_first_weight` each
    against `lp.milp_max_unstable`: the CNN's few of them are under a limit of 1 at 0.02,
    over it at 1; the MILP proves the spec when it runs."""
    import time

    import vnnlib
    from verifier.config import Config, with_overrides
    from verifier.lp.phase import ConjunctionRows, lp_phase
    from verifier.searches import spec_rows

    model = _two_input_cnn(tmp_path, 5)
    y0_min = _grid_min(model, np.array([[1.0, 0.0, 0.0]]), np.zeros(1))
    disjunct = vnnlib.Disjunct(vnnlib.InputRegion(-np.ones(2), np.ones(2)), (vnnlib.OutputConstraints(
        np.array([[1.0, 0.0, 0.0]]), np.array([y0_min - 0.05]), np.array([False])),))
    C, d, _, owner = spec_rows(disjunct)
    cfg = with_overrides(Config(timeout=30), ["lp.milp=before", "lp.milp_max_unstable=1",
                                              f"lp.milp_first_weight={weight}"])
    out = lp_phase(model, GraphEvaluator(model.graph, dtype=torch.float32), disjunct,
                   ConjunctionRows(C, d, owner, 1), cfg, time.monotonic() + 30)
    assert out.proved == runs and ("milp" in out.stats) == runs, out.stats


@pytest.mark.parametrize("cnn, first, deep, runs", [
    (True, 50, 10, True), (True, 50, 70, False), (True, 5000, 10, True), (True, 20000, 10, False),
    (False, 50, 300, True), (False, 300, 300, False)])
def test_when_the_milp_runs(cnn: bool, first: int, deep: int, runs: bool) -> None:
    """An MLP keeps the plain limit (400 unstable neurons); a CNN needs at most 64 unstable
    past the first layer, its first layer counting 0.02 each against the 400 (an MLP may
    take that road too)."""
    from tests.builders import relu_mlp_graph, small_relu_cnn
    from verifier.config import Config
    from verifier.lp.phase import _too_many_unstable
    from verifier.model import Model

    graph = small_relu_cnn() if cnn else relu_mlp_graph(0, (5, 20, 20, 4))
    relus = [n.inputs[0] for n in graph.nodes if n.op == "Relu"]

    def interval(unstable: int) -> tuple[np.ndarray, np.ndarray]:
        lo = np.concatenate([-np.ones(unstable), np.ones(30000)])
        return lo, np.ones_like(lo)

    intervals = {relus[0]: interval(first), relus[1]: interval(deep)}
    model = Model(graph=graph, path="x.onnx", onnx_bytes=b"")
    assert _too_many_unstable(model, relus, intervals, Config().lp) == (not runs)
