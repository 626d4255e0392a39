"""Bounding rules for onnxruntime's contrib ops (``com.microsoft``; forwards in
models/ops/contrib.py).

Each contrib op here equals a standard op with fixed attributes (``GELU_FORM``), so its
rule is that op's rule read through a view of the node as the standard op: the same
intervals, relaxations, alphas and Lipschitz constant, under the contrib key
(domain, op) and the contrib domain's opset.
"""
from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Callable

from models import Node
from models.ops.contrib import CONTRIB, GELU_FORM
from relaxations.ops.gelu import gelu_rule
from relaxations.registry import OpRule, register_rule

__all__ = ["register"]

# The OpRule fields that are functions of the node first (every other field is data).
_NODE_FIRST = ("radius", "affine_inputs", "interval", "relax", "prepare", "alpha_init", "alpha_bounds", "unstable",
               "backward", "gather", "relax_slots", "lipschitz")


def _through(fn: Callable, view: Callable[[Node], Node]) -> Callable:
    return lambda node, *args, **kwargs: fn(view(node), *args, **kwargs)


def as_standard(rule: OpRule, op: str, view: Callable[[Node], Node]) -> OpRule:
    """`rule` registered as contrib `op`: each of its functions sees `view(node)`."""
    wrapped = {f: _through(getattr(rule, f), view) for f in _NODE_FIRST if getattr(rule, f) is not None}
    return dataclasses.replace(rule, op=op, domain=CONTRIB, min_opset=1, max_opset=1, **wrapped)


def _gelu_view(approximate: str) -> Callable[[Node], Node]:
    attrs = MappingProxyType({"approximate": approximate})
    return lambda node: dataclasses.replace(node, op="Gelu", domain="", opset=20, attrs=attrs)


def register() -> None:
    for op, approximate in GELU_FORM.items():
        register_rule(as_standard(gelu_rule(), op, _gelu_view(approximate)))
