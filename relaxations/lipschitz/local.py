"""Local Lipschitz bounds by bound propagation on the Clarke Jacobian.

After "Efficiently Computing Local Lipschitz Constants of Neural Networks via Bound
Propagation" (Shi et al., NeurIPS 2022). For ``f(x) = W_L phi(... phi(W_1 x + b_1)) + b_L``
and an output row ``c``, every (Clarke) gradient of ``c^T f`` at a point of the box is

    g = c^T W_L D_H W_H ... D_1 W_1,     D_k = diag(d_k),  d_k in [dl_k, du_k],

where ``[dl_k, du_k]`` is the range of phi' over the pre-activation interval of layer k
(ReLU: {0}, {1} or [0, 1]). The Lipschitz constant of ``c^T f`` on the (convex) box in
the l_p input norm is the largest dual norm ``||g||_q`` over those gradients, so any
upper bound of ``max ||g||_q`` over the *box of d's* is sound. Treating the d's as free
inputs of a "gradient network" loses their correlation through x but keeps this simple.

Row-vector convention, per batch element (a domain of BaB times an output row):

    u_H = c W_L (constant),   v_k = d_k * u_k,   u_{k-1} = v_k W_k,   g = u_0.

Two bounds, the second never looser in practice (both are kept and the smaller wins):

* interval: interval arithmetic on u and v;
* linear (CROWN on the gradient network): an upper bound of ``lam . u_j`` is pushed
  towards the output. ``a . v_k = sum_i a_i d_i u_i``; since d_k does not depend on
  u_k, maximising over d_k first gives ``a_i max(dl u, du u)`` (a_i >= 0) or
  ``a_i min(dl u, du u)`` (a_i < 0): a convex function of u_i whose tightest linear
  upper bound on ``[ul_i, uu_i]`` is its chord. So no McCormick parameters are needed.
  Intervals of u are tightened by the same pass where a chord is inexact.

The dual norm is then bounded with the per-coordinate intervals of g and one more
linear pass: ``|g_i| <= s_i g_i + t_i`` (chord of |.|) for l-inf inputs (l1 dual), and
``g_i^2 <= (gl_i + gu_i) g_i - gl_i gu_i`` (chord of the square) for l2.

Forward pre-activation bounds are IBP intersected with CROWN, in float64, on the
weights themselves: the ONNX graph keeps constants in float32, so LipSDP's float64
``.mat`` networks would be rounded if they went through ``relaxations.compute``.
Every computed bound is widened by ``ROUND_REL * mass``, mass being the sum of absolute
values of the terms that produced it (float64 dot products err by at most n * 1.1e-16
times that).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from models import Node
from relaxations.lipschitz.network import FeedForward
from relaxations.ops.activations import leaky_relaxation
from relaxations.registry import finite_relaxation, rule_for

__all__ = ["ROUND_REL", "LocalNet", "NodeBound", "forward_bounds", "derivative_ranges", "gradient_bound"]

T = torch.Tensor
ROUND_REL = 1e-9
ROUND_ABS = 1e-300
_ONNX_OP = {"sigmoid": "Sigmoid", "tanh": "Tanh"}


def _up(value: T, mass: T) -> T:
    return value + (ROUND_REL * mass.abs() + ROUND_ABS)


def _down(value: T, mass: T) -> T:
    return value - (ROUND_REL * mass.abs() + ROUND_ABS)


@dataclass(frozen=True)
class LocalNet:
    """A ``FeedForward`` as float64 torch tensors (weights ``[n_k, n_{k-1}]``)."""

    weights: tuple[T, ...]
    biases: tuple[T, ...]
    activation: str
    negative_slope: float

    @staticmethod
    def of(net: FeedForward, device: str | torch.device = "cpu") -> "LocalNet":
        if net.activation == "maxmin":
            raise ValueError("local bounds support elementwise activations only (not maxmin)")
        if net.activation == "leaky_relu" and net.negative_slope > 1:
            raise ValueError("leaky_relu with negative_slope > 1 is not supported")
        ws = tuple(torch.tensor(w, dtype=torch.float64, device=device) for w in net.weights)
        bs = tuple(torch.tensor(b, dtype=torch.float64, device=device) for b in net.biases)
        return LocalNet(ws, bs, net.activation, float(net.negative_slope))

    @property
    def hidden(self) -> int:
        return len(self.weights) - 1

    def relaxation(self, lo: T, hi: T) -> tuple[T, T, T, T]:
        """(lower slope, lower bias, upper slope, upper bias) of phi on [lo, hi]."""
        if self.activation in ("relu", "leaky_relu"):
            s = 0.0 if self.activation == "relu" else self.negative_slope
            r = leaky_relaxation(lo, hi, s, None)
        else:
            op = _ONNX_OP[self.activation]
            node = Node(name="phi", op=op, inputs=("z",), outputs=("a",))
            r = finite_relaxation(rule_for(node).relax(node, lo, hi, None, []), node)
        return r.lower_slope, r.lower_bias, r.upper_slope, r.upper_bias

    def activate_interval(self, lo: T, hi: T) -> tuple[T, T]:
        """phi is monotone increasing for every supported activation."""
        if self.activation == "relu":
            return lo.clamp(min=0), hi.clamp(min=0)
        if self.activation == "leaky_relu":
            s = self.negative_slope
            return torch.where(lo >= 0, lo, s * lo), torch.where(hi >= 0, hi, s * hi)
        f = torch.sigmoid if self.activation == "sigmoid" else torch.tanh
        return f(lo) - 1e-15, f(hi) + 1e-15


def _apply_split(lo: T, hi: T, sign: Optional[T]) -> tuple[T, T]:
    if sign is None:
        return lo, hi
    return torch.where(sign > 0, lo.clamp(min=0), lo), torch.where(sign < 0, hi.clamp(max=0), hi)


def forward_bounds(net: LocalNet, lo: T, hi: T, splits: Optional[Sequence[Optional[T]]] = None
                   ) -> tuple[list[tuple[T, T]], T]:
    """Pre-activation intervals ``[(l_k, u_k)]`` ([B, n_k]) over boxes ``[lo, hi]`` ([B, n_0]).

    IBP intersected with CROWN (default slopes) per layer; ``splits[k]`` ([B, n_k],
    +1: z >= 0, -1: z <= 0, 0: free) clamps layer k before later layers use it. Also
    returns a mask [B] of domains proved empty by their splits (some l > u)."""
    B = lo.shape[0]
    pre: list[tuple[T, T]] = []
    lines: list[tuple[T, T, T, T]] = []
    post: list[tuple[T, T]] = [(lo, hi)]
    empty = torch.zeros(B, dtype=torch.bool, device=lo.device)
    c_in, r_in = (lo + hi) / 2, (hi - lo) / 2
    m_in = torch.maximum(lo.abs(), hi.abs())
    for k in range(net.hidden):
        w, b = net.weights[k], net.biases[k]
        pl, pu = post[-1]
        cen, rad = (pl + pu) / 2 @ w.T + b, (pu - pl) / 2 @ w.abs().T
        mass = torch.maximum(pl.abs(), pu.abs()) @ w.abs().T + b.abs()
        il, iu = _down(cen - rad, mass), _up(cen + rad, mass)
        if k > 0:  # CROWN: rows +e_i, -e_i of z_k back to the input
            n = w.shape[0]
            eye = torch.eye(n, dtype=lo.dtype, device=lo.device)
            A = torch.cat([eye, -eye]).expand(B, 2 * n, n)
            const = torch.zeros(B, 2 * n, dtype=lo.dtype, device=lo.device)
            cm = torch.zeros_like(const)
            for j in range(k, -1, -1):
                amax = torch.maximum(post[j][0].abs(), post[j][1].abs())       # [B, n_{j-1}]
                const = const + A @ net.biases[j]
                wz = amax @ net.weights[j].abs().T                               # [B, n_j]
                cm = cm + A.abs() @ net.biases[j].abs() + (A.abs() * wz.unsqueeze(1)).sum(-1)
                A = A @ net.weights[j]
                if j == 0:
                    break
                ls, lb, us, ub = lines[j - 1]
                pos, neg = A.clamp(min=0), A.clamp(max=0)
                extra = (pos * lb.unsqueeze(1) + neg * ub.unsqueeze(1))
                const = const + extra.sum(-1)
                cm = cm + extra.abs().sum(-1)
                A = pos * ls.unsqueeze(1) + neg * us.unsqueeze(1)
            val = const + (A * c_in.unsqueeze(1)).sum(-1) - (A.abs() * r_in.unsqueeze(1)).sum(-1)
            cm = cm + (A.abs() * m_in.unsqueeze(1)).sum(-1) + const.abs()
            lb_rows = _down(val, cm)
            il, iu = torch.maximum(il, lb_rows[:, :n]), torch.minimum(iu, -lb_rows[:, n:])
        sign = None if splits is None else splits[k]
        il, iu = _apply_split(il, iu, sign)
        bad = (il > iu).any(1)
        if bool(bad.any()):
            empty |= bad
            mid = (il + iu) / 2
            il, iu = torch.where(il > iu, mid, il), torch.where(il > iu, mid, iu)
        pre.append((il, iu))
        lines.append(net.relaxation(il, iu))
        post.append(net.activate_interval(il, iu))
    return pre, empty


def derivative_ranges(net: LocalNet, pre: Sequence[tuple[T, T]]) -> list[tuple[T, T]]:
    """Range ``[dl, du]`` of phi' over each pre-activation interval (Clarke for ReLU).

    A ReLU with l >= 0 has d = 1: where z = 0 on a set of positive measure, z is
    locally constant and d multiplies a zero gradient, so its value does not matter."""
    out = []
    for l, u in pre:
        if net.activation in ("relu", "leaky_relu"):
            s = 0.0 if net.activation == "relu" else net.negative_slope
            lo_d, hi_d = min(s, 1.0), max(s, 1.0)
            dl = torch.where(l >= 0, torch.ones_like(l), torch.where(u <= 0, torch.full_like(l, s), torch.full_like(l, lo_d)))
            du = torch.where(l >= 0, torch.ones_like(l), torch.where(u <= 0, torch.full_like(l, s), torch.full_like(l, hi_d)))
        else:  # phi' is even and decreasing in |z| for sigmoid and tanh
            def dphi(z: T) -> T:
                if net.activation == "sigmoid":
                    sz = torch.sigmoid(z)
                    return sz * (1 - sz)
                return 1 - torch.tanh(z) ** 2
            near = torch.where(l > 0, l, torch.where(u < 0, u, torch.zeros_like(l)))
            dl = (torch.minimum(dphi(l), dphi(u)) - 1e-14).clamp(min=0)
            du = dphi(near) + 1e-14
        out.append((dl, du))
    return out


def _interval_product(dl: T, du: T, ul: T, uu: T) -> tuple[T, T]:
    ps = torch.stack([dl * ul, dl * uu, du * ul, du * uu])
    return ps.min(0).values, ps.max(0).values


def _chords(dl: T, du: T, ul: T, uu: T) -> tuple[T, T, T, T]:
    """Chords of max(dl u, du u) and min(dl u, du u) over [ul, uu]: (sh, th, sl, tl)."""
    pos, neg = ul >= 0, uu <= 0
    cross = ~(pos | neg)
    width = torch.where(cross, uu - ul, torch.ones_like(ul))
    sh_c = (du * uu - dl * ul) / width
    sl_c = (dl * uu - du * ul) / width
    th_c = ul * uu * (dl - du) / width    # >= 0
    tl_c = ul * uu * (du - dl) / width    # <= 0
    sh = torch.where(pos, du, torch.where(neg, dl, sh_c))
    sl = torch.where(pos, dl, torch.where(neg, du, sl_c))
    zero = torch.zeros_like(ul)
    return sh, torch.where(cross, th_c, zero), sl, torch.where(cross, tl_c, zero)


@dataclass
class _Grad:
    """Backward state for a batch of N = domains x rows."""

    ws: tuple[T, ...]
    d: list[tuple[T, T]]        # per hidden layer k (0-based), [N, n_k]
    u: list[tuple[T, T]]        # intervals of u_k for k = 0..H ([N, n_k]); u[0] is g
    u_top: T                    # u_H (exact), [N, n_H]


def _upper_linear(st: _Grad, j: int, lam: T) -> tuple[T, T]:
    """Upper bound [N, R] of ``lam . u_j`` (lam [N, R, n_j]) and its rounding mass."""
    H = len(st.ws) - 1
    const = torch.zeros(lam.shape[:2], dtype=lam.dtype, device=lam.device)
    mass = torch.zeros_like(const)
    for k in range(j + 1, H + 1):           # u_{k-1} = v_k W_k, v_k = d_k * u_k
        a = lam @ st.ws[k - 1].T            # coefficients on v_k, [N, R, n_k]
        dl, du = st.d[k - 1]
        ul, uu = st.u[k]
        vmax = torch.maximum(du.abs(), dl.abs()) * torch.maximum(ul.abs(), uu.abs())
        sh, th, sl, tl = (x.unsqueeze(1) for x in _chords(dl, du, ul, uu))
        up = a >= 0
        slope, icpt = torch.where(up, sh, sl), torch.where(up, th, tl)
        const = const + (a * icpt).sum(-1)
        mass = mass + (a.abs() * (icpt.abs() + 2 * vmax.unsqueeze(1))).sum(-1)
        lam = a * slope                     # coefficients on u_k
    val = const + (lam * st.u_top.unsqueeze(1)).sum(-1)
    mass = mass + (lam.abs() * st.u_top.abs().unsqueeze(1)).sum(-1) + const.abs()
    return val, mass


def _tighten(st: _Grad, j: int, need: T, chunk: int) -> None:
    """Replace the interval of u_j by linear bounds on the coordinates in ``need`` ([N, n_j]).

    ``chunk`` caps the elements of one coefficient tensor (memory)."""
    idx = need.any(0).nonzero().flatten()
    if idx.numel() == 0:
        return
    N, n = need.shape
    lo, hi = st.u[j][0].clone(), st.u[j][1].clone()
    widest = max(w.shape[0] for w in st.ws)
    step = max(1, chunk // max(1, 2 * N * widest))
    for s in range(0, idx.numel(), step):
        rows = idx[s:s + step]
        r = rows.numel()
        lam = torch.zeros(N, 2 * r, n, dtype=lo.dtype, device=lo.device)
        ar = torch.arange(r, device=lo.device)
        lam[:, ar, rows] = 1.0
        lam[:, r + ar, rows] = -1.0
        val, mass = _upper_linear(st, j, lam)
        ub = _up(val, mass)
        hi[:, rows] = torch.minimum(hi[:, rows], ub[:, :r])
        lo[:, rows] = torch.maximum(lo[:, rows], -ub[:, r:])
    st.u[j] = (lo, hi)


@dataclass(frozen=True)
class NodeBound:
    """Upper bounds [N] of the dual norm of the gradient, and what the heuristics read."""

    value: T           # min of the interval and linear bounds
    interval: T        # the interval-arithmetic bound alone
    d: list[tuple[T, T]]
    u: list[tuple[T, T]]


def gradient_bound(net: LocalNet, d: Sequence[tuple[T, T]], C: T, norm: str,
                   linear: bool = True, chunk: int = 1 << 24) -> NodeBound:
    """Upper bound of ``max ||g||_q`` for each (domain, row): N = B * S results.

    d: derivative ranges per hidden layer, [B, n_k]; C: output rows [S, n_L].
    norm: "inf" (bound the l1 norm of g) or "2" (its l2 norm)."""
    if norm not in ("inf", "2"):
        raise ValueError(f"norm must be 'inf' or '2', got {norm!r}")
    B, S, H = d[0][0].shape[0] if d else 1, C.shape[0], net.hidden
    rep = [(dl.repeat_interleave(S, 0), du.repeat_interleave(S, 0)) for dl, du in d]
    u_top = (C @ net.weights[-1]).repeat(B, 1)                        # [N, n_H]
    u: list[tuple[T, T]] = [(u_top, u_top)] * (H + 1)
    for k in range(H, 0, -1):                                         # interval pass
        vl, vh = _interval_product(*rep[k - 1], *u[k])
        w = net.weights[k - 1]
        cen, rad = (vl + vh) / 2 @ w, (vh - vl) / 2 @ w.abs()
        mass = torch.maximum(vl.abs(), vh.abs()) @ w.abs()
        u[k - 1] = (_down(cen - rad, mass), _up(cen + rad, mass))
    st = _Grad(net.weights, rep, list(u), u_top)
    gl, gu = st.u[0]
    interval = _dual_norm_box(gl, gu, norm)
    if not linear or H == 0:
        return NodeBound(interval, interval, rep, st.u)
    for k in range(H - 1, 0, -1):                                     # tighten where chords are inexact
        dl, du = rep[k - 1]
        ul, uu = st.u[k]
        _tighten(st, k, (dl < du) & (ul < 0) & (uu > 0), chunk)
    need = torch.ones_like(gl, dtype=torch.bool) if norm == "2" else (gl < 0) & (gu > 0)
    _tighten(st, 0, need, chunk)
    gl, gu = st.u[0]
    box = _dual_norm_box(gl, gu, norm)
    if norm == "inf":
        cross = (gl < 0) & (gu > 0)
        width = torch.where(cross, gu - gl, torch.ones_like(gl))
        s = torch.where(gl >= 0, torch.ones_like(gl), torch.where(gu <= 0, -torch.ones_like(gl), (gu + gl) / width))
        t = torch.where(cross, -2 * gu * gl / width, torch.zeros_like(gl))
        val, mass = _upper_linear(st, 0, s.unsqueeze(1))
        tot = val[:, 0] + t.sum(-1)
        lin = _up(tot, mass[:, 0] + 4 * t.abs().sum(-1))
    else:
        val, mass = _upper_linear(st, 0, (gl + gu).unsqueeze(1))
        sq = val[:, 0] - (gl * gu).sum(-1)
        sq = _up(sq, mass[:, 0] + 4 * (gl * gu).abs().sum(-1)).clamp(min=0)
        lin = torch.sqrt(sq) * (1 + 1e-15)
    return NodeBound(torch.minimum(box, lin), interval, rep, st.u)


def _dual_norm_box(gl: T, gu: T, norm: str) -> T:
    m = torch.maximum(gl.abs(), gu.abs())
    if norm == "inf":
        return m.sum(-1) * (1 + 1e-15 * (m.shape[-1] + 2))
    return torch.sqrt((m * m).sum(-1) * (1 + 1e-15 * (m.shape[-1] + 2))) * (1 + 1e-15)
