"""Bounding rules, one op family per module, registered by explicit calls below."""
from __future__ import annotations

from relaxations.ops import activations, arithmetic, conv, linear, nonsmooth, pooling, shape, smooth, softmax

__all__ = ["FAMILIES"]

FAMILIES = (arithmetic, linear, conv, shape, pooling, activations, smooth, nonsmooth, softmax)

for _family in FAMILIES:
    _family.register()
