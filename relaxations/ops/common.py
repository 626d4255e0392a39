"""Helpers shared by the op family files: batched evaluation and interval shortcuts."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.func import vmap

from models import Node
from models.evaluate import BROADCASTING, map_samples
from models.ops import forward_rule
from relaxations.bounds import IntervalBounds

__all__ = ["batched", "monotone_interval", "Ins"]

T = torch.Tensor
Ins = Sequence["IntervalBounds | T | None"]


def batched(node: Node, fn: Callable, args: Sequence[T | None], batched_mask: Sequence[bool],
            stack: bool = True) -> list[T]:
    """Apply a per-sample function `fn(node, args)` over the leading batch dimension.

    `fn` must compute what the node's op computes, or a function of it sample by sample
    along the same axes (its radius through |W|, its zero term): then the samples may be
    stacked on the op's N axis where its forward rule allows (`models.evaluate.stacked_call`).
    `stack` False always maps by vmap (a function whose axis 0 means something else).
    """
    if stack:
        return map_samples(node, fn, list(args), list(batched_mask))

    def call(*xs: T | None) -> tuple[T, ...]:
        return tuple(fn(node, list(xs)))

    return list(vmap(call, in_dims=tuple(0 if b else None for b in batched_mask))(*args))


def monotone_interval(node: Node, ins: Ins, ev=None) -> list[IntervalBounds]:
    """Interval of an op that is nondecreasing in every variable input: f(l) and f(u)."""
    fn = forward_rule(node).fn
    if len(ins) == 1 and node.domain == "" and node.op in BROADCASTING and isinstance(ins[0], IntervalBounds):
        # One input of an op that broadcasts (elementwise): the batch at once is every
        # sample, as GraphEvaluator runs it (no reshapes to stack them).
        return [IntervalBounds(fn(node, [ins[0].lower])[0], fn(node, [ins[0].upper])[0])]
    mask = [isinstance(x, IntervalBounds) for x in ins]
    lows = [x.lower if isinstance(x, IntervalBounds) else x for x in ins]
    highs = [x.upper if isinstance(x, IntervalBounds) else x for x in ins]
    lo = batched(node, fn, lows, mask)
    hi = batched(node, fn, highs, mask)
    return [IntervalBounds(a, b) for a, b in zip(lo, hi)]
