"""Turning a candidate input into a confirmed counterexample.

The input written must be float32 values inside the region in exact arithmetic: a
float32 rounding of a value on the region's face can land outside it, so we round
toward the inside. The outputs reported are the ones onnxruntime computes for
exactly those inputs, and the spec is checked on them with no tolerance.

One exception, forced by the model's float32 input: an input the region fixes to a
single value (lower == upper) that no float32 equals. No float32 input lies in such a
region at all, so the property can only mean the model run on that value as its input
type holds it: the nearest float32, which is what every tool and VNN-COMP's checker
feed the network. Only such fixed inputs are rounded; every free input stays inside.
(Bounds are taken over a box rounded outward, which contains that float32 too, so an
`unsat` covers it.)
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from vnnlib import Disjunct
from verifier.model import Model

__all__ = ["float32_inside", "confirm"]


def float32_inside(x: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> Optional[np.ndarray]:
    """float32 values of x clipped into [lower, upper] as real numbers, or None if impossible."""
    lower = np.asarray(lower, dtype=np.float64).reshape(-1)
    upper = np.asarray(upper, dtype=np.float64).reshape(-1)
    x64 = np.clip(np.asarray(x, dtype=np.float64).reshape(-1), lower, upper)
    v = x64.astype(np.float32)
    too_low = v.astype(np.float64) < lower
    v[too_low] = np.nextafter(v[too_low], np.float32(np.inf))
    too_high = v.astype(np.float64) > upper
    v[too_high] = np.nextafter(v[too_high], np.float32(-np.inf))
    inside = (v.astype(np.float64) >= lower) & (v.astype(np.float64) <= upper)
    fixed = lower == upper  # no float32 may equal the value: the input is its nearest float32
    v[fixed] = lower[fixed].astype(np.float32)
    return v if bool((inside | fixed).all()) else None


def confirm(model: Model, disjunct: Disjunct, x: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(x32, y) when onnxruntime confirms that x32 violates the disjunct, else None."""
    region = disjunct.region
    x32 = float32_inside(x, region.lower, region.upper)
    if x32 is None:
        return None
    free = np.asarray(region.upper) > np.asarray(region.lower)
    x64 = np.where(free.reshape(-1), x32.astype(np.float64), np.asarray(region.lower).reshape(-1))
    if not region.contains(x64):
        return None
    y = model.run_onnxruntime(x32)
    if not np.all(np.isfinite(y)):
        return None
    if any(conj.holds(y) for conj in disjunct.outputs):
        return x32, y
    return None
