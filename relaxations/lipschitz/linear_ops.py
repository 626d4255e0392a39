"""The linear part of an ONNX node, as a map the naive Lipschitz walk can compose or bound.

A global Lipschitz constant ignores additive constants (biases, Add/Sub of a constant,
Pad's fill value), so every affine node is reduced to its *linear* part ``A``. For the
walk we need three things from ``A`` without writing its matrix down unless it is small:

* ``apply(x)``: ``A x`` on one float64 tensor of the input's exact shape (the node's own
  forward, with the additive constants zeroed), so several nodes can be multiplied
  together by pushing a basis through them;
* ``apply_abs(x)``: ``|A| x`` (the same node with its multiplicative constants replaced
  by their absolute values). ``|A| 1`` gives ``||A||_inf`` exactly and the VJP of
  ``|A|`` at ``1`` gives ``||A||_1``; ``|A|`` also bounds the rounding of compositions;
* ``l2_hint()``: a certified l2 operator norm when the op has a cheap tight one (a
  weight matrix, a diagonal, a convolution through its Fourier symbol), else ``None``.

Refusing is always allowed; guessing is not. An op the bounding registry knows as affine
but not listed here is walked as the dense matrix read off its forward (`_dense_op`, while
small); every other op is handled (or refused) by `relaxations.lipschitz.graph_naive`.
"""
from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np
import torch

from models import Graph, GraphEvaluator, Node, UnsupportedModel
from models.affine import NotAffine, affine_map
from models.ops import forward_rule
from models.ops.conv import spatial_pads
from relaxations.lipschitz.norms import certified_spectral_norm
from relaxations.registry import is_affine_node, rule_for

__all__ = ["LinearOp", "FLAT_IDENTITY_OPS", "LINEAR_OPS", "linear_op", "conv_l2_bound", "window_multiplicity"]

_EPS = float(np.finfo(np.float64).eps)
T = torch.Tensor

# Ops that leave the flat (C-order) vector unchanged: no effect on any norm.
FLAT_IDENTITY_OPS = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Cast"})
# Ops whose matrix has only entries >= 0 (selections, averages): |A| = A.
_NONNEGATIVE = frozenset({"AveragePool", "GlobalAveragePool", "ReduceSum", "ReduceMean", "Pad", "Concat",
                          "Transpose", "Slice", "Gather", "Split", "Expand", "Tile", "Resize", "Upsample"})
# Ops that are elementwise scalings when the variable is not broadcast: l2 = l-inf norm.
_DIAGONAL = frozenset({"BatchNormalization", "Mul", "Div", "Neg", "Add", "Sub", "Sum"})
LINEAR_OPS = frozenset({"Gemm", "MatMul", "Conv", "ConvTranspose"}) | _NONNEGATIVE | _DIAGONAL


@dataclass(frozen=True)
class LinearOp:
    """The linear part ``A`` of one node output, from ``in_shape`` to ``out_shape``.

    ``work`` bounds the number of terms any output entry sums (used for rounding margins).
    """

    node: Node
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    apply: Callable[[T], T]
    apply_abs: Callable[[T], T]
    work: int
    l2_hint: Callable[[], float | None]

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)

    def inf_norm(self) -> float:
        """``||A||_inf`` (max absolute row sum) rounded upward: ``max(|A| 1)``."""
        ones = torch.ones(self.in_shape, dtype=torch.float64)
        r = float(self.apply_abs(ones).max()) if self.n_out else 0.0
        return r * (1.0 + 4.0 * (self.work + 4) * _EPS)

    def one_norm(self) -> float:
        """``||A||_1`` (max absolute column sum) rounded upward: the VJP of ``|A|`` at 1."""
        ones_in = torch.ones(self.in_shape, dtype=torch.float64)
        _, vjp = torch.func.vjp(self.apply_abs, ones_in)
        (col,) = vjp(torch.ones(self.out_shape, dtype=torch.float64))
        r = float(col.max()) if col.numel() else 0.0
        return r * (1.0 + 4.0 * (self.n_out + 4) * _EPS)

    def norm(self, norm: str) -> float:
        """A certified operator norm of ``A`` in ``norm`` ("2" or "inf")."""
        linf = self.inf_norm()
        if norm == "inf":
            return linf
        hint = self.l2_hint()
        # Holder / Schur test: ||A||_2 <= sqrt(||A||_1 ||A||_inf), valid for every matrix.
        schur = math.sqrt(self.one_norm() * linf) * (1.0 + 4.0 * _EPS)
        if self.node.op in _DIAGONAL and self.n_in == self.n_out and self.node.op != "Sum":
            schur = min(schur, linf)  # a diagonal matrix: every norm is max |d_i|
        return schur if hint is None else min(schur, hint)


def _consts(graph: Graph, node: Node) -> list[T | None]:
    """The node's inputs as float64 constants (None for variables and omitted inputs)."""
    out: list[T | None] = []
    for name in node.inputs:
        t = graph.constants.get(name) if name else None
        out.append(None if t is None else (t.double() if t.is_floating_point() else t))
    return out


def _with_attrs(node: Node, **changes: object) -> Node:
    attrs = dict(node.attrs)
    attrs.update(changes)
    return dataclasses.replace(node, attrs=MappingProxyType(attrs))


def _caller(node: Node, args: list[T | None], var: int, out: int) -> Callable[[T], T]:
    fn = forward_rule(node).fn

    def call(x: T) -> T:
        xs = list(args)
        xs[var] = x
        return fn(node, xs)[out]

    return call


def _abs_float(t: T | None) -> T | None:
    return t.abs() if t is not None and t.is_floating_point() else t


def _zero_float(t: T | None) -> T | None:
    return torch.zeros_like(t) if t is not None and t.is_floating_point() else t


def linear_op(graph: Graph, node: Node, out_index: int = 0) -> LinearOp:
    """The `LinearOp` of output ``out_index`` of ``node`` (which has one variable input).

    Raises `UnsupportedModel` when the node is not linear in its variable input (e.g. a
    constant divided by the variable, a convolution whose weight is the variable)."""
    op = node.op
    variables = [i for i, x in enumerate(node.inputs) if x and x not in graph.constants]
    if len(variables) != 1:
        raise UnsupportedModel(f"naive Lipschitz: {op} with {len(variables)} variable inputs is not a linear map",
                               node=node.name, op=op, opset=node.opset)
    var = variables[0]
    in_shape = tuple(graph.shapes[node.inputs[var]])
    out_shape = tuple(graph.shapes[node.outputs[out_index]])
    cs = _consts(graph, node)
    lin, absd = list(cs), list(cs)
    lin_node, abs_node = node, node
    hint: Callable[[], float | None] = lambda: None

    def refuse(why: str) -> UnsupportedModel:
        return UnsupportedModel(f"naive Lipschitz: {why}", node=node.name, op=op, opset=node.opset)

    if op == "Gemm":
        if var == 2:
            raise refuse("a variable bias operand (C) is not supported")
        lin[2:] = [None] * (len(lin) - 2)
        absd[2:] = [None] * (len(absd) - 2)
        absd[1 - var] = _abs_float(absd[1 - var])
        abs_node = _with_attrs(node, alpha=abs(float(node.attr("alpha", 1.0))))
        weight = cs[1 - var]
        alpha = abs(float(node.attr("alpha", 1.0)))
        hint = lambda: alpha * certified_spectral_norm(weight.reshape(weight.shape[-2], -1).numpy())  # noqa: E731
    elif op == "MatMul":
        weight = cs[1 - var]
        absd[1 - var] = _abs_float(weight)
        if weight.dim() == 2:  # x @ W (rows independent) or W @ x (columns independent): ||W||_2
            hint = lambda: certified_spectral_norm(weight.numpy())  # noqa: E731
    elif op in ("Conv", "ConvTranspose"):
        if var != 0:
            raise refuse("the convolution weight must be a constant")
        lin[2:] = [None] * (len(lin) - 2)
        absd[2:] = [None] * (len(absd) - 2)
        absd[1] = _abs_float(cs[1])
        if op == "Conv":
            hint = lambda: conv_l2_bound(node, cs[1], in_shape)  # noqa: E731
    elif op == "BatchNormalization":
        if var != 0:
            raise refuse("only the data input may be variable")
        lin[2], lin[3] = _zero_float(cs[2]), _zero_float(cs[3])
        absd[1], absd[2], absd[3] = _abs_float(cs[1]), _zero_float(cs[2]), _zero_float(cs[3])
    elif op in ("Add", "Sum"):
        lin = [_zero_float(c) for c in cs]
        absd = list(lin)
    elif op == "Sub":
        lin = [_zero_float(c) for c in cs]
        absd = list(lin)
        if var == 1:  # c - x: the linear part is -x, and |-I| = I is x + 0
            abs_node = Node(node.name, "Add", node.inputs, node.outputs, node.attrs, node.opset)
    elif op == "Mul":
        absd[1 - var] = _abs_float(cs[1 - var])
    elif op == "Div":
        if var != 0:
            raise refuse("a constant divided by a variable is not globally Lipschitz")
        absd[1] = _abs_float(cs[1])
    elif op == "Neg":
        abs_node = Node(node.name, "Identity", node.inputs, node.outputs, node.attrs, node.opset)
    elif op == "Pad":
        if node.opset < 11:
            lin_node = abs_node = _with_attrs(node, value=0.0)
        elif len(cs) > 2:
            lin[2] = absd[2] = _zero_float(cs[2])
        if var != 0:
            raise refuse("only the data input may be variable")
    elif op == "Concat":
        lin = [_zero_float(c) for c in cs]
        absd = list(lin)
    elif op in _NONNEGATIVE:
        if var != 0:
            raise refuse("only the data input may be variable")
    else:
        return _dense_op(graph, node, var, out_index, in_shape, out_shape, refuse)
    weights = sum(int(c.numel()) for c in cs if c is not None and c.is_floating_point())
    work = math.prod(in_shape) + weights + 8
    return LinearOp(node, in_shape, out_shape, _caller(lin_node, lin, var, out_index),
                    _caller(abs_node, absd, var, out_index), work, hint)


def _dense_op(graph: Graph, node: Node, var: int, out_index: int, in_shape: tuple[int, ...],
              out_shape: tuple[int, ...], refuse: Callable[[str], UnsupportedModel]) -> LinearOp:
    """Any other op that the bounding registry knows as affine in its variable input, as
    the dense matrix read off its forward (`models.affine_map`): an affine op added to the
    registry is walked without an entry here, while its matrix is small enough to write.

    `affine_map`'s entries out(e_j) - out(0) carry the rounding of two float64 forwards;
    `apply_abs` adds a bound on it, 4 eps (|out(e_j)| + |out(0)|) per entry (each forward a
    dot product of at most `n_in` terms is within (n_in + 2) eps of its magnitude sum: the
    margin is 4 (n_in + 4) eps of that, the factor `work` brings)."""
    try:
        rule = rule_for(node)
    except UnsupportedModel:
        raise refuse("not a linear op") from None
    variable = [i == var for i in range(len(node.inputs))]
    if out_index != 0 or len(node.outputs) != 1 or not is_affine_node(node, rule, variable):
        raise refuse("not a linear op")
    ev = GraphEvaluator(graph, dtype=torch.float64)
    try:
        W, b = affine_map(ev, node, [node.inputs[var]])
    except NotAffine as exc:
        raise refuse(str(exc)) from None
    n_in = math.prod(in_shape)
    mat = torch.from_numpy(W)
    slack = 4.0 * (n_in + 4) * _EPS * (torch.from_numpy(np.abs(W + b[:, None])) + torch.from_numpy(np.abs(b))[:, None])
    absmat = mat.abs() + slack
    apply = lambda x: (mat @ x.reshape(-1)).reshape(out_shape)        # noqa: E731
    apply_abs = lambda x: (absmat @ x.reshape(-1)).reshape(out_shape)  # noqa: E731
    return LinearOp(node, in_shape, out_shape, apply, apply_abs, n_in + 8, lambda: None)


def conv_l2_bound(node: Node, weight: T, in_shape: tuple[int, ...]) -> float | None:
    """A certified l2 norm of a Conv through the Fourier symbol of its kernel.

    Why it holds: striding keeps a subset of the stride-1 outputs (a row selection, norm
    <= 1); the zero-padded stride-1 convolution is a submatrix of the *full* linear
    convolution, which is a submatrix of the circular convolution on a torus of size
    ``n + k_eff - 1`` per axis (no wrap-around). A circular multi-channel convolution is
    block-diagonalised by the DFT, so its norm is ``max_w ||K^(w)||_2`` over the torus
    frequencies (Sedghi et al., 2019). Rounding: the SVD is backward stable (inflate by
    ``64 n eps``) and the FFT's error per symbol entry is at most
    ``c log2(N) sqrt(N) eps ||w_oi||_2``; we add that in Frobenius norm with c = 10.
    Returns None when the kernel has more than 2**22 symbol entries (too costly)."""
    w = weight.double().numpy()
    nd = w.ndim - 2
    if nd < 1 or len(in_shape) != nd + 2:
        return None
    groups = int(node.attr("group", 1))
    dil = [int(d) for d in node.attr("dilations", [1] * nd)]
    c_out, c_in_g = w.shape[0], w.shape[1]
    c_in = c_in_g * groups
    keff = [(k - 1) * d + 1 for k, d in zip(w.shape[2:], dil)]
    torus = [n + k - 1 for n, k in zip(in_shape[2:], keff)]
    n_freq = math.prod(torus)
    if n_freq * c_out * c_in > (1 << 22):
        return None
    dense = np.zeros((c_out, c_in, *torus))
    per_group = c_out // groups
    for g in range(groups):
        sl = tuple(slice(0, (k - 1) * d + 1, d) for k, d in zip(w.shape[2:], dil))
        dense[(slice(g * per_group, (g + 1) * per_group), slice(g * c_in_g, (g + 1) * c_in_g)) + sl] = \
            w[g * per_group:(g + 1) * per_group]
    sym = np.fft.fftn(dense, axes=tuple(range(2, 2 + nd)))
    sym = np.moveaxis(sym.reshape(c_out, c_in, n_freq), 2, 0)  # [freq, c_out, c_in]
    sigma = float(np.linalg.svd(sym, compute_uv=False).max(initial=0.0))
    svd_err = sigma * 64.0 * max(c_out, c_in) * _EPS
    fft_err = 10.0 * (math.log2(max(n_freq, 2)) + 1.0) * math.sqrt(n_freq) * _EPS * float(np.linalg.norm(w))
    return float(np.nextafter((sigma + svd_err + fft_err) * (1.0 + 4.0 * _EPS), np.inf))


def window_multiplicity(node: Node, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """The largest number of pooling windows (of a MaxPool) that contain one input entry.

    The windows are products of per-axis intervals, so the count is a product of
    per-axis counts; each axis is enumerated from the actual output length (which
    already reflects ``ceil_mode``)."""
    kernel = [int(k) for k in node.attr("kernel_shape")]
    nd = len(kernel)
    strides = [int(s) for s in node.attr("strides", [1] * nd)]
    dil = [int(d) for d in node.attr("dilations", [1] * nd)]
    pads = spatial_pads(node, in_shape[2:], kernel, strides, dil)
    total = 1
    for a in range(nd):
        counts = [0] * in_shape[2 + a]
        for j in range(out_shape[2 + a]):
            for t in range(kernel[a]):
                p = j * strides[a] - pads[a] + t * dil[a]
                if 0 <= p < len(counts):
                    counts[p] += 1
        total *= max(counts, default=0)
    return total


def constant_slope(node: Node, consts: Mapping[str, T]) -> float | None:
    """Lipschitz constant of a one-input activation (the same in l2 and l-inf) from its
    registry rule's `lipschitz`, or None where the op has none (no rule, or a rule that
    declares none: Exp, Floor, Clip with variable limits)."""
    try:
        rule = rule_for(node)
    except UnsupportedModel:
        return None
    if rule.lipschitz is None:
        return None
    value = rule.lipschitz(node, [consts.get(x) if x else None for x in node.inputs])
    return None if value is None else float(value)
