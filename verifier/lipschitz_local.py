"""Local Lipschitz bounds over an l-inf box, tightened by branch and bound, with certificates.

``local_lipschitz(net, center, radius, norm)`` bounds, for each output row c (default:
every output), ``max over x in the box of ||grad (c^T f)(x)||_q`` with q the dual of the
input norm (``norm="inf"``: q = 1; ``norm="2"``: q = 2). By Lebourg's mean value theorem
that is a Lipschitz constant of ``c^T f`` on the box. With the default rows (every
output), the largest row value ``value`` is a constant of f from the input norm to
l-inf on the output: l-inf -> l-inf for ``norm="inf"``, but l2 -> l-inf (NOT l2 -> l2)
for ``norm="2"``; ``sqrt(sum of per_row^2)`` would bound l2 -> l2. Reports must say
which (``verifier.cli.lipschitz.norm_pair``). The maths is in
``relaxations.lipschitz.local``.

Branch and bound splits one unstable forward neuron into ``z <= 0`` (d = 0) and
``z >= 0`` (d = 1); the two closed halves cover the box and, almost everywhere, the
gradient uses the matching d, so the largest leaf bound is sound. Each child's bound
is capped by its parent's (both are sound for the child), so BaB never loosens.

The result is also capped by the naive bound of the row,
``||c W_L||_q * prod_k ||W_k|| * Lip(phi)^H``, so a local bound is never above the
global naive one. The certificate lists the BaB leaves; the float64 checker
(``verifier.checker.lipschitz_local``) rebuilds every bound from the weights.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from models import UnsupportedModel
from relaxations.lipschitz.local import LocalNet, derivative_ranges, forward_bounds, gradient_bound
from relaxations.lipschitz.network import FeedForward, activation_lipschitz, network_sha256
from relaxations.lipschitz.norms import naive_bound, round_up_product
from relaxations.sdp.network import NotReluMlp, relu_mlp_from_graph
from verifier.config_checks import Bool, Int, Real, check_settings, options_or_default, setting

__all__ = ["LocalLipschitzResult", "LocalSearch", "local_lipschitz", "as_feedforward", "CLAIM_REL", "naive_row_bounds"]

# A claim is the computed bound times (1 + CLAIM_REL): room for the checker's own rounding.
CLAIM_REL = 1e-7
_EPS = float(np.finfo(np.float64).eps)

Split = tuple[int, int, int]  # (hidden layer, neuron, sign: +1 z >= 0, -1 z <= 0)


@dataclass(frozen=True)
class LocalSearch:
    """How far the branch and bound behind a local bound may go, and how it bounds each
    domain: one value, so a caller (the CLI, a benchmark) sets the search's budget in one
    place and the bound's call stays about the box. Checked here, by the config keys'
    checks (`verifier.config_checks`), so a bad budget fails before any bounding with the
    config's words.

    ``max_domains``: bound computations, the root included (0 or 1: the root only, no
    BaB). ``timeout``: seconds for the whole call (0: the root only; inf: no limit); a
    batch starts only when it fits in the time left. ``batch``: the most leaves split at
    once. ``linear=False``: interval arithmetic only (no linear bounds of the gradient).
    """

    max_domains: int = setting(200, Int(0))
    timeout: float = setting(60.0, Real(0, inf="no limit", unit="seconds"))
    batch: int = setting(8, Int(1))
    linear: bool = setting(True, Bool())

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(frozen=True)
class LocalLipschitzResult:
    """Certified per-row bounds ``per_row`` and their maximum ``value``."""

    value: float
    per_row: tuple[float, ...]
    root: tuple[float, ...]          # linear bound before BaB (before the naive cap)
    interval: tuple[float, ...]      # interval-arithmetic bound at the root
    naive_rows: tuple[float, ...]    # the global naive bound of each row
    norm: str
    radius: float
    domains: int                     # bound computations (tree nodes) made
    leaves: int
    exhausted: bool                  # BaB ran out of neurons to split on the worst leaf
    time_s: float
    certificate: Optional[dict[str, Any]] = field(default=None, repr=False)


def _dual_norm_up(v: np.ndarray, norm: str) -> float:
    """||v||_1 (norm "inf") or ||v||_2 (norm "2"), rounded upward."""
    n = v.size + 2
    if norm == "inf":
        return float(np.sum(np.abs(v))) * (1 + 2 * n * _EPS)
    return math.sqrt(float(np.sum(v * v)) * (1 + 2 * n * _EPS)) * (1 + 2 * _EPS)


def naive_row_bounds(net: FeedForward, C: np.ndarray, norm: str) -> tuple[list[float], list[float]]:
    """Per-row global bounds ``||c W_L||_q * prod_{k<L} ||W_k|| * Lip(phi)^H`` and the
    certified layer norms they use (l2: Cholesky-confirmed spectral norms)."""
    layer_norms = list(naive_bound(net, norm).layer_norms)
    act = activation_lipschitz(net.activation, net.negative_slope)
    rows = []
    for c in C:
        head = _dual_norm_up(c @ net.weights[-1], norm) * (1 + 4 * (C.shape[1] + 2) * _EPS)
        rows.append(round_up_product([head] + layer_norms[:-1] + [act] * (net.depth - 1)))
    return rows, layer_norms


def _check_inputs(net: FeedForward, center: Any, radius: float, norm: str, C: Optional[np.ndarray]
                  ) -> tuple[np.ndarray, float, np.ndarray]:
    if norm not in ("inf", "2"):
        raise ValueError(f"norm must be 'inf' or '2', got {norm!r}")
    n0, n_out = net.widths[0], net.widths[-1]
    x0 = np.asarray(center, dtype=np.float64)
    if x0.size != n0:
        raise ValueError(f"center has {x0.size} values (shape {x0.shape}); the network has {n0} inputs")
    x0 = x0.reshape(-1)
    if not np.all(np.isfinite(x0)):
        raise ValueError("center has non-finite values")
    r = float(radius)
    if not (math.isfinite(r) and r >= 0):
        raise ValueError(f"radius must be a finite number >= 0, got {radius!r}")
    rows = np.eye(n_out) if C is None else np.atleast_2d(np.asarray(C, dtype=np.float64))
    if rows.shape[1] != n_out or not np.all(np.isfinite(rows)):
        raise ValueError(f"output rows must be finite with {n_out} columns, got shape {rows.shape}")
    if net.depth < 2:
        raise ValueError("the network has no hidden layer; its gradient is constant (use method naive)")
    return x0, r, rows


@dataclass
class _Leaf:
    path: list[Split]
    best: np.ndarray                 # [S]: min of the own bounds along the path
    choice: Optional[tuple[int, int]]


def _evaluate(ln: LocalNet, lo: torch.Tensor, hi: torch.Tensor, paths: Sequence[list[Split]],
              C: torch.Tensor, norm: str, linear: bool) -> tuple[np.ndarray, np.ndarray, list]:
    """Own bounds [B, S] and interval bounds of each domain, plus the branching choice."""
    B = len(paths)
    splits = [torch.zeros(B, w.shape[0], dtype=torch.int8) for w in ln.weights[:-1]]
    for b, path in enumerate(paths):
        for k, i, s in path:
            splits[k][b, i] = s
    pre, empty = forward_bounds(ln, lo.expand(B, -1), hi.expand(B, -1), splits)
    d = derivative_ranges(ln, pre)
    nb = gradient_bound(ln, d, C, norm, linear=linear)
    S = C.shape[0]
    own = nb.value.reshape(B, S).clone()
    own[empty] = 0.0  # a domain that holds no input adds nothing to the maximum
    best_score = torch.full((B,), -1.0, dtype=torch.float64)
    best_at: list = [None] * B
    for k, (dl, du) in enumerate(d):
        ul, uu = nb.u[k + 1]
        umax = torch.maximum(ul.abs(), uu.abs()).reshape(B, S, -1).sum(1)
        score = (du - dl) * umax * ln.weights[k].abs().sum(1)
        score = torch.where(du > dl, score, torch.full_like(score, -1.0))
        val, idx = score.max(1)
        for b in range(B):
            if float(val[b]) > float(best_score[b]) and float(val[b]) >= 0:
                best_score[b] = val[b]
                best_at[b] = (k, int(idx[b]))
    choices = [None if bool(empty[b]) else best_at[b] for b in range(B)]
    return own.numpy(), nb.interval.reshape(B, S).numpy(), choices


def as_feedforward(model: Any) -> FeedForward:
    """A ``FeedForward`` as it is; a loaded model (`verifier.load_model`) or a `Graph` as the
    ReLU MLP it computes (convolutions, BatchNorm and average pooling become dense layers),
    or UnsupportedModel saying why it is not one."""
    if isinstance(model, FeedForward):
        return model
    try:
        weights, biases = relu_mlp_from_graph(getattr(model, "graph", model))
    except NotReluMlp as exc:
        raise UnsupportedModel(f"local Lipschitz bounds need a chain of affine layers and ReLUs (a ReLU MLP; "
                               f"convolutions become dense layers): {exc}") from None
    return FeedForward(tuple(weights), tuple(biases), "relu")


def local_lipschitz(net: Any, center: Any, radius: float, norm: str = "inf",
                    C: Optional[np.ndarray] = None, *, search: Optional[LocalSearch] = None,
                    certificate: bool = True) -> LocalLipschitzResult:
    """Certified local Lipschitz bounds of ``c^T f`` on ``{x : ||x - center||_inf <= radius}``.

    ``net``: a ``FeedForward``, a loaded model or a `Graph` of a ReLU MLP (`as_feedforward`).
    ``C``: output rows [S, n_out] (default identity). ``search``: the BaB's budget and
    bounding (None: ``LocalSearch()``, 200 domains in 60 s). ``certificate=False`` skips
    building the certificate. Raises ValueError on bad input (shape, radius, norm),
    UnsupportedModel on a model that is not a ReLU MLP.

        >>> import verifier
        >>> res = verifier.local_lipschitz(verifier.load_model("mlp.onnx"), x0, 0.01, norm="inf")
        >>> res.value, res.per_row     # l-inf -> l-inf (norm "2": l2 -> l-inf, per output)
    """
    t0 = time.perf_counter()
    net = as_feedforward(net)
    search = options_or_default("search", search, LocalSearch)
    max_domains, timeout, batch, linear = search.max_domains, search.timeout, search.batch, search.linear
    x0, r, rows = _check_inputs(net, center, radius, norm, C)
    if net.activation == "maxmin":
        raise ValueError("local bounds support elementwise activations only (not maxmin)")
    ln = LocalNet.of(net)
    lo = torch.tensor(x0 - r, dtype=torch.float64)[None]
    hi = torch.tensor(x0 + r, dtype=torch.float64)[None]
    lo = torch.minimum(lo, torch.tensor(x0)[None]).nextafter(torch.tensor(-math.inf, dtype=torch.float64))
    hi = torch.maximum(hi, torch.tensor(x0)[None]).nextafter(torch.tensor(math.inf, dtype=torch.float64))
    Ct = torch.tensor(rows, dtype=torch.float64)
    t_eval = time.perf_counter()
    own, interval, choices = _evaluate(ln, lo, hi, [[]], Ct, norm, linear)
    # Seconds per domain bounded (the slowest seen): a batch is only started when it fits
    # in the time left, so `timeout` holds to about one domain's cost, not one batch's.
    per_domain = time.perf_counter() - t_eval
    root = own[0].copy()
    leaves = [_Leaf([], own[0].copy(), choices[0])]
    domains, exhausted = 1, False
    while domains < max_domains and time.perf_counter() - t0 < timeout:
        worst = max(leaves, key=lambda lf: float(lf.best.max()))
        if worst.choice is None:
            exhausted = True
            break
        fit = (timeout - (time.perf_counter() - t0)) / (2.0 * max(per_domain, 1e-9))  # leaves that fit
        if fit < 1:
            break
        ranked = sorted((lf for lf in leaves if lf.choice is not None), key=lambda lf: -float(lf.best.max()))
        take = ranked[:max(1, min(batch, (max_domains - domains) // 2, int(min(fit, batch))))]
        paths = []
        for lf in take:
            k, i = lf.choice
            paths += [lf.path + [(k, i, -1)], lf.path + [(k, i, 1)]]
        t_eval = time.perf_counter()
        own_c, _, ch_c = _evaluate(ln, lo, hi, paths, Ct, norm, linear)
        per_domain = max(per_domain, (time.perf_counter() - t_eval) / len(paths))
        domains += len(paths)
        gone = {id(lf) for lf in take}
        new = [_Leaf(p, np.minimum(take[j // 2].best, own_c[j]), ch_c[j]) for j, p in enumerate(paths)]
        leaves = [lf for lf in leaves if id(lf) not in gone] + new
    bab = np.max(np.stack([lf.best for lf in leaves]), axis=0)
    naive_rows, layer_norms = naive_row_bounds(net, rows, norm)
    per_row = [float(min(b * (1 + CLAIM_REL) + 1e-300, nv)) for b, nv in zip(bab, naive_rows)]
    value = max(per_row)
    cert = None
    if certificate:
        cert = {
            "kind": "lipschitz-local", "version": 1, "norm": norm,
            "activation": net.activation, "negative_slope": net.negative_slope,
            "network_sha256": network_sha256(tuple(net.weights) + tuple(net.biases)),
            "center": x0.tolist(), "radius": r, "rows": rows.tolist(), "linear": bool(linear),
            "leaves": [[list(s) for s in lf.path] for lf in leaves],
            "layer_norms": layer_norms, "per_row": per_row, "L": value,
        }
    return LocalLipschitzResult(
        value=value, per_row=tuple(per_row), root=tuple(float(v) for v in root),
        interval=tuple(float(v) for v in interval[0]), naive_rows=tuple(naive_rows), norm=norm,
        radius=r, domains=domains, leaves=len(leaves), exhausted=exhausted,
        time_s=time.perf_counter() - t0, certificate=cert)
