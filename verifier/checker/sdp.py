"""Independent float64 checker for SDP certificates of ReLU MLPs (numpy only).

Shares no code with the producer (``relaxations.sdp``): the relaxation is rebuilt
here from its definition. What is checked, for ``min c^T f(x)`` over ``[lower, upper]``:

1. The certificate's pre-activation bounds contain bounds this file computes itself
   (CROWN with the adaptive lower slope, intersected with interval arithmetic, all in
   float64 with an outward margin); so they are sound.
2. With those bounds, stable neurons are substituted out (inactive: 0, active: the
   affine pre-activation); the lifted vector is ``v = [1; x; z_unstable...]``.
3. For the certificate's multipliers (sign-checked), the dual matrix is
   ``M = Q - sum_i y_i A_i - t E_00`` with rows, per unstable neuron ``z = relu(h)``:
   ``z >= 0``, ``z >= h``, ``z^2 = z h``, ``(z - lx)(ux - z) >= 0``, ``z <= s h + r``;
   per input ``(x - l)(u - x) >= 0``. For every feasible lifted P:
   ``c^T y >= t + min(0, lambda_min(M)) * (1 + sum max(l^2, u^2))``.
4. That number, with lambda_min from ``numpy.linalg.eigvalsh`` lowered by a rounding
   margin, must be >= the claimed bound. The same inequality is also tried in centred
   coordinates (``v' = v - c``, ``c`` the box midpoints, ``M' = K^T M K``), where the box
   rows give ``P'_ii <= r_i^2`` (half-widths) and the trace bound is ``1 + sum r_i^2``;
   the larger of the two (both valid) is compared with the claim.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["check_sdp_certificate", "check_sdp_certificates"]

_EPS = float(np.finfo(np.float64).eps)
_FIELDS = ("lam_pos", "lam_lin", "nu", "lam_box", "lam_tri")


def _down(x: np.ndarray, mass: np.ndarray) -> np.ndarray:
    return x - (1e-11 * mass + 1e-12)


def _own_bounds(ws, bs, lo, hi) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sound pre-activation bounds: interval arithmetic intersected with CROWN."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for k in range(len(ws) - 1):
        # interval arithmetic from the previous post-activation box
        if k == 0:
            pl, pu = lo, hi
        else:
            pl, pu = np.maximum(out[-1][0], 0.0), np.maximum(out[-1][1], 0.0)
        w, b = ws[k], bs[k]
        mid, rad = (pl + pu) / 2, (pu - pl) / 2
        cen = w @ mid + b
        spread = np.abs(w) @ rad
        mass = np.abs(w) @ np.abs(mid) + np.abs(b) + spread
        il, iu = _down(cen - spread, mass), -_down(-(cen + spread), mass)
        # CROWN: back-substitute the rows +-e_j of layer k through earlier ReLUs
        n = w.shape[0]
        a = np.concatenate([np.eye(n), -np.eye(n)])  # [2n, n] on the pre-activation of layer k
        const = np.zeros(2 * n)
        mass = np.zeros(2 * n)
        for j in range(k, -1, -1):
            const = const + a @ bs[j]
            mass = mass + np.abs(a) @ np.abs(bs[j])
            a = a @ ws[j]  # now on the post-activation of layer j-1 (or the input)
            if j == 0:
                break
            l, u = out[j - 1]
            unst = (l < 0) & (u > 0)
            up_s = np.where(u <= 0, 0.0, np.where(l >= 0, 1.0, u / np.where(unst, u - l, 1.0)))
            up_b = np.where(unst, -up_s * l, 0.0)
            lo_s = np.where(u <= 0, 0.0, np.where(l >= 0, 1.0, (u >= -l).astype(float)))
            pos, neg = np.maximum(a, 0.0), np.minimum(a, 0.0)
            const = const + neg @ up_b
            mass = mass + np.abs(neg) @ np.abs(up_b)
            a = pos * lo_s + neg * up_s
        cen_in, rad_in = (lo + hi) / 2, (hi - lo) / 2
        val = const + a @ cen_in - np.abs(a) @ rad_in
        mass = mass + np.abs(a) @ np.abs(cen_in) + np.abs(a) @ rad_in + np.abs(const)
        lb = _down(val, mass * (ws[0].shape[1] + 10))
        cl, cu = lb[:n], -lb[n:]
        out.append((np.maximum(il, cl), np.minimum(iu, cu)))
    return out


def _dual_matrix(ws, bs, c, lo, hi, pre_l, pre_u, mult) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Rebuild M (with t), the trace bound T on the reduced lifted vector, and every
    lifted coordinate's box midpoint and squared half-width (for the centred check)."""
    n0 = ws[0].shape[1]
    emap, evec = np.eye(n0), np.zeros(n0)
    blocks = []  # (A on earlier coordinates, shift, l, u)
    for k in range(len(ws) - 1):
        af, bf = ws[k] @ emap, ws[k] @ evec + bs[k]
        l, u = pre_l[k], pre_u[k]
        un, act = (l < 0) & (u > 0), l >= 0
        blocks.append((af[un], bf[un], l[un], u[un]))
        m = int(un.sum())
        emap = np.concatenate([np.where(act[:, None], af, 0.0), np.zeros((af.shape[0], m))], 1)
        emap[np.flatnonzero(un), emap.shape[1] - m + np.arange(m)] = 1.0
        evec = np.where(act, bf, 0.0)
    q = (c @ ws[-1]) @ emap
    q0 = float(c @ (ws[-1] @ evec + bs[-1]))
    dim = 1 + emap.shape[1]
    mat = np.zeros((dim, dim))
    mu = np.asarray(mult["mu"], dtype=np.float64)
    if mu.shape != (n0,) or np.any(mu < 0) or not np.all(np.isfinite(mu)):
        raise ValueError("mu must be n_0 finite non-negative numbers")
    layers = mult["layers"]
    if len(layers) != len(blocks):
        raise ValueError(f"{len(blocks)} hidden blocks but {len(layers)} multiplier layers")
    t = float(mult["t"])
    # each constraint as (constant, coefficients of v, diagonal-quadratic, cross-quadratic)
    mat[0, 0] += q0 - t
    mat[0, 1:] += q / 2
    mat[1:, 0] += q / 2
    idx = np.arange(1, n0 + 1)
    mat[0, 0] += float(np.sum(mu * lo * hi))
    mat[0, idx] -= mu * (lo + hi) / 2
    mat[idx, 0] -= mu * (lo + hi) / 2
    mat[idx, idx] += mu
    trace = 1.0 + float(np.sum(np.maximum(lo * lo, hi * hi)))
    mids, rads = [(lo + hi) / 2], [((hi - lo) / 2) ** 2]
    start = 1 + n0
    for (a, b, l, u), lay in zip(blocks, layers):
        n = a.shape[0]
        y = {f: np.asarray(lay[f], dtype=np.float64) for f in _FIELDS}
        for f in _FIELDS:
            if y[f].shape != (n,) or not np.all(np.isfinite(y[f])):
                raise ValueError(f"{f} must have {n} finite entries")
            if f != "nu" and np.any(y[f] < 0):
                raise ValueError(f"negative multiplier in {f}")
        z = np.arange(start, start + n)
        prev = np.arange(1, start)
        lx, ux = np.maximum(l, 0), np.maximum(u, 0)
        s = ux / (u - l)
        r = -s * l
        trace += float(np.sum(ux * ux))
        mids.append((lx + ux) / 2)
        rads.append(((ux - lx) / 2) ** 2)
        # z >= 0 ; z - h >= 0 ; z^2 - z h = 0 ; (lx+ux) z - lx ux - z^2 >= 0 ; r + s h - z >= 0
        mat[0, 0] += float(y["lam_lin"] @ b + y["lam_box"] @ (lx * ux) - y["lam_tri"] @ (r + s * b))
        gz = -y["lam_pos"] - y["lam_lin"] + y["nu"] * b - y["lam_box"] * (lx + ux) + y["lam_tri"]
        gp = a.T @ y["lam_lin"] - a.T @ (y["lam_tri"] * s)
        mat[0, z] += gz / 2
        mat[z, 0] += gz / 2
        mat[0, prev] += gp / 2
        mat[prev, 0] += gp / 2
        mat[z, z] += y["lam_box"] - y["nu"]
        cross = 0.5 * y["nu"][:, None] * a
        mat[np.ix_(z, prev)] += cross
        mat[np.ix_(prev, z)] += cross.T
        start += n
    return mat, trace * (1.0 + 1e-12) + 1e-12, np.concatenate(mids), np.concatenate(rads)


def _shift_bound(mat: np.ndarray, t: float, trace: float) -> tuple[float, float]:
    """(t + trace * min(0, lambda_min), lambda_min lowered by a rounding margin)."""
    lam = float(np.linalg.eigvalsh(mat)[0])
    lam -= 8.0 * (mat.shape[0] + 1) * _EPS * float(np.linalg.norm(mat))
    return t + trace * min(0.0, lam), lam


def check_sdp_certificate(cert: Mapping[str, Any], weights: Sequence[np.ndarray], biases: Sequence[np.ndarray],
                          lower: np.ndarray, upper: np.ndarray, c: np.ndarray) -> tuple[bool, str]:
    """Accept (True, reason) only if the certificate proves ``c^T f(x) >= cert['bound']``
    for every x in ``[lower, upper]``. Never raises on malformed input: it rejects."""
    if not isinstance(cert, Mapping):
        return False, "not a certificate (a JSON object expected)"
    try:
        if cert.get("kind") != "sdp-relu-mlp" or cert.get("version") != 1:
            return False, f"not an sdp-relu-mlp version 1 certificate ({cert.get('kind')!r})"
        ws = [np.asarray(w, dtype=np.float64) for w in weights]
        bs = [np.asarray(b, dtype=np.float64).reshape(-1) for b in biases]
        lo = np.asarray(lower, dtype=np.float64).reshape(-1)
        hi = np.asarray(upper, dtype=np.float64).reshape(-1)
        c = np.asarray(c, dtype=np.float64).reshape(-1)
        if np.any(lo > hi) or lo.shape != (ws[0].shape[1],):
            return False, "bad input box"
        if not np.array_equal(np.asarray(cert["c"], dtype=np.float64), c):
            return False, "the certificate is for another specification row"
        claim = float(cert["bound"])
        if not math.isfinite(claim):
            return False, "claimed bound is not finite"
        pre_l = [np.asarray(a, dtype=np.float64) for a in cert["pre_lower"]]
        pre_u = [np.asarray(a, dtype=np.float64) for a in cert["pre_upper"]]
        own = _own_bounds(ws, bs, lo, hi)
        if len(pre_l) != len(own) or len(pre_u) != len(own):
            return False, "pre-activation bounds have the wrong number of layers"
        for k, ((ol, ou), cl, cu) in enumerate(zip(own, pre_l, pre_u)):
            if cl.shape != ol.shape or cu.shape != ou.shape:
                return False, f"layer {k}: pre-activation bounds have the wrong shape"
            if not (np.all(cl <= ol) and np.all(cu >= ou)):
                return False, f"layer {k}: pre-activation bounds are not implied by CROWN"
        mat, trace, mid, rad2 = _dual_matrix(ws, bs, c, lo, hi, pre_l, pre_u, cert["multipliers"])
        if not np.all(np.isfinite(mat)):
            return False, "dual matrix is not finite"
        t = float(cert["multipliers"]["t"])
        bound, lam = _shift_bound(mat, t, trace)
        # centred coordinates: K^T M K with K = [[1, 0], [mid, I]]
        cen = mat.copy()
        rm = mat[1:, 1:] @ mid
        cen[1:, 0] = mat[1:, 0] + rm
        cen[0, 1:] = cen[1:, 0]
        cen[0, 0] = mat[0, 0] + 2.0 * float(mid @ mat[1:, 0]) + float(mid @ rm)
        ctrace = (1.0 + float(np.sum(rad2))) * (1.0 + 1e-12) + 1e-12
        if np.all(np.isfinite(cen)):
            cbound, clam = _shift_bound(cen, t, ctrace)
            if cbound > bound:
                bound, lam, trace = cbound, clam, ctrace
        if not bound >= claim:
            return False, f"claimed bound {claim} exceeds the certified {bound} (lambda_min {lam:.3g})"
        return True, f"ok: dual bound {bound} >= claim (lambda_min {lam:.3g}, trace bound {trace:.4g})"
    # OverflowError: a JSON int past float64, or an infinite index
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, np.linalg.LinAlgError) as exc:
        return False, f"malformed certificate: {exc!r}"


def check_sdp_certificates(cert: Mapping[str, Any], weights, biases, lower, upper, C) -> tuple[bool, str]:
    """Check every row of a ``certify_sdp`` certificate (kind ``sdp-relu-mlp-rows``)."""
    if not isinstance(cert, Mapping) or cert.get("kind") != "sdp-relu-mlp-rows":
        return False, "not an sdp-relu-mlp-rows certificate"
    C = np.atleast_2d(np.asarray(C, dtype=np.float64))
    rows = cert.get("rows", [])
    if not isinstance(rows, list):
        return False, "rows must be a list of certificates"
    if len(rows) != C.shape[0]:
        return False, f"{len(rows)} rows certified, {C.shape[0]} in C"
    for s, (row, c) in enumerate(zip(rows, C)):
        ok, why = check_sdp_certificate(row, weights, biases, lower, upper, c)
        if not ok:
            return False, f"row {s}: {why}"
    return True, f"ok: {len(rows)} rows"
