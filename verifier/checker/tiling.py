"""Exact check that leaf boxes tile a root box, for input-split certificates.

Rather than adding floating-point volumes (inexact, and blind to a gap that an
overlap elsewhere compensates), we rebuild a guillotine tree top-down: a box with
more than one leaf must have a cut, a value m strictly inside the box along some
dimension such that every leaf lies entirely on one side of it (all comparisons are
exact float comparisons). Recursing until each box holds exactly one leaf equal to
it proves that the leaves cover the root and overlap only on faces. Bisection makes
guillotine partitions, and a guillotine partition restricted to either side of any
full cut is again guillotine, so whichever cut we take the recursion succeeds on
every honest certificate. Split points need not be midpoints (float32 bisection does
not give float64 midpoints); zero-width dimensions are never cut.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["tiling_error"]


def _find_cut(lo: np.ndarray, hi: np.ndarray, box_lo: np.ndarray, box_hi: np.ndarray
              ) -> Optional[tuple[int, float, np.ndarray, np.ndarray]]:
    """(dimension, value, left indices, right indices) of a valid cut of the box, or None."""
    for k in range(lo.shape[1]):
        order = np.argsort(lo[:, k], kind="stable")
        starts, ends = lo[order, k], hi[order, k]
        reach = np.maximum.accumulate(ends)
        # A cut after sorted position i: every leaf up to i ends at or below the next start,
        # and every later leaf starts at or above it (they are sorted by start).
        ok = (reach[:-1] <= starts[1:]) & (starts[1:] > box_lo[k]) & (starts[1:] < box_hi[k])
        hits = np.nonzero(ok)[0]
        if hits.size:
            i = int(hits[len(hits) // 2])
            return k, float(starts[i + 1]), order[:i + 1], order[i + 1:]
    return None


def tiling_error(root_lo: np.ndarray, root_hi: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> str:
    """'' when the boxes [lo, hi] ([L, n]) tile [root_lo, root_hi] exactly, else why not."""
    if lo.ndim != 2 or lo.shape != hi.shape or lo.shape[1] != root_lo.size:
        return f"leaf boxes have shape {lo.shape} and {hi.shape}; expected [L, {root_lo.size}]"
    if lo.shape[0] == 0:
        return "no leaves"
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        return "a leaf box is not finite"
    if np.any(lo > hi):
        return "a leaf box is empty (lower > upper)"
    if np.any(lo < root_lo) or np.any(hi > root_hi):
        leaf = int(np.nonzero((lo < root_lo).any(1) | (hi > root_hi).any(1))[0][0])
        return f"leaf {leaf} is not inside the root region"
    stack = [(np.arange(lo.shape[0]), root_lo, root_hi)]
    while stack:
        idx, blo, bhi = stack.pop()
        if idx.size == 0:
            return "the leaves leave a gap in the root region"
        if idx.size == 1:
            i = int(idx[0])
            if not (np.array_equal(lo[i], blo) and np.array_equal(hi[i], bhi)):
                return f"the leaves leave a gap next to leaf {i}"
            continue
        cut = _find_cut(lo[idx], hi[idx], blo, bhi)
        if cut is None:
            return f"leaves overlap or do not form a bisection tree (near leaf {int(idx[0])})"
        k, m, left, right = cut
        left, right = idx[left], idx[right]
        lhi, rlo = bhi.copy(), blo.copy()
        lhi[k], rlo[k] = m, m
        stack.append((left, blo, lhi))
        stack.append((right, rlo, bhi))
    return ""
