"""Feed-forward networks given as weight lists, the input of the Lipschitz methods.

The Lipschitz relaxations only need the weights and the kind of activation, so they
work on this small value type rather than on the ONNX graph; the graph is lowered to
it elsewhere. Everything is float64 because the certificates are checked in float64.

    y = W_L phi(... phi(W_1 x + b_1) ...) + b_L

Biases never change a global Lipschitz constant; they are kept so that the forward
pass (used by the soundness tests) is the network's own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "FeedForward",
    "SlopeBounds",
    "slope_bounds",
    "activation_lipschitz",
    "network_sha256",
    "load_lipsdp_mat",
    "load_maxmin_mat",
]

ACTIVATIONS: tuple[str, ...] = ("relu", "leaky_relu", "sigmoid", "tanh", "maxmin")


@dataclass(frozen=True)
class SlopeBounds:
    """An elementwise activation phi is slope-restricted on [a, b]:
    a <= (phi(u) - phi(u')) / (u - u') <= b for all u != u'."""

    a: float
    b: float


@dataclass(frozen=True, eq=False)
class FeedForward:
    """A fully connected network ``y = W_L phi(... phi(W_1 x + b_1)) + b_L``.

    ``weights[k]`` has shape (n_{k+1}, n_k); ``biases[k]`` has shape (n_{k+1},).
    ``negative_slope`` is only read for ``leaky_relu``. For ``maxmin`` every hidden
    width must be even: neurons (2i, 2i+1) become (max, min) of the pair.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    activation: str
    negative_slope: float = 0.01

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected one of {ACTIVATIONS}")
        ws = tuple(np.array(w, dtype=np.float64, copy=True) for w in self.weights)
        if not ws:
            raise ValueError("a network needs at least one weight matrix")
        bs_in = self.biases if self.biases else tuple(np.zeros(w.shape[0]) for w in ws)
        bs = tuple(np.array(b, dtype=np.float64, copy=True).reshape(-1) for b in bs_in)
        if len(bs) != len(ws):
            raise ValueError(f"{len(ws)} weight matrices but {len(bs)} bias vectors")
        for k, (w, b) in enumerate(zip(ws, bs)):
            if w.ndim != 2:
                raise ValueError(f"weights[{k}] must be 2-D, got shape {w.shape}")
            if b.shape != (w.shape[0],):
                raise ValueError(f"biases[{k}] has shape {b.shape}, expected ({w.shape[0]},)")
            if k > 0 and ws[k - 1].shape[0] != w.shape[1]:
                raise ValueError(
                    f"weights[{k}] expects {w.shape[1]} inputs but layer {k - 1} has {ws[k - 1].shape[0]} outputs"
                )
            if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
                raise ValueError(f"layer {k} has non-finite parameters")
        if self.activation == "maxmin":
            for k, w in enumerate(ws[:-1]):
                if w.shape[0] % 2:
                    raise ValueError(f"maxmin needs even hidden widths; layer {k} has {w.shape[0]}")
        for a in ws + bs:
            a.setflags(write=False)
        object.__setattr__(self, "weights", ws)
        object.__setattr__(self, "biases", bs)
        object.__setattr__(self, "negative_slope", float(self.negative_slope))

    @property
    def depth(self) -> int:
        """Number of affine layers (hidden layers + 1)."""
        return len(self.weights)

    @property
    def widths(self) -> tuple[int, ...]:
        """(n_0, n_1, ..., n_L): input, hidden and output sizes."""
        return (self.weights[0].shape[1],) + tuple(w.shape[0] for w in self.weights)

    @property
    def hidden_widths(self) -> tuple[int, ...]:
        return tuple(w.shape[0] for w in self.weights[:-1])

    def activate(self, u: np.ndarray) -> np.ndarray:
        """The activation applied to a (..., n) array of pre-activations."""
        act = self.activation
        if act == "relu":
            return np.maximum(u, 0.0)
        if act == "leaky_relu":
            return np.where(u >= 0.0, u, self.negative_slope * u)
        if act == "sigmoid":
            return 0.5 * (1.0 + np.tanh(0.5 * u))
        if act == "tanh":
            return np.tanh(u)
        pairs = u.reshape(u.shape[:-1] + (-1, 2))
        out = np.stack([pairs.max(axis=-1), pairs.min(axis=-1)], axis=-1)
        return out.reshape(u.shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Reference forward pass in float64 on a (..., n_0) array."""
        z = np.asarray(x, dtype=np.float64)
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            z = self.activate(z @ w.T + b)
        return z @ self.weights[-1].T + self.biases[-1]


def slope_bounds(activation: str, negative_slope: float = 0.01) -> SlopeBounds:
    """Slope restriction [a, b] of an elementwise activation (LipSDP's assumption).

    maxmin is not elementwise and has no slope restriction; it gets its own
    quadratic constraints (see ``relaxations.lipschitz.lmi``).
    """
    if activation in ("relu", "tanh"):
        return SlopeBounds(0.0, 1.0)
    if activation == "sigmoid":
        return SlopeBounds(0.0, 0.25)
    if activation == "leaky_relu":
        s = float(negative_slope)
        return SlopeBounds(min(s, 1.0), max(s, 1.0))
    raise ValueError(f"activation {activation!r} is not slope-restricted")


def activation_lipschitz(activation: str, negative_slope: float = 0.01) -> float:
    """Lipschitz constant of the activation map in l2 and in l-inf.

    For an elementwise map it is max(|a|, |b|); MaxMin is 1-Lipschitz in both norms
    (it permutes each pair, and max/min are 1-Lipschitz in l-inf)."""
    if activation == "maxmin":
        return 1.0
    sb = slope_bounds(activation, negative_slope)
    return max(abs(sb.a), abs(sb.b))


def network_sha256(weights: Sequence[np.ndarray]) -> str:
    """SHA-256 over the float64 little-endian weights, each prefixed by its shape.

    Only weights: biases do not affect a Lipschitz constant. The checker computes
    the same digest on its own (it is a short, documented recipe)."""
    h = hashlib.sha256()
    for w in weights:
        a = np.ascontiguousarray(np.asarray(w, dtype="<f8"))
        h.update(repr(tuple(int(s) for s in a.shape)).encode("ascii"))
        h.update(a.tobytes())
    return h.hexdigest()


def _mat_cells(path: Path, key: str) -> list[np.ndarray]:
    from scipy.io import loadmat  # scipy is slow to import; only loaders need it

    data = loadmat(str(path))
    if key not in data:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise ValueError(f"{path}: no variable {key!r} (found {keys})")
    cell = data[key]
    return [np.asarray(c, dtype=np.float64) for c in cell.reshape(-1)]


def load_lipsdp_mat(path: str | Path, activation: str = "relu") -> FeedForward:
    """Load LipSDP's ``weights`` cell array (.mat); those files carry no biases."""
    ws = _mat_cells(Path(path), "weights")
    return FeedForward(tuple(ws), tuple(np.zeros(w.shape[0]) for w in ws), activation)


def load_maxmin_mat(path: str | Path) -> FeedForward:
    """Load a plain (non-residual) MaxMin network of Pauli et al. (``W`` cell array).

    The ``resweights_*`` files describe residual networks, which ``FeedForward``
    cannot express; they are refused rather than silently misread."""
    p = Path(path)
    if p.name.startswith("res"):
        raise ValueError(f"{p.name}: residual MaxMin networks are not supported by FeedForward")
    ws = _mat_cells(p, "W")
    return FeedForward(tuple(ws), tuple(np.zeros(w.shape[0]) for w in ws), "maxmin")
