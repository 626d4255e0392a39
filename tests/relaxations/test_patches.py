"""Patches-mode CROWN (relaxations/patches.py) gives the dense walk's bounds: the same
coefficients, bias and rounding mass on every intermediate tensor, up to float rounding,
on random CNNs and on the conv benchmark models; and its bounds hold every sample."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

from models import GraphEvaluator, graph_from_proto, load_onnx
from models.from_torch import graph_from_module
from relaxations import BoundOptions, Given, IntervalBounds, compute_bounds
from relaxations.bounds import LinearBounds, Precision
from relaxations.compute import intermediate_bounds
from relaxations.crown import backward_lower
from relaxations.patches import Patches, PatchBounds, _inside_mask, _merge, patches_lower, to_dense, windows
from tests.op_cases import make_model

torch.set_num_threads(1)

BENCH = Path(__file__).resolve().parents[3] / "shared" / "bench"
# |patches - dense| <= TOL * (1 + largest |bound|): float rounding only.
TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
_MASS = Precision(rel=1.0, abs=0.0)   # the margin is the mass itself


def _net(layers: list[nn.Module], seed: int) -> nn.Module:
    """The layers in eval mode, BatchNorm with random statistics (fresh ones are the identity)."""
    torch.manual_seed(seed)
    net = nn.Sequential(*layers).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


# Small CNNs: strides 1 and 2, padding 0 and 1, 1 to 3 convolutions, a ReLU after each.
CNNS = {
    "one_conv_s2_p1": ((1, 3, 8, 8), lambda: [nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                                               nn.Linear(4 * 4 * 4, 5)]),
    "two_convs_s1p0_s2p1": ((1, 2, 9, 9), lambda: [nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2, padding=1),
                                                   nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 6)]),
    "three_convs": ((1, 1, 12, 12), lambda: [nn.Conv2d(1, 3, 4, stride=2, padding=1), nn.ReLU(),
                                             nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 2, stride=2),
                                             nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)]),
}


class _Residual(nn.Module):
    """relu(conv1x1_s2(x) + conv3x3(relu(conv3x3_s2(x)))): two windows of different
    size and offset meet at x and are merged."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.short = nn.Conv2d(4, 6, 1, stride=2)
        self.a = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.b = nn.Conv2d(6, 6, 3, padding=1)
        self.head = nn.Linear(6 * 6 * 6, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.short(x) + self.b(torch.relu(self.a(x))))
        return self.head(torch.flatten(y, 1))


# Every step of patches form, and the hand-over to the dense walk midway (AvgPool).
OPS = {
    "batchnorm_leaky": ((1, 2, 8, 8), lambda: [nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1),
                                               nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                                               nn.Linear(4 * 3 * 3, 3)]),
    "conv_bn_conv": ((1, 2, 11, 11), lambda: [nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3),
                                            nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                                            nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                            nn.Linear(3 * 6 * 6, 3)]),
    "width_only_padding": ((1, 2, 9, 9), lambda: [nn.Conv2d(2, 3, 3, padding=(0, 1)), nn.BatchNorm2d(3),
                                                  nn.Conv2d(3, 4, 3, stride=(1, 2), padding=(0, 1)), nn.ReLU(),
                                                  nn.Flatten(), nn.Linear(4 * 5 * 5, 3)]),
    "sigmoid_groups_dilation": ((1, 2, 10, 10), lambda: [nn.Conv2d(2, 4, 3, dilation=2), nn.Sigmoid(),
                                                         nn.Conv2d(4, 6, 3, groups=2, padding=1), nn.Tanh(),
                                                         nn.Conv2d(6, 3, 2, stride=2), nn.ReLU(), nn.Flatten(),
                                                         nn.Linear(3 * 3 * 3, 3)]),
    "avgpool_midway": ((1, 2, 8, 8), lambda: [nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                                              nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                              nn.Linear(4 * 4 * 4, 3)]),
    "residual_merge": ((1, 2, 12, 12), None),
    "asymmetric_same_padding": ((1, 2, 7, 7), lambda: [nn.Conv2d(2, 3, 4, padding="same"), nn.ReLU(),
                                                       nn.Conv2d(3, 3, 3, stride=2), nn.ReLU(), nn.Flatten(),
                                                       nn.Linear(3 * 3 * 3, 2)]),
}


def _graph(table: dict, name: str, seed: int = 0):
    shape, make = table[name]
    net = _net([_Residual()] if make is None else make(), seed)
    return graph_from_module(net, shape)


def _arith_graph():
    """Conv, then Mul, Add, Sub and Div by constants around ReLUs (ONNX, broadcast constants)."""
    r = np.random.default_rng(3)
    f = lambda *s: r.normal(size=s).astype(np.float32)   # noqa: E731
    inits = {"W0": f(3, 2, 3, 3), "b0": f(3), "m": f(1, 3, 1, 1), "a": f(3, 6, 6), "W1": f(4, 3, 3, 3),
             "s": f(1, 4, 1, 1), "d": (1.5 + r.uniform(size=(4, 1, 1))).astype(np.float32), "G": f(36, 3)}
    nodes = [helper.make_node("Conv", ["X", "W0", "b0"], ["c0"]), helper.make_node("Mul", ["c0", "m"], ["m0"]),
             helper.make_node("Add", ["a", "m0"], ["a0"]), helper.make_node("Relu", ["a0"], ["r0"]),
             helper.make_node("Conv", ["r0", "W1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Sub", ["c1", "s"], ["s1"]), helper.make_node("Div", ["s1", "d"], ["d1"]),
             helper.make_node("Relu", ["d1"], ["r1"]), helper.make_node("Flatten", ["r1"], ["fl"]),
             helper.make_node("MatMul", ["fl", "G"], ["Y"])]
    return graph_from_proto(make_model(nodes, inits, (1, 2, 8, 8), (1, 3)))


def _box(graph, B: int, eps: float, dtype: torch.dtype, seed: int = 0) -> IntervalBounds:
    x0 = 2 * torch.rand(B, *graph.input_shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) - 1
    return IntervalBounds(x0 - eps, x0 + eps)


def _bounds(graph, box: IntervalBounds, patches: bool):
    return compute_bounds(graph, box, options=BoundOptions(method="crown", patches=patches))


def _assert_same_bounds(dense, patched, dtype: torch.dtype) -> None:
    """Every interval of the table and the final bounds agree to float rounding."""
    assert dense.table.keys() == patched.table.keys()
    pairs = [(dense.lower, patched.lower), (dense.upper, patched.upper)]
    pairs += [(getattr(dense.table[k], e), getattr(patched.table[k], e)) for k in dense.table for e in ("lower", "upper")]
    for a, b in pairs:
        scale = 1.0 + float(a.abs().max())
        assert float((a - b).abs().max()) <= TOL[dtype] * scale


def _crown_tensors(graph) -> list[str]:
    """The tensors CROWN bounds for intermediate bounds: inputs of relaxed activations."""
    return [n.inputs[0] for n in graph.nodes if n.op in ("Relu", "LeakyRelu", "Sigmoid", "Tanh")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("name", list(CNNS))
def test_patches_bounds_equal_dense_bounds_on_small_cnns(name: str, B: int, dtype: torch.dtype) -> None:
    graph = _graph(CNNS, name)
    box = _box(graph, B, 0.1, dtype)
    dense, patched = _bounds(graph, box, False), _bounds(graph, box, True)
    _assert_same_bounds(dense, patched, dtype)
    # the random nets are not trivially stable: CROWN had rows to bound on every layer
    for t in _crown_tensors(graph):
        assert bool(((dense.table[t].lower < 0) & (dense.table[t].upper > 0)).any()), t


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("name", list(OPS) + ["arithmetic"])
def test_patches_bounds_equal_dense_bounds_through_every_step(name: str) -> None:
    graph = _arith_graph() if name == "arithmetic" else _graph(OPS, name, seed=1)
    for dtype in (torch.float32, torch.float64):
        box = _box(graph, 2, 0.05, dtype, seed=1)
        _assert_same_bounds(_bounds(graph, box, False), _bounds(graph, box, True), dtype)


@pytest.mark.parametrize("name", ["three_convs", "batchnorm_leaky", "conv_bn_conv", "width_only_padding",
                                  "sigmoid_groups_dilation", "residual_merge", "arithmetic", "avgpool_midway"])
def test_patches_walk_gives_the_dense_coefficients_bias_and_mass(name: str) -> None:
    """Row by row, the linear bound over the input is the dense walk's: A, bias and the
    rounding mass that `concretize` widens by (float64, so only rounding differs)."""
    graph = _arith_graph() if name == "arithmetic" else _graph({**CNNS, **OPS}, name, seed=2)
    ev = GraphEvaluator(graph, dtype=torch.float64)
    box = _box(graph, 2, 0.05, torch.float64, seed=2)
    _, ctx, _ = intermediate_bounds(graph, ev, box, BoundOptions(method="crown"))
    kinds = set()
    for t in _crown_tensors(graph):
        shape = graph.shapes[t]
        n = int(np.prod(shape))
        rows = torch.arange(0, n, 3)
        A = torch.zeros(2, 2 * len(rows), n, dtype=torch.float64)
        A[:, torch.arange(len(rows)), rows] = 1.0
        A[:, len(rows) + torch.arange(len(rows)), rows] = -1.0
        dense = backward_lower(ctx, t, A.reshape(2, -1, *shape))
        got = patches_lower(ctx, t, rows, 2)
        kinds.add(type(got).__name__)
        lin = got.linear() if isinstance(got, PatchBounds) else got
        for a, b in ((dense.A, lin.A), (dense.bias, lin.bias), (dense.mass, lin.mass)):
            assert float((a - b).abs().max()) <= 1e-12 * (1.0 + float(a.abs().max()))
        # with margin = mass (rel 1), the concretised bounds compare the masses too
        assert torch.allclose(dense.concretize(box, _MASS), got.concretize(box, _MASS), rtol=1e-12, atol=1e-12)
    # the walk reached the input in patches form on these nets (dense only after AvgPool)
    assert ("LinearBounds" in kinds) == (name == "avgpool_midway")
    assert "PatchBounds" in kinds


@pytest.mark.parametrize("name", ["two_convs_s1p0_s2p1", "three_convs", "residual_merge", "sigmoid_groups_dilation"])
def test_patches_bounds_hold_every_sample(name: str) -> None:
    """Sound by sampling: every tensor's value at points of the box (a quarter of them
    corners) lies in its patches-mode interval."""
    graph = _graph({**CNNS, **OPS}, name, seed=4)
    box = _box(graph, 1, 0.1, torch.float32, seed=4)
    res = _bounds(graph, box, True)
    g = torch.Generator().manual_seed(5)
    u = torch.rand(400, *graph.input_shape, generator=g, dtype=torch.float64)
    u[:100] = (u[:100] > 0.5).double()
    x = box.lower.double() + (box.upper - box.lower).double() * u
    values = GraphEvaluator(graph, dtype=torch.float64).forward_all(x)
    for t, v in values.items():
        lo, hi = res.table[t].lower.double(), res.table[t].upper.double()
        slack = 1e-6 * (1.0 + float(v.abs().max()))
        assert bool((v >= lo - slack).all() and (v <= hi + slack).all()), t


def _random_patches(seed: int, kernel=(5, 4), stride=(2, 1), pad=(2, 1), shape=(1, 3, 7, 6), R: int = 9) -> Patches:
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(0, 4, (R,), generator=g)
    w = torch.randint(0, 6, (R,), generator=g)
    values = torch.randn(2, R, shape[1], *kernel, generator=g, dtype=torch.float64)
    return Patches(values, stride, pad, shape, h, w, (int(h.min()), int(h.max()), int(w.min()), int(w.max())))


def test_windows_and_to_dense_describe_the_same_rows() -> None:
    """<row, v> summed over the window equals the dense row against v, windows that leave the
    tensor included; merging two geometries is the sum of their dense rows."""
    p = _random_patches(0)
    v = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    dense = to_dense(p)
    assert dense.shape == (2, 9, 1, 3, 7, 6)
    by_window = (p.values * windows(p, v)).flatten(2).sum(-1)
    by_dense = (dense.reshape(2, 9, -1) * v.reshape(2, 1, -1)).sum(-1)
    assert torch.allclose(by_window, by_dense, atol=1e-12)
    q = dataclasses.replace(_random_patches(1, kernel=(2, 3), pad=(0, 2)), h=p.h, w=p.w, span=p.span)
    assert torch.allclose(to_dense(_merge(p, q)), dense + to_dense(q), atol=1e-12)
    assert _merge(p, dataclasses.replace(q, stride=(1, 1))) is None


def test_inside_mask_marks_exactly_the_window_entries_inside_the_tensor() -> None:
    """`_inside_mask` (None: all inside) against a brute-force mask, on random geometries
    that overflow one side at a time or none."""
    g = torch.Generator().manual_seed(7)
    for trial in range(200):
        k = tuple(int(v) for v in torch.randint(1, 5, (2,), generator=g))
        st = tuple(int(v) for v in torch.randint(1, 3, (2,), generator=g))
        pad = tuple(int(v) for v in torch.randint(0, 3, (2,), generator=g))
        p = _random_patches(trial, kernel=k, stride=st, pad=pad, shape=(1, 1, 8, 9), R=3)
        top = (p.h * st[0] - pad[0]).view(-1, 1, 1) + torch.arange(k[0]).view(1, -1, 1)
        left = (p.w * st[1] - pad[1]).view(-1, 1, 1) + torch.arange(k[1]).view(1, 1, -1)
        brute = (top >= 0) & (top < 8) & (left >= 0) & (left < 9)
        mask = _inside_mask(p)
        assert (mask is None) == bool(brute.all()), trial
        assert mask is None or torch.equal(mask[:, 0], brute)


def test_concretisation_with_an_infinite_box_end_is_the_dense_one() -> None:
    """An infinite end under a zero coefficient counts as 0, under a nonzero one gives
    -inf (`interval_terms`' rules); rows whose windows miss it stay finite."""
    p = _random_patches(2)
    p = dataclasses.replace(p, values=p.values * (torch.rand(p.values.shape, generator=torch.Generator().manual_seed(3))
                                                  > 0.3))
    lo = torch.randn(2, 1, 3, 7, 6, dtype=torch.float64)
    hi = lo + 1.0
    lo[0, 0, 1, 3, 2] = -torch.inf
    hi[1, 0, 2, 0, 0] = torch.inf
    box = IntervalBounds(lo, hi)
    bias = torch.randn(2, 9, dtype=torch.float64)
    got = PatchBounds(p, bias, bias.abs()).concretize(box, _MASS)
    want = LinearBounds(to_dense(p), bias, bias.abs()).concretize(box, _MASS)
    assert torch.equal(torch.isinf(got), torch.isinf(want)) and bool(torch.isinf(want).any())
    assert bool(torch.isfinite(want).any())
    assert torch.allclose(got[torch.isfinite(want)], want[torch.isfinite(want)], rtol=1e-12, atol=1e-12)


def test_clip_hooks_receive_dense_linear_bounds_equal_to_the_dense_walk() -> None:
    """With a clip hook (branch and bound) the chunk's bound is handed over as dense
    LinearBounds; it is the dense walk's."""
    graph = _graph(CNNS, "two_convs_s1p0_s2p1", seed=6)
    box = _box(graph, 1, 0.1, torch.float64, seed=6)
    seen: dict[bool, list] = {False: [], True: []}

    class Hook:
        split_linear = None

        def __init__(self, key: bool) -> None:
            self.key = key

        def __call__(self, name: str, lin: LinearBounds, lb: torch.Tensor) -> torch.Tensor:
            assert isinstance(lin, LinearBounds)
            seen[self.key].append(lin)
            return lb

    for patches in (False, True):
        compute_bounds(graph, box, options=BoundOptions(method="crown", patches=patches),
                       given=Given(clip=Hook(patches)))
    assert len(seen[False]) == len(seen[True]) > 0
    for a, b in zip(seen[False], seen[True]):
        assert torch.allclose(a.A, b.A, atol=1e-12) and torch.allclose(a.bias, b.bias, atol=1e-12)


def test_bounds_config_switch_reaches_bound_options() -> None:
    from verifier.api import bound_options
    from verifier.config import BoundsConfig

    assert bound_options(BoundsConfig(patches=True)).patches
    assert not bound_options(BoundsConfig(patches=False)).patches
    assert bound_options(BoundsConfig()).patches          # on by default


def _first_box(family: Path, model: str, graph) -> IntervalBounds:
    """The first input region of the family's first instance of `model` (instances.csv)."""
    import vnnlib

    rows = [line.split(",") for line in (family / "instances.csv").read_text().splitlines() if line.strip()]
    spec = next(v for m, v, *_ in rows if Path(m).name == model)
    region = vnnlib.load(family / spec, graph.input_size, graph.output_size).disjuncts[0].region
    lo = torch.tensor(region.lower, dtype=torch.float32).reshape(1, *graph.input_shape)
    hi = torch.tensor(region.upper, dtype=torch.float32).reshape(1, *graph.input_shape)
    return IntervalBounds(lo, hi)


BENCH_MODELS = [("2022_oval21", "cifar_base_kw.onnx"), ("2022_oval21", "cifar_wide_kw.onnx"),
                ("2022_oval21", "cifar_deep_kw.onnx"), ("2022_collins_rul_cnn", "NN_rul_small_window_20.onnx"),
                ("2022_sri_resnet_a", "resnet_3b2_bn_mixup_adv_4.0_bs128_lr-1.onnx")]


@pytest.mark.parametrize("family,model", BENCH_MODELS, ids=[m for _, m in BENCH_MODELS])
def test_patches_bounds_equal_dense_bounds_on_conv_benchmarks(family: str, model: str) -> None:
    path = BENCH / family / "onnx" / model
    if not path.exists():
        pytest.skip(reason=f"{path} is absent (the shared benchmark folder holds no such model)")
    graph = load_onnx(path, check=False)
    box = _first_box(BENCH / family, model, graph)
    _assert_same_bounds(_bounds(graph, box, False), _bounds(graph, box, True), torch.float32)
