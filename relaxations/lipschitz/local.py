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

Forward pre-activation bounds are the engine's (its intermediate pass, CROWN:
IBP intersected with CROWN on every neuron, split decisions as branch and bound passes
them) over a graph built in memory from the weights themselves, in float64, so float64
weights (LipSDP's ``.mat`` networks) are bounded as they are. Their rounding margin is
``FORWARD_REL`` of the engine's mass, a hundred times the checker's share of its own
(larger) mass: only a neuron's stability reaches the gradient bound, and an interval
the engine found narrower than the checker re-derives could make a neuron stable here
and unstable there. Each activation's
derivative range is its registry rule's (`OpRule.derivative`). The gradient pass below
widens every computed bound by ``ROUND_REL * mass`` likewise, mass being the sum of
absolute values of the terms that produced it.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Optional, Sequence

import torch

from models import Graph, GraphEvaluator, Node
from relaxations.bounds import IntervalBounds, Precision
from relaxations.intermediate import intermediate_bounds
from relaxations.lipschitz.network import FeedForward
from relaxations.options import BoundOptions
from relaxations.registry import rule_for

__all__ = ["ROUND_REL", "LocalNet", "NodeBound", "forward_bounds", "derivative_ranges", "gradient_bound"]

T = torch.Tensor
ROUND_REL = 1e-9
ROUND_ABS = 1e-300
FORWARD_REL = 1e-7
_ONNX_OP = {"relu": "Relu", "leaky_relu": "LeakyRelu", "sigmoid": "Sigmoid", "tanh": "Tanh"}


def _up(value: T, mass: T) -> T:
    return value + (ROUND_REL * mass.abs() + ROUND_ABS)


def _down(value: T, mass: T) -> T:
    return value - (ROUND_REL * mass.abs() + ROUND_ABS)


@dataclass(frozen=True)
class LocalNet:
    """A ``FeedForward`` as float64 torch tensors (weights ``[n_k, n_{k-1}]``), with the
    same network as an engine graph (`graph`; hidden layer k's pre-activation tensor is
    ``z{k}``, its activation node ``phi{k}``) and an evaluator that holds its constants."""

    weights: tuple[T, ...]
    biases: tuple[T, ...]
    activation: str
    negative_slope: float
    graph: Graph
    evaluator: GraphEvaluator

    @staticmethod
    def of(net: FeedForward, device: str | torch.device = "cpu") -> "LocalNet":
        if net.activation == "maxmin":
            raise ValueError("local bounds support elementwise activations only (not maxmin)")
        if net.activation == "leaky_relu" and net.negative_slope > 1:
            raise ValueError("leaky_relu with negative_slope > 1 is not supported")
        ws = tuple(torch.tensor(w, dtype=torch.float64, device=device) for w in net.weights)
        bs = tuple(torch.tensor(b, dtype=torch.float64, device=device) for b in net.biases)
        graph = _graph(ws, bs, net.activation, float(net.negative_slope))
        return LocalNet(ws, bs, net.activation, float(net.negative_slope), graph,
                        GraphEvaluator(graph, dtype=torch.float64, device=device))

    @property
    def hidden(self) -> int:
        return len(self.weights) - 1

    def node(self, k: int) -> Node:
        """The activation node of hidden layer k (0-based)."""
        return self.graph.nodes[3 * k + 2]


def _graph(ws: Sequence[T], bs: Sequence[T], activation: str, negative_slope: float) -> Graph:
    """``x -> MatMul, Add, phi, ... -> MatMul, Add -> y`` over inputs shaped [1, n_0].

    The weights stay float64 tensors (the evaluator keeps their dtype), and the graph is
    never written to a file, so nothing is rounded to float32."""
    attrs = {"alpha": negative_slope} if activation == "leaky_relu" else {}
    nodes, consts, shapes = [], {}, {"x": (1, ws[0].shape[1])}
    prev = "x"
    for k, (w, b) in enumerate(zip(ws, bs)):
        last = k == len(ws) - 1
        consts[f"W{k}"], consts[f"b{k}"] = w.T.contiguous(), b
        out = "y" if last else f"z{k}"
        nodes.append(Node(f"mm{k}", "MatMul", (prev, f"W{k}"), (f"m{k}",)))
        nodes.append(Node(f"add{k}", "Add", (f"m{k}", f"b{k}"), (out,)))
        shapes[f"m{k}"] = shapes[out] = (1, w.shape[0])
        if not last:
            nodes.append(Node(f"phi{k}", _ONNX_OP[activation], (out,), (f"a{k}",), attrs=MappingProxyType(attrs)))
            shapes[f"a{k}"] = (1, w.shape[0])
            prev = f"a{k}"
    return Graph(input_name="x", input_shape=(1, ws[0].shape[1]), output_name="y",
                 output_shape=(1, ws[-1].shape[0]), nodes=tuple(nodes), constants=consts,
                 shapes=shapes, opset=13)


def forward_bounds(net: LocalNet, lo: T, hi: T, splits: Optional[Sequence[Optional[T]]] = None
                   ) -> tuple[list[tuple[T, T]], T]:
    """Pre-activation intervals ``[(l_k, u_k)]`` ([B, n_k]) over boxes ``[lo, hi]`` ([B, n_0]).

    The engine's CROWN pass, every neuron CROWN-bounded and intersected with IBP;
    ``splits[k]`` ([B, n_k], +1: z >= 0, -1: z <= 0, 0: free) clamps layer k before
    later layers use it.
    Also returns a mask [B] of domains proved empty by their splits; their intervals are
    finite placeholders (a caller discards what they give)."""
    B = lo.shape[0]
    signs = None
    if splits is not None:
        signs = {f"z{k}": sg.reshape(B, 1, -1) for k, sg in enumerate(splits) if sg is not None}
    box = IntervalBounds(lo.reshape(B, 1, -1), hi.reshape(B, 1, -1))
    options = BoundOptions(method="crown", precision=Precision(FORWARD_REL, ROUND_ABS), patches=False,
                           crown_every_element=True)
    # The intermediate pass alone: no bound of the output is wanted here.
    with torch.no_grad():
        table, _, infeasible = intermediate_bounds(net.graph, net.evaluator, box, options, signs)
    empty = infeasible.reshape(B).clone()
    pre = []
    for k in range(net.hidden):
        iv = table[f"z{k}"]
        l, u = iv.lower.reshape(B, -1), iv.upper.reshape(B, -1)
        crossed = l > u               # some split made the domain empty
        if bool(crossed.any()):
            empty |= crossed.any(1)
            mid = (l + u) / 2
            l, u = torch.where(crossed, mid, l), torch.where(crossed, mid, u)
        # A NaN end says nothing about the domain: never "empty" (that would drop its
        # gradients from the maximum), but the whole line, where every derivative counts.
        l, u = torch.where(torch.isnan(l), -torch.inf, l), torch.where(torch.isnan(u), torch.inf, u)
        pre.append((l, u))
    return pre, empty


def derivative_ranges(net: LocalNet, pre: Sequence[tuple[T, T]]) -> list[tuple[T, T]]:
    """Range ``[dl, du]`` of phi' over each pre-activation interval: the activation's
    registry rule (`OpRule.derivative`; Clarke's for ReLU)."""
    out = []
    for k, (l, u) in enumerate(pre):
        node = net.node(k)
        out.append(rule_for(node).derivative(node, l, u, []))
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
