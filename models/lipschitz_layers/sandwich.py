"""Sandwich layers: "Direct Parameterization of Lipschitz-Bounded Deep Networks"
(Wang & Manchester, 2023).

A sandwich layer maps ``h`` (``p`` features) to ``q`` features by

    f(h) = s_out * sqrt(2) A^T Psi relu(s_in * sqrt(2) Psi^-1 B h + b),

with ``Psi = diag(exp(d))`` and ``[A^T; B^T] = Cayley([X; Y])`` (orthonormal columns,
so ``A A^T + B B^T = I``). Why it is 1-Lipschitz (for ``s_in = s_out = 1``): let
``u = Psi dw`` for the ReLU increments ``dw, dz``. Slope restriction weighted by
``Psi^2`` gives ``|u|^2 <= u^T Psi dz = sqrt(2) u^T B dh``. Then

    |dh|^2 >= |dh|^2 - |dh - sqrt(2) B^T u|^2 = 2 sqrt(2) u^T B dh - 2 |B^T u|^2
           >= 2 |u|^2 - 2 |B^T u|^2 = 2 u^T A A^T u = |df|^2.

Scaling the input by ``s_in`` and the output by ``s_out`` multiplies the bound by
``s_in * s_out``. In LipSDP terms the multiplier ``Lam = s_out^2 Psi^2`` makes the
matrix of `models.lipschitz_layers.certify` exactly PSD (and singular) at
``L = s_in s_out``; with ``L^2 = (1 + delta)^2`` and ``Lam (1 + delta)`` its lower
block becomes ``2 Psi (delta I + B B^T) Psi > 0`` and the Schur complement
``(1 + delta)^2 - (1 + delta)^2 B^T (delta I + B B^T)^-1 B`` is ``>= delta``-ish, which
is the margin the float64 check needs.

`SandwichNet` scales the input by ``sqrt(gamma)`` (folded into the first layer), runs
sandwich layers, and ends with a semi-orthogonal linear layer scaled by
``sqrt(gamma)``: a gamma-Lipschitz network for any parameter values.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from models.lipschitz_layers.base import LipschitzModule, LipschitzSequential, OrthogonalLinear, cayley
from models.lipschitz_layers.certify import ReluCertificate

__all__ = ["SandwichLayer", "SandwichNet"]


class SandwichLayer(LipschitzModule):
    """One 1-Lipschitz (l2) sandwich layer, times ``input_scale * output_scale``.

    Parameters: ``xy`` (``[X; Y]``, ``(q + p) x q``), its norm ``alpha`` (the paper's
    weight normalisation ``alpha [X; Y] / |[X; Y]|_F``, which helps training and does
    not touch the guarantee), ``d`` (``Psi = diag(exp(d))``) and the ReLU bias ``b``.
    """

    def __init__(self, in_features: int, out_features: int, input_scale: float = 1.0,
                 output_scale: float = 1.0) -> None:
        super().__init__()
        if input_scale <= 0 or output_scale <= 0:
            raise ValueError("scales must be positive")
        self.in_features, self.out_features = in_features, out_features
        self.input_scale, self.output_scale = float(input_scale), float(output_scale)
        xy = torch.empty(out_features + in_features, out_features)
        nn.init.xavier_normal_(xy)
        self.xy = nn.Parameter(xy)
        self.alpha = nn.Parameter(xy.norm().detach().clone())
        self.d = nn.Parameter(torch.zeros(out_features))
        bound = 1.0 / math.sqrt(in_features)
        self.b = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))

    def _weights(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(W1, W2, psi)`` with ``f(h) = W2 relu(W1 h + b)``; in ``dtype`` if given."""
        xy, alpha, d = self.xy, self.alpha, self.d
        if dtype is not None:
            xy, alpha, d = xy.to(dtype), alpha.to(dtype), d.to(dtype)
        q = self.out_features
        xy = alpha * xy / xy.norm()
        cols = cayley(xy[:q], xy[q:])
        a_t, b_t = cols[:q], cols[q:]  # A^T (q x q), B^T (p x q)
        psi = torch.exp(d)
        root2 = math.sqrt(2.0)
        w1 = (self.input_scale * root2) * (b_t.T / psi[:, None])
        w2 = (self.output_scale * root2) * (a_t * psi[None, :])
        return w1, w2, psi

    def forward(self, x: Tensor) -> Tensor:
        w1, w2, _ = self._weights()
        return torch.relu(x @ w1.T + self.b) @ w2.T

    def _l2_bound(self) -> float:
        return self.input_scale * self.output_scale

    def _plain_layers(self, dtype: torch.dtype) -> list[nn.Module]:
        w1, w2, _ = self._weights(torch.float64)
        first = nn.Linear(self.in_features, self.out_features)
        first.weight.data = w1.detach().to(dtype)
        first.bias.data = self.b.detach().to(dtype).clone()
        second = nn.Linear(self.out_features, self.out_features, bias=False)
        second.weight.data = w2.detach().to(dtype)
        return [first, nn.ReLU(), second]

    def relu_certificates(self) -> list[ReluCertificate]:
        with torch.no_grad():
            psi = torch.exp(self.d.detach().to(torch.float64))
        return [ReluCertificate(multiplier=self.output_scale ** 2 * psi ** 2, bound=self._l2_bound())]


class SandwichNet(LipschitzSequential):
    """``in -> sandwich(hidden[0]) -> ... -> sandwich(hidden[-1]) -> linear(out)``.

    ``lipschitz_bound()`` is ``gamma`` (l2), for every parameter value: the input is
    scaled by ``sqrt(gamma)``, each sandwich layer is 1-Lipschitz, and the output layer
    is ``sqrt(gamma)`` times a semi-orthogonal matrix.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int,
                 gamma: float = 1.0) -> None:
        if gamma <= 0:
            raise ValueError("gamma must be positive")
        root = math.sqrt(gamma)
        widths = [in_features, *hidden]
        layers: list[LipschitzModule] = [
            SandwichLayer(widths[i], widths[i + 1], input_scale=root if i == 0 else 1.0)
            for i in range(len(hidden))
        ]
        last_scale = root if hidden else gamma
        layers.append(OrthogonalLinear(widths[-1], out_features, scale=last_scale))
        super().__init__(layers)
        self.gamma = float(gamma)
