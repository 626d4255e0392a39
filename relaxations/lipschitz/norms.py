"""Certified operator norms and the naive (product of norms) Lipschitz bound.

Power iteration only *estimates* a spectral norm from below; a bound that users
trust must come from above. So the estimate is inflated and then confirmed by a
Cholesky factorisation of ``s^2 I - G`` (G the smaller Gram matrix) in float64, with
a margin that covers the rounding of G and of the factorisation itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from relaxations.lipschitz.network import FeedForward, activation_lipschitz

__all__ = [
    "NaiveBound",
    "gram_margin",
    "is_spectral_upper_bound",
    "certified_spectral_norm",
    "inf_operator_norm_upper",
    "naive_bound",
    "round_up_product",
]

_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class NaiveBound:
    """Product of per-layer norm bounds times the activation constant per hidden layer."""

    value: float
    layer_norms: tuple[float, ...]
    activation_lipschitz: float
    norm: str


def _small_gram(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w, dtype=np.float64)
    return w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w


def gram_margin(w: np.ndarray) -> float:
    """Slack that covers float64 rounding in forming G = W W^T and in Cholesky.

    |fl(G) - G| <= gamma_n |W||W|^T entrywise and || |W||W|^T ||_2 <= ||W||_F^2;
    Cholesky's backward error is of the same order. 64 n eps ||W||_F^2 covers both
    with room to spare."""
    w = np.asarray(w, dtype=np.float64)
    n = max(w.shape)
    return 64.0 * (n + 2) * _EPS * float(np.sum(w * w)) + 1e-300


def is_spectral_upper_bound(w: np.ndarray, s: float) -> bool:
    """True when ``s >= ||W||_2`` is proved by Cholesky of ``s^2 I - G - margin I``."""
    if not (s > 0.0 and math.isfinite(s)):
        return False
    g = _small_gram(w)
    m = s * s * np.eye(g.shape[0]) - g - gram_margin(w) * np.eye(g.shape[0])
    try:
        np.linalg.cholesky(m)
    except np.linalg.LinAlgError:
        return False
    return True


def certified_spectral_norm(w: np.ndarray, iters: int = 200, seed: int = 0) -> float:
    """An upper bound on ||W||_2, confirmed by Cholesky (see module docstring)."""
    w = np.asarray(w, dtype=np.float64)
    if not np.any(w):
        return 0.0
    g = _small_gram(w)
    v = np.random.default_rng(seed).standard_normal(g.shape[0])
    est = 0.0
    for _ in range(iters):
        gv = g @ v
        nv = float(np.linalg.norm(gv))
        if nv == 0.0:
            break
        est_new = float(v @ gv) / float(v @ v)
        v = gv / nv
        if abs(est_new - est) <= 1e-13 * est_new:
            est = est_new
            break
        est = est_new
    s = math.sqrt(max(est, 0.0)) if est > 0 else math.sqrt(float(np.sum(w * w)))
    margin = 1e-9
    while not is_spectral_upper_bound(w, s * (1.0 + margin)):
        margin *= 4.0
        if margin > 1e6:  # cannot happen for finite W; Frobenius is always an upper bound
            return float(np.nextafter(math.sqrt(float(np.sum(w * w))) * (1 + 1e-12), np.inf))
    return s * (1.0 + margin)


def inf_operator_norm_upper(w: np.ndarray) -> float:
    """Max absolute row sum, rounded upward to cover summation error."""
    w = np.asarray(w, dtype=np.float64)
    r = float(np.max(np.sum(np.abs(w), axis=1)))
    return r * (1.0 + (w.shape[1] + 2) * _EPS)


def round_up_product(values: list[float] | tuple[float, ...]) -> float:
    """A float >= the exact product of non-negative floats (one ulp per factor)."""
    p = 1.0
    for v in values:
        p = p * v
    return float(p * (1.0 + 2.0 * (len(values) + 1) * _EPS))


def naive_bound(net: FeedForward, norm: str = "2") -> NaiveBound:
    """Certified product of layer norms: prod_k ||W_k|| * Lip(phi)^(L-1)."""
    if norm == "2":
        norms = tuple(certified_spectral_norm(w) for w in net.weights)
    elif norm == "inf":
        norms = tuple(inf_operator_norm_upper(w) for w in net.weights)
    else:
        raise ValueError(f"norm must be '2' or 'inf', got {norm!r}")
    act = activation_lipschitz(net.activation, net.negative_slope)
    value = round_up_product(list(norms) + [act] * (net.depth - 1))
    return NaiveBound(value=value, layer_norms=norms, activation_lipschitz=act, norm=norm)
