"""Float64 Lipschitz certificates for materialised (plain) networks.

The parameterisations in this package guarantee their Lipschitz bound by algebra, but
an algebraic guarantee is only as good as the floating-point numbers that realise it.
This module re-derives the bound from the *plain* weights alone (the ones that
`to_plain()` returns and `export_onnx()` writes), in float64, so a user can trust the
number without trusting the parameterisation.

A plain network is a sequence of three kinds of block:

- ``Linear`` on its own: its l2 Lipschitz constant is its spectral norm, computed by
  an SVD in float64 and inflated by the SVD's backward-error bound.
- ``Linear, ReLU, Linear``: ``f(x) = V relu(U x + b)``.
- ``PlainResidual``: ``f(x) = x + V relu(U x + b)``.

For the two ReLU blocks we check the one-layer LipSDP matrix inequality with the
diagonal multiplier ``Lam`` that the parameterisation supplies (a certificate, not an
assumption: *any* ``Lam >= 0`` that passes the check proves the bound). ReLU is slope
restricted to [0, 1], so for any two inputs, ``dw = relu(z1) - relu(z2)`` and
``dz = z1 - z2`` satisfy ``dw_i (dz_i - dw_i) >= 0``. With ``a = 1`` for a residual
block and ``a = 0`` otherwise, ``L^2 |dx|^2 - |a dx + V dw|^2`` is at least
``[dx; dw]^T M [dx; dw]`` with

    M = [[ (L^2 - a^2) I,         -(a V + U^T Lam) ],
         [ -(a V + U^T Lam)^T,     2 Lam - V^T V   ]],

so ``M >= 0`` (positive semidefinite) implies ``f`` is L-Lipschitz in l2.

The check is done on the Jacobi-scaled matrix ``D M D`` (``D = diag(M)^(-1/2)``, a
congruence, so definiteness is unchanged) and requires its smallest eigenvalue to
exceed ``64 * n * eps64 * |D M D|_F``, a margin that dominates the float64 rounding of
forming M and of the symmetric eigensolver (both backward stable). The parameterised
layers make M exactly singular at their nominal bound, so we try ``L = L0 (1 + delta)``
with the multiplier scaled by ``(1 + delta)`` for a short ladder of ``delta``; the
scaled multiplier leaves a strictly positive Schur complement of order ``delta`` (see
the layer modules), which survives the rounding of the weights to float32.
If no rung passes, the block falls back to the product of spectral norms (plus 1 for
a residual block), which holds for any weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "PlainResidual",
    "ReluCertificate",
    "certified_spectral_norm",
    "certify_relu_block",
    "certify_plain",
    "convert_l2_bound",
]

_EPS64 = float(torch.finfo(torch.float64).eps)
_DELTA_LADDER: tuple[float, ...] = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


class PlainResidual(nn.Module):
    """``x + branch(x)`` with ``branch = Sequential(Linear, ReLU, Linear(bias=False))``.

    It exports to ONNX as Gemm, Relu, MatMul/Gemm and Add, which every verifier reads.
    """

    def __init__(self, branch: nn.Sequential) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


@dataclass(frozen=True)
class ReluCertificate:
    """What a ReLU block of a plain network needs to be certified.

    ``multiplier`` is the diagonal of ``Lam`` (float64, >= 0) and ``bound`` is the
    Lipschitz constant the parameterisation claims for the block; the checker only
    uses ``bound`` to know where to look, never as evidence.
    """

    multiplier: Tensor
    bound: float


def certified_spectral_norm(weight: Tensor) -> float:
    """An upper bound on ``|W|_2`` computed in float64.

    The computed largest singular value is exact for some ``W + E`` with
    ``|E|_2 <= p(n) eps |W|_2``; inflating by ``64 n eps`` covers that.
    """
    w = weight.detach().to(torch.float64)
    if w.numel() == 0:
        return 0.0
    sigma = float(torch.linalg.matrix_norm(w, ord=2))
    return sigma * (1.0 + 64.0 * max(w.shape) * _EPS64)


def _lmi_holds(u: Tensor, v: Tensor, lam: Tensor, residual: bool, lip: float) -> bool:
    """Whether the LipSDP matrix M (module docstring) is PSD with a float64 margin."""
    k, n = u.shape
    a = 1.0 if residual else 0.0
    off = -(u.T * lam[None, :])
    if residual:
        off = off - v
    top = (lip * lip - a * a) * torch.eye(n, dtype=torch.float64)
    bottom = 2.0 * torch.diag(lam) - v.T @ v
    m = torch.cat([torch.cat([top, off], 1), torch.cat([off.T, bottom], 1)], 0)
    diag = torch.diagonal(m)
    if not bool(torch.all(diag > 0)):
        return False
    s = diag.rsqrt()
    ms = m * s[:, None] * s[None, :]
    ms = 0.5 * (ms + ms.T)
    size = ms.shape[0]
    tol = 64.0 * size * _EPS64 * float(torch.linalg.matrix_norm(ms))
    return float(torch.linalg.eigvalsh(ms)[0]) >= tol


def certify_relu_block(u: Tensor, v: Tensor, certificate: ReluCertificate | None,
                       residual: bool) -> float:
    """A float64-certified l2 Lipschitz bound of ``[x +] V relu(U x + b)``."""
    u = u.detach().to(torch.float64)
    v = v.detach().to(torch.float64)
    if residual and v.shape[0] != u.shape[1]:
        raise ValueError(f"residual block maps {u.shape[1]} to {v.shape[0]} features")
    fallback = certified_spectral_norm(v) * certified_spectral_norm(u) + (1.0 if residual else 0.0)
    if certificate is None:
        return fallback
    lam = certificate.multiplier.detach().to(torch.float64).reshape(-1)
    if lam.shape[0] != u.shape[0] or not bool(torch.all(lam >= 0)):
        raise ValueError("multiplier must be a nonnegative vector, one entry per ReLU")
    if not (math.isfinite(certificate.bound) and certificate.bound > 0):
        return fallback
    for delta in _DELTA_LADDER:
        lip = certificate.bound * (1.0 + delta)
        if lip >= fallback:
            break
        if _lmi_holds(u, v, lam * (1.0 + delta), residual, lip):
            return lip
    return fallback


def _flatten(modules: Sequence[nn.Module]) -> Iterator[nn.Module]:
    for module in modules:
        if isinstance(module, nn.Sequential):
            yield from _flatten(list(module))
        else:
            yield module


def _branch_weights(branch: nn.Sequential) -> tuple[Tensor, Tensor]:
    parts = list(branch)
    if (len(parts) != 3 or not isinstance(parts[0], nn.Linear)
            or not isinstance(parts[1], nn.ReLU) or not isinstance(parts[2], nn.Linear)):
        raise TypeError("a PlainResidual branch must be Linear, ReLU, Linear")
    return parts[0].weight, parts[2].weight


def certify_plain(plain: nn.Sequential, certificates: Sequence[ReluCertificate | None]) -> float:
    """A float64-certified l2 Lipschitz bound of a plain network.

    ``plain`` holds only ``nn.Linear``, ``nn.ReLU`` and ``PlainResidual`` modules (nested
    ``nn.Sequential`` is flattened); ``certificates`` gives one entry per ReLU block, in
    order (``None`` means: use the spectral-norm fallback). The result is the product of
    the per-block bounds, valid because Lipschitz constants multiply under composition.
    """
    modules = list(_flatten(list(plain)))
    certs = list(certificates)
    bound = 1.0
    i = 0
    while i < len(modules):
        mod = modules[i]
        if isinstance(mod, PlainResidual):
            u, v = _branch_weights(mod.branch)
            bound *= certify_relu_block(u, v, certs.pop(0) if certs else None, residual=True)
            i += 1
        elif (isinstance(mod, nn.Linear) and i + 2 < len(modules)
              and isinstance(modules[i + 1], nn.ReLU) and isinstance(modules[i + 2], nn.Linear)):
            u, v = mod.weight, modules[i + 2].weight
            bound *= certify_relu_block(u, v, certs.pop(0) if certs else None, residual=False)
            i += 3
        elif isinstance(mod, nn.Linear):
            bound *= certified_spectral_norm(mod.weight)
            i += 1
        elif isinstance(mod, (nn.ReLU, nn.Identity)):
            i += 1  # 1-Lipschitz on its own
        else:
            raise TypeError(f"cannot certify module of type {type(mod).__name__}")
    if certs:
        raise ValueError(f"{len(certs)} certificates left over: they do not match the network")
    return bound


def convert_l2_bound(l2_bound: float, norm: str, in_features: int) -> float:
    """Turn an l2 -> l2 bound into the requested norm's bound.

    ``"2"``: unchanged. ``"inf"`` (l-inf -> l-inf): ``|y|_inf <= |y|_2`` and
    ``|x|_2 <= sqrt(n) |x|_inf``, so the bound is ``sqrt(n) L_2``.
    """
    if norm == "2":
        return l2_bound
    if norm == "inf":
        return l2_bound * math.sqrt(in_features)
    raise ValueError(f"unsupported norm {norm!r}: use '2' or 'inf'")
