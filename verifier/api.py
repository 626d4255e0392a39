"""`bounds()`: the auto_LiRPA-style entry point for bounds of a model over boxes."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from relaxations import BoundOptions, IntervalBounds, compute_bounds
from verifier.model import Model

__all__ = ["bounds", "dtype_of", "bound_options"]


def dtype_of(name: str) -> torch.dtype:
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, not '{name}'")
    return torch.float32 if name == "float32" else torch.float64


def bound_options(cfg, method: Optional[str] = None) -> BoundOptions:
    """BoundOptions from the verifier's BoundsConfig."""
    return BoundOptions(method=method or cfg.method, intermediate=cfg.intermediate,
                        alpha_iterations=cfg.alpha_iterations, alpha_lr=cfg.alpha_lr,
                        max_elements=cfg.max_elements)


def bounds(model: Model, lower, upper, method: str = "crown", C=None, dtype: str = "float32",
           device: str = "cpu", alpha_iterations: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound lower and upper bounds of `C @ output` (or of the outputs) over a box.

    lower/upper: arrays of the model's input shape, or with a leading batch dimension
    for many boxes at once. C: [S, n_out] or [B, S, n_out]. Returns two tensors [B, S]
    (or [S] when the box had no batch dimension). Nothing is kept between calls.
    """
    dt = dtype_of(dtype)
    lo = torch.as_tensor(np.asarray(lower, dtype=np.float64), dtype=dt, device=device)
    hi = torch.as_tensor(np.asarray(upper, dtype=np.float64), dtype=dt, device=device)
    shape = model.graph.input_shape
    single = lo.numel() == int(np.prod(shape)) and lo.dim() <= len(shape)
    lo = lo.reshape(-1, *shape)
    hi = hi.reshape(-1, *shape)
    if lo.shape != hi.shape:
        raise ValueError("lower and upper must have the same shape")
    if bool((lo > hi).any()):
        raise ValueError("empty box: some lower bound exceeds its upper bound")
    if C is not None:
        C = torch.as_tensor(np.asarray(C, dtype=np.float64), dtype=dt, device=device)
    opts = BoundOptions(method=method, alpha_iterations=alpha_iterations)
    res = compute_bounds(model.graph, IntervalBounds(lo, hi), C=C, options=opts)
    lower_b, upper_b = res.lower.detach(), res.upper.detach()
    return (lower_b[0], upper_b[0]) if single else (lower_b, upper_b)
