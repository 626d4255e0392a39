"""Single split decisions that confine the input box, found once at activation split's root.

Setting one unstable ReLU active or inactive, and walking the intervals back to the input
(`relaxations.reverse.tightened_box`), sometimes confines the inputs to a small sub-box:
a neuron that measures a distance from a point, active only near it, confines every input
to the neighbourhood of that point. Two uses:

- `bab.tighten_input`: filtered smart branching bounds the children of such decisions over
  their narrowed box (`bab/branching.py`), where the narrowing shows in the bound;
- the narrowing attack (`bab.narrowing_attack`): the narrowed boxes' centres, and PGD inside
  the narrowest ones, as counterexample candidates at the root. A counterexample planted in
  a small sub-box and guarded by such a neuron is met there at once, where the bounds'
  minimisers, the attack over the whole box and the search's first rounds all miss it
  (BENCHMARKS.md, session 40: hidden needles with 400 and 784 inputs found in seconds,
  timeouts at 60 s before).

Only the rows of the decided neuron are read back (`tightened_box`'s seeds), so a decision
costs a few sparse products; the check stops at a deadline it is given.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Optional

import torch

from bab.attack import domain_pgd
from bab.problem import Problem, into_region, violations
from relaxations import IntervalBounds
from relaxations.crown import BackwardContext, rules_for
from relaxations.reverse import tightened_box

__all__ = ["Narrowed", "narrowing_decisions", "narrowed_candidates"]

T = torch.Tensor
CENTRES = 256   # narrowed boxes whose centres are tried, narrowest first


@dataclass(frozen=True)
class Narrowed:
    """What the root's check found: per split tensor, bool [2, numel] (row 0: the neuron
    active, row 1: inactive) marking the decisions that narrow some input to under half
    its width; and those decisions' boxes [K, *input_shape], narrowest first."""

    flags: dict
    lower: T
    upper: T


def narrowing_decisions(p: Problem, table, unstable: dict, shapes: dict, tries: int,
                        deadline: Optional[float], chunk: int = 64) -> Narrowed:
    """The decisions on the neurons `unstable` (split tensor -> flat indices unstable at the
    root, at most `tries` of each) that narrow the input box over the root's intervals
    `table`, and their boxes. None past `deadline` is tried (a convolution's check costs
    seconds on a CIFAR net: on oval21's cifar_deep_kw trying every neuron ran 50 s). The
    cap is per tensor: one cap on all tensors together ran out before a needle's distance
    neuron, which comes after the first layers' thousands of unstable neurons in a
    784-input CNN."""
    ctx = BackwardContext(p.graph, p.ev, table, rules_for(p.graph))
    box = table[p.graph.input_name]
    flags = {z: torch.zeros(2, torch.Size(s).numel(), dtype=torch.bool, device=p.lower.device)
             for z, s in shapes.items()}
    lows, highs, volumes = [], [], []
    for z, idx in unstable.items():
        for s in range(0, min(len(idx), tries), chunk):
            if deadline is not None and time.monotonic() > deadline:
                return _done(flags, lows, highs, volumes, box)
            j = idx[s:min(s + chunk, tries)]
            n = 2 * len(j)
            sign = torch.zeros(n, torch.Size(shapes[z]).numel(), dtype=torch.int8, device=j.device)
            rows = torch.arange(n, device=j.device)
            ones = torch.ones(len(j), dtype=torch.int8, device=j.device)
            sign[rows, j.repeat(2)] = torch.cat([ones, -ones])
            sign = sign.reshape(n, *shapes[z])
            t = {k: IntervalBounds(v.lower.expand(n, *v.lower.shape[1:]), v.upper.expand(n, *v.upper.shape[1:]))
                 for k, v in table.items()}
            b = t[z]
            t[z] = IntervalBounds(torch.where(sign > 0, b.lower.clamp(min=0), b.lower),
                                  torch.where(sign < 0, b.upper.clamp(max=0), b.upper))
            new, empty = tightened_box(dataclasses.replace(ctx, table=t), t, {z: (sign != 0).reshape(n, -1).any(0)})
            width = (box.upper - box.lower).reshape(1, -1)
            ratio = ((new.upper - new.lower).reshape(n, -1) / width.clamp_min(1e-30)).clamp(0, 1)
            halved = ((ratio < 0.5) & (width > 0)).any(1)
            flags[z][0, j] |= halved[:len(j)]
            flags[z][1, j] |= halved[len(j):]
            keep = halved & ~empty
            lows.append(new.lower[keep])
            highs.append(new.upper[keep])
            # How much of the box is left, in log volume (inputs of zero width left out).
            volumes.append(torch.where(width > 0, ratio.clamp_min(1e-30).log(), torch.zeros_like(ratio))[keep].sum(1))
    return _done(flags, lows, highs, volumes, box)


def _done(flags: dict, lows: list, highs: list, volumes: list, box: IntervalBounds) -> Narrowed:
    if not lows:
        empty = box.lower[:0]
        return Narrowed(flags, empty, empty)
    order = torch.argsort(torch.cat(volumes))
    return Narrowed(flags, torch.cat(lows)[order], torch.cat(highs)[order])


def narrowed_candidates(p: Problem, found: Narrowed, focus: int, steps: int) -> tuple[Optional[T], Optional[T]]:
    """Counterexample candidates from the narrowed boxes: the centres of the `CENTRES`
    narrowest (a net whose first-layer neurons each confine a few pixels narrows on
    every one of them, and a CIFAR net's forward pass on thousands of points costs
    seconds), and PGD inside the `focus` narrowest. (points [M, *input_shape],
    objective [M]), or Nones."""
    if not len(found.lower):
        return None, None
    lo, hi = found.lower[:CENTRES].to(p.lower.dtype), found.upper[:CENTRES].to(p.lower.dtype)
    centres = into_region(p, (lo + hi) / 2, lo, hi)
    obj = violations(p, centres)
    k = min(focus, len(lo))
    best, best_x = domain_pgd(p, lo[:k], hi[:k], centres[:k], steps)
    return torch.cat([centres, best_x]), torch.cat([obj, best])
