"""CROWN's intermediate rows in patches form: coefficients kept per row as a window.

`intermediate._crown_tensor` bounds an intermediate tensor z [1, C, H, W] through rows
A = +e_j / -e_j. Walked back through convolutions, the row of one element of z is
nonzero only in that element's receptive field, yet the dense walk (crown.py) holds
every row over the whole feature map. Here a row holds a window instead
(auto_LiRPA's "patches mode"): `Patches.values` [B, R, C_t, Kh, Kw] are the
coefficients of row r on tensor t in the window whose top-left corner sits at
`loc_r * stride - pad` of t, where loc_r is row r's (h, w) in z and stride, pad, K
accumulate over the convolutions walked so far.

Invariant: entries of a window that fall outside t (in a convolution's zero
padding) are zero. The conv step zeroes them as the dense transposed convolution
crops them; every other step multiplies entrywise and keeps them zero. So each
window holds exactly the nonzeros of the dense row, and every sum below (bias, mass,
concretisation) has the dense path's terms: only their order, i.e. float rounding,
differs. The rounding mass is the same sum of |terms| as `interval_terms` and the
dense steps compute, so `Precision`'s margin covers both alike.

Steps in patches form: Conv (2-D, any stride, padding, dilation and groups, constant
weight and bias), the relaxed elementwise ops (the same `Relaxation` data as the dense
walk, so the bound is the dense one), Add/Sub of a constant or of two variables of the
output's shape, Mul/Div by a constant, BatchNormalization, and the concretisation
against the input box. Any other node, a convolution whose window would outgrow its
input, or two windows that do not align ends the form: everything held is made dense
and `crown.backward_from` finishes the walk. Only plain CROWN takes this path (no
alphas, betas or captured coefficients: those passes stay dense).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from models import Node
from models.ops.conv import spatial_pads
from relaxations.bounds import IntervalBounds, LinearBounds, Precision, check_deadline, concretize
from relaxations.crown import BackwardContext, PartialRelaxation, _is_plain_elementwise, _relaxation, backward_from
from relaxations.registry import OpRule

__all__ = ["Patches", "PatchBounds", "patches_lower", "start_patches", "windows", "to_dense"]

T = torch.Tensor
Step = Optional[tuple[list, T, T]]


@dataclass(frozen=True)
class Patches:
    """Coefficients of R rows on one tensor of shape [1, C, H, W], one window per row.

    values [B, R, C, Kh, Kw]; row r's window starts at (h[r] * stride[0] - pad[0],
    w[r] * stride[1] - pad[1]) of the tensor, where (h, w) [R] are the rows' locations
    in the start tensor, and `span` their (min h, max h, min w, max w) as Python ints (no
    device sync to ask). Entries outside the tensor are zero (module docstring).
    """

    values: T
    stride: tuple[int, int]
    pad: tuple[int, int]
    shape: tuple[int, ...]
    h: T
    w: T
    span: tuple[int, int, int, int]

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.values.shape[-2]), int(self.values.shape[-1])


def start_patches(flat_rows: T, shape: Sequence[int], B: int, dtype: torch.dtype) -> Patches:
    """Rows +e_j (first half) and -e_j (second half) of the elements `flat_rows` of a
    tensor [1, C, H, W], as `intermediate._crown_tensor` builds them densely."""
    _, C, H, W = shape
    r = flat_rows.numel()
    c, h, w = flat_rows // (H * W), (flat_rows // W) % H, flat_rows % W
    values = torch.zeros(B, 2 * r, C, 1, 1, dtype=dtype, device=flat_rows.device)
    ar = torch.arange(r, device=flat_rows.device)
    values[:, ar, c, 0, 0] = 1.0
    values[:, r + ar, c, 0, 0] = -1.0
    span = (int(h.min()), int(h.max()), int(w.min()), int(w.max()))
    return Patches(values, (1, 1), (0, 0), tuple(shape), torch.cat([h, h]), torch.cat([w, w]), span)


def _reach(p: Patches) -> tuple[int, int]:
    """Padding after the tensor's end that every window fits into, per spatial dim."""
    (kh, kw), (_, _, H, W) = p.kernel, p.shape
    return (max(0, p.span[1] * p.stride[0] - p.pad[0] + kh - H), max(0, p.span[3] * p.stride[1] - p.pad[1] + kw - W))


def windows(p: Patches, v: T) -> T:
    """The values v [B' (1 or B), C, H, W] of the tensor in each row's window:
    [B', R, C, Kh, Kw], zero where the window leaves the tensor."""
    (kh, kw), (eh, ew) = p.kernel, _reach(p)
    padded = F.pad(v, (p.pad[1], ew, p.pad[0], eh))
    blocks = padded.unfold(2, kh, p.stride[0]).unfold(3, kw, p.stride[1])   # [B', C, nH, nW, Kh, Kw]
    return blocks[:, :, p.h, p.w].movedim(2, 1)


def to_dense(p: Patches) -> T:
    """The rows as the dense walk holds them: [B, R, 1, C, H, W]."""
    B, R, C, kh, kw = p.values.shape
    _, _, H, W = p.shape
    eh, ew = _reach(p)
    out = p.values.new_zeros(B, R, C, p.pad[0] + H + eh, p.pad[1] + W + ew)
    dev = p.values.device
    r = torch.arange(R, device=dev).view(R, 1, 1, 1)
    c = torch.arange(C, device=dev).view(1, C, 1, 1)
    hh = (p.h * p.stride[0]).view(R, 1, 1, 1) + torch.arange(kh, device=dev).view(1, 1, kh, 1)
    ww = (p.w * p.stride[1]).view(R, 1, 1, 1) + torch.arange(kw, device=dev).view(1, 1, 1, kw)
    out[:, r, c, hh, ww] = p.values
    return out[:, :, :, p.pad[0]:p.pad[0] + H, p.pad[1]:p.pad[1] + W].reshape(B, R, *p.shape)


def _inside_mask(p: Patches) -> Optional[T]:
    """[R, 1, Kh, Kw] mask of window entries inside the tensor; None when all are."""
    (kh, kw), (_, _, H, W) = p.kernel, p.shape
    hmin, hmax, wmin, wmax = p.span
    if (hmin * p.stride[0] >= p.pad[0] and hmax * p.stride[0] - p.pad[0] + kh <= H
            and wmin * p.stride[1] >= p.pad[1] and wmax * p.stride[1] - p.pad[1] + kw <= W):
        return None
    dev = p.h.device
    top = (p.h * p.stride[0] - p.pad[0]).view(-1, 1) + torch.arange(kh, device=dev)
    left = (p.w * p.stride[1] - p.pad[1]).view(-1, 1) + torch.arange(kw, device=dev)
    ok_h, ok_w = (top >= 0) & (top < H), (left >= 0) & (left < W)
    return (ok_h.unsqueeze(2) & ok_w.unsqueeze(1)).unsqueeze(1)


def _sum(x: T) -> T:
    """[B, R, ...] summed to [B, R]."""
    return x.reshape(x.shape[0], x.shape[1], -1).sum(-1)


def _merge(a: Patches, b: Patches) -> Optional[Patches]:
    """a + b on one tensor, both in the window that encloses theirs; None when the
    windows do not move in step (different strides)."""
    if a.stride != b.stride:
        return None
    if a.pad == b.pad and a.kernel == b.kernel:
        return replace(a, values=a.values + b.values)
    pad = (max(a.pad[0], b.pad[0]), max(a.pad[1], b.pad[1]))
    end = [max(x.kernel[i] - x.pad[i] for x in (a, b)) for i in range(2)]

    def grown(x: Patches) -> T:
        before = [pad[i] - x.pad[i] for i in range(2)]
        after = [pad[i] + end[i] - x.kernel[i] - before[i] for i in range(2)]
        return F.pad(x.values, (before[1], after[1], before[0], after[0]))

    return replace(a, values=grown(a) + grown(b), pad=pad)


def _add(a: Patches | T, b: Patches | T) -> Patches | T:
    """Coefficients that reach one tensor from two readers, summed (dense when they do not align)."""
    if isinstance(a, Patches) and isinstance(b, Patches):
        merged = _merge(a, b)
        if merged is not None:
            return merged
    return (to_dense(a) if isinstance(a, Patches) else a) + (to_dense(b) if isinstance(b, Patches) else b)


def _conv_step(ctx: BackwardContext, node: Node, p: Patches) -> Step:
    """Through y = conv(x, w) + b: the windows composed with the kernel (a transposed
    convolution of each window), cropped to x; None for a non-2-D or variable-weight
    convolution, or when the window would grow past the size of x."""
    consts = ctx.ev.constants
    in_shape = ctx.graph.shapes.get(node.inputs[0])
    if len(node.inputs) < 2 or node.inputs[1] not in consts or in_shape is None or len(in_shape) != 4:
        return None
    has_bias = len(node.inputs) > 2 and bool(node.inputs[2])
    if has_bias and node.inputs[2] not in consts:
        return None
    w = consts[node.inputs[1]]
    if w.dim() != 4:
        return None
    s = [int(v) for v in node.attr("strides", [1, 1])]
    d = [int(v) for v in node.attr("dilations", [1, 1])]
    pads = spatial_pads(node, in_shape[2:], list(w.shape[2:]), s, d)
    kh, kw = p.kernel
    new_k = ((kh - 1) * s[0] + d[0] * (w.shape[2] - 1) + 1, (kw - 1) * s[1] + d[1] * (w.shape[3] - 1) + 1)
    if new_k[0] * new_k[1] >= in_shape[2] * in_shape[3]:
        return None      # a window as large as the map: dense is no larger and needs no gathers
    B, R, C = p.values.shape[:3]
    vals = F.conv_transpose2d(p.values.reshape(B * R, C, kh, kw), w, None, stride=s, dilation=d,
                              groups=int(node.attr("group", 1)))
    out = Patches(vals.reshape(B, R, -1, *new_k), (p.stride[0] * s[0], p.stride[1] * s[1]),
                  (p.pad[0] * s[0] + int(pads[0]), p.pad[1] * s[1] + int(pads[1])), tuple(in_shape), p.h, p.w,
                  p.span)
    mask = _inside_mask(out)
    if mask is not None:
        out = replace(out, values=out.values * mask)
    bias = mass = p.values.new_zeros(B, R)
    if has_bias:
        b = consts[node.inputs[2]]
        bias = p.values.sum((-1, -2)) @ b
        mass = p.values.abs().sum((-1, -2)) @ b.abs()
    return [out] + [None] * (len(node.inputs) - 1), bias, mass


def _elementwise_step(ctx: BackwardContext, node: Node, rule: OpRule, p: Patches) -> Step:
    """Through a relaxed elementwise op: `crown._elementwise_backward` with its slopes and
    intercepts gathered at each window (the same relaxation data, from the same cache)."""
    r = _relaxation(ctx, node, rule, None)
    if isinstance(r, PartialRelaxation):
        return None      # elements bounded by their interval: `crown._elementwise_backward` does that
    B = p.values.shape[0]
    _, C, H, W = p.shape

    def win(v: T) -> T:
        return windows(p, torch.broadcast_to(v, (B, 1, 1, C, H, W)).reshape(B, C, H, W))

    P = p.values
    values = P * torch.where(P >= 0, win(r.lower_slope), win(r.upper_slope))
    bias = mass = P.new_zeros(B, P.shape[1])
    if bool(r.lower_bias.any()):
        pos, lb = P.clamp(min=0), win(r.lower_bias)
        bias, mass = bias + _sum(pos * lb), mass + _sum(pos * lb.abs())
    if bool(r.upper_bias.any()):
        neg, ub = P.clamp(max=0), win(r.upper_bias)
        bias, mass = bias + _sum(neg * ub), mass - _sum(neg * ub.abs())
    return [replace(p, values=values)], bias, mass


def _full(p: Patches, c: T) -> T:
    """A constant broadcast to the tensor's shape, gathered at the windows [1, R, C, Kh, Kw]."""
    return windows(p, torch.broadcast_to(c, p.shape).reshape(1, *p.shape[1:]))


def _arithmetic_step(ctx: BackwardContext, node: Node, p: Patches) -> Step:
    """Add/Sub (a constant, or variables of the output's shape), Mul/Div by a constant:
    `fast_backward.add_sub_backward` / `scale_backward` on windows."""
    consts = ctx.ev.constants
    if len(node.inputs) != 2 or not all(node.inputs):
        return None
    variable = [x not in consts for x in node.inputs]
    if any(v and tuple(ctx.graph.shapes.get(x) or ()) != p.shape for x, v in zip(node.inputs, variable)):
        return None
    zero = p.values.new_zeros(p.values.shape[:2])
    if node.op in ("Add", "Sub"):
        A_ins: list = []
        bias, mass = zero, zero
        for i, (x, v) in enumerate(zip(node.inputs, variable)):
            sign = -1.0 if node.op == "Sub" and i == 1 else 1.0
            if v:
                A_ins.append(p if sign > 0 else replace(p, values=-p.values))
            else:
                c = _full(p, sign * consts[x])
                bias, mass = bias + _sum(p.values * c), mass + _sum(p.values.abs() * c.abs())
                A_ins.append(None)
        return A_ins, bias, mass
    if sum(variable) != 1 or (node.op == "Div" and not variable[0]):
        return None
    c = consts[node.inputs[variable.index(False)]]
    factor = _full(p, 1.0 / c if node.op == "Div" else c)
    return [replace(p, values=p.values * factor) if v else None for v in variable], zero, zero


def _batchnorm_step(ctx: BackwardContext, node: Node, p: Patches) -> Step:
    """y = x * factor + shift per channel: windows scaled per channel, <A, shift> to the bias."""
    consts = ctx.ev.constants
    if len(node.inputs) < 5 or len(node.outputs) != 1 or not all(x in consts for x in node.inputs[1:5]):
        return None
    scale, shift, mean, var = (consts[x] for x in node.inputs[1:5])
    factor = scale / torch.sqrt(var + float(node.attr("epsilon", 1e-5)))
    shift = shift - mean * factor
    per_channel = p.values.sum((-1, -2))
    bias = per_channel @ shift
    mass = p.values.abs().sum((-1, -2)) @ shift.abs()
    values = p.values * factor.view(1, 1, -1, 1, 1)
    return [replace(p, values=values)] + [None] * (len(node.inputs) - 1), bias, mass


def _step(ctx: BackwardContext, node: Node, rule: OpRule, p: Patches) -> Step:
    """One node in patches form, or None: that node must be walked densely."""
    if len(node.outputs) != 1:
        return None
    if node.op == "Conv":
        return _conv_step(ctx, node, p)
    if ctx.relax and _is_plain_elementwise(ctx, node, rule):
        return _elementwise_step(ctx, node, rule, p)
    if node.op in ("Add", "Sub", "Mul", "Div"):
        return _arithmetic_step(ctx, node, p)
    if node.op == "BatchNormalization":
        return _batchnorm_step(ctx, node, p)
    # Anything else, slot nodes included (products of two variables, max pooling: their
    # windows do not compose with a conv's), is walked densely by `crown.backward_from`.
    return None


@dataclass(frozen=True)
class PatchBounds:
    """`LinearBounds` whose coefficients on the input are patches: `A . x + bias` per row."""

    A: Patches
    bias: T
    mass: T

    def concretize(self, box: IntervalBounds, precision: Precision) -> T:
        """`bounds.concretize` itself, with each row's box gathered at its window: one
        product per row (the rows no longer share a box), the same terms, the same mass."""
        B, R = self.bias.shape
        lo = windows(self.A, box.lower.reshape(B, *self.A.shape[1:])).reshape(B * R, -1)
        hi = windows(self.A, box.upper.reshape(B, *self.A.shape[1:])).reshape(B * R, -1)
        return concretize(self.A.values.reshape(B * R, 1, -1), IntervalBounds(lo, hi), precision,
                          self.bias.reshape(B * R, 1), self.mass.reshape(B * R, 1)).reshape(B, R)

    def linear(self) -> LinearBounds:
        """The same bound with dense coefficients [B, R, *input_shape]."""
        return LinearBounds(to_dense(self.A), self.bias, self.mass)


def patches_lower(ctx: BackwardContext, start: str, flat_rows: T, B: int) -> Optional[LinearBounds | PatchBounds]:
    """Lower bounds of the rows +e_j, -e_j (j in `flat_rows`) of `start` over the input,
    walked in patches form as far as it goes (module docstring), densely after that.

    None when the walk cannot begin in patches form (start not [1, C, H, W], or a pass
    with alphas, betas or captured coefficients): the caller walks densely.
    """
    graph = ctx.graph
    shape = graph.shapes.get(start)
    if (shape is None or len(shape) != 4 or shape[0] != 1 or start == graph.input_name or ctx.alphas
            or ctx.extra_A or ctx.capture is not None):
        return None
    dtype = ctx.ev.dtype
    As: dict[str, Patches | T] = {start: start_patches(flat_rows, shape, B, dtype)}
    bias = torch.zeros(B, 2 * flat_rows.numel(), dtype=dtype, device=flat_rows.device)
    mass = torch.zeros_like(bias)
    order = list(graph.nodes)
    stop = next(i for i, n in enumerate(order) if start in n.outputs)
    for i in range(stop, -1, -1):
        node = order[i]
        check_deadline(ctx.deadline)
        A_outs = [As.get(o) for o in node.outputs]
        if all(a is None for a in A_outs):
            continue
        step = _step(ctx, node, ctx.rules[node.name], A_outs[0]) if isinstance(A_outs[0], Patches) else None
        if step is None:
            dense = {k: to_dense(v) if isinstance(v, Patches) else v for k, v in As.items()}
            return backward_from(ctx, dense, i, bias, mass)
        for o in node.outputs:
            As.pop(o, None)
        A_ins, b, m = step
        for x, a in zip(node.inputs, A_ins):
            if a is not None:
                As[x] = _add(As[x], a) if x in As else a
        bias, mass = bias + b, mass + m
    A_in = As.pop(graph.input_name, None)
    if isinstance(A_in, Patches):
        return PatchBounds(A_in, bias, mass)
    if A_in is None:
        A_in = torch.zeros(*bias.shape, *graph.input_shape, dtype=dtype, device=bias.device)
    return LinearBounds(A_in, bias, mass)
