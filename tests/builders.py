"""Builders shared by several test files: small networks, specs, exact minima, clipping
instances, certificate checks and empirical Lipschitz estimates.

Each of these once lived, private, in the test file that needed it first, and other test
files imported it from there, so that editing one test file could break another. What
more than one test file needs lives here instead, under a public name; test files import
from this module (and tests.helpers, tests.op_cases), never from each other."""
from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from scipy.optimize import linprog
from torch import nn

import vnnlib
from models import Graph, GraphEvaluator, graph_from_proto, load_onnx
from models.lipschitz_layers import (GershgorinResidual, LipschitzModule, OrthogonalLinear, SandwichLayer, SandwichNet,
                                     SLLLayer, SLLNet)
from relaxations.lipschitz.network import FeedForward
from tests.helpers import relu_mlp_layers, relu_mlp_onnx
from tests.op_cases import make_model
from verifier import Config, load_model, verify
from verifier.checker.verdict import check_certificate
from verifier.config import with_overrides


# ------------------------------------------------------------------------------------------------
# Tiny ReLU nets whose minimum over [-1, 1]^2 is known from a dense grid (tests/bab/test_known_answers.py).


def known_answer_net(tmp_path, seed: int, widths=(2, 16, 16, 1)):
    """A ReLU MLP (tests.helpers.relu_mlp_onnx, seeded) saved under tmp_path and loaded as a model."""
    return load_model(relu_mlp_onnx(tmp_path / f"net{seed}.onnx", seed, widths))


def known_answer_min(model) -> float:
    """The true minimum of a 2-input, 1-output model over [-1, 1]^2, from an 801 x 801 grid."""
    g = np.linspace(-1, 1, 801)
    xs = np.stack(np.meshgrid(g, g), -1).reshape(-1, 1, 2)
    ev = GraphEvaluator(model.graph, dtype=torch.float64)
    return float(ev(torch.from_numpy(xs)).min())


def known_answer_spec(threshold: float) -> vnnlib.Spec:
    """Counterexample: y <= threshold somewhere in [-1, 1]^2."""
    region = vnnlib.InputRegion(np.full(2, -1.0), np.full(2, 1.0))
    conj = vnnlib.OutputConstraints(np.array([[1.0]]), np.array([threshold]), np.array([False]))
    return vnnlib.Spec(2, 1, (vnnlib.Disjunct(region, (conj,)),))


# ------------------------------------------------------------------------------------------------
# Three-output nets: per-output minima, a four-conjunction spec, activation-split configs (tests/bab/test_warm_rows.py).


_MINS_GRID = np.linspace(-1, 1, 301)


def output_mins(model) -> np.ndarray:
    """The true minimum of each output over [-1, 1]^2 (a fine grid; the nets are small)."""
    xs = np.stack(np.meshgrid(_MINS_GRID, _MINS_GRID), -1).reshape(-1, 1, 2)
    ev = GraphEvaluator(model.graph, dtype=torch.float64)
    return ev(torch.from_numpy(xs)).numpy().reshape(len(xs), -1).min(0)


def four_conjunction_spec(t: np.ndarray) -> vnnlib.Spec:
    """Four conjunctions over three outputs: y0 <= t0; y1 <= t1; (y2 <= t2 and y0 <= t0 + 1);
    y1 + y2 <= t1 + t2 (sat iff one of them holds somewhere in [-1, 1]^2)."""
    region = vnnlib.InputRegion(np.full(2, -1.0), np.full(2, 1.0))
    one = lambda row, d: vnnlib.OutputConstraints(np.array([row], float), np.array([d]), np.array([False]))  # noqa: E731
    conj = (one([1, 0, 0], t[0]), one([0, 1, 0], t[1]),
            vnnlib.OutputConstraints(np.array([[0, 0, 1], [1, 0, 0]], float), np.array([t[2], t[0] + 1.0]),
                                     np.array([False, False])),
            one([0, 1, 1], t[1] + t[2]))
    return vnnlib.Spec(2, 3, (vnnlib.Disjunct(region, conj),))


def activation_split_config(timeout: float = 30, *sets: str) -> Config:
    """Activation split with attack and MILP off, the given timeout and further overrides."""
    return with_overrides(Config(timeout=timeout), ["bab.mode=activation", "attack.enabled=false",
                                                     "attack.samples=1", "lp.milp=off", *sets])


# ------------------------------------------------------------------------------------------------
# Random clipping instances and their LP oracle (tests/bab/test_clipping.py).


_CONSTRAINT_KINDS = ("cut", "tangent", "infeasible", "loose")


def clip_instances(rng: np.random.Generator, N: int, n: int, K: int = 1) -> dict[str, np.ndarray]:
    """Random boxes and K constraints each, float64, with degenerate cases mixed in."""
    lo = rng.uniform(-2, 1, (N, n))
    hi = lo + rng.uniform(0, 2, (N, n)) * (rng.random((N, n)) > 0.15)      # some zero widths
    a = rng.normal(0, 1, (N, K, n)) * (rng.random((N, K, n)) > 0.2)         # some zero coefficients
    a = np.where(np.abs(a) < 1e-3, 0.0, a)
    amin = np.minimum(a * lo[:, None], a * hi[:, None]).sum(-1)             # min of a^T x over the box
    amax = np.maximum(a * lo[:, None], a * hi[:, None]).sum(-1)
    kind = rng.integers(0, len(_CONSTRAINT_KINDS), (N, K))
    kind = np.where(rng.random((N, K)) < 0.7, 0, kind)                      # mostly cutting constraints
    t = rng.uniform(0, 1, (N, K))
    level = np.select([kind == 0, kind == 1, kind == 2, kind == 3],
                      [amin + t * (amax - amin), amin, amin - 0.1 - t, amax + 0.1 + t])
    return {"lo": lo, "hi": hi, "a": a, "c": -level, "kind": kind}


def to_tensor(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A numpy array as a contiguous torch tensor of the given dtype."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype)


def clip_objective(w: torch.Tensor, b: torch.Tensor, mass=None):
    """The clipping duals' objective `w^T x + b` as LinearBounds, with no rounding mass in b unless given."""
    from relaxations.bounds import LinearBounds
    return LinearBounds(w, b, torch.zeros_like(b) if mass is None else mass)


def clip_lp_min(obj: np.ndarray, lo: np.ndarray, hi: np.ndarray, A: np.ndarray, c: np.ndarray):
    """min obj^T x s.t. A x + c <= 0, lo <= x <= hi; None when infeasible."""
    r = linprog(obj, A_ub=A, b_ub=-c, bounds=list(zip(lo, hi)), method="highs")
    if r.status == 2:
        return None
    assert r.status == 0, r.message
    return float(r.fun)


# ------------------------------------------------------------------------------------------------
# Small graphs for the bound propagators (tests/relaxations/test_crown.py).


def linear_gemm_net(seed: int, widths=(4, 7, 5, 3)):
    """A chain of Gemm layers (no activation) and the affine map (W, b) it computes exactly."""
    r = np.random.default_rng(seed)
    nodes, inits, prev = [], {}, "X"
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        inits[f"W{i}"] = r.normal(size=(a, b)).astype(np.float32)
        inits[f"b{i}"] = r.normal(size=b).astype(np.float32)
        out = "Y" if i == len(widths) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [out]))
        prev = out
    W = np.eye(widths[0])
    b = np.zeros(widths[0])
    for i in range(len(widths) - 1):
        W, b = W @ inits[f"W{i}"].astype(np.float64), b @ inits[f"W{i}"].astype(np.float64) + inits[f"b{i}"]
    return graph_from_proto(make_model(nodes, inits, (1, widths[0]), (1, widths[-1]))), W, b


def relu_mlp_graph(seed: int, widths=(5, 20, 20, 4)):
    """A random ReLU MLP (tests.helpers.relu_mlp_layers) as a Graph."""
    nodes, inits = relu_mlp_layers(np.random.default_rng(seed), widths, 1.0, 0.1)
    return graph_from_proto(make_model(nodes, inits, (1, widths[0]), (1, widths[-1])))


def small_relu_cnn(seed: int = 0) -> Graph:
    """Conv -> Relu -> Conv (stride 2) -> Relu -> Flatten -> Gemm, input [1, 1, 6, 6]."""
    r = np.random.default_rng(seed)
    inits = {"W0": r.normal(size=(3, 1, 3, 3)).astype(np.float32) / 2, "b0": r.normal(size=3).astype(np.float32) / 4,
             "W1": r.normal(size=(4, 3, 3, 3)).astype(np.float32) / 4, "b1": r.normal(size=4).astype(np.float32) / 4,
             "W2": r.normal(size=(4 * 3 * 3, 3)).astype(np.float32) / 6, "b2": r.normal(size=3).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["X", "W0", "b0"], ["c0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "W1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("Flatten", ["r1"], ["f"]),
             helper.make_node("Gemm", ["f", "W2", "b2"], ["Y"])]
    return graph_from_proto(make_model(nodes, inits, (1, 1, 6, 6), (1, 3)))


# ------------------------------------------------------------------------------------------------
# Certificates: a normalised MLP written with onnx.helper, and the checker's call (tests/verifier/certificates).


def normalised_mlp_onnx(path: Path, sizes: list[int], seed: int, op: str = "Relu") -> Path:
    """Gemm/Relu network (a Sub normalisation in front) written with onnx.helper."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(np.full((1, sizes[0]), 0.1, np.float32), "mean")]
    nodes = [helper.make_node("Sub", ["x", "mean"], ["h0"])]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = (rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(
            (0.1 * rng.standard_normal(b)).astype(np.float32), f"B{i}")]
        out = "y" if i == len(sizes) - 2 else f"z{i}"
        nodes.append(helper.make_node("Gemm", [f"h{i}", f"W{i}", f"B{i}"], [out], transB=1))
        if out != "y":
            nodes.append(helper.make_node(op, [out], [f"h{i + 1}"]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, sizes[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, sizes[-1]])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def check_certificate_for(cert: dict, model, spec_path: Path):
    """The independent checker's verdict on cert for model and the spec file at spec_path."""
    return check_certificate(cert, model.onnx_bytes, spec_path.read_text(), str(spec_path))


def find_activation_split_run(tmp, config: Config, accept):
    """A 4-32-32-3 MLP at a radius where alpha-CROWN alone fails and activation split
    proves it (radii found by hand; others tried if that moves): the first run `accept`s."""
    model = load_model(normalised_mlp_onnx(tmp / "net.onnx", [4, 32, 32, 3], 3))
    x0 = np.random.default_rng(3).uniform(0.2, 0.8, 4)
    label = int(np.argmax(model.run_onnxruntime(x0.astype(np.float32))))
    for k, eps in enumerate((0.185, 0.19, 0.18, 0.195, 0.2)):
        path = tmp / f"spec{k}.vnnlib"
        vnnlib.write_vnnlib(path, vnnlib.robustness_spec(x0, eps, label, 3))
        spec = vnnlib.load(path, model.n_inputs, model.n_outputs)
        result = verify(model, spec, config)
        if accept(result):
            return model, path, spec, result
    pytest.skip(reason="no radius gives the activation-split proof this test needs")


# ------------------------------------------------------------------------------------------------
# Lipschitz-by-construction layers with random parameters (tests/models/test_lipschitz_layers.py).


LIPSCHITZ_FACTORIES: dict[str, Callable[[], LipschitzModule]] = {
    "sandwich": lambda: SandwichLayer(5, 7),
    "sandwich_scaled": lambda: SandwichLayer(7, 4, input_scale=2.0, output_scale=0.7),
    "sandwich_net": lambda: SandwichNet(4, [8, 6], 3, gamma=3.0),
    "sll": lambda: SLLLayer(6),
    "sll_wide": lambda: SLLLayer(5, hidden=11),
    "gershgorin": lambda: GershgorinResidual(6, hidden=9),
    "sll_net": lambda: SLLNet(4, 8, 3, 2, gamma=2.0),
    "gershgorin_net": lambda: SLLNet(4, 8, 2, 3, gamma=0.5, layer="gershgorin"),
    "orthogonal_down": lambda: OrthogonalLinear(6, 3, scale=1.5),
    "orthogonal_up": lambda: OrthogonalLinear(3, 6),
}


def randomised_lipschitz_module(name: str, seed: int) -> LipschitzModule:
    """A module whose parameters are random, well away from their initialisation."""
    torch.manual_seed(seed)
    module = LIPSCHITZ_FACTORIES[name]()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.7 * torch.randn_like(p))
    return module


# ------------------------------------------------------------------------------------------------
# Export to a Graph and an empirical Lipschitz constant (tests/relaxations/test_lipschitz_graph_naive.py).


def export_graph(module: nn.Module, shape: tuple[int, ...], path: Path) -> Graph:
    """A torch module exported to ONNX at path (opset 17) and read back as a Graph."""
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(shape),), str(path), input_names=["input"],
                          output_names=["output"], opset_version=17, dynamo=False)
    return load_onnx(path)


def _norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    """The l2 or l-inf norm of each row of v, flattened."""
    return torch.linalg.vector_norm(v.flatten(1), ord=2 if norm == "2" else float("inf"), dim=1)


def empirical_lipschitz(graph: Graph, norm: str, seed: int = 0, steps: int = 80) -> float:
    """Largest |f(x) - f(y)| / |x - y| found by random pairs and by Adam on pairs (float64)."""
    ev = GraphEvaluator(graph, dtype=torch.float64)
    f: Callable[[torch.Tensor], torch.Tensor] = ev
    g = torch.Generator().manual_seed(seed)
    shape = tuple(graph.input_shape)
    x = torch.randn(256, *shape, generator=g, dtype=torch.float64) * 2
    scales = 10.0 ** (torch.rand(256, *[1] * len(shape), generator=g, dtype=torch.float64) * 3 - 3)
    d = scales * torch.randn(x.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        best = float((_norm(f(x + d) - f(x), norm) / _norm(d, norm)).max())
    x = x[:64].clone().requires_grad_()
    d = (1e-2 * torch.randn(x.shape, generator=g, dtype=torch.float64)).requires_grad_()
    opt = torch.optim.Adam([x, d], lr=0.03)
    for _ in range(steps):
        ratio = _norm(f(x + d) - f(x), norm) / _norm(d, norm).clamp_min(1e-12)
        best = max(best, float(ratio.detach().max()))
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    return best


# ------------------------------------------------------------------------------------------------
# Random FeedForward nets and their largest sampled gradient norm (tests/relaxations/lipschitz/test_local.py).


_PHI = {"relu": torch.relu, "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, 0.1),
        "sigmoid": torch.sigmoid, "tanh": torch.tanh}


def random_feedforward(seed: int, act: str, sizes=(4, 12, 10, 8, 3)) -> FeedForward:
    """A random FeedForward net (1/sqrt(fan-in) weights) with the given activation."""
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((sizes[i + 1], sizes[i])) / np.sqrt(sizes[i]) for i in range(len(sizes) - 1)]
    bs = [rng.standard_normal(sizes[i + 1]) * 0.3 for i in range(len(sizes) - 1)]
    return FeedForward(tuple(ws), tuple(bs), act, 0.1)


def grad_norms(net: FeedForward, X: torch.Tensor, c: torch.Tensor, norm: str, create_graph: bool = False):
    """Dual norms of grad (c . f) at the rows of X (float64), differentiable if asked."""
    z = X
    for w, b in zip(net.weights[:-1], net.biases[:-1]):
        z = _PHI[net.activation](z @ torch.tensor(w).T + torch.tensor(b))
    y = (z @ torch.tensor(net.weights[-1]).T) @ c
    g, = torch.autograd.grad(y.sum(), X, create_graph=create_graph)
    return g.abs().sum(1) if norm == "inf" else g.norm(dim=1)


def empirical_max_grad_norm(net: FeedForward, x0: np.ndarray, r: float, c: np.ndarray, norm: str,
                            seed: int = 0) -> float:
    """Largest gradient dual norm found by dense sampling, corners and sign-gradient ascent."""
    rng = np.random.default_rng(seed)
    n = x0.size
    pts = np.concatenate([x0 + rng.uniform(-r, r, (4000, n)), x0 + r * rng.choice([-1.0, 1.0], (500, n))])
    ct = torch.tensor(c)
    X = torch.tensor(pts, requires_grad=True)
    best = float(grad_norms(net, X, ct, norm).max())
    # ascent on a smoothed surrogate is useless for ReLU (piecewise-constant gradient norm),
    # so move along the input gradient of c.f towards the region boundaries: random restarts
    X = torch.tensor(x0 + rng.uniform(-r, r, (200, n)), requires_grad=True)
    lo, hi = torch.tensor(x0 - r), torch.tensor(x0 + r)
    for _ in range(30):
        v = grad_norms(net, X, ct, norm, create_graph=net.activation in ("sigmoid", "tanh"))
        best = max(best, float(v.detach().max()))
        if net.activation in ("sigmoid", "tanh"):
            step, = torch.autograd.grad(v.sum(), X)
        else:
            step = torch.randn_like(X)
        with torch.no_grad():
            X = torch.clamp(X + 0.2 * r * step.sign(), lo, hi).requires_grad_(True)
    return best


# ------------------------------------------------------------------------------------------------
# Random MLP weights and their exact minimum by a big-M MILP (tests/verifier/test_sdp.py).


def random_mlp_weights(seed: int, sizes):
    """Random MLP weights and biases, rounded through float32 as the graph stores them."""
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(sizes[k + 1], sizes[k])) / np.sqrt(sizes[k]) * 1.5 for k in range(len(sizes) - 1)]
    bs = [rng.normal(size=s) * 0.3 for s in sizes[1:]]
    f32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731  (the graph stores float32)
    return [f32(w) for w in ws], [f32(b) for b in bs]


def milp_min(ws, bs, c, lo, hi, pl, pu) -> float:
    """Exact min of c^T f(x) over the box: big-M MILP (HiGHS) with sound bounds pl, pu."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    sizes = [ws[0].shape[1]] + [w.shape[0] for w in ws[:-1]]
    nz = sum(sizes[1:])
    nvar = sizes[0] + 2 * nz  # x, z (post-activations), a (binaries)
    rows, lb, ub = [], [], []
    col_lo = np.concatenate([lo, np.zeros(nz), np.zeros(nz)])
    col_hi = np.concatenate([hi, np.concatenate([np.maximum(u, 0) for u in pu]), np.ones(nz)])
    prev = np.arange(sizes[0])
    zpos = sizes[0]
    for k, (w, b) in enumerate(zip(ws[:-1], bs[:-1])):
        for i in range(w.shape[0]):
            z, a = zpos + i, zpos + nz + i
            l, u = pl[k][i], pu[k][i]
            h = np.zeros(nvar)
            h[prev] = w[i]
            r = -h.copy(); r[z] += 1; rows.append(r); lb.append(b[i]); ub.append(np.inf)       # z >= h
            r = -h.copy(); r[z] += 1; r[a] = -l; rows.append(r); lb.append(-np.inf); ub.append(b[i] - l)  # z <= h - l(1-a)
            r = np.zeros(nvar); r[z] = 1; r[a] = -max(u, 0); rows.append(r); lb.append(-np.inf); ub.append(0)
        prev = np.arange(zpos, zpos + w.shape[0])
        zpos += w.shape[0]
    obj = np.zeros(nvar)
    obj[prev] = c @ ws[-1]
    integ = np.concatenate([np.zeros(sizes[0] + nz), np.ones(nz)])
    res = milp(obj, constraints=LinearConstraint(np.array(rows), lb, ub), integrality=integ,
               bounds=Bounds(col_lo, col_hi))
    assert res.success
    return float(res.fun + c @ bs[-1])
