"""Soundness and tightness of Softplus, Atan, Erf, Elu, HardSigmoid, HardSwish and Gelu
(relaxations/ops/more_activations.py, relaxations/ops/gelu.py).

Per op: random boxes (zero-width, tiny, wide, straddling and huge) and 1000 points in
each must lie inside the interval rule and between the relaxation lines, for CROWN's
alpha, alpha_init, random alphas and the ends of alpha_bounds; float32 and float64.
Gelu also on intervals placed on either side of its minimum and of its inflection
points. Extreme boxes give finite sound lines or a clear ValueError, never NaN. And
CROWN is at least as tight as IBP on a small random MLP with each activation.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pytest
import torch

from models import Node, UnsupportedModel, graph_from_proto
from relaxations import BoundOptions, IntervalBounds, compute_bounds, rule_for
from relaxations.registry import finite_relaxation
from relaxations.ops.gelu import dgelu64, gelu64, inflection, minimum_bracket

T = torch.Tensor
N_POINTS = 1000

# case -> (ONNX op, attrs, opset)
CASES: dict[str, tuple[str, dict, int]] = {
    "Softplus": ("Softplus", {}, 13),
    "Atan": ("Atan", {}, 13),
    "Erf": ("Erf", {}, 13),
    "Elu": ("Elu", {}, 13),
    "Elu_half": ("Elu", {"alpha": 0.5}, 13),
    "Elu_steep": ("Elu", {"alpha": 1.7}, 13),        # concave kink at 0
    "Elu_negative": ("Elu", {"alpha": -0.4}, 13),    # not monotone
    "Elu_zero": ("Elu", {"alpha": 0.0}, 13),         # ReLU
    "HardSigmoid": ("HardSigmoid", {}, 13),
    "HardSigmoid_steep": ("HardSigmoid", {"alpha": 3.0, "beta": 0.2}, 13),
    "HardSigmoid_negative": ("HardSigmoid", {"alpha": -0.5, "beta": 0.6}, 13),
    "HardSigmoid_flat": ("HardSigmoid", {"alpha": 0.0, "beta": 0.3}, 13),
    "HardSwish": ("HardSwish", {}, 14),
    "Gelu": ("Gelu", {}, 20),
    "Gelu_tanh": ("Gelu", {"approximate": "tanh"}, 20),
}


def _node(case: str) -> Node:
    op, attrs, opset = CASES[case]
    return Node("n", op, ("x",), ("y",), attrs, opset)


def _truth(node: Node, x: T) -> T:
    """f in float64, written independently of the forward rules where that is cheap."""
    x = x.double()
    op = node.op
    if op == "Softplus":
        return torch.log1p(torch.exp(-x.abs())) + x.clamp(min=0)
    if op == "Atan":
        return torch.atan(x)
    if op == "Erf":
        return torch.erf(x)
    if op == "Elu":
        a = float(node.attr("alpha", 1.0))
        return torch.where(x > 0, x, a * torch.expm1(x.clamp(max=0)))
    if op == "HardSigmoid":
        return (float(node.attr("alpha", 0.2)) * x + float(node.attr("beta", 0.5))).clamp(0, 1)
    if op == "HardSwish":
        return x * (x + 3).clamp(0, 6) / 6
    return gelu64(x, node.attr("approximate", "none") == "tanh")


def _boxes(n: int, gen: torch.Generator, dtype: torch.dtype) -> tuple[T, T]:
    """n boxes mixing zero, tiny, moderate, wide and huge widths, centred anywhere."""
    widths = torch.tensor([0.0, 1e-6, 1e-3, 0.05, 0.5, 2.0, 6.0, 20.0, 300.0, 1e4], dtype=torch.float64)
    w = widths[torch.randint(len(widths), (n,), generator=gen)]
    scale = torch.tensor([0.1, 1.0, 3.0, 50.0, 5e3], dtype=torch.float64)[torch.randint(5, (n,), generator=gen)]
    c = torch.randn(n, generator=gen, dtype=torch.float64) * scale
    straddle = torch.rand(n, generator=gen, dtype=torch.float64) < 0.3
    c = torch.where(straddle, (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5) * w, c)
    l, u = (c - w / 2).to(dtype), (c + w / 2).to(dtype)
    return torch.minimum(l, u).unsqueeze(0), torch.maximum(l, u).unsqueeze(0)


def _points(l: T, u: T, gen: torch.Generator, n: int = N_POINTS) -> T:
    r = torch.rand(n, l.shape[-1], generator=gen, dtype=torch.float64)
    r[0], r[1] = 0.0, 1.0
    x = (l.double() + r * (u.double() - l.double())).to(l.dtype)   # representable points
    return torch.minimum(torch.maximum(x, l), u)


def _assert_between(r, x: T, fx: T, rel: float, what: str) -> None:
    """lower line <= f <= upper line at x ([N, 1, n] against lines [1, S, n])."""
    for t in (r.lower_slope, r.lower_bias, r.upper_slope, r.upper_bias):
        assert bool(torch.isfinite(t).all()), f"{what}: non-finite line"
    ls, lb, us, ub = (t.double() for t in (r.lower_slope, r.lower_bias, r.upper_slope, r.upper_bias))
    xd = x.double()
    lo, hi = ls * xd + lb, us * xd + ub
    tol_lo = rel * ((ls * xd).abs() + lb.abs() + fx.abs()) + 1e-300
    tol_hi = rel * ((us * xd).abs() + ub.abs() + fx.abs()) + 1e-300
    bad_lo, bad_hi = lo > fx + tol_lo, hi < fx - tol_hi
    assert not bool(bad_lo.any()), f"{what}: lower line above f by {float((lo - fx)[bad_lo].max()):.3g}"
    assert not bool(bad_hi.any()), f"{what}: upper line below f by {float((fx - hi)[bad_hi].max()):.3g}"


def _alphas(rule, node: Node, l: T, u: T, gen: torch.Generator, S: int = 3) -> list[Optional[T]]:
    out: list[Optional[T]] = [None]
    if rule.alpha_init is None:
        return out
    out.append(rule.alpha_init(node, l, u, []).unsqueeze(1).expand(1, S, -1))
    a_lo, a_hi = rule.alpha_bounds(node, l, u, [])
    r = torch.rand(1, S, l.shape[-1], generator=gen, dtype=torch.float64).to(l.dtype)
    out.append(a_lo.unsqueeze(1) + r * (a_hi - a_lo).unsqueeze(1))
    out.append(torch.where(r < 0.5, a_lo.unsqueeze(1), a_hi.unsqueeze(1)))
    return out


def _check_box(case: str, node: Node, l: T, u: T, x: T, gen: torch.Generator) -> None:
    """Interval and every alpha's lines contain f at the points x ([N, n])."""
    rule = rule_for(node)
    dtype = l.dtype
    rel = 1e-5 if dtype == torch.float32 else 1e-12
    fx = _truth(node, x)
    out = rule.interval(node, [IntervalBounds(l, u)], None)[0]
    assert not bool(torch.isnan(out.lower).any() or torch.isnan(out.upper).any()), f"{case}: NaN interval"
    tol = rel * fx.abs() + (1e-6 if dtype == torch.float32 else 1e-14)
    assert bool((out.lower.double() <= fx + tol).all()), f"{case} {dtype}: interval lower above f"
    assert bool((out.upper.double() >= fx - tol).all()), f"{case} {dtype}: interval upper below f"
    for alpha in _alphas(rule, node, l, u, gen):
        r = rule.relax(node, l.unsqueeze(1), u.unsqueeze(1), alpha, [])
        _assert_between(r, x.unsqueeze(1), fx.unsqueeze(1), rel,
                        f"{case} {dtype} alpha={'crown' if alpha is None else 'given'}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_interval_and_lines_sound_on_random_boxes(case: str, dtype: torch.dtype) -> None:
    node = _node(case)
    gen = torch.Generator().manual_seed(sum(map(ord, case)))
    l, u = _boxes(60, gen, dtype)
    _check_box(case, node, l, u, _points(l, u, gen), gen)
    # Stable elements (the `unstable` mask is False) are relaxed exactly.
    rule = rule_for(node)
    st = ~rule.unstable(node, l, u, [])
    r = rule.relax(node, l.unsqueeze(1), u.unsqueeze(1), None, [])
    x = _points(l, u, gen).double().unsqueeze(1)
    gap = (r.upper_slope - r.lower_slope).double() * x + (r.upper_bias - r.lower_bias).double()
    scale = r.upper_bias.double().abs() + r.upper_slope.double().abs() * u.double().abs().unsqueeze(1) + 1
    assert bool((gap.reshape(N_POINTS, -1)[:, st[0]] <= 1e-4 * scale.reshape(-1)[st[0]]).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_narrow_and_wide_intervals(case: str, dtype: torch.dtype) -> None:
    """Hand-picked intervals around each op's kinks and bends, narrow and wide, on a dense grid."""
    node = _node(case)
    ends = [(-1e-4, 1e-4), (-3.0001, -2.9999), (2.9999, 3.0001), (-0.5, 0.5), (-3.0, 3.0), (-4.0, 1.0),
            (-1.0, 5.0), (-10.0, 10.0), (-60.0, 60.0), (-1e3, 1e3), (-1e4, 1e4), (0.1, 0.2), (-7.0, -6.0),
            (1e4, 1e4 + 1.0), (-1e4 - 1.0, -1e4)]
    l = torch.tensor([[a for a, _ in ends]], dtype=dtype)
    u = torch.tensor([[b for _, b in ends]], dtype=dtype)
    gen = torch.Generator().manual_seed(7)
    r = torch.linspace(0, 1, 2001, dtype=torch.float64).unsqueeze(1)
    x = (l.double() + r * (u.double() - l.double())).to(dtype)
    _check_box(case, node, l, u, torch.minimum(torch.maximum(x, l), u), gen)


# ------------------------------------------------------------------------------ Gelu

@pytest.mark.parametrize("tanh", [False, True])
def test_gelu_constants(tanh: bool) -> None:
    """f'' changes sign only at +-r, and the minimum bracket holds a true lower bound of min f."""
    x = torch.linspace(-30, 30, 600_001, dtype=torch.float64, requires_grad=True)
    f = torch.nn.functional.gelu(x, approximate="tanh" if tanh else "none")
    d1, = torch.autograd.grad(f.sum(), x, create_graph=True)
    d2, = torch.autograd.grad(d1.sum(), x)
    r = inflection(tanh)
    xd = x.detach()
    assert torch.allclose(d1.detach(), dgelu64(xd, tanh), atol=1e-12)
    inside, outside = xd.abs() < r - 1e-6, xd.abs() > r + 1e-6
    assert bool((d2[inside] > 0).all()) and bool((d2[outside] <= 0).all())
    x_lo, x_hi, m = minimum_bracket(tanh)
    assert x_lo <= x_hi and x_hi - x_lo < 1e-12
    fmin = float(gelu64(xd, tanh).min())            # a grid of step 1e-4: within 1e-8 of the minimum
    assert m <= fmin and fmin - m < 1e-8
    at_bracket = float(gelu64(torch.tensor([x_lo, x_hi], dtype=torch.float64), tanh).min())
    assert m <= at_bracket and at_bracket - m < 1e-15
    d1 = d1.detach()     # f' < 0 left of the bracket (0 once it underflows), > 0 right of it
    assert float(d1[xd < x_lo - 1e-6].max()) <= 0 < float(d1[xd > x_hi + 1e-6].min())
    assert float(d1[(xd < x_lo - 1e-6) & (xd > -5)].max()) < 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["Gelu", "Gelu_tanh"])
def test_gelu_either_side_of_its_minimum(case: str, dtype: torch.dtype) -> None:
    node = _node(case)
    tanh = case == "Gelu_tanh"
    x_lo, _, _ = minimum_bracket(tanh)
    r = inflection(tanh)
    ends = [(-5.0, -1.0), (-3.0, -0.8), (-0.76, -0.74), (-0.75, 2.0), (-0.7, 2.0), (-1.0, -0.5),
            (x_lo - 1e-3, x_lo + 1e-3), (-8.0, -2.0), (2.0, 8.0), (-r - 0.1, -r + 0.1), (r - 0.1, r + 0.1),
            (-r, r), (-40.0, -20.0), (-45.0, 45.0), (-1.6, -1.2), (1.2, 1.6), (-1e4, 0.5)]
    l = torch.tensor([[a for a, _ in ends]], dtype=dtype)
    u = torch.tensor([[b for _, b in ends]], dtype=dtype)
    gen = torch.Generator().manual_seed(11)
    t = torch.linspace(0, 1, 20001, dtype=torch.float64).unsqueeze(1)
    x = torch.minimum(torch.maximum((l.double() + t * (u.double() - l.double())).to(dtype), l), u)
    _check_box(case, node, l, u, x, gen)
    # The interval is tight: its lower end is within rounding of the true minimum on [l, u].
    out = rule_for(node).interval(node, [IntervalBounds(l, u)], None)[0]
    x_star = torch.tensor(x_lo, dtype=torch.float64).clamp(min=l.double()[0], max=u.double()[0])
    true_min = torch.minimum(_truth(node, x).min(0).values, _truth(node, x_star))
    assert bool((out.lower.double()[0] >= true_min - 1e-5 * (1 + true_min.abs())).all())
    # The lines touch the graph: lower line's largest gap below f is zero somewhere (tangent
    # or support), so the bias is not needlessly loose.
    rel = rule_for(node).relax(node, l.unsqueeze(1), u.unsqueeze(1), None, [])
    a, b = l.double().clamp(min=-50), u.double().clamp(max=50)    # a grid fine enough near the bend
    xt = a + t * (b - a)
    lo_line = rel.lower_slope.double()[0] * xt + rel.lower_bias.double()[0]
    hi_line = rel.upper_slope.double()[0] * xt + rel.upper_bias.double()[0]
    fx = _truth(node, xt)
    slack = 1e-4 * (1 + torch.maximum(l.double().abs(), u.double().abs()).squeeze(0))   # finish's slack ~ m
    assert bool(((fx - lo_line).min(0).values <= slack).all()), "lower line never touches f"
    assert bool(((hi_line - fx).min(0).values <= slack).all()), "upper line never touches f"


# ------------------------------------------------------------------- extreme boxes

@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("ends", [(-math.inf, math.inf), (-math.inf, 3.0), (2.0, math.inf), (-1e30, 1e30),
                                  (-3e38, 3e38), (1e4, 1e4), (-math.inf, -math.inf)])
def test_extreme_boxes_finite_or_clear_error(case: str, ends: tuple[float, float]) -> None:
    """Huge or infinite ends: the interval has no NaN; the lines are finite and sound, or
    they are not finite (no finite linear bound exists: an op unbounded on the box), only
    where the interval is not finite either, and `finite_relaxation` refuses them."""
    node = _node(case)
    rule = rule_for(node)
    l, u = torch.tensor([[ends[0]]]), torch.tensor([[ends[1]]])
    out = rule.interval(node, [IntervalBounds(l, u)], None)[0]
    assert not bool(torch.isnan(out.lower).any() or torch.isnan(out.upper).any())
    assert bool((out.lower <= out.upper).all())
    r = rule.relax(node, l.unsqueeze(1), u.unsqueeze(1), None, [])
    lines = (r.lower_slope, r.lower_bias, r.upper_slope, r.upper_bias)
    if not all(bool(torch.isfinite(t).all()) for t in lines):
        assert not any(bool(torch.isnan(t).any()) for t in lines), f"{case}: NaN in a line"
        assert not (bool(torch.isfinite(out.lower).all()) and bool(torch.isfinite(out.upper).all())), \
            f"{case}: no finite line on a box whose interval is finite"
        with pytest.raises(ValueError, match="no finite linear"):
            finite_relaxation(r, node)
        return
    fin = [max(min(e, 1e30), -1e30) for e in ends]
    x = torch.linspace(fin[0], fin[1], 1001, dtype=torch.float64).to(torch.float32).reshape(-1, 1, 1)
    fx = _truth(node, x)
    fx = torch.where(torch.isfinite(fx), fx, torch.zeros_like(fx))
    keep = torch.isfinite(_truth(node, x))
    _assert_between(r, torch.where(keep, x, torch.zeros_like(x)),
                    torch.where(keep, fx, (r.lower_bias.double() + r.upper_bias.double()) / 2), 1e-5, case)


def test_bounded_ops_never_refuse_infinite_boxes() -> None:
    """Bounded ops (Atan, Erf, HardSigmoid) always have constant lines at least."""
    l, u = torch.tensor([[[-math.inf]]]), torch.tensor([[[math.inf]]])
    for case in ("Atan", "Erf", "HardSigmoid", "HardSigmoid_negative"):
        node = _node(case)
        r = rule_for(node).relax(node, l, u, None, [])
        assert all(bool(torch.isfinite(t).all()) for t in (r.lower_slope, r.lower_bias, r.upper_slope, r.upper_bias))


# --------------------------------------------------------------------- tightness

def _mlp(op: str, attrs: dict, opset: int, seed: int, widths=(4, 16, 16, 3)):
    from onnx import helper
    from tests.op_cases import make_model
    r = np.random.default_rng(seed)
    nodes, inits, prev = [], {}, "X"
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        inits[f"W{i}"] = (r.normal(size=(a, b)) * 2.0 / np.sqrt(a)).astype(np.float32)
        inits[f"b{i}"] = (0.5 * r.normal(size=b)).astype(np.float32)
        last = i == len(widths) - 2
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], ["Y" if last else f"h{i}"]))
        if not last:
            nodes.append(helper.make_node(op, [f"h{i}"], [f"a{i}"], **attrs))
            prev = f"a{i}"
    return make_model(nodes, inits, (1, widths[0]), (1, widths[-1]), opset)


TIGHTNESS = ["Softplus", "Atan", "Erf", "Elu", "HardSigmoid", "HardSwish", "Gelu", "Gelu_tanh"]


@pytest.mark.parametrize("case", TIGHTNESS)
def test_crown_no_wider_than_ibp_on_a_random_mlp(case: str, record_property) -> None:
    op, attrs, opset = CASES[case]
    graph = graph_from_proto(_mlp(op, attrs, opset, seed=3))
    gen = torch.Generator().manual_seed(0)
    center = torch.rand(1, 1, 4, generator=gen) * 2 - 1
    ratios = {}
    for radius in (0.02, 0.2, 1.0):
        box = IntervalBounds(center - radius, center + radius)
        res = {m: compute_bounds(graph, box, options=BoundOptions(method=m, alpha_iterations=20))
               for m in ("ibp", "crown", "alpha-crown")}
        w = {m: (b.upper - b.lower)[0] for m, b in res.items()}
        assert bool((w["crown"] <= w["ibp"] * (1 + 1e-5) + 1e-5).all()), f"{case} r={radius}: CROWN wider than IBP"
        assert float(w["alpha-crown"].sum()) <= float(w["crown"].sum()) * (1 + 1e-5) + 1e-5
        ratios[radius] = (float(w["crown"].sum() / w["ibp"].sum()), float(w["alpha-crown"].sum() / w["ibp"].sum()))
        # The bounds hold on sampled outputs too.
        from tests.helpers import outputs_float64, sample_box
        ys = outputs_float64(graph, sample_box(box.lower, box.upper, 500, 1))
        for m, b in res.items():
            assert bool((ys >= b.lower.double() - 1e-4).all()) and bool((ys <= b.upper.double() + 1e-4).all()), m
    record_property("crown_over_ibp_width", ratios)
    print(f"{case}: CROWN/IBP, alpha-CROWN/IBP width by radius: "
          + ", ".join(f"r={k}: {c:.3f}, {a:.3f}" for k, (c, a) in ratios.items()))


# ------------------------------------------------------------------------ import

def _one_node_model(op: str, opset: int, **attrs):
    from onnx import helper
    from tests.op_cases import make_model
    return make_model([helper.make_node(op, ["X"], ["Y"], **attrs)], {}, (1, 3), (1, 3), opset)


@pytest.mark.parametrize("op, first", [("Gelu", 20), ("HardSwish", 14), ("Erf", 9), ("Atan", 7)])
def test_op_refused_below_its_first_opset(op: str, first: int) -> None:
    graph_from_proto(_one_node_model(op, first))
    with pytest.raises(UnsupportedModel, match=op):
        graph_from_proto(_one_node_model(op, first - 1))


def test_gelu_unknown_approximation_is_a_clean_refusal() -> None:
    with pytest.raises(UnsupportedModel, match="approximate"):
        graph_from_proto(_one_node_model("Gelu", 20, approximate="fast"))


RUNTIME_TAILS = {   # where a runtime's float32 formula cancels: its error is not relative to the value
    "gelu": ("Gelu", {}, 20, ((-5.1541, -5.1539), (-12.0, -3.0), (-4.0, -0.5))),
    "gelu-tanh": ("Gelu", {"approximate": "tanh"}, 20, ((-5.1541, -5.1539), (-12.0, -3.0), (-4.0, -0.5))),
    "sigmoid": ("Sigmoid", {}, 13, ((-17.0, -10.0), (10.0, 17.0))),
    "elu": ("Elu", {}, 13, ((-1e-3, 0.0), (-0.3, -0.2))),
}


@pytest.mark.parametrize("case", sorted(RUNTIME_TAILS))
@pytest.mark.parametrize("method", ["ibp", "crown"])
def test_bounds_contain_what_onnxruntime_computes_where_it_cancels(case: str, method: str) -> None:
    """onnxruntime's float32 Gelu near x = -5 is off the real one by about an ulp of 0.5 |x|
    (1 + tanh or 1 + erf cancels), of either sign, where the real value is -8e-7 (a Mul
    by 1000 after it once made `verify` say unsat where onnxruntime's output meets the
    property); its Sigmoid's tail by about an ulp of 1, its Elu near 0 by an ulp of alpha.
    The bounds must contain onnxruntime's outputs there, scaled by 1000 so that the final
    rounding margin (absolute, 1e-6) does not hide the op's own error."""
    import onnxruntime
    from onnx import helper

    from tests.op_cases import make_model

    op, attrs, opset, ranges = RUNTIME_TAILS[case]
    n = 64
    model = make_model([helper.make_node(op, ["X"], ["g"], **attrs),
                        helper.make_node("Mul", ["g", "k"], ["Y"])], {"k": np.array([1000.0], np.float32)},
                       (1, n), (1, n), opset=opset)
    graph = graph_from_proto(model)
    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for lo_end, hi_end in ranges:
        xs = np.linspace(lo_end, hi_end, n).astype(np.float32)
        for width in (0.0, 1e-4):
            lo = torch.tensor(xs).reshape(1, 1, n)
            box = IntervalBounds(lo, lo + width)
            res = compute_bounds(graph, box, options=BoundOptions(method=method))
            for t in (0.0, 0.5, 1.0):
                x = (lo + t * width).reshape(1, n).numpy().astype(np.float32)
                y = torch.tensor(sess.run(None, {"X": x})[0].reshape(-1), dtype=torch.float64)
                assert bool((res.lower[0].double() <= y).all() and (y <= res.upper[0].double()).all()), \
                    (lo_end, width, t)
