"""LipSDP problem data: quadratic constraints, the LMI, and its exact Schur sweep.

Notation. Hidden layer k (1..l, l = depth-1) has pre-activation increment
``v_k = W_{k-1} z_{k-1}`` (``z_0 = x``) and post-activation increment ``z_k``. Each
activation gives a quadratic constraint (QC) on increments,
``[v; z]^T [[Q_vv, Q_vz], [Q_vz^T, Q_zz]] [v; z] >= 0``, linear in its multipliers:

* slope-restricted on [a, b] (LipSDP, Fazlyab et al. 2019), diagonal T >= 0:
  ``2 sum_i t_i (z_i - a v_i)(b v_i - z_i) >= 0``, i.e.
  ``Q_vv = -2ab T, Q_vz = (a+b) T, Q_zz = -2T``. LipSDP-Layer is ``T = lambda I``.
* MaxMin on the pair (v1, v2) -> (z1, z2) = (max, min). Since
  ``max(v1, v2) = v2 + relu(v1 - v2)``, the ReLU QC of ``r = relu(v1 - v2)`` reads
  ``(z1 - v2)(v1 - z1) >= 0`` (multiplier ``lam >= 0``), and MaxMin preserves sums,
  ``e = z1 + z2 - v1 - v2 = 0``, so ``e * (mu . [v1, v2, z1, z2]) = 0`` for any
  ``mu`` in R^4 (a pair-local Finsler multiplier). These are the properties that
  Pauli et al., "Novel Quadratic Constraints for Extending LipSDP beyond
  Slope-Restricted Activations", build on (the ReLU rewrite plus sum preservation);
  with ``lam = 1, mu = (0, 0, 0, -2)`` a MaxMin layer between orthogonal weights
  certifies exactly 1.

The S-procedure gives ``|C dy|^2 <= dx^T diag(tau) dx`` whenever
``M = out - in + sum_k QC_k <= 0``. M is block tridiagonal over the blocks
(x, z_1, ..., z_l):

    M_00     = -diag(tau) + W_0^T Q_vv^1 W_0
    M_kk     = Q_zz^k + W_k^T Q_vv^{k+1} W_k          (1 <= k < l)
    M_ll     = Q_zz^l + W_l^T C^T C W_l
    M_{k-1,k} = W_{k-1}^T Q_vz^k

For l2, ``tau = rho 1`` and ``C = I``: ``L = sqrt(rho)``. For l-inf, one LMI per
output row j (``C = e_j^T``) with ``tau >= 0``: ``|dy_j| <= sqrt(sum tau) |dx|_inf``.

The Schur complements of ``-M - delta I`` taken from the output end are
``S_k = -Q_zz^k - delta I - W_k^T G_{k+1} W_k`` with ``G_{l+1} = C^T C`` and
``G_k = Q_vv^k + Q_vz^k S_k^{-1} Q_vz^{kT}``; ``-M - delta I > 0`` iff every S_k > 0
and ``diag(tau) - delta I - W_0^T G_1 W_0 > 0``. This is used both to find the
smallest rho that certifies given multipliers and by the layer-by-layer method.
This module is numpy only: no solver is called here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from relaxations.lipschitz.network import FeedForward, slope_bounds

__all__ = [
    "BlockTridiagonal",
    "qc_blocks",
    "maxmin_pair_form",
    "multiplier_shape",
    "project_multipliers",
    "expand_layer_multiplier",
    "assemble_lmi",
    "lmi_scale",
    "nsd_with_margin",
    "SchurSweep",
    "schur_sweep",
    "layer_schur",
    "fast_layer_multipliers",
    "output_metric",
    "shift_multipliers",
    "repair_layer",
    "repair_sweep",
]


@dataclass(frozen=True, eq=False)
class BlockTridiagonal:
    """Symmetric block-tridiagonal matrix: ``diag[k]`` and ``upper[k]`` = block (k, k+1)."""

    diag: tuple[np.ndarray, ...]
    upper: tuple[np.ndarray, ...]

    def dense(self) -> np.ndarray:
        sizes = [d.shape[0] for d in self.diag]
        off = np.concatenate([[0], np.cumsum(sizes)])
        m = np.zeros((off[-1], off[-1]))
        for k, d in enumerate(self.diag):
            m[off[k] : off[k + 1], off[k] : off[k + 1]] = d
        for k, u in enumerate(self.upper):
            m[off[k] : off[k + 1], off[k + 1] : off[k + 2]] = u
            m[off[k + 1] : off[k + 2], off[k] : off[k + 1]] = u.T
        return m


def maxmin_pair_form(lam: float, mu: Sequence[float]) -> np.ndarray:
    """4x4 symmetric matrix of the MaxMin pair QC in the order (v1, v2, z1, z2)."""
    p = np.zeros((4, 4))
    # 2 lam (z1 - v2)(v1 - z1) = 2 lam (z1 v1 - z1^2 - v2 v1 + v2 z1)
    p[2, 0] = p[0, 2] = lam
    p[2, 2] = -2.0 * lam
    p[0, 1] = p[1, 0] = -lam
    p[1, 2] = p[2, 1] = lam
    g = np.array([-1.0, -1.0, 1.0, 1.0])  # e = g . [v1, v2, z1, z2]
    m = np.asarray(mu, dtype=np.float64)
    p += 0.5 * (np.outer(g, m) + np.outer(m, g))
    return p


def multiplier_shape(activation: str, width: int) -> tuple[int, ...]:
    """Shape of one hidden layer's multipliers: (n,) for elementwise, (n/2, 5) for maxmin."""
    return (width // 2, 5) if activation == "maxmin" else (width,)


def project_multipliers(activation: str, mult: np.ndarray) -> np.ndarray:
    """Clip the sign-constrained entries (t >= 0, lam >= 0) so a QC stays valid."""
    m = np.array(mult, dtype=np.float64, copy=True)
    if activation == "maxmin":
        m[:, 0] = np.maximum(m[:, 0], 0.0)
    else:
        m = np.maximum(m, 0.0)
    return m


def expand_layer_multiplier(activation: str, width: int, value: float) -> np.ndarray:
    """LipSDP-Layer's shared multiplier as a per-neuron array (for certificates)."""
    if activation == "maxmin":
        m = np.zeros((width // 2, 5))
        m[:, 0] = value
        return m
    return np.full(width, float(value))


def qc_blocks(
    activation: str, negative_slope: float, mult: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Q_vv, Q_vz, Q_zz) of one hidden layer's QC for the given multipliers."""
    mult = np.asarray(mult, dtype=np.float64)
    if activation == "maxmin":
        n = 2 * mult.shape[0]
        q_vv, q_vz, q_zz = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
        for i, row in enumerate(mult):
            p = maxmin_pair_form(row[0], row[1:])
            s = slice(2 * i, 2 * i + 2)
            q_vv[s, s], q_vz[s, s], q_zz[s, s] = p[:2, :2], p[:2, 2:], p[2:, 2:]
        return q_vv, q_vz, q_zz
    sb = slope_bounds(activation, negative_slope)
    return (
        np.diag(-2.0 * sb.a * sb.b * mult),
        np.diag((sb.a + sb.b) * mult),
        np.diag(-2.0 * mult),
    )


def output_metric(m: int, output_rows: Sequence[int] | None) -> np.ndarray:
    """C^T C for C = I (all outputs) or C = the selected rows of I."""
    if output_rows is None:
        return np.eye(m)
    g = np.zeros((m, m))
    idx = np.asarray(list(output_rows), dtype=int)
    g[idx, idx] = 1.0
    return g


def _output_gram(net: FeedForward, output_rows: Sequence[int] | None) -> np.ndarray:
    w = net.weights[-1] if output_rows is None else net.weights[-1][list(output_rows)]
    return w.T @ w


def assemble_lmi(
    net: FeedForward,
    multipliers: Sequence[np.ndarray],
    input_weights: np.ndarray,
    output_rows: Sequence[int] | None = None,
) -> BlockTridiagonal:
    """The LMI matrix M (must be <= 0) for ``multipliers`` (one array per hidden layer).

    ``input_weights`` is tau (length n_0; ``rho * ones`` for l2); ``output_rows``
    selects rows of the last weight matrix (None: all, the l2 case)."""
    ws = net.weights
    nh = len(ws) - 1
    if nh < 1:
        raise ValueError("the LMI needs at least one hidden layer")
    if len(multipliers) != nh:
        raise ValueError(f"{nh} hidden layers but {len(multipliers)} multiplier arrays")
    qcs = [qc_blocks(net.activation, net.negative_slope, m) for m in multipliers]
    tau = np.asarray(input_weights, dtype=np.float64).reshape(-1)
    diag: list[np.ndarray] = [-np.diag(tau) + ws[0].T @ qcs[0][0] @ ws[0]]
    upper: list[np.ndarray] = []
    for k in range(1, nh + 1):
        q_vv, q_vz, q_zz = qcs[k - 1]
        upper.append(ws[k - 1].T @ q_vz)
        if k < nh:
            diag.append(q_zz + ws[k].T @ qcs[k][0] @ ws[k])
        else:
            diag.append(q_zz + _output_gram(net, output_rows))
    return BlockTridiagonal(tuple(diag), tuple(upper))


def lmi_scale(m: BlockTridiagonal) -> float:
    """An upper bound on ||M||_2 (block Gershgorin with Frobenius norms)."""
    best = 0.0
    for k, d in enumerate(m.diag):
        r = float(np.linalg.norm(d))
        if k > 0:
            r += float(np.linalg.norm(m.upper[k - 1]))
        if k < len(m.upper):
            r += float(np.linalg.norm(m.upper[k]))
        best = max(best, r)
    return best


def nsd_with_margin(m: BlockTridiagonal, rel_margin: float) -> tuple[bool, int]:
    """Block Cholesky of ``-M - delta I`` with ``delta = rel_margin * lmi_scale(M)``.

    Returns (ok, first failing block or -1). Banded Cholesky is backward stable, and
    delta is far above its rounding error, so success proves M <= 0."""
    delta = rel_margin * lmi_scale(m)
    prev_x: np.ndarray | None = None
    for k, d in enumerate(m.diag):
        s = -d - delta * np.eye(d.shape[0])
        if prev_x is not None:
            s = s - prev_x.T @ prev_x
        try:
            lk = np.linalg.cholesky(s)
        except np.linalg.LinAlgError:
            return False, k
        if k < len(m.upper):
            # X = L_k^{-1} (-U_k): the next Schur complement subtracts X^T X
            prev_x = np.linalg.solve(lk, -m.upper[k])
    return True, -1


def layer_schur(
    activation: str, negative_slope: float, mult: np.ndarray, h: np.ndarray, delta: float = 0.0
) -> tuple[np.ndarray, np.ndarray] | None:
    """One backward Schur step: ``S = -Q_zz - delta I - H``, ``G = Q_vv + Q_vz S^-1 Q_vz^T``.

    Returns None when S is not positive definite (the multipliers do not certify)."""
    q_vv, q_vz, q_zz = qc_blocks(activation, negative_slope, mult)
    s = -q_zz - h - delta * np.eye(h.shape[0])
    try:
        c = np.linalg.cholesky(s)
    except np.linalg.LinAlgError:
        return None
    y = np.linalg.solve(c, q_vz.T)
    g = q_vv + y.T @ y
    return s, 0.5 * (g + g.T)


@dataclass(frozen=True, eq=False)
class SchurSweep:
    """Result of the backward sweep: ``k_input = W_0^T G_1 W_0`` (None if a block failed)."""

    k_input: np.ndarray | None
    failed_layer: int


def schur_sweep(
    net: FeedForward,
    multipliers: Sequence[np.ndarray],
    output_rows: Sequence[int] | None = None,
    delta: float = 0.0,
) -> SchurSweep:
    """Backward Schur sweep of ``-M - delta I`` over the hidden blocks (module docstring).

    The smallest certified tau then satisfies ``diag(tau) - delta I > k_input``."""
    ws = net.weights
    g = output_metric(ws[-1].shape[0], output_rows)
    for k in range(len(ws) - 1, 0, -1):
        h = ws[k].T @ g @ ws[k]
        step = layer_schur(net.activation, net.negative_slope, multipliers[k - 1], h, delta)
        if step is None:
            return SchurSweep(None, k)
        g = step[1]
    kin = ws[0].T @ g @ ws[0]
    return SchurSweep(0.5 * (kin + kin.T), -1)


def fast_layer_multipliers(
    activation: str, negative_slope: float, h: np.ndarray, slack: float = 1e-6
) -> np.ndarray:
    """Closed-form multipliers for one layer given the pulled-back metric H (ECLipsE-Fast style).

    With T = t I (slope-restricted on [a, b]) and h = lambda_max(H),
    ``lambda_max(G) = -2ab t + (a+b)^2 t^2 / (2t - h)`` is minimised at
    ``2t - h = h (a+b)/(b-a)``; for ReLU this is t = h and G <= h I. For MaxMin,
    ``lam = h, mu = (0, 0, 0, -2h)`` gives ``G = h I`` when H = h I. ``slack``
    inflates h so that S stays strictly positive definite."""
    n = h.shape[0]
    hmax = float(np.linalg.eigvalsh(0.5 * (h + h.T))[-1]) if n else 0.0
    hmax = max(hmax, 1e-300) * (1.0 + slack) + slack * 1e-12
    if activation == "maxmin":
        m = np.zeros((n // 2, 5))
        m[:, 0] = hmax
        m[:, 4] = -2.0 * hmax
        return m
    sb = slope_bounds(activation, negative_slope)
    if sb.a + sb.b > 0 and sb.b - sb.a > 1e-12:
        u = hmax * (sb.a + sb.b) / (sb.b - sb.a)
        t = 0.5 * (u + hmax)
    else:
        t = hmax
    return np.full(n, t)


def shift_multipliers(activation: str, mult: np.ndarray, alpha: float) -> np.ndarray:
    """Multipliers whose ``-Q_zz`` is larger by exactly ``alpha I`` (alpha >= 0).

    Slope-restricted: ``-Q_zz = 2T``, so ``t += alpha / 2``. MaxMin pair:
    ``Q_zz = [[mu3 - 2 lam, (mu3 + mu4)/2], [., mu4]]``, so ``lam += alpha``,
    ``mu3 += alpha``, ``mu4 -= alpha``. Both keep the sign constraints."""
    m = np.array(mult, dtype=np.float64, copy=True)
    if activation == "maxmin":
        m[:, 0] += alpha
        m[:, 3] += alpha
        m[:, 4] -= alpha
    else:
        m += 0.5 * alpha
    return m


def repair_layer(
    activation: str,
    negative_slope: float,
    mult: np.ndarray,
    h: np.ndarray,
    delta: float = 0.0,
    rel_floor: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray]:
    """Project and shift one layer's multipliers until ``S >= delta I + rel_floor h_max I``
    holds with room; returns (multipliers, G) for the previous layer."""
    h = 0.5 * (h + h.T)
    m = project_multipliers(activation, mult)
    want = delta + rel_floor * max(float(np.linalg.eigvalsh(h)[-1]), 0.0)
    _, _, q_zz = qc_blocks(activation, negative_slope, m)
    lo = float(np.linalg.eigvalsh(-q_zz - h)[0])
    if lo < 2.0 * want:
        m = shift_multipliers(activation, m, 2.0 * want - lo + 1e-300)
    step = layer_schur(activation, negative_slope, m, h, delta)
    bump = max(want, 1e-300)
    while step is None:  # rounding right at the edge: push further
        m = shift_multipliers(activation, m, bump)
        bump *= 4.0
        step = layer_schur(activation, negative_slope, m, h, delta)
    return m, step[1]


def repair_sweep(
    net: FeedForward,
    multipliers: Sequence[np.ndarray],
    output_rows: Sequence[int] | None = None,
    delta: float = 0.0,
    rel_floor: float = 1e-10,
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Backward sweep that repairs a solver's slightly infeasible multipliers.

    Solvers return multipliers that satisfy the LMI only to their tolerance; the
    inner Schur complements may then be (barely) indefinite, which no rho can fix.
    Going from the output end, each layer's multipliers are shifted (see
    ``shift_multipliers``) until ``S_k >= delta I + rel_floor * lambda_max(H_k) I``.
    Returns the repaired multipliers and ``k_input = W_0^T G_1 W_0``."""
    ws = net.weights
    g = output_metric(ws[-1].shape[0], output_rows)
    fixed: list[np.ndarray] = [np.empty(0)] * (len(ws) - 1)
    for k in range(len(ws) - 1, 0, -1):
        h = ws[k].T @ g @ ws[k]
        fixed[k - 1], g = repair_layer(net.activation, net.negative_slope, multipliers[k - 1], h, delta, rel_floor)
    kin = ws[0].T @ g @ ws[0]
    return tuple(fixed), 0.5 * (kin + kin.T)
