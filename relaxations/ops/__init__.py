"""Bounding rules, one op family per module, registered by explicit calls below."""
from __future__ import annotations

from relaxations.ops import (activations, arithmetic, comparisons, contrib, conv, gelu, linear, more_activations,
                             nonsmooth, pooling, shape, smooth, softmax)

__all__ = ["FAMILIES"]

FAMILIES = (arithmetic, linear, conv, shape, pooling, activations, smooth, more_activations, gelu, nonsmooth, softmax,
            comparisons, contrib)

for _family in FAMILIES:
    _family.register()
