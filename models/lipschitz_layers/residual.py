"""1-Lipschitz residual layers ``f(x) = x - 2 W T^-1 relu(W^T x + b)``.

Both layers here share the form of SLL ("A Unified Algebraic Perspective on Lipschitz
Neural Networks", Araujo et al., 2023) and differ only in how the positive diagonal
``T`` is chosen. The shared reason they are 1-Lipschitz: for increments
``dz = W^T dx`` and ``dw`` of the ReLU, slope restriction weighted by ``T^-1`` gives
``u^T dz >= u^T T u`` with ``u = T^-1 dw``, so

    |df|^2 = |dx|^2 - 4 u^T W^T dx + 4 u^T W^T W u <= |dx|^2 - 4 u^T (T - W^T W) u,

which is at most ``|dx|^2`` whenever ``T >= W^T W`` (PSD order). Each layer therefore
only has to produce a diagonal ``T`` that dominates the Gram matrix, for every value
of its parameters. (A residual ReLU layer with an *untied* output matrix cannot be
1-Lipschitz in general: with a single active neuron the Jacobian ``I + v u^T`` has norm
at most 1 only if ``v`` is a nonpositive multiple of ``u``; so tying is not a loss.)

In LipSDP terms the multiplier is ``Lam = 2 T^-1``. At ``L = 1`` the matrix of
`models.lipschitz_layers.certify` is ``diag(0, 4 T^-1 (T - W^T W) T^-1)``; with
``L = 1 + delta`` and ``Lam (1 + delta)`` the lower block is at least
``4 delta T^-1`` and the Schur complement is at least
``(2 delta + delta^2) - delta |T^-1/2 W^T W T^-1/2| >= delta``: the float64 margin.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.lipschitz_layers.base import LipschitzModule, LipschitzSequential, OrthogonalLinear
from models.lipschitz_layers.certify import PlainResidual, ReluCertificate

__all__ = ["SLLLayer", "GershgorinResidual", "SLLNet"]

_T_FLOOR = 1e-30  # raising T keeps T >= W^T W; only guards 0/0 for an all-zero column


class _TiedResidual(LipschitzModule):
    """Shared code: parameters ``W`` (features x hidden) and ``b``; subclasses give T."""

    def __init__(self, features: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or features
        self.in_features = self.out_features = features
        self.hidden = hidden
        w = torch.empty(features, hidden)
        nn.init.xavier_normal_(w)
        self.weight = nn.Parameter(w)
        bound = 1.0 / math.sqrt(features)
        self.b = nn.Parameter(torch.empty(hidden).uniform_(-bound, bound))

    def diagonal_t(self, dtype: torch.dtype | None = None) -> Tensor:
        """The diagonal of ``T`` (a vector, ``T >= W^T W``), in ``dtype`` if given."""
        raise NotImplementedError

    def _weight(self, dtype: torch.dtype | None) -> Tensor:
        return self.weight if dtype is None else self.weight.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        t = self.diagonal_t()
        return x - 2.0 * (torch.relu(x @ w + self.b) / t) @ w.T

    def _l2_bound(self) -> float:
        return 1.0

    def _plain_layers(self, dtype: torch.dtype) -> list[nn.Module]:
        w = self._weight(torch.float64).detach()
        t = self.diagonal_t(torch.float64).detach()
        first = nn.Linear(self.in_features, self.hidden)
        first.weight.data = w.T.contiguous().to(dtype)
        first.bias.data = self.b.detach().to(dtype).clone()
        second = nn.Linear(self.hidden, self.out_features, bias=False)
        second.weight.data = (-2.0 * w / t[None, :]).to(dtype)
        return [PlainResidual(nn.Sequential(first, nn.ReLU(), second))]

    def relu_certificates(self) -> list[ReluCertificate]:
        with torch.no_grad():
            t = self.diagonal_t(torch.float64)
        return [ReluCertificate(multiplier=2.0 / t, bound=1.0)]


class SLLLayer(_TiedResidual):
    """SLL (dense): ``T_ii = sum_j |W^T W|_ij q_j / q_i`` with ``q = exp(log_q) > 0``.

    Why ``T >= W^T W``: ``T - W^T W`` has diagonal ``sum_{j != i} |G_ij| q_j / q_i``
    (``G = W^T W``) and is therefore diagonally dominant after the similarity
    ``Q^-1 (.) Q``; Gershgorin puts all its eigenvalues at ``>= 0``. For a symmetric
    matrix, ``Q^-1 S Q`` has the eigenvalues of ``S``, so ``T - G`` is PSD.
    """

    def __init__(self, features: int, hidden: int | None = None) -> None:
        super().__init__(features, hidden)
        self.log_q = nn.Parameter(torch.zeros(self.hidden))

    def diagonal_t(self, dtype: torch.dtype | None = None) -> Tensor:
        w = self._weight(dtype)
        log_q = self.log_q if dtype is None else self.log_q.to(dtype)
        gram = (w.T @ w).abs()
        ratio = torch.exp(log_q[None, :] - log_q[:, None])  # q_j / q_i
        return (gram * ratio).sum(1).clamp_min(_T_FLOOR)


class GershgorinResidual(_TiedResidual):
    """A residual layer whose ``T`` comes from a Gershgorin bound on the *feature-side* Gram.

    Free parameters: ``W``, a positive diagonal ``tau = exp(log_tau)`` (hidden side) and
    positive weights ``d = exp(log_d)`` (feature side). With
    ``P = W diag(tau)^-1 W^T`` (features x features) and
    ``r = max_i sum_j |P_ij| d_j / d_i``, take ``T = r diag(tau)``.

    Exact condition: ``r I - P`` is diagonally dominant with a nonnegative diagonal after
    the similarity ``D^-1 (.) D``, so by Gershgorin ``P <= r I``. Hence
    ``|W diag(tau)^-1/2|_2^2 <= r``, i.e. ``diag(tau)^-1/2 W^T W diag(tau)^-1/2 <= r I``,
    i.e. ``W^T W <= r diag(tau) = T`` (a congruence), which is what the residual form
    needs. Unlike SLL, the relative sizes of ``T``'s entries are free (``tau``) and the
    Gershgorin test runs on the ``features x features`` matrix (cheaper when the hidden
    layer is wider); the price is one global scalar ``r``.
    """

    def __init__(self, features: int, hidden: int | None = None) -> None:
        super().__init__(features, hidden)
        self.log_tau = nn.Parameter(torch.zeros(self.hidden))
        self.log_d = nn.Parameter(torch.zeros(features))

    def diagonal_t(self, dtype: torch.dtype | None = None) -> Tensor:
        w = self._weight(dtype)
        log_tau = self.log_tau if dtype is None else self.log_tau.to(dtype)
        log_d = self.log_d if dtype is None else self.log_d.to(dtype)
        tau = torch.exp(log_tau)
        p = (w / tau[None, :]) @ w.T
        ratio = torch.exp(log_d[None, :] - log_d[:, None])  # d_j / d_i
        r = (p.abs() * ratio).sum(1).max()
        return (r * tau).clamp_min(_T_FLOOR)


class SLLNet(LipschitzSequential):
    """``linear(in -> width) -> depth residual layers -> linear(width -> out) * gamma``.

    The end layers are semi-orthogonal (Cayley) and each residual layer is 1-Lipschitz,
    so ``lipschitz_bound()`` is ``gamma`` (l2). ``layer`` picks ``"sll"`` or
    ``"gershgorin"``.
    """

    def __init__(self, in_features: int, width: int, depth: int, out_features: int,
                 gamma: float = 1.0, hidden: int | None = None, layer: str = "sll") -> None:
        kinds = {"sll": SLLLayer, "gershgorin": GershgorinResidual}
        if layer not in kinds:
            raise ValueError(f"unknown residual layer {layer!r}: use one of {sorted(kinds)}")
        layers: list[LipschitzModule] = [OrthogonalLinear(in_features, width)]
        layers += [kinds[layer](width, hidden) for _ in range(depth)]
        layers.append(OrthogonalLinear(width, out_features, scale=gamma))
        super().__init__(layers)
        self.gamma = float(gamma)
