"""The shared face of Lipschitz-by-construction modules, and the Cayley transform.

Every module here computes its effective weights from unconstrained parameters, so a
plain optimiser can train it while the Lipschitz bound holds at every step. Each one
can also materialise those weights (in float64, then rounded to the export dtype) into
a plain ``nn.Sequential`` of ``Linear``/``ReLU``/``PlainResidual``: that is what gets
exported to ONNX and what `certified_lipschitz_bound` checks, so the number a user
trusts is about the very weights a verifier will read.
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
from torch import Tensor, nn

from models.lipschitz_layers.certify import (
    ReluCertificate,
    certified_spectral_norm,
    certify_plain,
    convert_l2_bound,
)

__all__ = ["LipschitzModule", "LipschitzSequential", "OrthogonalLinear", "cayley"]


def cayley(x: Tensor, y: Tensor) -> Tensor:
    """The Cayley transform of ``[X; Y]``: a ``(q + p) x q`` matrix with orthonormal columns.

    With ``Z = X - X^T + Y^T Y`` (``X`` is ``q x q``, ``Y`` is ``p x q``), return
    ``[(I + Z)^-1 (I - Z); -2 Y (I + Z)^-1]``. ``I + Z`` has symmetric part
    ``I + Y^T Y > 0``, so it is invertible, and expanding shows
    ``U^T U + V^T V = (I + Z)^-T (I + Z)^T (I + Z) (I + Z)^-1 = I``.
    """
    q = x.shape[0]
    eye = torch.eye(q, dtype=x.dtype, device=x.device)
    z = x - x.T + y.T @ y
    u = torch.linalg.solve(eye + z, eye - z)
    v = -2.0 * torch.linalg.solve((eye + z).T, y.T).T
    return torch.cat([u, v], 0)


class LipschitzModule(nn.Module):
    """Base class: a module with a Lipschitz bound that holds by construction.

    Subclasses implement `_l2_bound`, `_plain_layers` and `relu_certificates`.
    """

    in_features: int
    out_features: int

    def _l2_bound(self) -> float:
        raise NotImplementedError

    def _plain_layers(self, dtype: torch.dtype) -> list[nn.Module]:
        raise NotImplementedError

    def relu_certificates(self) -> list[ReluCertificate]:
        """Diagonal LipSDP multipliers (float64), one per ReLU block of `to_plain()`."""
        raise NotImplementedError

    def _param_dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.get_default_dtype()

    def lipschitz_bound(self, norm: str = "2") -> float:
        """The Lipschitz bound guaranteed by the parameterisation (exact arithmetic).

        ``norm="2"``: l2 -> l2. ``norm="inf"``: l-inf -> l-inf, ``sqrt(in_features)``
        times the l2 bound. See `certified_lipschitz_bound` for a float64 re-check.
        """
        return convert_l2_bound(self._l2_bound(), norm, self.in_features)

    @torch.no_grad()
    def to_plain(self, dtype: torch.dtype | None = None) -> nn.Sequential:
        """The same function as plain ``Linear``/``ReLU``/``PlainResidual`` modules.

        Effective weights are computed in float64 and rounded once to ``dtype``
        (default: the parameters' dtype).
        """
        dtype = dtype or self._param_dtype()
        return nn.Sequential(*self._plain_layers(dtype)).to(dtype)

    def certified_lipschitz_bound(self, norm: str = "2", dtype: torch.dtype | None = None) -> float:
        """The Lipschitz bound re-derived in float64 from the weights of ``to_plain(dtype)``.

        Independent of the parameterisation: see `models.lipschitz_layers.certify`.
        """
        plain = self.to_plain(dtype)
        l2 = certify_plain(plain, self.relu_certificates())
        return convert_l2_bound(l2, norm, self.in_features)

    def export_onnx(self, path: str, input_shape: Sequence[int], opset_version: int = 17,
                    dynamic_batch: bool = False) -> None:
        """Write `to_plain()` to ONNX (ops: Gemm/MatMul, Relu, Add) with the legacy exporter.

        The dynamo exporter needs ``onnxscript``; the TorchScript one does not, and its
        graph for Linear/ReLU/residuals is the simple one a verifier wants.
        """
        plain = self.to_plain().eval()
        dummy = torch.zeros(tuple(input_shape), dtype=self._param_dtype())
        axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(plain, (dummy,), path, input_names=["input"],
                              output_names=["output"], opset_version=opset_version,
                              dynamic_axes=axes, dynamo=False)


class LipschitzSequential(LipschitzModule):
    """A chain of Lipschitz modules; the bound of a composition is the product."""

    def __init__(self, layers: Sequence[LipschitzModule]) -> None:
        super().__init__()
        if not layers:
            raise ValueError("LipschitzSequential needs at least one layer")
        for a, b in zip(layers[:-1], layers[1:]):
            if a.out_features != b.in_features:
                raise ValueError(f"layer widths do not chain: {a.out_features} -> {b.in_features}")
        self.layers = nn.ModuleList(layers)
        self.in_features = layers[0].in_features
        self.out_features = layers[-1].out_features

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def _l2_bound(self) -> float:
        return math.prod(layer._l2_bound() for layer in self.layers)

    def _plain_layers(self, dtype: torch.dtype) -> list[nn.Module]:
        return [m for layer in self.layers for m in layer._plain_layers(dtype)]

    def relu_certificates(self) -> list[ReluCertificate]:
        return [c for layer in self.layers for c in layer.relu_certificates()]


class OrthogonalLinear(LipschitzModule):
    """``y = scale * Q x + bias`` with ``Q`` semi-orthogonal (Cayley), so ``|Q|_2 = 1``.

    Changes width between Lipschitz blocks and carries a network's overall scale.
    ``Q`` has orthonormal rows when ``out <= in`` and orthonormal columns otherwise.
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0,
                 bias: bool = True) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError("scale must be positive")
        self.in_features, self.out_features, self.scale = in_features, out_features, float(scale)
        q, p = min(in_features, out_features), max(in_features, out_features)
        xy = torch.empty(p, q)
        nn.init.orthogonal_(xy)
        self.xy = nn.Parameter(0.5 * xy)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def weight(self, dtype: torch.dtype | None = None) -> Tensor:
        xy = self.xy if dtype is None else self.xy.to(dtype)
        q = xy.shape[1]
        cols = cayley(xy[:q], xy[q:])  # max x min, orthonormal columns
        w = cols.T if self.out_features <= self.in_features else cols
        return self.scale * w

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight()
        y = x @ w.T
        return y if self.bias is None else y + self.bias

    def _l2_bound(self) -> float:
        return self.scale

    def _plain_layers(self, dtype: torch.dtype) -> list[nn.Module]:
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        lin.weight.data = self.weight(torch.float64).detach().to(dtype)
        if self.bias is not None:
            lin.bias.data = self.bias.detach().to(dtype).clone()
        return [lin]

    def relu_certificates(self) -> list[ReluCertificate]:
        return []

    def certified_weight_norm(self) -> float:
        """Float64 spectral norm of the materialised weight (should be ``scale``)."""
        return certified_spectral_norm(self.weight(torch.float64).detach())
