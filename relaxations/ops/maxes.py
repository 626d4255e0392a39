"""Slot relaxations of max-type ops: Max, Min, MaxPool, GlobalMaxPool, ReduceMax, ReduceMin.

Gathered form (relaxations/registry.py): the slots [..., K] of an output element are
the values it is the maximum of (Max/Min: the broadcast inputs; MaxPool: the window,
padding slots -inf, as ONNX pads; reductions: the reduced elements). Min-type ops are
relaxed as min(x) = -max(-x). Over slots x_k in [l_k, u_k] (valid slots only):

Lower line: z >= sum_k w_k x_k for any w in the simplex (w >= 0, sum w = 1), since
max_k x_k >= x_j for every j and a convex combination of lower bounds is one. CROWN's
choice: w = e_j with j the slot of largest lower bound. alpha (the first K entries)
gives w = alpha / sum(alpha) for alpha in [0, 1]^K (e_j where the sum is 0).

Upper line: z <= sum_k lam_k x_k + c(lam) for any lam in [0, 1]^K, with
    c(lam) = max_m [ u_m - lam_m (u_m - l_m) - sum_k lam_k l_k ].
Proof: take x in the box and m an index with z = x_m. Since lam >= 0 and x >= l,
sum_k lam_k x_k - sum_k lam_k l_k = sum_k lam_k (x_k - l_k) >= lam_m (x_m - l_m). So
sum_k lam_k x_k + c(lam) >= lam_m (x_m - l_m) + u_m - lam_m (u_m - l_m)
= u_m - lam_m (u_m - x_m) >= u_m - (u_m - x_m) = x_m = z, using lam_m <= 1 and
u_m >= x_m. (c(lam) is also the smallest constant that works for this lam: the bound
is attained at the vertex x_m = u_m, x_k = l_k otherwise.)
CROWN's choice: with j1, j2 the slots of the two largest upper bounds, lam is zero
except lam_j1 = ud / (ud - ld), lam_j2 = 1 - lam_j1, where [ld, ud] = [l_j1 - u_j2,
u_j1 - l_j2] holds x_j1 - x_j2: for two inputs, max(x, y) = y + relu(x - y) with the
ReLU's chord, the line auto_LiRPA uses for two-input max. When l_j1 >= u_j2 (one slot
is the maximum on the whole box) lam = e_j1 and c = 0: the line is exact, z = x_j1,
and so is the lower line then. lam = 0 gives the constant max_m u_m. alpha's last K
entries are lam.

Rounding: both lines are moved outward by (SLACK_ULPS + K) eps (|bias| + sum_k |slope_k|
m_k) + tiny, m_k = max(|l_k|, |u_k|): the slopes (w normalised in floating point) and
c are computed with a few roundings of terms of that size. Infinite bounds on a valid
slot make the lines non-finite and CROWN falls back to the interval.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from models import Node
from models.ops.conv import spatial_pads, torch_pad_order
from models.ops.reduce import reduce_axes
from relaxations.registry import SlotRelaxation

__all__ = ["variadic_gather", "maxpool_gather", "global_max_gather", "reduce_gather", "max_relax",
           "max_alpha_init", "max_alpha_bounds", "max_unstable", "maxpool_out_size"]

T = torch.Tensor
SLACK_ULPS = 8.0
_MIN_OPS = ("Min", "ReduceMin")


# ------------------------------------------------------------------------- gathers

def variadic_gather(node: Node, xs: Sequence[Optional[T]]) -> T:
    """Max/Min: the broadcast inputs as slots [*out, n]."""
    return torch.stack(torch.broadcast_tensors(*[x for x in xs if x is not None]), -1)


def global_max_gather(node: Node, xs: Sequence[Optional[T]]) -> T:
    """GlobalMaxPool [N, C, *sp] -> slots [N, C, 1, ..., 1, prod(sp)]."""
    x = xs[0]
    return x.flatten(2).reshape(*x.shape[:2], *([1] * (x.dim() - 2)), -1)


def reduce_gather(node: Node, xs: Sequence[Optional[T]]) -> T:
    """ReduceMax/ReduceMin: the reduced axes moved last and flattened into the slots."""
    x = xs[0]
    axes = reduce_axes(node, xs, 18)
    if not axes:
        return x.unsqueeze(-1)
    keep = [d for d in range(x.dim()) if d not in axes]
    G = x.permute(*keep, *axes).reshape(*[x.shape[d] for d in keep], -1)
    if node.attr("keepdims", 1):
        G = G.reshape(*[1 if d in axes else x.shape[d] for d in range(x.dim())], G.shape[-1])
    return G


def maxpool_out_size(length: int, k: int, s: int, d: int, ceil: bool) -> int:
    """Output length of torch's max pooling (no padding) on an already padded `length`."""
    span = d * (k - 1) + 1
    q = (length - span + (s - 1 if ceil else 0)) // s + 1
    if ceil and (q - 1) * s >= length:
        q -= 1
    return q


def maxpool_gather(node: Node, xs: Sequence[Optional[T]]) -> T:
    """MaxPool windows as slots [N, C, *out_sp, prod(kernel)]; padding slots are -inf.

    The input is padded with -inf (ONNX semantics; also the right end that ceil_mode
    windows reach), flattened, and each window read by index."""
    x = xs[0]
    kernel = list(node.attr("kernel_shape"))
    nd = len(kernel)
    strides = list(node.attr("strides", [1] * nd))
    dil = list(node.attr("dilations", [1] * nd))
    pads = spatial_pads(node, x.shape[2:], kernel, strides, dil)
    ceil = bool(node.attr("ceil_mode", 0))
    spatial, outs = [], []
    for i in range(nd):
        L = x.shape[2 + i] + pads[i] + pads[nd + i]
        o = maxpool_out_size(L, kernel[i], strides[i], dil[i], ceil)
        need = (o - 1) * strides[i] + dil[i] * (kernel[i] - 1) + 1
        pads[nd + i] += max(0, need - L)
        spatial.append(max(L, need))
        outs.append(o)
    if any(pads):
        x = F.pad(x, torch_pad_order(pads), value=-math.inf)
    # flat index into the padded spatial map of every (output position, window offset)
    idx = torch.zeros([1] * (2 * nd), dtype=torch.long, device=x.device)
    step = 1
    for i in reversed(range(nd)):
        pos = (torch.arange(outs[i], device=x.device) * strides[i]).unsqueeze(1) \
            + torch.arange(kernel[i], device=x.device) * dil[i]                       # [o_i, k_i]
        shape = [1] * (2 * nd)
        shape[i], shape[nd + i] = outs[i], kernel[i]
        idx = idx + pos.reshape(shape) * step
        step *= spatial[i]
    flat = x.flatten(2).index_select(2, idx.reshape(-1))
    return flat.reshape(*x.shape[:2], *outs, math.prod(kernel))


# --------------------------------------------------------------------- relaxation

def _sanitise(lo: T, hi: T) -> tuple[T, T, T]:
    """Valid slots (not padding), and finite stand-ins 0 for the invalid ones."""
    valid = hi > -math.inf
    zero = torch.zeros((), dtype=lo.dtype, device=lo.device)
    return valid, torch.where(valid, lo, zero), torch.where(valid, hi, zero)


def _defaults(lo: T, hi: T, valid: T) -> tuple[T, T]:
    """CROWN's w (one-hot at the largest lower bound) and lam (module docstring)."""
    ninf = torch.full((), -math.inf, dtype=lo.dtype, device=lo.device)
    K = lo.shape[-1]
    j = torch.where(valid, lo, ninf).argmax(-1, keepdim=True)
    w = torch.zeros_like(lo).scatter(-1, j, 1.0)
    if K == 1:
        return w, torch.ones_like(lo)
    top = torch.where(valid, hi, ninf).topk(2, -1)
    j1, j2 = top.indices[..., :1], top.indices[..., 1:]
    u1, u2 = top.values[..., :1], top.values[..., 1:]
    l1, l2 = lo.gather(-1, j1), lo.gather(-1, j2)
    ld, ud = l1 - u2, u1 - l2
    one = torch.ones((), dtype=lo.dtype, device=lo.device)
    alone = (ld >= 0) | (u2 == -math.inf)            # j1 is the maximum on the whole box
    lam1 = torch.where(alone, one, ud / torch.where(alone, one, ud - ld))
    lam = torch.zeros_like(lo).scatter(-1, j1, lam1).scatter(-1, j2, torch.where(alone, 0 * one, 1 - lam1))
    return w, lam


def _max_lines(lo: T, hi: T, alpha: Optional[T]) -> tuple[T, T, T, T]:
    """(w, 0, lam, c) of max over the slots (module docstring), before rounding slack."""
    valid, l, u = _sanitise(lo, hi)
    K = lo.shape[-1]
    if alpha is None:
        w, lam = _defaults(l, u, valid)
    else:
        w0, _ = _defaults(l, u, valid)
        a = alpha[..., :K].clamp(0, 1) * valid
        total = a.sum(-1, keepdim=True)
        ok = total > torch.finfo(lo.dtype).tiny
        w = torch.where(ok, a / torch.where(ok, total, torch.ones_like(total)), w0)
        lam = alpha[..., K:].clamp(0, 1) * valid
    terms = u - lam * (u - l) - (lam * l).sum(-1, keepdim=True)
    terms = torch.where(valid, terms, torch.full((), -math.inf, dtype=lo.dtype, device=lo.device))
    c = terms.amax(-1)
    return w, torch.zeros_like(c), lam, c


def max_relax(node: Node, lo: T, hi: T, alpha: Optional[T], consts: Sequence) -> SlotRelaxation:
    """Lines of the max (or min) over the slots; lo, hi [B, 1, *out, K], alpha [B, S, *out, 2K]."""
    neg = node.op in _MIN_OPS
    if neg:
        lo, hi = -hi, -lo
    w, wb, lam, c = _max_lines(lo, hi, alpha)
    valid, l, u = _sanitise(lo, hi)
    # min(x) = -max(-x): max's upper line on -x is min's lower line, and vice versa.
    lower = (lam, -c) if neg else (w, wb)
    upper = (w, wb) if neg else (lam, c)
    m = torch.maximum(l.abs(), u.abs())
    eps = (SLACK_ULPS + lo.shape[-1]) * torch.finfo(lo.dtype).eps
    tiny = torch.finfo(lo.dtype).tiny
    ls, lb = lower
    us, ub = upper
    lb = lb - (eps * (lb.abs() + (ls.abs() * m).sum(-1)) + tiny)
    ub = ub + (eps * (ub.abs() + (us.abs() * m).sum(-1)) + tiny)
    return SlotRelaxation(ls, lb, us, ub)


def max_alpha_init(node: Node, lo: T, hi: T, consts: Sequence) -> T:
    """CROWN's (w, lam) as one alpha [B, *out, 2K] (for Min: on the negated slots)."""
    if node.op in _MIN_OPS:
        lo, hi = -hi, -lo
    valid, l, u = _sanitise(lo, hi)
    w, lam = _defaults(l, u, valid)
    return torch.cat([w, lam], -1)


def max_alpha_bounds(node: Node, lo: T, hi: T, consts: Sequence) -> tuple[T, T]:
    shape = (*lo.shape[:-1], 2 * lo.shape[-1])
    return lo.new_zeros(shape), lo.new_ones(shape)


def max_unstable(node: Node, lo: T, hi: T, consts: Sequence) -> T:
    """Output elements [B, *out] where no slot is the maximum on the whole box."""
    if node.op in _MIN_OPS:
        lo, hi = -hi, -lo
    valid, l, u = _sanitise(lo, hi)
    _, lam = _defaults(l, u, valid)
    return (lam < 1).all(-1)
