"""Forward semantics of ONNX ops, keyed by op type and opset range.

These functions are the reference meaning of each op: constant folding, the reference
forward and every bounding rule in `relaxations` use them, so there is one definition
of what an op computes. Each takes the node and its input tensors in exact ONNX shapes
(no extra batch dimension: batching is added with `torch.func.vmap`) and returns the
list of output tensors.

A rule may also declare `batches(node, variable, args)`: whether the rule treats axis 0
as ONNX's N axis, sample by sample, for this node with these inputs (`variable[i]`:
args[i] is a stack of samples [B, *sample], else a constant or None). Where the graph's batch is 1 (every variable
input's axis 0 has size 1), B samples can then go through the rule at once stacked on
that axis (`models.evaluate.stacked_call`), which costs far less than vmap on small
tensors (certified training's steps, small domains).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from models.errors import UnsupportedModel
from models.graph import Node, qualified

__all__ = ["ForwardFn", "ForwardRule", "FORWARD", "register_forward", "forward_rule", "first_input",
           "broadcasting"]

ForwardFn = Callable[[Node, Sequence[torch.Tensor | None]], list[torch.Tensor]]
Args = Sequence[Optional[torch.Tensor]]
Batches = Callable[[Node, Sequence[bool], Args], bool]


def first_input(node: Node, variable: Sequence[bool], args: Args) -> bool:
    """`batches` of ops that treat axis 0 of their first input as N whatever their
    attributes (convolutions, pooling, batch normalisation), when only that input varies:
    the others are parameters, never broadcast against it."""
    return bool(variable) and variable[0] and not any(variable[1:])


def broadcasting(node: Node, variable: Sequence[bool], args: Args) -> bool:
    """`batches` of elementwise ops with numpy broadcasting: the variable inputs have one
    rank (a lower-ranked one would align its samples with another axis), and no constant
    reaches axis 0 with a size other than 1 (it would broadcast against the samples)."""
    ranks = {a.dim() - 1 for a, v in zip(args, variable) if v}
    if len(ranks) != 1:
        return False
    rank = ranks.pop()
    return all(a.dim() < rank or (a.dim() == rank and a.shape[0] == 1)
               for a, v in zip(args, variable) if not v and a is not None)


@dataclass(frozen=True)
class ForwardRule:
    op: str
    min_opset: int
    max_opset: int
    fn: ForwardFn
    batches: Optional[Batches] = None      # see the module docstring
    # The output depends on no input's values, only on shapes and attributes (Shape,
    # Size, Constant): the importer folds such a node even on the input's path.
    shape_only: bool = False
    # Its inputs are shapes (ConstantOfShape): they come from constants or Shape in the
    # models we know, so the node is folded; on the input's path it is refused by name.
    reads_shapes: bool = False
    domain: str = ""                       # "" is ONNX's default domain; opsets are the domain's own


# Keyed by (domain, op) (`Node.key`): com.microsoft's Gelu is not ai.onnx's Gelu.
FORWARD: dict[tuple[str, str], list[ForwardRule]] = {}


def register_forward(op: str, fn: ForwardFn, min_opset: int = 1, max_opset: int = 10_000,
                     batches: Optional[Batches] = None, shape_only: bool = False, reads_shapes: bool = False,
                     domain: str = "") -> None:
    """Register `fn` for `op` of `domain` in [min_opset, max_opset]; overlapping ranges are an error."""
    rules = FORWARD.setdefault((domain, op), [])
    for r in rules:
        if not (max_opset < r.min_opset or min_opset > r.max_opset):
            raise ValueError(f"forward for {qualified(domain, op)} opsets {min_opset}-{max_opset} registered twice")
    rules.append(ForwardRule(op, min_opset, max_opset, fn, batches, shape_only, reads_shapes, domain))


def forward_rule(node: Node) -> ForwardRule:
    """The rule for `node`, or UnsupportedModel naming the node, op (with its domain
    outside the default one) and opset."""
    rules = FORWARD.get(node.key, ())
    for r in rules:
        if r.min_opset <= node.opset <= r.max_opset:
            return r
    if rules:
        ranges = ", ".join(f"{r.min_opset}-{r.max_opset}" for r in rules)
        raise UnsupportedModel(f"opset not supported (supported: {ranges})",
                               node=node.name, op=node.qualified_op, opset=node.opset)
    if node.domain and not any(d == node.domain for d, _ in FORWARD):
        raise UnsupportedModel(f"custom domain '{node.domain}': nncert has no op of that domain",
                               node=node.name, op=node.qualified_op, opset=node.opset)
    raise UnsupportedModel("op not supported by nncert", node=node.name, op=node.qualified_op, opset=node.opset)
