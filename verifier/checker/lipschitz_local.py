"""Independent float64 checker for local Lipschitz certificates (``kind: lipschitz-local``).

numpy and the standard library only; nothing is shared with the engine. The claim is
"for each output row c, every gradient of c^T f at a point of the box
``[center - radius, center + radius]`` has dual norm <= per_row[c]". The checker:

1. checks that the certificate's leaves are the leaves of a full binary tree of ReLU
   sign splits (``z_i <= 0`` / ``z_i >= 0``: the two closed halves cover their parent);
2. at every tree node, bounds the pre-activations (interval arithmetic intersected with
   back-substitution through the chord / default-slope lines), reads off each neuron's
   derivative range ({slope}, {1} or [slope, 1]), and bounds the dual norm of
   ``g = c W_L D_H W_H ... D_1 W_1`` over those ranges: interval arithmetic, then
   linear upper bounds in which ``max_d a d u`` is replaced by the chord of
   ``max(dl u, du u)`` (or of the min, for a < 0) over u's interval;
3. takes, per row, ``max over leaves of min over the path's node bounds``, caps it
   with the naive bound ``||c W_L||_q prod ||W_k||`` (each layer norm re-proved), and
   accepts if that is at most the claimed value.

Every computed number is moved outward by ``REL * (sum of |terms|)``: float64 sums of
n < 10^6 terms err by far less. The box itself is rounded outward.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from verifier.checker.linear64 import dense_matrix
from verifier.checker.lipschitz import weights_sha256
from verifier.checker.onnx_net import LINEAR_KINDS, Unsupported, read_network

__all__ = ["check_local_lipschitz_certificate", "mlp_from_onnx"]

REL = 1e-9
_EPS = float(np.finfo(np.float64).eps)


def mlp_from_onnx(data: bytes) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(weights, biases) of an ONNX chain affine -> ReLU -> ... -> affine, read by the
    checker's own ONNX reader; consecutive linear nodes (dense, elementwise scale,
    convolution: each as its explicit matrix) are composed in float64."""
    net = read_network(data)
    ws: list[np.ndarray] = []
    bs: list[np.ndarray] = []
    W, b = np.eye(net.n_in), np.zeros(net.n_in)
    cur, pending = net.input, False
    for layer in net.layers:
        if layer.inputs != (cur,):
            raise Unsupported(f"node {layer.name or layer.out} does not continue a simple chain")
        if layer.kind in LINEAR_KINDS:
            M = dense_matrix(layer, W.shape[0])
            W, b, pending = M @ W, M @ b + layer.b, True
        elif layer.kind == "relu" and pending:
            ws.append(W)
            bs.append(b)
            W, b, pending = np.eye(W.shape[0]), np.zeros(W.shape[0]), False
        else:
            raise Unsupported(f"{layer.kind} node {layer.name or layer.out} in a local-Lipschitz chain")
        cur = layer.out
    if cur != net.output or not pending:
        raise Unsupported("the chain must end with an affine layer at the output")
    ws.append(W)
    bs.append(b)
    return ws, bs


def _lines(l: np.ndarray, u: np.ndarray, s: float):
    """Lower slope, upper slope, upper intercept of max(z, s z) on [l, u] (lower intercept 0)."""
    act, ina = l >= 0, u <= 0
    mid = ~(act | ina)
    w = np.where(mid, u - l, 1.0)
    chord = (u - s * l) / w
    up_s = np.where(act, 1.0, np.where(ina, s, chord))
    up_b = np.where(mid, s * l - chord * l, 0.0)
    lo_s = np.where(act, 1.0, np.where(ina, s, np.where(u >= -l, 1.0, s)))
    return lo_s, up_s, up_b


def _preacts(ws, bs, lo, hi, signs, s: float):
    """Pre-activation bounds of one domain; None if its splits make it empty."""
    out, lines, post = [], [], [(lo, hi)]
    cen_in, rad_in, mag_in = (lo + hi) / 2, (hi - lo) / 2, np.maximum(np.abs(lo), np.abs(hi))
    for k in range(len(ws) - 1):
        W, b = ws[k], bs[k]
        pl, pu = post[-1]
        pm = np.maximum(np.abs(pl), np.abs(pu))
        c, r = W @ ((pl + pu) / 2) + b, np.abs(W) @ ((pu - pl) / 2)
        m = REL * (np.abs(W) @ pm + np.abs(b)) + 1e-300
        l, u = c - r - m, c + r + m
        if k:
            n = W.shape[0]
            A = np.vstack([np.eye(n), -np.eye(n)])
            const, mass = np.zeros(2 * n), np.zeros(2 * n)
            for j in range(k, -1, -1):
                amag = np.maximum(np.abs(post[j][0]), np.abs(post[j][1]))
                const += A @ bs[j]
                mass += np.abs(A) @ np.abs(bs[j]) + np.abs(A) @ (np.abs(ws[j]) @ amag)
                A = A @ ws[j]
                if j == 0:
                    break
                lo_s, up_s, up_b = lines[j - 1]
                neg = np.minimum(A, 0.0)
                const += neg @ up_b
                mass += np.abs(neg) @ np.abs(up_b)
                A = np.maximum(A, 0.0) * lo_s + neg * up_s
            val = const + A @ cen_in - np.abs(A) @ rad_in
            mass += np.abs(A) @ mag_in + np.abs(const)
            lb = val - (REL * mass + 1e-300)
            l, u = np.maximum(l, lb[:n]), np.minimum(u, -lb[n:])
        sg = signs[k]
        l, u = np.where(sg > 0, np.maximum(l, 0.0), l), np.where(sg < 0, np.minimum(u, 0.0), u)
        if np.any(l > u):
            return None
        out.append((l, u))
        lines.append(_lines(l, u, s))
        post.append((np.where(l >= 0, l, s * l), np.where(u >= 0, u, s * u)))
    return out


def _chord_terms(dl, du, ul, uu, a):
    """Slope and intercept of the chord bounding max_d a*d*u from above, per neuron."""
    pos, neg = ul >= 0, uu <= 0
    mid = ~(pos | neg)
    w = np.where(mid, uu - ul, 1.0)
    hi_s = np.where(pos, du, np.where(neg, dl, (du * uu - dl * ul) / w))
    lo_s = np.where(pos, dl, np.where(neg, du, (dl * uu - du * ul) / w))
    hi_t = np.where(mid, ul * uu * (dl - du) / w, 0.0)
    lo_t = np.where(mid, ul * uu * (du - dl) / w, 0.0)
    return np.where(a >= 0, hi_s, lo_s), np.where(a >= 0, hi_t, lo_t)


def _linear_upper(ws, d, u, j, lam):
    """Upper bound of lam @ u_j for each row of lam [R, n_j] (u_H = u[-1][0] exact)."""
    H = len(ws) - 1
    const, mass = np.zeros(lam.shape[0]), np.zeros(lam.shape[0])
    for k in range(j + 1, H + 1):
        a = lam @ ws[k - 1].T
        dl, du = d[k - 1]
        ul, uu = u[k]
        vmag = np.maximum(np.abs(dl), np.abs(du)) * np.maximum(np.abs(ul), np.abs(uu))
        slope, icpt = _chord_terms(dl, du, ul, uu, a)
        const += np.sum(a * icpt, axis=1)
        mass += np.abs(a) @ vmag * 2 + np.sum(np.abs(a * icpt), axis=1)
        lam = a * slope
    top = u[H][0]
    val = const + lam @ top
    mass += np.abs(lam) @ np.abs(top) + np.abs(const)
    return val + REL * mass + 1e-300


def _node_bound(ws, d, c, norm: str, linear: bool) -> float:
    H = len(ws) - 1
    top = c @ ws[-1]
    u = [None] * (H + 1)
    u[H] = (top, top)
    for k in range(H, 0, -1):
        dl, du = d[k - 1]
        ul, uu = u[k]
        p = np.stack([dl * ul, dl * uu, du * ul, du * uu])
        vl, vh = p.min(0), p.max(0)
        W = ws[k - 1]
        cen, rad = ((vl + vh) / 2) @ W, ((vh - vl) / 2) @ np.abs(W)
        m = REL * (np.maximum(np.abs(vl), np.abs(vh)) @ np.abs(W)) + 1e-300
        u[k - 1] = (cen - rad - m, cen + rad + m)
    best = _box_norm(*u[0], norm)
    if not linear:
        return best
    for k in list(range(H - 1, 0, -1)) + [0]:
        ul, uu = u[k]
        if k:
            dl, du = d[k - 1]
            idx = np.nonzero((dl < du) & (ul < 0) & (uu > 0))[0]
        else:
            idx = np.arange(ul.size) if norm == "2" else np.nonzero((ul < 0) & (uu > 0))[0]
        if idx.size:
            lam = np.zeros((2 * idx.size, ul.size))
            lam[np.arange(idx.size), idx] = 1.0
            lam[idx.size + np.arange(idx.size), idx] = -1.0
            ub = _linear_upper(ws, d, u, k, lam)
            ul, uu = ul.copy(), uu.copy()
            uu[idx] = np.minimum(uu[idx], ub[:idx.size])
            ul[idx] = np.maximum(ul[idx], -ub[idx.size:])
            u[k] = (ul, uu)
    gl, gu = u[0]
    best = min(best, _box_norm(gl, gu, norm))
    mid = (gl < 0) & (gu > 0)
    w = np.where(mid, gu - gl, 1.0)
    if norm == "inf":
        s = np.where(gl >= 0, 1.0, np.where(gu <= 0, -1.0, (gu + gl) / w))
        t = np.where(mid, -2.0 * gu * gl / w, 0.0)
        val = _linear_upper(ws, d, u, 0, s[None])[0] + np.sum(t)
        lin = val + REL * 4 * np.sum(np.abs(t))
    else:
        sq = _linear_upper(ws, d, u, 0, (gl + gu)[None])[0] - np.sum(gl * gu)
        sq = sq + REL * 4 * np.sum(np.abs(gl * gu))
        lin = math.sqrt(max(sq, 0.0)) * (1 + 4 * _EPS)
    return min(best, float(lin))


def _box_norm(gl, gu, norm: str) -> float:
    m = np.maximum(np.abs(gl), np.abs(gu))
    n = m.size + 2
    if norm == "inf":
        return float(np.sum(m)) * (1 + 2 * n * _EPS)
    return math.sqrt(float(np.sum(m * m)) * (1 + 2 * n * _EPS)) * (1 + 4 * _EPS)


def _tree_ok(paths: list[list[tuple[int, int, int]]]) -> str:
    """'' if the paths are the leaves of a full binary split tree, else the reason.

    Top down with a stack of (paths under the node, the node's depth), not recursion:
    a certificate's paths may be deeper than Python's recursion limit."""
    stack = [(list(range(len(paths))), 0)]
    while stack:
        idx, depth = stack.pop()
        if len(idx) == 1 and len(paths[idx[0]]) == depth:
            continue
        if any(len(paths[j]) == depth for j in idx):
            return "a leaf is an ancestor of another leaf"
        first = {tuple(paths[j][depth][:2]) for j in idx}
        if len(first) != 1:
            return "sibling leaves do not share their split"
        if any(paths[j][depth][2] not in (-1, 1) for j in idx):
            return "a split sign is not -1 or +1"
        for sign in (-1, 1):
            part = [j for j in idx if paths[j][depth][2] == sign]
            if not part:
                return f"split {next(iter(first))} lacks its {sign:+d} side"
            stack.append((part, depth + 1))
    return ""


def _layer_norms_ok(ws, norms, norm: str) -> str:
    if len(norms) != len(ws):
        return "layer_norms has the wrong length"
    for k, (W, s) in enumerate(zip(ws, norms)):
        if norm == "2":
            G = W @ W.T if W.shape[0] <= W.shape[1] else W.T @ W
            margin = 64.0 * (max(W.shape) + 2) * _EPS * float(np.sum(W * W)) + 1e-300
            try:
                np.linalg.cholesky((s * s - margin) * np.eye(G.shape[0]) - G)
            except np.linalg.LinAlgError:
                return f"layer {k}: {s} is not a proven spectral-norm bound"
        elif not s >= float(np.max(np.sum(np.abs(W), axis=1))) * (1 + (W.shape[1] + 2) * _EPS):
            return f"layer {k}: {s} is below the max row sum"
    return ""


def check_local_lipschitz_certificate(cert: Mapping[str, Any], weights: Sequence[np.ndarray],
                                      biases: Sequence[np.ndarray]) -> tuple[bool, str]:
    """(True, reason) only if the certificate's per-row local bounds are proved; never raises."""
    if not isinstance(cert, Mapping):
        return False, "not a certificate (a JSON object expected)"
    try:
        ws = [np.asarray(w, dtype=np.float64) for w in weights]
        bs = [np.asarray(b, dtype=np.float64).reshape(-1) for b in biases]
        if cert.get("kind") != "lipschitz-local" or cert.get("version") != 1:
            return False, "not a version-1 lipschitz-local certificate"
        act = cert["activation"]
        if act not in ("relu", "leaky_relu"):
            return False, f"activation {act!r} is not supported by the checker"
        s = 0.0 if act == "relu" else float(cert["negative_slope"])
        if not 0.0 <= s <= 1.0:
            return False, "negative_slope must be in [0, 1]"
        if weights_sha256(ws + bs) != cert["network_sha256"]:
            return False, "network_sha256 does not match the weights and biases"
        norm = cert["norm"]
        if norm not in ("inf", "2"):
            return False, f"unknown norm {norm!r}"
        x0 = np.asarray(cert["center"], dtype=np.float64).reshape(-1)
        r = float(cert["radius"])
        if x0.size != ws[0].shape[1] or not np.all(np.isfinite(x0)) or not (math.isfinite(r) and r >= 0):
            return False, "center or radius is malformed"
        C = np.asarray(cert["rows"], dtype=np.float64)
        claims = [float(v) for v in cert["per_row"]]
        if C.ndim != 2 or C.shape[1] != ws[-1].shape[0] or len(claims) != C.shape[0]:
            return False, "rows / per_row have the wrong shape"
        if float(cert["L"]) != max(claims):
            return False, "L is not the largest per-row bound"
        why = _layer_norms_ok(ws, [float(v) for v in cert["layer_norms"]], norm)
        if why:
            return False, why
        paths = [[(int(a), int(i), int(sg)) for a, i, sg in leaf] for leaf in cert["leaves"]]
        for p in paths:
            for k, i, _ in p:
                if not (0 <= k < len(ws) - 1 and 0 <= i < ws[k].shape[0]):
                    return False, f"split ({k}, {i}) names no hidden neuron"
        why = _tree_ok(paths)
        if why:
            return False, f"the leaves do not cover the box: {why}"
        lo = np.nextafter(np.minimum(x0 - r, x0), -np.inf)
        hi = np.nextafter(np.maximum(x0 + r, x0), np.inf)
        linear = bool(cert.get("linear", True))
        nodes: dict[tuple, np.ndarray] = {}
        for p in paths:  # every node on every path, bounded once
            for depth in range(len(p) + 1):
                key = tuple(p[:depth])
                if key in nodes:
                    continue
                signs = [np.zeros(w.shape[0]) for w in ws[:-1]]
                for k, i, sg in key:
                    signs[k][i] = sg
                pre = _preacts(ws, bs, lo, hi, signs, s)
                if pre is None:
                    nodes[key] = np.zeros(C.shape[0])
                    continue
                d = [(np.where(l >= 0, 1.0, np.where(u <= 0, s, min(s, 1.0))),
                      np.where(l >= 0, 1.0, np.where(u <= 0, s, max(s, 1.0)))) for l, u in pre]
                nodes[key] = np.array([_node_bound(ws, d, c, norm, linear) for c in C])
        proved = np.zeros(C.shape[0])
        for p in paths:
            along = np.min(np.stack([nodes[tuple(p[:k])] for k in range(len(p) + 1)]), axis=0)
            proved = np.maximum(proved, along)
        act_lip = max(abs(s), 1.0)
        norms = [float(v) for v in cert["layer_norms"]]
        for j, c in enumerate(C):
            head = _box_norm(c @ ws[-1], c @ ws[-1], norm) * (1 + 4 * (C.shape[1] + 2) * _EPS)
            naive = head
            for f in norms[:-1] + [act_lip] * (len(ws) - 1):
                naive *= f
            naive *= 1 + 2 * (len(ws) * 2 + 2) * _EPS
            bound = min(float(proved[j]), naive)
            if not claims[j] >= bound:
                return False, f"row {j}: claimed {claims[j]} is below the proved bound {bound}"
        return True, f"ok: {len(paths)} leaves, {len(nodes)} nodes re-bounded in float64"
    # OverflowError: a JSON int past float64, or an infinite index
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, np.linalg.LinAlgError) as exc:
        return False, f"malformed certificate: {exc!r}"
