"""Bounding rules, one op family per module, registered by explicit calls below."""
from __future__ import annotations

from relaxations.ops import activations, arithmetic, conv, linear, pooling, shape

__all__ = ["FAMILIES"]

FAMILIES = (arithmetic, linear, conv, shape, pooling, activations)

for _family in FAMILIES:
    _family.register()
