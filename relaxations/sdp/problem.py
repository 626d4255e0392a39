"""Raghunathan-style SDP relaxation of a ReLU MLP, as problem data (numpy only).

Lifted vector ``v = [1; x_0; x_1; ...; x_{L-1}]`` (input, then every hidden layer
after its ReLU), ``P = v v^T`` relaxed to ``P >= 0`` with ``P_00 = 1``. For hidden
neuron ``z = relu(h)``, ``h = W x_prev + b`` with pre-activation bounds ``[l, u]``:

* ``z >= 0`` and ``z >= h``                 (first-order, multipliers ``lam_pos``, ``lam_lin``)
* ``z^2 = z h``, i.e. ``P_zz = W P_{z,prev} + b P_0z``       (equality, ``nu``)
* ``(z - lx)(ux - z) >= 0`` with ``[lx, ux] = relu([l, u])``  (``lam_box``)
* ``z <= lx + s (h - l)``, the triangle's upper side         (``lam_tri``)

and for the input ``(x - l0)(u0 - x) >= 0`` (``mu``). The triangle row is not in
Raghunathan et al.; it makes the SDP at least as tight as the LP relaxation, hence as
CROWN with the same intermediate bounds, while costing one multiplier per neuron.

Every constraint reads ``<A_i, P> >= 0`` (or ``= 0``), the objective ``<Q, P>`` is
``c^T y``. Weak duality with multipliers ``y`` (``>= 0`` except ``nu``) and the free
offset ``t``: for every feasible P,

    c^T y(P) = <M, P> + t + sum y_i <A_i, P> >= t + <M, P>,   M = Q - sum y_i A_i - t E_00,

and ``<M, P> >= min(0, lambda_min(M)) * tr(P)``. That last step is taken in CENTRED
coordinates ``v' = v - c`` (``c`` the midpoint of every coordinate's box, the ``1``
untouched): with ``K = [[1, 0], [c, I]]``, ``<M, P> = <K^T M K, P'>`` and the box rows
give ``P'_ii <= r_i^2`` (``r_i`` the box half-width) exactly, so ``tr(P') <= T = 1 + sum
r_i^2``. (Uncentred, the bound would be ``1 + sum max(l_i^2, u_i^2)``, five to ten
times larger on MNIST, and every unit of residual negative eigenvalue costs that much.)
Then

    bound = t + T * min(0, lambda_min(K^T M K))

is a valid lower bound for ANY multipliers: a solver that stopped early only costs
tightness. ``best_offset`` picks ``t`` (and the implied shift) optimally for given ``y``.

Stable neurons are eliminated before lifting (``reduce_stable``): an inactive one is
0, an active one is the affine function ``h`` of earlier variables, so only the input
and the unstable neurons are lifted, and each hidden block reads an affine map of ALL
earlier blocks (skip connections appear). Besides being smaller, this is tighter: the
lifted constraints of an active neuron fix ``E[z] = E[h]`` but not ``E[(z - h)^2] = 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = [
    "LAYER_FIELDS",
    "reduce_stable",
    "SdpProblem",
    "Multipliers",
    "build_problem",
    "dual_triplets",
    "dual_matrix",
    "dual_operator",
    "best_offset",
    "certified_bound",
    "eig_margin",
]

LAYER_FIELDS: tuple[str, ...] = ("lam_pos", "lam_lin", "nu", "lam_box", "lam_tri")
_FREE_FIELDS = ("nu",)


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class SdpProblem:
    """The relaxation of ``min q^T v + q0`` over the lifted vector ``v = [x_0; z_1; ...]``.

    ``sizes[k]`` is the width of block k (0: input, k >= 1: the unstable neurons of
    hidden layer k, possibly 0). Block k >= 1 is ``relu(A_k v_{<k} + b_k)`` where
    ``v_{<k}`` is the concatenation of blocks 0..k-1; ``pre_lower[k-1]``/``pre_upper[k-1]``
    bound ``A_k v_{<k} + b_k``. Built by ``build_problem`` from network weights."""

    maps: tuple[np.ndarray, ...]
    shifts: tuple[np.ndarray, ...]
    objective_linear: np.ndarray
    objective_const: float
    in_lower: np.ndarray
    in_upper: np.ndarray
    pre_lower: tuple[np.ndarray, ...]
    pre_upper: tuple[np.ndarray, ...]
    c: np.ndarray = field(default_factory=lambda: np.zeros(0))
    offsets: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        maps = tuple(_ro(a) for a in self.maps)
        shifts = tuple(_ro(np.reshape(b, -1)) for b in self.shifts)
        object.__setattr__(self, "maps", maps)
        object.__setattr__(self, "shifts", shifts)
        for name in ("c", "in_lower", "in_upper", "objective_linear"):
            object.__setattr__(self, name, _ro(np.reshape(getattr(self, name), -1)))
        object.__setattr__(self, "objective_const", float(self.objective_const))
        pl = tuple(_ro(np.reshape(a, -1)) for a in self.pre_lower)
        pu = tuple(_ro(np.reshape(a, -1)) for a in self.pre_upper)
        object.__setattr__(self, "pre_lower", pl)
        object.__setattr__(self, "pre_upper", pu)
        n0 = self.in_lower.shape[0]
        if self.in_upper.shape != (n0,) or np.any(self.in_lower > self.in_upper):
            raise ValueError("input box must be two vectors of one length with lower <= upper")
        sizes = [n0]
        for k, (a, b) in enumerate(zip(maps, shifts)):
            if a.ndim != 2 or a.shape[1] != sum(sizes) or b.shape != (a.shape[0],):
                raise ValueError(f"block {k + 1}: map must be [n, {sum(sizes)}] with a bias of n")
            sizes.append(a.shape[0])
        if len(pl) != len(maps) or len(pu) != len(maps):
            raise ValueError("need pre-activation bounds for every hidden block")
        for k, (lo, hi) in enumerate(zip(pl, pu)):
            if lo.shape != (sizes[k + 1],) or hi.shape != lo.shape or np.any(lo > hi):
                raise ValueError(f"bad pre-activation bounds for hidden block {k + 1}")
        if self.objective_linear.shape != (sum(sizes),):
            raise ValueError(f"objective must have {sum(sizes)} coefficients")
        offs = np.concatenate([[1], 1 + np.cumsum(sizes)]).astype(int)
        object.__setattr__(self, "offsets", tuple(int(o) for o in offs))

    @property
    def sizes(self) -> tuple[int, ...]:
        """(n_0, u_1, ..., u_{L-1}): block widths of the lifted vector after the 1."""
        return tuple(self.offsets[k + 1] - self.offsets[k] for k in range(len(self.offsets) - 1))

    @property
    def dim(self) -> int:
        return self.offsets[-1]

    @property
    def n_hidden(self) -> int:
        return len(self.maps)

    def block(self, k: int) -> slice:
        """Indices of block k in the lifted vector (index 0 is the constant 1)."""
        return slice(self.offsets[k], self.offsets[k + 1])

    def post_bounds(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """relu of the pre-activation bounds of hidden block k+1."""
        return np.maximum(self.pre_lower[k], 0.0), np.maximum(self.pre_upper[k], 0.0)

    def triangle(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(s, r) with the upper side ``z <= s h + r`` of the ReLU hull on [l, u]."""
        lo, hi = self.pre_lower[k], self.pre_upper[k]
        lx, ux = self.post_bounds(k)
        width = hi - lo
        s = np.where(width > 0, (ux - lx) / np.where(width > 0, width, 1.0), 0.0)
        return s, lx - s * lo

    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper ends of every lifted coordinate after the 1 (input box, then
        the post-activation boxes ``relu([l, u])`` of the kept neurons)."""
        los = [self.in_lower] + [self.post_bounds(k)[0] for k in range(self.n_hidden)]
        his = [self.in_upper] + [self.post_bounds(k)[1] for k in range(self.n_hidden)]
        return np.concatenate(los), np.concatenate(his)

    def centre(self) -> np.ndarray:
        """Midpoints ``c`` of the boxes: the origin of the centred coordinates."""
        lo, hi = self.box()
        return 0.5 * (lo + hi)

    def trace_bound(self) -> float:
        """``1 + sum r_i^2`` (box half-widths): bounds ``tr(P')`` in centred coordinates,
        rounded up."""
        lo, hi = self.box()
        total = 1.0 + float(np.sum((0.5 * (hi - lo)) ** 2))
        return total * (1.0 + 1e-12) + 1e-12

    def n_multipliers(self) -> int:
        return 1 + self.sizes[0] + len(LAYER_FIELDS) * sum(self.sizes[1:])


def reduce_stable(weights: Sequence[np.ndarray], biases: Sequence[np.ndarray], c: np.ndarray,
                  pre_lower: Sequence[np.ndarray], pre_upper: Sequence[np.ndarray]):
    """Eliminate stable neurons: returns (maps, shifts, kept pre-bounds, q, q0).

    Keeps the full post-activation of the current layer as an affine map ``E v + e``
    of the lifted vector; an unstable neuron adds one coordinate to v."""
    n0 = weights[0].shape[1]
    emap, evec = np.eye(n0), np.zeros(n0)
    maps, shifts, kl, ku = [], [], [], []
    for w, b, lo, hi in zip(weights[:-1], biases[:-1], pre_lower, pre_upper):
        a_full, b_full = w @ emap, w @ evec + b
        lo, hi = np.reshape(lo, -1), np.reshape(hi, -1)
        unstable = (lo < 0) & (hi > 0)
        active = lo >= 0
        maps.append(a_full[unstable])
        shifts.append(b_full[unstable])
        kl.append(lo[unstable])
        ku.append(hi[unstable])
        nu = int(unstable.sum())
        emap = np.concatenate([np.where(active[:, None], a_full, 0.0),
                               np.zeros((w.shape[0], nu))], 1)
        evec = np.where(active, b_full, 0.0)
        emap[np.flatnonzero(unstable), emap.shape[1] - nu + np.arange(nu)] = 1.0
    wl, bl = weights[-1], biases[-1]
    q = (np.asarray(c) @ wl) @ emap
    q0 = float(np.asarray(c) @ (wl @ evec + bl))
    return maps, shifts, kl, ku, q, q0


@dataclass(frozen=True, eq=False)
class Multipliers:
    """Dual variables: ``t`` (free), ``mu`` (input box, >= 0) and, per hidden layer,
    one array per name in ``LAYER_FIELDS`` (``nu`` free, the others >= 0)."""

    t: float
    mu: np.ndarray
    layers: tuple[dict[str, np.ndarray], ...]

    def pack(self) -> np.ndarray:
        parts = [np.array([self.t]), np.asarray(self.mu, dtype=np.float64)]
        for lay in self.layers:
            parts += [np.asarray(lay[f], dtype=np.float64) for f in LAYER_FIELDS]
        return np.concatenate(parts)

    @staticmethod
    def unpack(problem: SdpProblem, y: np.ndarray) -> "Multipliers":
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if y.shape != (problem.n_multipliers(),):
            raise ValueError(f"expected {problem.n_multipliers()} multipliers, got {y.shape[0]}")
        n0 = problem.sizes[0]
        pos = 1 + n0
        layers = []
        for n in problem.sizes[1:]:
            lay = {}
            for f in LAYER_FIELDS:
                lay[f] = y[pos:pos + n].copy()
                pos += n
            layers.append(lay)
        return Multipliers(float(y[0]), y[1:1 + n0].copy(), tuple(layers))

    def projected(self) -> "Multipliers":
        """Clip the sign-constrained multipliers to >= 0 (any such point is dual-valid)."""
        layers = tuple({f: (a if f in _FREE_FIELDS else np.maximum(a, 0.0)) for f, a in lay.items()}
                       for lay in self.layers)
        return Multipliers(self.t, np.maximum(self.mu, 0.0), layers)

    def with_t(self, t: float) -> "Multipliers":
        return Multipliers(float(t), self.mu, self.layers)

    def to_json(self) -> dict:
        return {"t": self.t, "mu": self.mu.tolist(),
                "layers": [{f: np.asarray(a).tolist() for f, a in lay.items()} for lay in self.layers]}


def nonneg_mask(problem: SdpProblem) -> np.ndarray:
    """Boolean mask over the packed multipliers: True where ``y_i >= 0`` is required."""
    mask = [np.array([False]), np.ones(problem.sizes[0], bool)]
    for n in problem.sizes[1:]:
        mask += [np.full(n, f not in _FREE_FIELDS) for f in LAYER_FIELDS]
    return np.concatenate(mask)


__all__.append("nonneg_mask")


def dual_triplets(problem: SdpProblem) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Entries of ``M(y) = M_const + sum_k y_k B_k`` as (var, row, col, value) arrays.

    ``var == -1`` marks the constant part (the objective). Both triangles of every
    off-diagonal entry are listed, so the entries sum to the dense symmetric matrix."""
    vs: list[np.ndarray] = []
    rs: list[np.ndarray] = []
    cs: list[np.ndarray] = []
    xs: list[np.ndarray] = []

    def add(var, row, col, val) -> None:
        var, row, col, val = np.broadcast_arrays(*(np.asarray(a) for a in (var, row, col, val)))
        var, row, col, val = (a.reshape(-1) for a in (var, row, col, val))
        off = row != col
        vs.extend([var, var[off]])
        rs.extend([row, col[off]])
        cs.extend([col, row[off]])
        xs.extend([val.astype(np.float64), val[off].astype(np.float64)])

    add(-1, 0, 0, problem.objective_const)
    add(-1, 0, np.arange(1, problem.dim), 0.5 * problem.objective_linear)
    add(0, 0, 0, -1.0)  # t
    n0 = problem.sizes[0]
    idx_in = np.arange(problem.offsets[0], problem.offsets[1])
    var_mu = 1 + np.arange(n0)
    lo, hi = problem.in_lower, problem.in_upper
    add(var_mu, 0, 0, lo * hi)
    add(var_mu, 0, idx_in, -0.5 * (lo + hi))
    add(var_mu, idx_in, idx_in, 1.0)
    pos = 1 + n0
    for k in range(problem.n_hidden):
        w, b = problem.maps[k], problem.shifts[k]
        n = w.shape[0]
        z = np.arange(problem.offsets[k + 1], problem.offsets[k + 2])
        prev = np.arange(1, problem.offsets[k + 1])
        var = {f: pos + i * n + np.arange(n) for i, f in enumerate(LAYER_FIELDS)}
        pos += len(LAYER_FIELDS) * n
        lx, ux = problem.post_bounds(k)
        s, r = problem.triangle(k)
        zc, pc = z[:, None], prev[None, :]
        add(var["lam_pos"], 0, z, -0.5)
        add(var["lam_lin"], 0, 0, b)
        add(var["lam_lin"], 0, z, -0.5)
        add(var["lam_lin"][:, None], 0, pc, 0.5 * w)
        add(var["nu"], z, z, -1.0)
        add(var["nu"][:, None], zc, pc, 0.5 * w)
        add(var["nu"], 0, z, 0.5 * b)
        add(var["lam_box"], 0, 0, lx * ux)
        add(var["lam_box"], 0, z, -0.5 * (lx + ux))
        add(var["lam_box"], z, z, 1.0)
        add(var["lam_tri"], 0, 0, -(r + s * b))
        add(var["lam_tri"][:, None], 0, pc, -0.5 * s[:, None] * w)
        add(var["lam_tri"], 0, z, 0.5)
    return (np.concatenate(vs).astype(np.int64), np.concatenate(rs).astype(np.int64),
            np.concatenate(cs).astype(np.int64), np.concatenate(xs))


def dual_matrix(problem: SdpProblem, mult: Multipliers) -> np.ndarray:
    """Dense float64 ``M(y)`` (t included), built from its definition block by block."""
    n = problem.dim
    m = np.zeros((n, n))
    g = np.zeros(n)  # coefficients of P_0i (M_0i = M_i0 = g_i / 2)
    d = np.zeros(n)  # diagonal of the quadratic part
    m00 = problem.objective_const - mult.t
    g[1:] += problem.objective_linear
    lo, hi = problem.in_lower, problem.in_upper
    mu = np.asarray(mult.mu, dtype=np.float64)
    m00 += float(mu @ (lo * hi))
    g[problem.block(0)] -= mu * (lo + hi)
    d[problem.block(0)] += mu
    for k, lay in enumerate(mult.layers):
        w, b = problem.maps[k], problem.shifts[k]
        zb, pb = problem.block(k + 1), slice(1, problem.offsets[k + 1])
        lx, ux = problem.post_bounds(k)
        s, r = problem.triangle(k)
        lp, ll, nu, lb, lt = (np.asarray(lay[f], dtype=np.float64) for f in LAYER_FIELDS)
        m00 += float(ll @ b + lb @ (lx * ux) - lt @ (r + s * b))
        g[zb] += -lp - ll + nu * b - lb * (lx + ux) + lt
        g[pb] += w.T @ ll - w.T @ (lt * s)
        d[zb] += lb - nu
        off = 0.5 * nu[:, None] * w
        m[zb, pb] += off
        m[pb, zb] += off.T
    m[0, 0] = m00
    m[0, 1:] += 0.5 * g[1:]
    m[1:, 0] += 0.5 * g[1:]
    m[np.arange(1, n), np.arange(1, n)] += d[1:]
    return m


def centred(problem: SdpProblem, m: np.ndarray) -> np.ndarray:
    """``K^T M K`` with ``K = [[1, 0], [c, I]]``: the dual matrix in centred coordinates
    (same quadratic block; the first row and corner absorb the shift)."""
    c = problem.centre()
    out = np.array(m, dtype=np.float64, copy=True)
    rc = m[1:, 1:] @ c
    out[1:, 0] = m[1:, 0] + rc
    out[0, 1:] = out[1:, 0]
    out[0, 0] = m[0, 0] + 2.0 * float(c @ m[1:, 0]) + float(c @ rc)
    return out


__all__.append("centred")


def dual_operator(problem: SdpProblem):
    """``(M_const, B)``: scipy sparse with ``vec(M(y)) = vec(M_const) + B @ y`` (row-major vec)."""
    import scipy.sparse as sp  # lazy: the problem itself is numpy only; scipy loads with the solver that reads this

    var, row, col, val = dual_triplets(problem)
    n = problem.dim
    const = var < 0
    m_const = sp.coo_matrix((val[const], (row[const], col[const])), shape=(n, n)).tocsr()
    b = sp.coo_matrix((val[~const], (row[~const] * n + col[~const], var[~const])),
                      shape=(n * n, problem.n_multipliers())).tocsr()
    return m_const, b


def eig_margin(m: np.ndarray) -> float:
    """An upper bound on the error of ``numpy.linalg.eigvalsh`` for symmetric ``m``
    (backward stable: a small multiple of n * eps * ||m||_F, taken with room)."""
    n = m.shape[0]
    return 16.0 * (n + 1) * float(np.finfo(np.float64).eps) * float(np.linalg.norm(m)) + 1e-300


def best_offset(problem: SdpProblem, mult: Multipliers) -> tuple[float, float]:
    """The ``t`` and shift ``delta`` maximising ``t - delta * T`` subject to
    ``K^T M(y) K - t E_00 + delta I >= 0`` for fixed multipliers y (a 1-D concave problem).

    With ``M`` split as ``[[m00, beta^T], [beta, R]]``, the best t for a shift delta is
    ``m00 + delta - beta^T (R + delta I)^{-1} beta``; one eigendecomposition of R then
    makes the bound a cheap concave function of delta, maximised by bisection on its
    derivative."""
    m = centred(problem, dual_matrix(problem, mult.with_t(0.0)))
    m00, beta, rest = m[0, 0], m[1:, 0], m[1:, 1:]
    lam, q = np.linalg.eigh(rest)
    wts = (q.T @ beta) ** 2
    tm1 = problem.trace_bound() - 1.0
    scale = max(1.0, float(np.max(np.abs(lam))))
    lo = max(0.0, -float(lam[0])) + 1e-12 * scale
    def slope(delta: float) -> float:
        return float(np.sum(wts / (lam + delta) ** 2)) - tm1
    if slope(lo) <= 0.0:
        delta = lo
    else:
        hi = 2.0 * lo + 1e-9 * scale
        while slope(hi) > 0.0 and hi < 1e12 * scale:
            hi *= 2.0
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if slope(mid) > 0.0:
                lo = mid
            else:
                hi = mid
        delta = hi
    t = m00 + delta - float(np.sum(wts / (lam + delta)))
    return t, delta


def certified_bound(problem: SdpProblem, mult: Multipliers, optimise_t: bool = True
                    ) -> tuple[float, Multipliers, float]:
    """(bound, multipliers used, lambda_min): a valid lower bound of ``c^T y`` over the box.

    Sign-constrained multipliers are clipped to >= 0 first; ``t`` is re-chosen by
    ``best_offset`` unless ``optimise_t`` is False. The final eigenvalue is computed in
    float64 on the dense centred matrix and lowered by ``eig_margin``."""
    mult = mult.projected()
    if optimise_t:
        t, _ = best_offset(problem, mult)
        mult = mult.with_t(t)
    m = centred(problem, dual_matrix(problem, mult))
    lam_min = float(np.linalg.eigvalsh(m)[0]) - eig_margin(m)
    bound = mult.t + problem.trace_bound() * min(0.0, lam_min)
    return float(bound), mult, lam_min


def build_problem(weights: Sequence[np.ndarray], biases: Sequence[np.ndarray], c: np.ndarray,
                  in_lower: np.ndarray, in_upper: np.ndarray,
                  pre_lower: Sequence[np.ndarray], pre_upper: Sequence[np.ndarray]) -> SdpProblem:
    """The relaxation of ``min c^T f(x)`` over the box for the ReLU MLP (weights, biases),
    ``pre_lower[k]``/``pre_upper[k]`` being sound bounds of hidden layer k's pre-activation."""
    ws = [np.asarray(w, dtype=np.float64) for w in weights]
    bs = [np.asarray(b, dtype=np.float64).reshape(-1) for b in biases]
    if len(ws) < 2 or len(bs) != len(ws) or len(pre_lower) != len(ws) - 1 or len(pre_upper) != len(ws) - 1:
        raise ValueError("need >= 2 layers, a bias per layer and bounds per hidden layer")
    c = np.asarray(c, dtype=np.float64).reshape(-1)
    maps, shifts, kl, ku, q, q0 = reduce_stable(ws, bs, c, pre_lower, pre_upper)
    return SdpProblem(tuple(maps), tuple(shifts), q, q0, np.asarray(in_lower), np.asarray(in_upper),
                      tuple(kl), tuple(ku), c)
