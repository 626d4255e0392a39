"""Hidden-needle verification instances: small ReLU nets whose only violations lie in a tiny sub-box.

    python -m verifier.bench.needles generate OUT_DIR [--inputs 2,8,20,100,400,784] [--kind mlp|cnn|both]
                                                [--seed 0] [--timeout 60]

Each network comes with two VNN-LIB properties over the input box ``[0,1]^n``, both of
the form ``(assert (>= Y_0 T))`` (the property states the violation, VNN-COMP style):
a ``sat`` twin whose violations all lie inside the needle, and an ``unsat`` twin with
no violation at all. The twins share one ONNX file: the needle height lives in the
threshold ``T`` (raising ``T`` is the same as lowering the needle), which keeps the
pair one network and makes the difference between them one number.

Construction (``w = 2^-8``, so the needle's box ``[c-w, c+w]`` is 0.78% wide per input,
and ``1/w = 256`` is exact in float32)::

    s(x) = relu(1 - 256 * sum_i (relu(x_i - c_i) + relu(c_i - x_i)))   # > 0 iff ||x-c||_1 < w
    g(x) = u . relu(W3 relu(W2 relu(W1 x + b1) + b2) + b3) + b0         # the distractors
    Y_0  = a * s(x) + g(x)

The MLP computes ``x - c`` and ``c - x`` with two ``Sub`` nodes (n parameters instead
of a dense ``n x 2n`` Gemm); the CNN with a 1x1 ``Conv`` of two channels and one centre
value ``c0`` for every pixel, beside a stride-2 3x3 ``Conv`` of distractor channels.
``s`` and ``g`` meet in a ``Concat`` before the output ``Gemm``.

Why the verdicts hold (``prove``; every number on the float32 weights, in float64,
with bound propagation widened outward for float64 rounding):

- ``G_box``: an interval (IBP) upper bound of ``g`` over ``[0,1]^n``; ``G_needle``: the
  same over the L1 ball (the first affine layer bounded exactly over the ball by the
  dual norm, ``w * max_j |A_kj|``, then IBP), which holds every point where ``s > 0``.
- ``eps``: a bound on the float32 evaluation error of ``Y_0`` over the whole box
  (``gamma_k = k u / (1 - k u)`` per sum of ``k`` terms, in any summation order, so it
  covers onnxruntime's blocked/FMA kernels).
- ``sat``: ``T_sat > G_box + eps`` (outside the ball ``s = 0``, so no violation there)
  and ``a + g(c) - eps >= T_sat`` (at ``x = c``, ``s = 1`` exactly: a counterexample).
- ``unsat``: ``T_unsat > max(G_box, a + G_needle) + eps``, since ``s <= 1`` everywhere.

The guarantees hold in exact arithmetic on the float32 weights and in float32
evaluation alike; ``margin`` is the smaller slack. The twins differ by
``G_needle - g(c)`` plus twice ``delta = max(1e-3 * scale, 2 * eps)`` (``scale``: the
largest of 1, ``|G_box|`` and g's interval spread over the box). A sat twin's violating set is a much smaller
region around ``c`` (L1 radius about ``w * delta / a``): the needle's tip.

``generate`` writes ``onnx/``, ``vnnlib/``, ``instances.csv`` (VNN-COMP: no header) and
``expected.csv`` (the reference format of ``verifier.bench.read_expected``; family =
the output folder's name, as ``read_instances`` names it; confidence ``construction``).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = ["DEFAULT_INPUTS", "HALF_WIDTH", "KINDS", "NeedleNet", "NeedleProof", "NeedleInstance", "build_net",
           "prove", "forward", "float32_error_bound", "to_onnx", "count_params", "format_property", "generate",
           "main"]

HALF_WIDTH = 2.0 ** -8          # w: exact in float32, and so is 1/w
DEFAULT_INPUTS = (2, 8, 20, 100, 400, 784)
KINDS = ("mlp", "cnn")
FAMILY_CONFIDENCE = "construction"

_U32 = 2.0 ** -24               # unit roundoff of float32
_F64_SLACK = 1e-12              # relative widening per affine layer for float64 rounding (>> N * 2^-53)
_REL_DELTA = 1e-3               # the twins' distance from the needle's tip, relative to g's scale
_REL_HEADROOM = 0.05            # how far the sat threshold sits above G_box, relative to g's scale
_CNN_STRIDE = 2


@dataclass(frozen=True, eq=False)
class NeedleNet:
    """The parameters of one needle network, float32 as written to ONNX.

    ``first_w`` is a Gemm weight ``[n, k1]`` (mlp) or a Conv kernel ``[k1, 1, 3, 3]``
    (cnn, stride 2, padding 1); ``hidden`` are Gemm layers ``(W [in, out], b [out])``
    after it; ``out_w = [a, u...]`` reads ``Concat(s, last hidden)``.
    """

    kind: str
    input_shape: tuple[int, ...]
    centre: np.ndarray
    first_w: np.ndarray
    first_b: np.ndarray
    hidden: tuple[tuple[np.ndarray, np.ndarray], ...]
    out_w: np.ndarray
    out_b: np.ndarray

    @property
    def n(self) -> int:
        return int(np.prod(self.input_shape[1:]))

    @property
    def height(self) -> float:
        """The needle's height ``a``: the output weight of ``s``."""
        return float(self.out_w[0])


@dataclass(frozen=True)
class NeedleProof:
    """The numbers behind both verdicts; both margins positive means both are proved."""

    g_box: float        # upper bound of g over [0,1]^n
    g_needle: float     # upper bound of g over the L1 ball ||x - c||_1 <= w
    g_centre: float     # a lower bound of g(c)
    height: float       # a
    eps: float          # float32 evaluation error bound of Y_0 over the box
    t_sat: float
    t_unsat: float
    sat_margin: float   # min(T_sat - G_box, a + g(c) - T_sat) - eps
    unsat_margin: float  # T_unsat - max(G_box, a + G_needle) - eps


@dataclass(frozen=True)
class NeedleInstance:
    """One generated instance; ``onnx``/``vnnlib`` as written in instances.csv."""

    kind: str
    n: int
    seed: int
    expected: str
    onnx: str
    vnnlib: str
    onnx_path: str
    vnnlib_path: str
    centre: tuple[float, ...]
    half_width: float
    threshold: float
    margin: float
    params: int
    timeout: float


# ----------------------------------------------------------------------------- the network


def _widths(kind: str, n: int) -> tuple[int, int, int]:
    """Distractor widths, growing mildly with n so that parameters stay under ~50k."""
    first = 4 if kind == "cnn" else int(np.clip(round(12 + 4 * np.log2(n)), 16, 48))
    return first, (32 if n >= 100 else 16), 16


def _side(n: int) -> int:
    side = int(round(np.sqrt(n)))
    if side * side != n or side < 4:
        raise ValueError(f"a cnn needle needs a square image of side >= 4; n={n} is not one")
    return side


def _draw(kind: str, n: int, seed: int) -> NeedleNet:
    """The random part (centre, distractors), with the needle height still 0."""
    rng = np.random.default_rng([seed, n, KINDS.index(kind)])
    k1, k2, k3 = _widths(kind, n)
    f32 = np.float32
    if kind == "cnn":
        side = _side(n)
        shape: tuple[int, ...] = (1, 1, side, side)
        centre = np.full(n, rng.uniform(0.1, 0.9), dtype=f32)
        first_w = (rng.normal(size=(k1, 1, 3, 3)) * 2.0 / 3.0).astype(f32)
        first_b = (-0.5 * first_w.sum(axis=(1, 2, 3)) + 0.3 * rng.normal(size=k1)).astype(f32)
        fan = k1 * ((side - 1) // _CNN_STRIDE + 1) ** 2
    else:
        shape = (1, n)
        centre = rng.uniform(0.1, 0.9, size=n).astype(f32)
        first_w = (rng.normal(size=(n, k1)) * 2.0 / np.sqrt(n)).astype(f32)
        # centred on the box's middle, so that many distractors are unstable over the box
        first_b = (-0.5 * first_w.sum(axis=0) + 0.3 * rng.normal(size=k1)).astype(f32)
        fan = k1
    hidden = []
    for width in (k2, k3):
        hidden.append(((rng.normal(size=(fan, width)) * np.sqrt(2.0 / fan)).astype(f32),
                       (0.1 * rng.normal(size=width)).astype(f32)))
        fan = width
    u = (rng.normal(size=fan) / np.sqrt(fan)).astype(f32)
    return NeedleNet(kind, shape, centre, first_w, first_b, tuple(hidden),
                     np.concatenate([[f32(0.0)], u]).astype(f32), np.zeros(1, dtype=f32))


def _conv_matrix(kernel: np.ndarray, side: int) -> np.ndarray:
    """The stride-2, padding-1 3x3 convolution as a dense matrix, rows in Flatten's order."""
    k = kernel.shape[0]
    out = (side - 1) // _CNN_STRIDE + 1
    dense = np.zeros((k, out, out, side, side))
    for i in range(out):
        for j in range(out):
            for di in range(3):
                for dj in range(3):
                    r, c = _CNN_STRIDE * i + di - 1, _CNN_STRIDE * j + dj - 1
                    if 0 <= r < side and 0 <= c < side:
                        dense[:, i, j, r, c] += kernel[:, 0, di, dj]
    return dense.reshape(k * out * out, side * side)


def _distractor_maps(net: NeedleNet) -> list[tuple[np.ndarray, np.ndarray]]:
    """g's affine layers as float64 ``(A [out, in], b)``, ReLU between them, from x."""
    if net.kind == "cnn":
        first = _conv_matrix(net.first_w.astype(np.float64), net.input_shape[-1])
        b1 = np.repeat(net.first_b.astype(np.float64), first.shape[0] // len(net.first_b))
    else:
        first, b1 = net.first_w.T.astype(np.float64), net.first_b.astype(np.float64)
    maps = [(first, b1)]
    maps += [(w.T.astype(np.float64), b.astype(np.float64)) for w, b in net.hidden]
    return maps


def forward(net: NeedleNet, x: np.ndarray) -> np.ndarray:
    """``Y_0`` for a batch of inputs ``[B, n]`` (or ``[B, *shape]``), in float64."""
    x = np.asarray(x, dtype=np.float64).reshape(-1, net.n)
    s = np.maximum(1.0 - np.abs(x - net.centre.astype(np.float64)).sum(axis=1) / HALF_WIDTH, 0.0)
    h = x.T
    for a, b in _distractor_maps(net):
        h = np.maximum(a @ h + b[:, None], 0.0)
    out_w = net.out_w.astype(np.float64)
    return out_w[0] * s + out_w[1:] @ h + float(net.out_b[0])


# ----------------------------------------------------------------------------- the proof


def _affine_interval(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Interval of ``a @ x + b`` over the box, widened for float64 rounding."""
    mid, rad = (lo + hi) / 2.0, (hi - lo) / 2.0
    centre, radius = a @ mid + b, np.abs(a) @ rad
    slack = _F64_SLACK * (np.abs(a) @ np.maximum(np.abs(lo), np.abs(hi)) + np.abs(b)) + 1e-300
    return centre - radius - slack, centre + radius + slack


def _g_interval(net: NeedleNet, lo1: np.ndarray, hi1: np.ndarray) -> tuple[float, float]:
    """Interval of g given an interval of its first pre-activation layer (IBP after it)."""
    lo, hi = np.maximum(lo1, 0.0), np.maximum(hi1, 0.0)
    for a, b in _distractor_maps(net)[1:]:
        lo, hi = _affine_interval(a, b, lo, hi)
        lo, hi = np.maximum(lo, 0.0), np.maximum(hi, 0.0)
    u = net.out_w[1:].astype(np.float64)[None, :]
    glo, ghi = _affine_interval(u, net.out_b.astype(np.float64), lo, hi)
    return float(glo[0]), float(ghi[0])


def _g_over_box(net: NeedleNet) -> tuple[float, float]:
    a, b = _distractor_maps(net)[0]
    return _g_interval(net, *_affine_interval(a, b, np.zeros(net.n), np.ones(net.n)))


def _g_over_needle(net: NeedleNet) -> float:
    """Upper bound of g over ``||x - c||_1 <= w``: the first layer exactly (dual norm), then IBP."""
    a, b = _distractor_maps(net)[0]
    c = net.centre.astype(np.float64)
    mid = a @ c + b
    radius = HALF_WIDTH * np.abs(a).max(axis=1)
    slack = _F64_SLACK * (np.abs(a) @ (np.abs(c) + HALF_WIDTH) + np.abs(b)) + 1e-300
    return _g_interval(net, mid - radius - slack, mid + radius + slack)[1]


def _g_at_centre(net: NeedleNet) -> float:
    """A lower bound of g(c) (a zero-width box, widened for float64 rounding)."""
    a, b = _distractor_maps(net)[0]
    c = net.centre.astype(np.float64)
    return _g_interval(net, *_affine_interval(a, b, c, c))[0]


def _gamma(k: int) -> float:
    return k * _U32 / (1.0 - k * _U32)


def float32_error_bound(net: NeedleNet) -> float:
    """A bound on ``|Y_0(float32 evaluation) - Y_0(exact)|`` for any float32 x in ``[0,1]^n``.

    Per affine layer with ``k`` nonzero terms per row (bias included) the standard bound
    ``|A| e + gamma_k (|A| (m + e) + |b|)``, ReLU adding nothing. For ``s``: the ``x - c``
    terms carry one rounding each and ``s``'s Gemm sums ``2n + 1`` terms, so where the
    computed ``s`` is positive it exceeds the exact one by at most ``3 gamma + 2u``
    (elsewhere it is 0 <= exact), and it never exceeds 1 (a sum of 1 and non-positive
    terms rounds to at most 1).
    """
    maps = _distractor_maps(net)
    lo, hi = np.zeros(net.n), np.ones(net.n)
    err = np.zeros(net.n)
    for a, b in maps:
        terms = int(np.count_nonzero(a, axis=1).max()) + 1
        mag = np.maximum(np.abs(lo), np.abs(hi)) + err
        err = np.abs(a) @ err + _gamma(terms) * (np.abs(a) @ mag + np.abs(b))
        lo, hi = _affine_interval(a, b, lo, hi)
        lo, hi = np.maximum(lo, 0.0), np.maximum(hi, 0.0)
    eps_s = 3.0 * _gamma(2 * net.n + 1) + 2.0 * _U32
    height, u = net.height, np.abs(net.out_w[1:].astype(np.float64))
    out_terms = len(net.out_w) + 1
    mag = np.maximum(np.abs(lo), np.abs(hi)) + err
    total = (height * eps_s + u @ err
             + _gamma(out_terms) * (height * (1.0 + eps_s) + u @ mag + abs(float(net.out_b[0]))))
    return float(total) * 1.01 + 1e-30  # 1%: the float64 evaluation of this bound itself


def prove(net: NeedleNet, t_sat: float, t_unsat: float) -> NeedleProof:
    """Recompute, from the weights alone, how far both thresholds are from being wrong."""
    g_box, g_needle, g_centre = _g_over_box(net)[1], _g_over_needle(net), _g_at_centre(net)
    a, eps = net.height, float32_error_bound(net)
    sat_margin = min(t_sat - g_box, a + g_centre - t_sat) - eps
    unsat_margin = t_unsat - max(g_box, a + g_needle) - eps
    return NeedleProof(g_box, g_needle, g_centre, a, eps, t_sat, t_unsat, sat_margin, unsat_margin)


def _f32_up(v: float) -> float:
    f = np.float32(v)
    return float(f) if float(f) >= v else float(np.nextafter(f, np.float32(np.inf)))


def _f32_down(v: float) -> float:
    f = np.float32(v)
    return float(f) if float(f) <= v else float(np.nextafter(f, np.float32(-np.inf)))


def build_net(kind: str, n: int, seed: int = 0) -> tuple[NeedleNet, NeedleProof]:
    """Draw one needle network and place its height and both thresholds; raise if unproved.

    ``delta`` starts at 1e-3 of g's interval spread and grows to twice the float32 error
    bound where that is larger (wide first layers); the sat threshold sits ``h`` above
    ``G_box``, the unsat one ``delta`` above ``a + G_needle``. All three are float32
    numbers so that a verifier comparing in float32 reads the same property.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    net = _draw(kind, n, seed)
    g_lo, g_box = _g_over_box(net)
    g_centre, g_needle = _g_at_centre(net), _g_over_needle(net)
    scale = max(1.0, g_box - g_lo, abs(g_box))
    delta = _REL_DELTA * scale
    for _ in range(20):
        headroom = max(_REL_HEADROOM * scale, 10.0 * delta)
        height = _f32_up(g_box - g_centre + headroom)
        out_w = net.out_w.copy()
        out_w[0] = np.float32(height)
        net = dataclasses.replace(net, out_w=out_w)
        eps = float32_error_bound(net)
        if delta >= 2.0 * eps:
            break
        delta = 2.0 * eps
    t_sat = _f32_down(height + g_centre - delta)
    t_unsat = _f32_up(height + g_needle + delta)
    proof = prove(net, t_sat, t_unsat)
    if not (proof.sat_margin > 0 and proof.unsat_margin > 0):
        raise RuntimeError(f"needle {kind} n={n} seed={seed}: construction not proved ({proof})")
    return net, proof


# ----------------------------------------------------------------------------- files


def to_onnx(net: NeedleNet) -> bytes:
    """The network as an ONNX model (opset 13): input ``X``, output ``Y`` of shape [1, 1]."""
    from onnx import TensorProto, helper, numpy_helper  # lazy: onnx (about 1 s) only for files; the rest is numpy

    n = net.n
    inits: dict[str, np.ndarray] = {}
    nodes = []
    if net.kind == "cnn":
        c0 = net.centre[0]
        inits["Kn"] = np.array([1.0, -1.0], dtype=np.float32).reshape(2, 1, 1, 1)
        inits["bn"] = np.array([-c0, c0], dtype=np.float32)
        nodes += [helper.make_node("Conv", ["X", "Kn", "bn"], ["pm"], kernel_shape=[1, 1]),
                  helper.make_node("Relu", ["pm"], ["pm_r"]),
                  helper.make_node("Flatten", ["pm_r"], ["pm_f"], axis=1)]
        inits["Kd"], inits["bd"] = net.first_w, net.first_b
        nodes += [helper.make_node("Conv", ["X", "Kd", "bd"], ["d0"], kernel_shape=[3, 3],
                                   strides=[_CNN_STRIDE, _CNN_STRIDE], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["d0"], ["d0_r"]),
                  helper.make_node("Flatten", ["d0_r"], ["d0_f"], axis=1)]
    else:
        inits["C"] = net.centre.reshape(1, n)
        nodes += [helper.make_node("Sub", ["X", "C"], ["xp"]),
                  helper.make_node("Sub", ["C", "X"], ["xm"]),
                  helper.make_node("Concat", ["xp", "xm"], ["pm"], axis=1),
                  helper.make_node("Relu", ["pm"], ["pm_f"])]
        inits["Wd"], inits["bd"] = net.first_w, net.first_b
        nodes += [helper.make_node("Gemm", ["X", "Wd", "bd"], ["d0"]),
                  helper.make_node("Relu", ["d0"], ["d0_f"])]
    inits["Ws"] = np.full((2 * n, 1), -1.0 / HALF_WIDTH, dtype=np.float32)
    inits["bs"] = np.ones(1, dtype=np.float32)
    nodes += [helper.make_node("Gemm", ["pm_f", "Ws", "bs"], ["s_pre"]),
              helper.make_node("Relu", ["s_pre"], ["s"])]
    prev = "d0_f"
    for i, (w, b) in enumerate(net.hidden, start=1):
        inits[f"W{i}"], inits[f"b{i}"] = w, b
        nodes += [helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [f"d{i}"]),
                  helper.make_node("Relu", [f"d{i}"], [f"d{i}_r"])]
        prev = f"d{i}_r"
    inits["Wo"], inits["bo"] = net.out_w.reshape(-1, 1), net.out_b
    nodes += [helper.make_node("Concat", ["s", prev], ["z"], axis=1),
              helper.make_node("Gemm", ["z", "Wo", "bo"], ["Y"])]
    graph = helper.make_graph(
        nodes, f"needle_{net.kind}_n{n}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, list(net.input_shape))],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 1])],
        initializer=[numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="nncert.needles")
    model.ir_version = 8
    return model.SerializeToString()


def count_params(net: NeedleNet) -> int:
    """Numbers stored in the ONNX file's initialisers."""
    n = net.n
    needle = 4 if net.kind == "cnn" else n   # Kn and bn (cnn), C (mlp)
    dense = net.first_w.size + net.first_b.size + sum(w.size + b.size for w, b in net.hidden)
    return needle + 2 * n + 1 + dense + net.out_w.size + net.out_b.size


def format_property(n: int, threshold: float, comment: str) -> str:
    """VNN-LIB 1.0 text: ``X`` in ``[0,1]^n`` and the violation ``Y_0 >= threshold``."""
    lines = [f"; {comment}"]
    lines += [f"(declare-const X_{i} Real)" for i in range(n)]
    lines += ["(declare-const Y_0 Real)", ""]
    for i in range(n):
        lines += [f"(assert (<= X_{i} 1.0))", f"(assert (>= X_{i} 0.0))"]
    lines += ["", f"(assert (>= Y_0 {float(threshold)!r}))", ""]
    return "\n".join(lines)


def _check_centre_in_onnxruntime(model: bytes, net: NeedleNet, t_sat: float, t_unsat: float) -> None:
    """The sat twin's counterexample, replayed in float32 by onnxruntime (no tolerance)."""
    import onnxruntime as ort  # lazy: only the files' replay runs onnxruntime; the rest is numpy

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    x = net.centre.reshape(net.input_shape).astype(np.float32)
    y = float(session.run(None, {"X": x})[0].reshape(-1)[0])
    if not t_sat <= y < t_unsat:
        raise RuntimeError(f"needle {net.kind} n={net.n}: onnxruntime gives {y!r} at the centre, "
                           f"outside [T_sat={t_sat!r}, T_unsat={t_unsat!r})")


def _kinds_for(n: int, kinds: Sequence[str]) -> list[str]:
    """The kinds that fit n: a cnn needs a square image; only an explicit cnn-only request fails."""
    chosen = []
    for kind in kinds:
        if kind == "cnn":
            try:
                _side(n)
            except ValueError:
                if list(kinds) == ["cnn"]:
                    raise
                continue
        chosen.append(kind)
    return chosen


def generate(out_dir: str | Path, inputs: Sequence[int] = DEFAULT_INPUTS, kinds: Sequence[str] = KINDS,
             seed: int = 0, timeout: float = 60.0) -> list[NeedleInstance]:
    """Write a needle family to ``out_dir`` and return its instances, sat before unsat per net.

    Every network is seeded by ``(seed, n, kind)``, so one instance does not change when
    others are added. A cnn is made only for square ``n`` (side >= 4) when both kinds are
    asked for.
    """
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    out = Path(out_dir)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    (out / "vnnlib").mkdir(parents=True, exist_ok=True)
    family = out.resolve().name
    instances: list[NeedleInstance] = []
    for n in dict.fromkeys(int(v) for v in inputs):  # each size once, in the order given
        for kind in _kinds_for(n, kinds):
            instances += _write_pair(out, kind, n, seed, float(timeout))
    timeout_text = f"{float(timeout):g}"
    (out / "instances.csv").write_text("".join(f"{i.onnx},{i.vnnlib},{timeout_text}\n" for i in instances))
    rows = ["family,onnx,vnnlib,timeout_s,expected,confidence"]
    rows += [f"{family},{i.onnx},{i.vnnlib},{timeout_text},{i.expected},{FAMILY_CONFIDENCE}" for i in instances]
    (out / "expected.csv").write_text("\n".join(rows) + "\n")
    return instances


def _write_pair(out: Path, kind: str, n: int, seed: int, timeout: float) -> list[NeedleInstance]:
    net, proof = build_net(kind, n, seed)
    stem = f"needle_{kind}_n{n}_s{seed}"
    model = to_onnx(net)
    _check_centre_in_onnxruntime(model, net, proof.t_sat, proof.t_unsat)
    onnx_rel = f"onnx/{stem}.onnx"
    (out / onnx_rel).write_bytes(model)
    pairs = []
    for expected, threshold, margin in (("sat", proof.t_sat, proof.sat_margin),
                                        ("unsat", proof.t_unsat, proof.unsat_margin)):
        vnnlib_rel = f"vnnlib/{stem}_{expected}.vnnlib"
        comment = f"nncert needle instance: {kind}, n={n}, seed={seed} (verifier.bench.needles)"
        (out / vnnlib_rel).write_text(format_property(n, threshold, comment))
        pairs.append(NeedleInstance(kind, n, seed, expected, onnx_rel, vnnlib_rel, str(out / onnx_rel),
                                    str(out / vnnlib_rel), tuple(float(v) for v in net.centre), HALF_WIDTH,
                                    threshold, margin, count_params(net), timeout))
    return pairs


# ----------------------------------------------------------------------------- command line


def _parse_inputs(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive input counts, got {text!r}")
    return values


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``generate OUT_DIR``: write a family and print one line per network."""
    parser = argparse.ArgumentParser(prog="python -m verifier.bench.needles", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="write onnx/, vnnlib/, instances.csv and expected.csv")
    g.add_argument("out_dir")
    g.add_argument("--inputs", type=_parse_inputs, default=list(DEFAULT_INPUTS),
                   help="input counts, comma-separated (a cnn needs a square count)")
    g.add_argument("--kind", choices=["mlp", "cnn", "both"], default="both")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--timeout", type=float, default=60.0, help="the timeout column of instances.csv (s)")
    args = parser.parse_args(argv)
    kinds = list(KINDS) if args.kind == "both" else [args.kind]
    try:
        instances = generate(args.out_dir, args.inputs, kinds, args.seed, args.timeout)
    except ValueError as exc:
        print(f"needles: error: {exc}", file=sys.stderr)
        return 2
    for sat, unsat in zip(instances[::2], instances[1::2]):
        print(f"{sat.onnx}: {sat.kind} n={sat.n} params={sat.params} "
              f"T_sat={sat.threshold:.7g} T_unsat={unsat.threshold:.7g} "
              f"margins {sat.margin:.3g}/{unsat.margin:.3g}")
    print(f"{len(instances)} instances in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
