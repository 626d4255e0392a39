"""Independent float64 checker for Lipschitz certificates.

Deliberately self-contained (numpy and the standard library only): it must not
share code with what produced the certificate, so the LMI is rebuilt here from its
definition (see ``relaxations/lipschitz/lmi.py`` for the derivation):

    M_00 = -diag(tau) + W_0^T Q_vv^1 W_0,  M_kk = Q_zz^k + W_k^T Q_vv^{k+1} W_k,
    M_ll = Q_zz^l + W_l^T C^T C W_l,     M_{k-1,k} = W_{k-1}^T Q_vz^k,

with, per hidden neuron, slope-restricted ``[a, b]``:
``Q_vv = -2ab t, Q_vz = (a+b) t, Q_zz = -2t`` (t >= 0); per MaxMin pair the form
``2 lam (z1 - v2)(v1 - z1) + (z1 + z2 - v1 - v2)(mu . [v1, v2, z1, z2])`` (lam >= 0).
Acceptance requires a banded Cholesky of ``-M - 1e-9 * s * I`` to succeed, s being
the block-Gershgorin bound on ||M||_2, and ``L >= sqrt(rho)``.

Optional ``block_scales`` ``(d_0, ..., d_l)`` (positive): the test is applied to
``D M D`` with ``D = blockdiag(d_k I)`` instead of M. A congruence by an invertible D
preserves negative definiteness, so this is exactly as strong a proof; it exists
because networks with large layer norms (ACAS Xu: product ~3e7) give LMIs whose blocks
span ~15 orders of magnitude, where a margin relative to the largest block swamps the
smallest and no tight certificate could pass. Producers use powers of two, so the
scaled blocks are computed without any extra rounding.

The activation decides which QC is valid, so a caller should pass the network's
real activation; when it is omitted the certificate's claim is used.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["MARGIN_REL", "check_lipschitz_certificate", "weights_sha256"]

MARGIN_REL = 1e-9
_EPS = float(np.finfo(np.float64).eps)
_SLOPES = {"relu": (0.0, 1.0), "tanh": (0.0, 1.0), "sigmoid": (0.0, 0.25)}


def weights_sha256(weights: Sequence[np.ndarray]) -> str:
    """SHA-256 over (shape repr, float64 little-endian bytes) of each weight matrix."""
    h = hashlib.sha256()
    for w in weights:
        a = np.ascontiguousarray(np.asarray(w, dtype="<f8"))
        h.update(repr(tuple(int(s) for s in a.shape)).encode("ascii"))
        h.update(a.tobytes())
    return h.hexdigest()


def _slopes(activation: str, negative_slope: float) -> tuple[float, float]:
    if activation == "leaky_relu":
        return min(negative_slope, 1.0), max(negative_slope, 1.0)
    return _SLOPES[activation]


def _qc(activation: str, negative_slope: float, mult: np.ndarray, n: int):
    if activation == "maxmin":
        if mult.shape != (n // 2, 5) or n % 2:
            raise ValueError(f"maxmin multipliers must have shape ({n // 2}, 5)")
        if np.any(mult[:, 0] < 0):
            raise ValueError("negative lambda in a MaxMin QC")
        full = np.zeros((2 * n, 2 * n))  # order: v (n), z (n)
        g = np.array([-1.0, -1.0, 1.0, 1.0])
        for i, (lam, *mu) in enumerate(mult):
            idx = [2 * i, 2 * i + 1, n + 2 * i, n + 2 * i + 1]
            p = 0.5 * (np.outer(g, mu) + np.outer(mu, g))
            # 2 lam (z1 - v2)(v1 - z1)
            p += lam * (np.outer([0, -1, 1, 0], [1, 0, -1, 0]) + np.outer([1, 0, -1, 0], [0, -1, 1, 0]))
            full[np.ix_(idx, idx)] += p
        return full[:n, :n], full[:n, n:], full[n:, n:]
    if mult.shape != (n,):
        raise ValueError(f"multipliers must have shape ({n},)")
    if np.any(mult < 0):
        raise ValueError("negative multiplier in a slope-restricted QC")
    a, b = _slopes(activation, negative_slope)
    return np.diag(-2 * a * b * mult), np.diag((a + b) * mult), np.diag(-2 * mult)


def _lmi(ws, activation, slope, mults, tau, rows):
    nh = len(ws) - 1
    if len(mults) != nh:
        raise ValueError(f"{nh} hidden layers but {len(mults)} multiplier arrays")
    q = [_qc(activation, slope, np.asarray(m, dtype=np.float64), ws[k].shape[0]) for k, m in enumerate(mults)]
    wl = ws[-1] if rows is None else ws[-1][rows]
    diag = [-np.diag(tau) + ws[0].T @ q[0][0] @ ws[0]]
    upper = []
    for k in range(1, nh + 1):
        upper.append(ws[k - 1].T @ q[k - 1][1])
        diag.append(q[k - 1][2] + (ws[k].T @ q[k][0] @ ws[k] if k < nh else wl.T @ wl))
    return diag, upper


def _scale_blocks(diag, upper, scales) -> tuple[list, list]:
    """(D M D)'s blocks: block (i, j) times d_i d_j (see the module docstring)."""
    if scales is None:
        return diag, upper
    d = [float(x) for x in scales]
    if len(d) != len(diag) or not all(math.isfinite(x) and x > 0 for x in d):
        raise ValueError(f"block_scales must be {len(diag)} finite positive numbers")
    return ([b * (d[k] * d[k]) for k, b in enumerate(diag)],
            [b * (d[k] * d[k + 1]) for k, b in enumerate(upper)])


def _neg_def_with_margin(diag, upper) -> bool:
    s = 0.0
    for k, d in enumerate(diag):
        r = np.linalg.norm(d) + (np.linalg.norm(upper[k - 1]) if k else 0.0)
        r += np.linalg.norm(upper[k]) if k < len(upper) else 0.0
        s = max(s, float(r))
    delta = MARGIN_REL * s
    x = None
    for k, d in enumerate(diag):
        a = -d - delta * np.eye(d.shape[0]) - (x.T @ x if x is not None else 0.0)
        try:
            lk = np.linalg.cholesky(a)
        except np.linalg.LinAlgError:
            return False
        if k < len(upper):
            x = np.linalg.solve(lk, -upper[k])
    return True


def _sqrt_up(x: float) -> float:
    return float(np.nextafter(math.sqrt(x), np.inf))


def _check_naive(cert: Mapping[str, Any], ws: list[np.ndarray], act: str, slope: float) -> tuple[bool, str]:
    norms = [float(s) for s in cert["layer_norms"]]
    if len(norms) != len(ws):
        return False, "layer_norms has the wrong length"
    for k, (w, s) in enumerate(zip(ws, norms)):
        if cert["norm"] == "2":
            g = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            margin = 64.0 * (max(w.shape) + 2) * _EPS * float(np.sum(w * w)) + 1e-300
            try:
                np.linalg.cholesky((s * s - margin) * np.eye(g.shape[0]) - g)
            except np.linalg.LinAlgError:
                return False, f"layer {k}: {s} is not a proven bound on the spectral norm"
        else:
            r = float(np.max(np.sum(np.abs(w), axis=1))) * (1.0 + (w.shape[1] + 2) * _EPS)
            if not s >= r:
                return False, f"layer {k}: {s} < max row sum {r}"
    act_lip = 1.0 if act == "maxmin" else max(abs(v) for v in _slopes(act, slope))
    factors = norms + [act_lip] * (len(ws) - 1)
    prod = 1.0
    for f in factors:
        prod *= f
    prod *= 1.0 + 2.0 * (len(factors) + 1) * _EPS
    if not float(cert["L"]) >= prod:
        return False, f"L={cert['L']} is below the product of norms {prod}"
    return True, "ok: naive product of certified norms"


def check_lipschitz_certificate(
    cert: Mapping[str, Any],
    network_weights: Sequence[np.ndarray],
    activation: str | None = None,
    negative_slope: float | None = None,
) -> tuple[bool, str]:
    """Accept (True, reason) only if the certificate proves ``Lip(f) <= cert['L']``.

    ``network_weights``: the network's weight matrices W_1..W_L (biases do not
    matter). ``activation``/``negative_slope``: the network's own; if given they must
    match the certificate. Never raises on malformed input: it rejects."""
    if not isinstance(cert, Mapping):
        return False, "not a certificate (a JSON object expected)"
    try:
        ws = [np.asarray(w, dtype=np.float64) for w in network_weights]
        if cert.get("version") != 1:
            return False, f"unsupported version {cert.get('version')!r}"
        act = str(cert["activation"])
        slope = float(cert.get("negative_slope", 0.01))
        if activation is not None and activation != act:
            return False, f"certificate claims activation {act!r}, network has {activation!r}"
        if negative_slope is not None and act == "leaky_relu" and float(negative_slope) != slope:
            return False, "negative_slope differs from the network's"
        if act not in ("relu", "leaky_relu", "sigmoid", "tanh", "maxmin"):
            return False, f"unknown activation {act!r}"
        if weights_sha256(ws) != cert["network_sha256"]:
            return False, "network_sha256 does not match the weights"
        L = float(cert["L"])
        if not (math.isfinite(L) and L >= 0):
            return False, "L is not a finite non-negative number"
        if cert["norm"] not in ("2", "inf"):
            return False, f"unknown norm {cert['norm']!r}"
        if cert["kind"] == "lipschitz-naive":
            return _check_naive(cert, ws, act, slope)
        if cert["kind"] != "lipschitz-sdp":
            return False, f"unknown kind {cert['kind']!r}"
        n0 = ws[0].shape[1]
        if cert["norm"] == "2":
            rho = float(cert["rho"])
            if not (rho >= 0 and L >= _sqrt_up(rho)):
                return False, f"L={L} is below sqrt(rho={rho})"
            diag, upper = _lmi(ws, act, slope, cert["multipliers"], np.full(n0, rho), None)
            diag, upper = _scale_blocks(diag, upper, cert.get("block_scales"))
            if not _neg_def_with_margin(diag, upper):
                return False, "LMI matrix is not negative definite with margin"
            return True, "ok: LipSDP LMI negative definite in float64"
        blocks = cert["per_output"]
        if sorted(int(b["row"]) for b in blocks) != list(range(ws[-1].shape[0])):
            return False, "per_output must cover every output row exactly once"
        for b in blocks:
            tau = np.asarray(b["input_weights"], dtype=np.float64)
            if tau.shape != (n0,) or np.any(tau < 0):
                return False, f"row {b['row']}: input weights must be {n0} non-negative numbers"
            total = float(np.nextafter(math.fsum(tau.tolist()), np.inf))
            if not L >= _sqrt_up(total):
                return False, f"row {b['row']}: L={L} is below sqrt(sum tau)={math.sqrt(total)}"
            diag, upper = _lmi(ws, act, slope, b["multipliers"], tau, [int(b["row"])])
            diag, upper = _scale_blocks(diag, upper, cert.get("block_scales"))
            if not _neg_def_with_margin(diag, upper):
                return False, f"row {b['row']}: LMI matrix is not negative definite with margin"
        return True, "ok: per-output LipSDP LMIs negative definite in float64"
    # OverflowError: a JSON int past float64, or an infinite index
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, np.linalg.LinAlgError) as exc:
        return False, f"malformed certificate: {exc!r}"
