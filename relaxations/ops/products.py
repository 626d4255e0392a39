"""Slot relaxations of products of two variable tensors: Mul and MatMul (McCormick).

Gathered form (see relaxations/registry.py): for each output element, the slots
[..., 2P] hold the factors of its P products, x_k in slot k and y_k in slot P + k, and
the output is sum_k x_k y_k (Mul: P = 1; MatMul: P = the contracted size, so
z_ij = sum_k x_ik y_kj). Each product is relaxed by itself and the lines are summed.

McCormick planes of z = x y over x in [lx, ux], y in [ly, uy], each from a product of
two nonnegative factors:
    (x - lx)(y - ly) >= 0  ->  z >= ly x + lx y - lx ly     (L1)
    (ux - x)(uy - y) >= 0  ->  z >= uy x + ux y - ux uy     (L2)
    (x - lx)(uy - y) >= 0  ->  z <= uy x + lx y - lx uy     (U1)
    (ux - x)(y - ly) >= 0  ->  z <= ly x + ux y - ux ly     (U2)
so they hold on the whole box. For a in [0, 1], a L1 + (1 - a) L2 is a convex
combination of two valid lower bounds, hence one itself (likewise a U1 + (1 - a) U2).
alpha is that a, one per product and specification row; only one side is used per
(row, output element), so both sides share it. CROWN's default a = 1/2 gives the
centred lines cy x + cx y - cx cy -+ wx wy / 4 (c: centre, w: width), whose largest
gap on the box, wx wy / 2, is the smallest any pair of parallel planes has.

Exact cases: when a factor's interval is a point (lx = ux = c), z = c y on the whole
box, so both lines are c y with slope 0 on x (nothing is passed back through x).

Rounding: every line is moved outward by SLACK_ULPS eps (|bias| + |slope_x| m_x +
|slope_y| m_y) + tiny, m the largest magnitude of each factor, as `smooth.finish` does:
it covers the rounding of the slopes (a convex combination computed in floating
point), of the bias, and of the product the network itself computes. Infinite or NaN
bounds give non-finite lines, on which CROWN falls back to the interval.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from models import Node
from relaxations.registry import SlotRelaxation

__all__ = ["mul_gather", "matmul_gather", "product_relax", "product_alpha_init", "product_alpha_bounds",
           "product_unstable", "SLACK_ULPS"]

T = torch.Tensor
SLACK_ULPS = 8.0


def mul_gather(node: Node, xs: Sequence[Optional[T]]) -> T:
    """Mul with broadcasting: slots [*out, 2] = (x, y) at each output element."""
    a, b = torch.broadcast_tensors(xs[0], xs[1])
    return torch.stack([a, b], -1)


def matmul_gather(node: Node, xs: Sequence[Optional[T]]) -> T:
    """MatMul (numpy semantics, batch dims broadcast): slots [*out, 2K] with x_ik in slot
    k and y_kj in slot K + k at output (i, j); 1-D operands as numpy promotes them."""
    a, b = xs[0], xs[1]
    a2 = a.unsqueeze(0) if a.dim() == 1 else a
    b2 = b.unsqueeze(-1) if b.dim() == 1 else b
    X = a2.unsqueeze(-2)                          # [..., M, 1, K]
    Y = b2.transpose(-1, -2).unsqueeze(-3)        # [..., 1, N, K]
    X, Y = torch.broadcast_tensors(X, Y)
    G = torch.cat([X, Y], -1)                     # [..., M, N, 2K]
    if b.dim() == 1:
        G = G.squeeze(-2)
    if a.dim() == 1:
        G = G.squeeze(-2 if b.dim() == 1 else -3)
    return G


def _split(lo: T, hi: T) -> tuple[T, T, T, T]:
    P = lo.shape[-1] // 2
    return lo[..., :P], hi[..., :P], lo[..., P:], hi[..., P:]


def product_relax(node: Node, lo: T, hi: T, alpha: Optional[T], consts: Sequence) -> SlotRelaxation:
    """McCormick lines of sum_k x_k y_k (module docstring); lo, hi [B, 1, *out, 2P],
    alpha [B, S, *out, P] in [0, 1] or None (1/2)."""
    lx, ux, ly, uy = _split(lo, hi)
    a = torch.full_like(lx, 0.5) if alpha is None else alpha.clamp(0, 1)
    b = 1 - a
    lsx, lsy = a * ly + b * uy, a * lx + b * ux
    lb = -(a * (lx * ly) + b * (ux * uy))
    usx, usy = a * uy + b * ly, lsy
    ub = -(a * (lx * uy) + b * (ux * ly))
    # A point factor makes the product linear in the other one (module docstring).
    fx, fy = lx == ux, (ly == uy) & (lx != ux)
    zero = torch.zeros((), dtype=lo.dtype, device=lo.device)
    lsx = torch.where(fx, zero, torch.where(fy, ly, lsx))
    usx = torch.where(fx, zero, torch.where(fy, ly, usx))
    lsy = torch.where(fx, lx, torch.where(fy, zero, lsy))
    usy = torch.where(fx, lx, torch.where(fy, zero, usy))
    lb = torch.where(fx | fy, zero, lb)
    ub = torch.where(fx | fy, zero, ub)
    mx, my = torch.maximum(lx.abs(), ux.abs()), torch.maximum(ly.abs(), uy.abs())
    eps = SLACK_ULPS * torch.finfo(lo.dtype).eps
    tiny = torch.finfo(lo.dtype).tiny
    lb = lb - (eps * (lb.abs() + lsx.abs() * mx + lsy.abs() * my) + tiny)
    ub = ub + (eps * (ub.abs() + usx.abs() * mx + usy.abs() * my) + tiny)
    return SlotRelaxation(torch.cat([lsx, lsy], -1), lb.sum(-1), torch.cat([usx, usy], -1), ub.sum(-1))


def product_alpha_init(node: Node, lo: T, hi: T, consts: Sequence) -> T:
    """CROWN's a = 1/2 per product: [B, *out, P]."""
    return torch.full_like(lo[..., :lo.shape[-1] // 2], 0.5)


def product_alpha_bounds(node: Node, lo: T, hi: T, consts: Sequence) -> tuple[T, T]:
    P = lo.shape[-1] // 2
    return torch.zeros_like(lo[..., :P]), torch.ones_like(lo[..., :P])


def product_unstable(node: Node, lo: T, hi: T, consts: Sequence) -> T:
    """Products whose lines are not exact: both factors vary."""
    lx, ux, ly, uy = _split(lo, hi)
    return (ux > lx) & (uy > ly)
