"""Lipschitz-bounded layers whose bound holds by construction, for certified training.

- `SandwichLayer`, `SandwichNet`: "Direct Parameterization of Lipschitz-Bounded Deep
  Networks" (Wang & Manchester, 2023).
- `SLLLayer`, `SLLNet`: "A Unified Algebraic Perspective on Lipschitz Neural Networks"
  (Araujo et al., 2023).
- `GershgorinResidual`: a residual layer whose rescaling comes from a weighted
  Gershgorin bound on the feature-side Gram matrix.
- `OrthogonalLinear`, `LipschitzSequential`: glue with bound ``scale`` / the product.

Every module has ``lipschitz_bound(norm)`` (the guarantee), ``to_plain(dtype)`` (the
same function as plain Linear/ReLU/residual modules), ``certified_lipschitz_bound()``
(re-derived in float64 from the plain weights, see `certify`) and
``export_onnx(path, input_shape)``.
"""
from __future__ import annotations

from models.lipschitz_layers.base import LipschitzModule, LipschitzSequential, OrthogonalLinear, cayley
from models.lipschitz_layers.certify import (
    PlainResidual,
    ReluCertificate,
    certified_spectral_norm,
    certify_plain,
    certify_relu_block,
)
from models.lipschitz_layers.residual import GershgorinResidual, SLLLayer, SLLNet
from models.lipschitz_layers.sandwich import SandwichLayer, SandwichNet

__all__ = [
    "LipschitzModule",
    "LipschitzSequential",
    "OrthogonalLinear",
    "cayley",
    "PlainResidual",
    "ReluCertificate",
    "certified_spectral_norm",
    "certify_plain",
    "certify_relu_block",
    "SandwichLayer",
    "SandwichNet",
    "SLLLayer",
    "SLLNet",
    "GershgorinResidual",
]
