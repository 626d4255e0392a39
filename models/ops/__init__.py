"""Forward semantics of every ONNX op nncert reads, one family per module.

The registry is filled by an explicit call to each family's `register()` (no star
imports, no import side effects hidden elsewhere), once, when this package loads.
"""
from __future__ import annotations

from models.ops import contrib, conv, elementwise, linear, pooling, reduce, shape
from models.ops.registry import FORWARD, ForwardRule, forward_rule, register_forward

__all__ = ["FORWARD", "ForwardRule", "forward_rule", "register_forward"]

for _family in (elementwise, linear, conv, pooling, shape, reduce, contrib):
    _family.register()
