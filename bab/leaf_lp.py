"""Fully split leaves of activation split, decided by an LP over their own constraints.

A domain with no unstable ReLU left has nothing to branch on. beta-CROWN bounds it by a
Lagrangian of the split constraints whose multipliers it optimises for a few steps;
when they have not converged the leaf stays unproved although the network is affine on
it, and such a leaf made the whole answer `unknown` (BENCHMARKS.md: "LPs on the leaves
of activation split"). The bound those steps approach is an LP over the input, solved
here directly:

    find x in the box with   G_split x <= h_split   (each split decision, s z(x) >= 0)
                             G_conj  x <= h_conj    (each row of one conjunction, C y - d <= 0)
                             region rows            (VNN-LIB 2.0 coupled inputs)

Every row is a linear bound from CROWN (`relaxations.intermediate` keeps the split
neurons' bounds of `-s z`; the final pass gives the spec rows') moved outward by its
rounding margin, so every point of the domain that violates the conjunction satisfies
all rows: an empty polytope proves the conjunction on the leaf whatever the network
is. On a fully split ReLU leaf the rows are exact (a stable ReLU's relaxation is the
ReLU), so a non-empty polytope holds a counterexample up to rounding: its point goes to
the search's candidates and is replayed like any other. Domains with a few unstable
ReLUs left go to the same LP (`ReluSearch.leaf_unstable`): CROWN's lines stand at those,
so the LP may prove such a domain, and its point is only a candidate.

bab owns no solver (DESIGN.md section 2): the verifier passes `solve`, which answers
"empty (with a checked certificate)" or "a point of the polytope" (verifier/lp/region.py),
the polytope cut by the problem's l2 ball when it has one.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np
import torch

from bab.problem import Problem, region_box
from relaxations import BoundOptions, Given, IntervalBounds, compute_bounds
from relaxations.bounds import LinearBounds, Precision, interval_terms

__all__ = ["LeafSolver", "decide_leaves"]

T = torch.Tensor

# (G [m, n], h [m], lower [n], upper [n], ball: (centre [n], radius) or None) -> (empty:
# proved with a checked certificate, a point of the polytope or None). Float64 numpy.
LeafSolver = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, Optional[tuple[np.ndarray, float]]],
                      tuple[bool, Optional[np.ndarray]]]


class _Collect:
    """A clip hook that clips nothing: it only receives the split neurons' linear bounds."""

    def __init__(self) -> None:
        self.split_linear: dict = {}

    def __call__(self, name: str, lin: LinearBounds, lb: T) -> T:
        return lb


def _rows(lin: LinearBounds, box: IntervalBounds, precision: Precision) -> tuple[T, T]:
    """`A x + bias - margin <= value` as (G [B, R, n] float64, offset [B, R]): a sound
    lower bound of each row at every x of the box is `G x + offset` (the margin covers the
    rounding of the bias and of the products, as `concretize` takes it)."""
    B, R = lin.bias.shape
    A = lin.A.reshape(B, R, -1)
    _, mass = interval_terms(A, IntervalBounds(box.lower.reshape(B, -1), box.upper.reshape(B, -1)))
    # In float64: the subtraction itself must not round the margin away.
    offset = lin.bias.double() - precision.margin(mass.double() + lin.mass.double())
    return A.double(), offset


def decide_leaves(p: Problem, splits: dict[str, T], open_conj: T, options: BoundOptions,
                  solve: LeafSolver) -> tuple[T, list[np.ndarray]]:
    """Which of a batch of leaves (split decisions [N, *shape] per tensor) the LP proves,
    [N] bool, and the polytope points found where it does not (counterexample candidates).

    `open_conj` [N, n_conj] marks the conjunctions the leaf's own bound left open; a leaf
    is proved when each of them is.
    """
    N = open_conj.shape[0]
    box = region_box(p, N)      # with the problem's ball: the intervals the search had
    # CROWN intermediate bounds: they are what hands the split neurons' linear bounds over
    # (a search may run on IBP intervals, `bab.domain_intermediate`).
    plain = dataclasses.replace(options, method="crown", intermediate="crown", coefficients=False,
                                keep_betas=False, optimise_intermediate=False, stop_above=None)
    precision = plain.precision or Precision.for_dtype(p.ev.dtype)
    hook = _Collect()
    res = compute_bounds(p.graph, box, p.C, plain, want_upper=False, ev=p.ev,
                         given=Given(splits=splits, clip=hook, known=p.known or None))
    box = res.box or box
    proved = res.infeasible.clone()
    if res.linear is None:
        return proved, []
    G_spec, off_spec = _rows(res.linear, box, precision)                         # [N, S, n]
    h_spec = p.d.double() - off_spec                                             # A x <= d - offset
    parts = []
    for kept in hook.split_linear.values():
        if kept is None:
            continue
        lin, mask = kept
        G, off = _rows(lin, box, precision)                                      # bound of -s z <= 0
        parts.append((G, -off, mask))
    lo = box.lower.reshape(N, -1).double().cpu().numpy()
    hi = box.upper.reshape(N, -1).double().cpu().numpy()
    region = None
    if p.region_a is not None:
        region = (p.region_a.double().cpu().numpy(), -p.region_c.double().cpu().numpy())
    points: list[np.ndarray] = []
    owner = p.owner.cpu().numpy()
    ball = None
    if p.ball is not None:
        ball = (p.ball[0].reshape(-1).double().cpu().numpy(), float(p.ball[1].reshape(-1)[0]))
    for i in range(N):
        if bool(proved[i]):
            continue
        base_G = [G[i][m[i]].cpu().numpy() for G, _, m in parts]
        base_h = [h[i][m[i]].cpu().numpy() for _, h, m in parts]
        if region is not None:
            base_G.append(region[0])
            base_h.append(region[1])
        all_empty = True
        for k in torch.nonzero(open_conj[i]).flatten().tolist():
            rows = np.flatnonzero(owner == k)
            G = np.concatenate(base_G + [G_spec[i, rows].cpu().numpy()])
            h = np.concatenate(base_h + [h_spec[i, rows].cpu().numpy()])
            empty, point = solve(G, h, lo[i], hi[i], ball)
            if not empty:
                all_empty = False
                if point is not None:
                    points.append(point)
                break   # the leaf stays open; the point is the candidate worth replaying
        proved[i] = all_empty
    return proved, points

