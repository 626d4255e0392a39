"""Forward semantics of ONNX ops, keyed by op type and opset range.

These functions are the reference meaning of each op: constant folding, the reference
forward and every bounding rule in `relaxations` use them, so there is one definition
of what an op computes. Each takes the node and its input tensors in exact ONNX shapes
(no extra batch dimension: batching is added with `torch.func.vmap`) and returns the
list of output tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from models.errors import UnsupportedModel
from models.graph import Node

__all__ = ["ForwardFn", "ForwardRule", "FORWARD", "register_forward", "forward_rule"]

ForwardFn = Callable[[Node, Sequence[torch.Tensor | None]], list[torch.Tensor]]


@dataclass(frozen=True)
class ForwardRule:
    op: str
    min_opset: int
    max_opset: int
    fn: ForwardFn


FORWARD: dict[str, list[ForwardRule]] = {}


def register_forward(op: str, fn: ForwardFn, min_opset: int = 1, max_opset: int = 10_000) -> None:
    """Register `fn` for `op` in [min_opset, max_opset]; overlapping ranges are an error."""
    rules = FORWARD.setdefault(op, [])
    for r in rules:
        if not (max_opset < r.min_opset or min_opset > r.max_opset):
            raise ValueError(f"forward for {op} opsets {min_opset}-{max_opset} registered twice")
    rules.append(ForwardRule(op, min_opset, max_opset, fn))


def forward_rule(node: Node) -> ForwardRule:
    """The rule for `node`, or UnsupportedModel naming the node, op and opset."""
    for r in FORWARD.get(node.op, ()):
        if r.min_opset <= node.opset <= r.max_opset:
            return r
    if node.op in FORWARD:
        ranges = ", ".join(f"{r.min_opset}-{r.max_opset}" for r in FORWARD[node.op])
        raise UnsupportedModel(f"opset not supported (supported: {ranges})",
                               node=node.name, op=node.op, opset=node.opset)
    raise UnsupportedModel("op not supported by nncert", node=node.name, op=node.op, opset=node.opset)
