"""Soundness of the smooth / non-smooth / softmax bounding rules.

Per op: random boxes (zero-width, tiny, wide, straddling 0 and huge) and 1000 points
in each must lie inside the interval rule and between the relaxation lines, for
CROWN's alpha, alpha_init and random alphas inside alpha_bounds; float32 and float64.
End to end: Gemm -> op -> Gemm models bounded by IBP / CROWN / alpha-CROWN must
contain onnxruntime's outputs; and CROWN beats IBP on the ERAN sigmoid network.
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

import relaxations
from models import Node
from relaxations import BoundOptions, IntervalBounds, compute_bounds, rule_for
from relaxations.registry import finite_relaxation
from tests.conftest import BENCH, ROOT

T = torch.Tensor
N_POINTS = 1000

# op name -> (ONNX op, constants after the variable input, attrs, input domain)
CASES: dict[str, tuple[str, list, dict, str]] = {
    "Sigmoid": ("Sigmoid", [], {}, "real"),
    "Tanh": ("Tanh", [], {}, "real"),
    "Exp": ("Exp", [], {}, "exp"),
    "Log": ("Log", [], {}, "pos"),
    "Sqrt": ("Sqrt", [], {}, "nonneg"),
    "Reciprocal": ("Reciprocal", [], {}, "side"),
    "Abs": ("Abs", [], {}, "real"),
    "Sign": ("Sign", [], {}, "real"),
    "Floor": ("Floor", [], {}, "real"),
    "Sin": ("Sin", [], {}, "real"),
    "Cos": ("Cos", [], {}, "real"),
    "Clip": ("Clip", [-0.5, 2.0], {}, "real"),
    "ClipMinOnly": ("Clip", [0.25, None], {}, "real"),
    "ClipMaxOnly": ("Clip", [None, -1.0], {}, "real"),
    "Pow0": ("Pow", [0.0], {}, "small"),
    "Pow1": ("Pow", [1.0], {}, "small"),
    "Pow2": ("Pow", [2.0], {}, "small"),
    "Pow3": ("Pow", [3.0], {}, "small"),
    "Pow4": ("Pow", [4.0], {}, "small"),
    "Pow5": ("Pow", [5.0], {}, "small"),
    "PowM1": ("Pow", [-1.0], {}, "side"),
    "PowM2": ("Pow", [-2.0], {}, "side"),
    "PowHalf": ("Pow", [0.5], {}, "nonneg"),
    "Pow1p5": ("Pow", [1.5], {}, "nonneg"),
    "PowMHalf": ("Pow", [-0.5], {}, "pos"),
}


def _node(op: str, consts: list, attrs: dict) -> tuple[Node, list]:
    names = ["x"] + [("" if c is None else f"c{i}") for i, c in enumerate(consts)]
    return Node("n", op, tuple(names), ("y",), attrs, 13), [None] + [
        None if c is None else torch.tensor(c) for c in consts]


def _boxes(domain: str, n: int, gen: torch.Generator, dtype: torch.dtype) -> tuple[T, T]:
    """n boxes mixing zero, tiny, moderate, wide and huge widths, centred anywhere."""
    widths = torch.tensor([0.0, 1e-6, 1e-3, 0.05, 0.5, 2.0, 6.0, 20.0, 300.0, 1e4], dtype=torch.float64)
    w = widths[torch.randint(len(widths), (n,), generator=gen)]
    scale = torch.tensor([0.1, 1.0, 5.0, 50.0, 5e3], dtype=torch.float64)[torch.randint(5, (n,), generator=gen)]
    c = torch.randn(n, generator=gen, dtype=torch.float64) * scale
    straddle = torch.rand(n, generator=gen, dtype=torch.float64) < 0.3
    c = torch.where(straddle, (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5) * w, c)
    l, u = c - w / 2, c + w / 2
    if domain == "exp":
        shift = (u - 60).clamp(min=0)
        l, u = l - shift, u - shift
    elif domain == "small":
        l, u = l.clamp(-30, 30), u.clamp(-30, 30)
    elif domain in ("pos", "nonneg"):
        l, u = l.abs(), u.abs()
        l, u = torch.minimum(l, u), torch.maximum(l, u)
        if domain == "pos":
            l, u = l + 1e-3, u + 1e-3
        else:
            l = torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < 0.2, torch.zeros_like(l), l)
    elif domain == "side":
        a, b = l.abs() + 1e-2, u.abs() + 1e-2
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        neg = torch.rand(n, generator=gen, dtype=torch.float64) < 0.5
        l, u = torch.where(neg, -hi, lo), torch.where(neg, -lo, hi)
    l, u = l.to(dtype), u.to(dtype)
    return torch.minimum(l, u).unsqueeze(0), torch.maximum(l, u).unsqueeze(0)


def _points(l: T, u: T, gen: torch.Generator) -> T:
    r = torch.rand(N_POINTS, l.shape[-1], generator=gen, dtype=torch.float64)
    r[0], r[1] = 0.0, 1.0
    x = (l.double() + r * (u.double() - l.double())).to(l.dtype)  # representable points
    return torch.minimum(torch.maximum(x, l), u)


def _truth(op: str, x: T, consts: list) -> T:
    x = x.double()
    if op == "Clip":
        lo, hi = consts[1], consts[2]
        return x.clamp(min=None if lo is None else float(lo), max=None if hi is None else float(hi))
    if op == "Pow":
        return torch.pow(x, float(consts[1]))
    return getattr(torch, op.lower() if op != "Reciprocal" else "reciprocal")(x)


def _check_lines(r, x: T, fx: T, rel: float, what: str) -> None:
    ks = [r.lower_slope, r.lower_bias, r.upper_slope, r.upper_bias]
    assert all(bool(torch.isfinite(k).all()) for k in ks), f"{what}: non-finite line"
    lo = r.lower_slope.double() * x.double() + r.lower_bias.double()
    hi = r.upper_slope.double() * x.double() + r.upper_bias.double()
    tol_lo = rel * ((r.lower_slope.double() * x.double()).abs() + r.lower_bias.double().abs() + fx.abs()) + 1e-300
    tol_hi = rel * ((r.upper_slope.double() * x.double()).abs() + r.upper_bias.double().abs() + fx.abs()) + 1e-300
    bad_lo = lo > fx + tol_lo
    bad_hi = hi < fx - tol_hi
    assert not bool(bad_lo.any()), f"{what}: lower line above f, worst {float((lo - fx)[bad_lo].max())}"
    assert not bool(bad_hi.any()), f"{what}: upper line below f, worst {float((fx - hi)[bad_hi].max())}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_interval_and_relaxation_sound(case: str, dtype: torch.dtype) -> None:
    op, cvals, attrs, domain = CASES[case]
    node, consts = _node(op, cvals, attrs)
    rule = rule_for(node)
    # zlib.crc32, not hash(): str hashes change with PYTHONHASHSEED, so each run drew other boxes.
    gen = torch.Generator().manual_seed(zlib.crc32(case.encode()))
    l, u = _boxes(domain, 60, gen, dtype)
    x = _points(l, u, gen)                           # [N_POINTS, n]
    fx = _truth(op, x, consts)
    finite = torch.isfinite(fx)
    fx = torch.where(finite, fx, torch.zeros_like(fx))
    rel = 1e-5 if dtype == torch.float32 else 1e-12
    # Interval: every sampled value inside (the propagation widens by 1e-5 afterwards).
    ins = [IntervalBounds(l, u)] + [c for c in consts[1:]]
    out = rule.interval(node, ins, None)[0]
    lo, hi = out.lower.double(), out.upper.double()
    assert bool((finite | ~torch.isfinite(lo) | ~torch.isfinite(hi)).all())
    tol = rel * fx.abs() + (1e-6 if dtype == torch.float32 else 1e-14)
    assert bool(((lo <= fx + tol) | ~finite).all()), f"{case}: interval lower above f"
    assert bool(((hi >= fx - tol) | ~finite).all()), f"{case}: interval upper below f"
    # Relaxations: CROWN's alpha, the rule's alpha_init, and random alphas in bounds.
    S = 3
    L, U = l.unsqueeze(1), u.unsqueeze(1)
    alphas: list[Optional[T]] = [None]
    if rule.alpha_init is not None:
        init = rule.alpha_init(node, l, u, consts)
        alphas.append(init.unsqueeze(1).expand(1, S, -1))
        a_lo, a_hi = rule.alpha_bounds(node, l, u, consts)
        r = torch.rand(1, S, l.shape[-1], generator=gen, dtype=torch.float64).to(dtype)
        alphas.append(a_lo.unsqueeze(1) + r * (a_hi - a_lo).unsqueeze(1))
        alphas.append(torch.where(r < 0.5, a_lo.unsqueeze(1), a_hi.unsqueeze(1)))
    for alpha in alphas:
        r = rule.relax(node, L, U, alpha, consts)
        xs = x.unsqueeze(1)                          # [N_POINTS, 1, n] broadcasts with [1, S, n]
        f3 = fx.unsqueeze(1)
        shape = torch.broadcast_shapes(r.lower_slope.shape, r.upper_bias.shape, (1, 1, l.shape[-1]))
        rr = type(r)(*(t.expand(shape) for t in (r.lower_slope, r.lower_bias, r.upper_slope, r.upper_bias)))
        ok = finite.unsqueeze(1)
        _check_lines(rr, torch.where(ok, xs, torch.zeros_like(xs)).expand(-1, shape[1], -1),
                     torch.where(ok, f3, _line_mid(rr, xs)).expand(-1, shape[1], -1),
                     rel, f"{case} {dtype} alpha={'crown' if alpha is None else 'given'}")
    # Unstable mask: stable elements must be relaxed exactly (upper - lower ~ 0 at the points).
    if rule.unstable is not None:
        st = ~rule.unstable(node, l, u, consts)
        r = rule.relax(node, L, U, None, consts)
        gap = (r.upper_slope - r.lower_slope).double() * x.double().unsqueeze(1) + (r.upper_bias - r.lower_bias).double()
        # The rounding slack `finish` adds grows with max(|l|, |u|), not |u| alone: a stable
        # negative interval like [-5000, -1] is padded by ~1e-6 * 5000 and is still exact.
        m = torch.maximum(l.double().abs(), u.double().abs()).unsqueeze(1)
        scale = (r.upper_bias.double().abs() + r.upper_slope.double().abs() * m + 1)
        assert bool((gap.reshape(N_POINTS, -1)[:, st[0]] <= 1e-4 * scale.reshape(-1)[st[0]]).all())


def _line_mid(r, xs: T) -> T:
    """Where f is undefined at a point, a value between the lines (it is not checked)."""
    return ((r.lower_slope + r.upper_slope).double() * xs.double() + (r.lower_bias + r.upper_bias).double()) / 2


@pytest.mark.parametrize("op, l, u", [
    ("Sigmoid", -math.inf, math.inf), ("Tanh", -math.inf, 3.0), ("Sin", -math.inf, math.inf),
    ("Abs", -1e4, 1e4), ("Sigmoid", -1e4, 1e4), ("Tanh", -1e4, -1e4 + 1e-3), ("Sigmoid", 1e4, 1e4),
])
def test_extreme_boxes_stay_finite(op: str, l: float, u: float) -> None:
    node, consts = _node(op, [], {})
    r = rule_for(node).relax(node, torch.tensor([[[l]]]), torch.tensor([[[u]]]), None, consts)
    for t in (r.lower_slope, r.lower_bias, r.upper_slope, r.upper_bias):
        assert bool(torch.isfinite(t).all())


@pytest.mark.parametrize("op, consts, l, u", [
    ("Exp", [], 0.0, 1e4), ("Log", [], -1.0, 2.0), ("Log", [], 0.0, 2.0), ("Sqrt", [], -1.0, 1.0),
    ("Reciprocal", [], -1.0, 1.0), ("Pow", [-1.0], -1.0, 2.0), ("Pow", [0.5], -1.0, 2.0),
])
def test_unbounded_relaxation_is_refused_with_a_clear_error(op: str, consts: list, l: float, u: float) -> None:
    node, cs = _node(op, consts, {})
    r = rule_for(node).relax(node, torch.tensor([[[l]]]), torch.tensor([[[u]]]), None, cs)
    with pytest.raises(ValueError, match="no finite linear"):
        finite_relaxation(r, node)


def test_pow_variable_exponent_rejected() -> None:
    node = Node("n", "Pow", ("x", "e"), ("y",), {}, 13)
    b = IntervalBounds(torch.zeros(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="constant exponent"):
        rule_for(node).interval(node, [b, b], None)


@pytest.mark.parametrize("opset, axis", [(13, -1), (13, 1), (11, 1), (11, 2)])
def test_softmax_interval_sound(opset: int, axis: int) -> None:
    gen = torch.Generator().manual_seed(opset * 10 + axis)
    node = Node("n", "Softmax", ("x",), ("y",), {"axis": axis}, opset)
    from models.ops import forward_rule
    fn = forward_rule(node).fn
    for scale, width in [(1.0, 0.0), (1.0, 0.1), (5.0, 2.0), (50.0, 30.0), (1e3, 1e3)]:
        c = torch.randn(4, 1, 3, 5, generator=gen) * scale
        w = torch.rand(4, 1, 3, 5, generator=gen) * width
        b = IntervalBounds(c - w, c + w)
        out = rule_for(node).interval(node, [b], None)[0]
        assert bool((out.lower <= out.upper).all()) and bool(torch.isfinite(out.lower).all())
        for _ in range(50):
            x = b.lower + torch.rand(b.lower.shape, generator=gen) * (b.upper - b.lower)
            y = torch.stack([fn(node, [xi.double()])[0] for xi in x])
            assert bool((out.lower.double() <= y + 1e-6).all()) and bool((out.upper.double() >= y - 1e-6).all())
    # Point boxes: the bounds collapse onto the value, up to the rounding margin of the
    # sigmoid's argument (1e-5 of |x| + |log-sum-exp|, at most a quarter of it passed on).
    x = torch.randn(2, 1, 3, 5, generator=gen)
    out = rule_for(node).interval(node, [IntervalBounds(x, x)], None)[0]
    y = torch.stack([fn(node, [xi])[0] for xi in x])
    assert torch.allclose(out.lower, y, atol=3e-5) and torch.allclose(out.upper, y, atol=3e-5)
    assert bool((out.lower <= y).all() and (out.upper >= y).all())


# ------------------------------------------------------------------------ end to end

E2E: dict[str, tuple[str, list, dict, float]] = {   # op, consts, attrs, bias shift (domain)
    "Sigmoid": ("Sigmoid", [], {}, 0.0), "Tanh": ("Tanh", [], {}, 0.0), "Exp": ("Exp", [], {}, 0.0),
    "Log": ("Log", [], {}, 3.0), "Sqrt": ("Sqrt", [], {}, 3.0), "Reciprocal": ("Reciprocal", [], {}, 3.0),
    "Abs": ("Abs", [], {}, 0.0), "Sign": ("Sign", [], {}, 0.0), "Floor": ("Floor", [], {}, 0.0),
    "Sin": ("Sin", [], {}, 0.0), "Cos": ("Cos", [], {}, 0.0), "Clip": ("Clip", [-0.3, 0.4], {}, 0.0),
    "Pow2": ("Pow", [2.0], {}, 0.0), "Pow3": ("Pow", [3.0], {}, 0.0), "PowHalf": ("Pow", [0.5], {}, 3.0),
    "PowM1": ("Pow", [-1.0], {}, 3.0), "Softmax": ("Softmax", [], {"axis": -1}, 0.0),
}


def _e2e_model(op: str, consts: list, attrs: dict, shift: float, seed: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    w1 = rng.uniform(-0.6, 0.6, (4, 6)).astype(np.float32) * (0.4 if shift else 1.0)
    b1 = (rng.uniform(-0.5, 0.5, 6) + shift).astype(np.float32)
    w2 = rng.normal(0, 1, (6, 3)).astype(np.float32)
    b2 = rng.normal(0, 1, 3).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    names = ["h"]
    for i, c in enumerate(consts):
        inits.append(numpy_helper.from_array(np.array(c, dtype=np.float32), f"k{i}"))
        names.append(f"k{i}")
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
             helper.make_node(op, names, ["a"], **attrs),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return model.SerializeToString()


@pytest.mark.parametrize("case", sorted(E2E))
def test_end_to_end_contains_onnxruntime(case: str, tmp_path: Path) -> None:
    import onnxruntime as ort
    from models import load_onnx
    op, consts, attrs, shift = E2E[case]
    data = _e2e_model(op, consts, attrs, shift, seed=len(case))
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    graph = load_onnx(path)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    centers = rng.uniform(0, 1, (3, 1, 4)).astype(np.float32)
    radii = np.array([0.0, 0.05, 0.5], dtype=np.float32).reshape(3, 1, 1)
    lo, hi = torch.from_numpy(centers - radii), torch.from_numpy(centers + radii)
    widths = {}
    for m in ("ibp", "crown", "alpha-crown"):
        res = compute_bounds(graph, IntervalBounds(lo, hi), options=BoundOptions(method=m, alpha_iterations=10))
        assert bool(torch.isfinite(res.lower).all()) and bool(torch.isfinite(res.upper).all())
        widths[m] = (res.upper - res.lower).mean().item()
        for b in range(3):
            xs = (lo[b].numpy() + rng.uniform(0, 1, (2000, 1, 4)) * (hi[b] - lo[b]).numpy()).astype(np.float32)
            ys = np.concatenate([sess.run(None, {"x": xi})[0] for xi in xs])
            scale = 1e-5 * np.abs(ys) + 1e-5
            assert (ys >= res.lower[b].numpy() - scale).all(), f"{case} {m}: lower bound violated"
            assert (ys <= res.upper[b].numpy() + scale).all(), f"{case} {m}: upper bound violated"
    assert widths["crown"] <= widths["ibp"] * (1 + 1e-6) + 1e-6
    assert widths["alpha-crown"] <= widths["crown"] * (1 + 1e-6) + 1e-6


ERAN = BENCH / "2021_eran" / "nets" / "ffnnSIGMOID__Point_6x200.onnx"


@pytest.mark.skipif(not ERAN.exists(), reason=f"{ERAN.relative_to(ROOT.parent)} is absent: ../shared/bench "
                                              "(VNN-COMP instances) is not beside the checkout")
def test_eran_sigmoid_crown_tighter_than_ibp() -> None:
    import onnxruntime as ort
    from models import load_onnx
    graph = load_onnx(ERAN)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, *graph.input_shape, generator=gen)
    lo, hi = x0 - 0.01, x0 + 0.01
    res = {m: compute_bounds(graph, IntervalBounds(lo, hi), options=BoundOptions(method=m)) for m in ("ibp", "crown")}
    w_ibp = (res["ibp"].upper - res["ibp"].lower)
    w_crown = (res["crown"].upper - res["crown"].lower)
    assert bool(torch.isfinite(w_crown).all())
    # Around a noise image at this radius the network is far from robust (IBP width ~92),
    # so the gain is modest (~0.4%); at radius 0.001 CROWN is ~40x tighter.
    assert bool((w_crown <= w_ibp + 1e-6).all()) and w_crown.mean() < w_ibp.mean()
    sess = ort.InferenceSession(ERAN.read_bytes(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(50):
        x = (lo + torch.rand(lo.shape, generator=gen) * (hi - lo))[0].numpy().astype(np.float32)
        y = torch.from_numpy(sess.run(None, {name: x})[0]).reshape(1, -1)
        assert bool((y >= res["crown"].lower - 1e-5).all()) and bool((y <= res["crown"].upper + 1e-5).all())


def test_rules_registered() -> None:
    for op in ("Sigmoid", "Tanh", "Exp", "Log", "Sqrt", "Reciprocal", "Abs", "Sign", "Floor", "Sin", "Cos",
               "Clip", "Pow", "Softmax"):
        assert ("", op) in relaxations.REGISTRY


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_the_lower_line_survives_an_upper_slope_far_steeper(method: str) -> None:
    """Exp over [-37.79, 37.79] in float32: the upper chord's slope is some 1e15 times the
    lower tangent's. A backward step that mixed the two slopes by subtraction lost the
    lower one and claimed exp(x) >= 0.99995 (the true minimum is 4e-17)."""
    from onnx import helper

    from models import graph_from_proto
    from tests.op_cases import make_model

    graph = graph_from_proto(make_model([helper.make_node("Exp", ["X"], ["Y"])], {}, (1, 1), (1, 1)))
    box = IntervalBounds(torch.tensor([[[-37.79]]]), torch.tensor([[[37.79]]]))
    res = compute_bounds(graph, box, torch.tensor([[1.0]]), BoundOptions(method=method))
    assert float(res.lower) <= math.exp(-37.79)


def test_a_bias_tied_at_an_end_moves_with_that_end() -> None:
    """Where an interior candidate is clamped onto the interval's end, the bias's
    derivative with respect to that end is the whole derivative of f(l) - k l, not a
    share of it (alpha-CROWN optimises the intervals through it; `smooth.extremum`)."""
    from relaxations.ops.more_activations import support
    from relaxations.ops.gelu import _bias

    k = torch.tensor(0.01, dtype=torch.float64)
    for upper in (False, True):
        l = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        u = torch.tensor(3.0, dtype=torch.float64)
        # sigmoid - 0.01 x increases on [2, 3]: min at l (the candidate -5 clamps onto l), max at u
        b = support(torch.sigmoid, k, l, u, [torch.tensor(-5.0, dtype=torch.float64)], upper=upper)
        (grad,) = torch.autograd.grad(b, l, allow_unused=True)
        s = torch.sigmoid(l.detach())
        want = float(s * (1 - s) - k) if not upper else 0.0
        assert grad is not None or want == 0.0
        assert float(grad if grad is not None else 0.0) == pytest.approx(want, rel=1e-9, abs=1e-12)
    # Gelu's lower bias over [L, U] inside its convex part with a slope below f' there:
    # the min of f - k x is at L, where the piece's own bisection ends too.
    L = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    U = torch.tensor(0.6, dtype=torch.float64)
    kg = torch.tensor(0.1, dtype=torch.float64)
    b = _bias(kg, L, U, math.sqrt(2.0), False, upper=False, guess=L.detach())
    (grad,) = torch.autograd.grad(b, L)
    x = L.detach()
    dgelu = 0.5 * math.erfc(-float(x) / math.sqrt(2)) + float(x) * math.exp(-float(x) ** 2 / 2) / math.sqrt(2 * math.pi)
    assert float(grad) == pytest.approx(dgelu - 0.1, rel=1e-9)


@pytest.mark.parametrize("op", ["Sin", "Cos"])
def test_trig_biases_move_with_the_end_that_attains_them(op: str) -> None:
    """Sin/Cos take their bias as the extremum of f - k x over the ends and the critical
    points: the end's candidate carries d bias / d end = f'(end) - k (it had none when
    every candidate was detached), and a critical point clamped onto it takes nothing."""
    from models import Node
    from relaxations.ops import nonsmooth

    f, df = (math.sin, math.cos) if op == "Sin" else (math.cos, lambda x: -math.sin(x))
    lo, hi, k = 0.2, 1.0, 0.3
    l = torch.tensor([lo], dtype=torch.float64, requires_grad=True)
    u = torch.tensor([hi], dtype=torch.float64, requires_grad=True)
    r = nonsmooth._trig_relax(Node("n", op, ("x",), ("y",)), l, u, torch.tensor([k], dtype=torch.float64), [None])
    xs = [lo + i * (hi - lo) / 20000 for i in range(20001)]
    g = [f(x) - k * x for x in xs]
    for bias, pick in ((r.lower_bias, min), (r.upper_bias, max)):
        gl, gu = torch.autograd.grad(bias.sum(), (l, u), retain_graph=True, allow_unused=True)
        at = xs[pick(range(len(g)), key=g.__getitem__)]
        want_l = df(lo) - k if at == lo else 0.0
        want_u = df(hi) - k if at == hi else 0.0
        assert float(gl if gl is not None else 0.0) == pytest.approx(want_l, abs=1e-9)
        assert float(gu if gu is not None else 0.0) == pytest.approx(want_u, abs=1e-9)


def test_bisected_tangent_points_carry_the_implicit_derivative() -> None:
    """S-shapes' tangent point d_u (the tangent at d_u passes through (l, f(l))) and
    Gelu's p1 are found by bisection; their gradient in l is the implicit function's,
    checked by central differences, and their values are the bisection's exactly."""
    from relaxations.ops.gelu import _tangent_range
    from relaxations.ops.smooth import _s_points

    def d_u(lv: torch.Tensor) -> torch.Tensor:
        return _s_points(torch.sigmoid, lambda t: torch.sigmoid(t) * (1 - torch.sigmoid(t)), lv,
                         torch.tensor([2.0], dtype=torch.float64), None)[0]

    def p1(lv: torch.Tensor) -> torch.Tensor:
        c_lo = lv.clamp(min=-math.sqrt(2.0))
        return _tangent_range(lv, torch.tensor([2.5], dtype=torch.float64), c_lo,
                              torch.tensor([math.sqrt(2.0)], dtype=torch.float64), False)[0]

    for fn, l0 in ((d_u, -1.0), (p1, -3.0)):
        l = torch.tensor([l0], dtype=torch.float64, requires_grad=True)
        value = fn(l)
        (grad,) = torch.autograd.grad(value.sum(), l)
        with torch.no_grad():
            h = 1e-3       # wide enough that the bisections' resolution does not show
            numeric = (fn(l.detach() + h) - fn(l.detach() - h)) / (2 * h)
            assert torch.equal(value.detach(), fn(l.detach()))
        assert float(grad) == pytest.approx(float(numeric), rel=2e-3)
        assert abs(float(grad)) > 1e-3       # the bisection's own gradient here is 0
