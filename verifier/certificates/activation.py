"""Writing activation-split (beta-CROWN) proofs into a certificate entry.

The search logs, per proved leaf, its split decisions and the alphas and betas of the
bound that proved it, in float32 (`bab.proof.ActivationProofLog`). The checker replays
each leaf in float64. CROWN is not monotone in its intermediate bounds (see
`verifier.certificates.writer`), so the float32 numbers need not prove the leaf in float64:
here every leaf is re-bounded by the engine in float64 with the logged alphas and
betas, and a leaf that this does not prove gets its alphas and betas re-optimised in
float64 (per spec row, the better of the two is kept). Claims are the float64 bounds;
the checker derives its own and only compares.

Alphas are written only for neurons that are unstable and unsplit in the leaf (by
the float64 intervals): elsewhere the slope does not enter the bound, or the checker's
default is the same line. This keeps certificates about S x (unstable neurons) numbers
per leaf instead of S x (all neurons).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from bab.clipping import min_under_region
from bab.proof import ActivationLeaves
from models import GraphEvaluator
from relaxations import BallBox, BoundOptions, Given, IntervalBounds, compute_bounds
from verifier.certificates.writer import _rows_proved, check_time
from verifier.checker.verdict import encode_array, spec_rows
from verifier.model import Model

__all__ = ["activation_split_entry", "ActivationRederivationFailed", "float64_leaf_bounds", "dense_alphas",
           "LeafRegion", "LeafParameters"]

_CHUNK = 128
_REOPT_ITERATIONS = 60


class ActivationRederivationFailed(ValueError):
    """float64 bounds do not prove some leaf even after re-optimising alphas and betas."""


def _relu_tensors(model: Model) -> dict[str, str]:
    return {n.name: n.inputs[0] for n in model.graph.nodes if n.op == "Relu"}


def _dense(leaves: ActivationLeaves, rows: np.ndarray, tensors: dict[str, str], shapes: dict, S: int
           ) -> tuple[dict, dict, dict]:
    """float64 torch tensors for the leaves `rows`: signs [n, *shape], betas [n, S, *shape],
    logged alphas [n, S, n_z] with NaN where nothing was logged."""
    n = len(rows)
    offsets = np.concatenate([[0], np.cumsum(leaves.counts)])
    signs: dict = {}
    betas: dict = {}
    for r, j in enumerate(rows):
        for k in range(offsets[j], offsets[j + 1]):
            pos, idx, s = (int(v) for v in leaves.splits[k])
            z = tensors[leaves.relus[pos]]
            if z not in signs:
                size = int(np.prod(shapes[z]))
                signs[z] = torch.zeros(n, size, dtype=torch.float64)
                betas[z] = torch.zeros(n, S, size, dtype=torch.float64)
            signs[z][r, idx] = s
            betas[z][r, :, idx] = torch.as_tensor(np.maximum(leaves.betas[k], 0.0))
    return signs, betas, dense_alphas(leaves.alphas, rows, len(leaves), tensors, shapes, S)


def dense_alphas(sparse: dict, rows: np.ndarray, n_leaves: int, tensors: dict, shapes: dict, S: int) -> dict:
    """relu -> float64 [len(rows), S, n_z] from sparse (leaf, index, values), NaN where none was logged."""
    n = len(rows)
    where = np.full(n_leaves, -1)
    where[rows] = np.arange(n)
    alphas = {}
    for name, (leaf, index, values) in sparse.items():
        pick = where[leaf] >= 0
        if pick.any():
            a = torch.full((n, S, int(np.prod(shapes[tensors[name]]))), float("nan"), dtype=torch.float64)
            a[torch.as_tensor(where[leaf[pick]]), :, torch.as_tensor(index[pick])] = \
                torch.as_tensor(values[pick], dtype=torch.float64)
            alphas[name] = a
    return alphas


@dataclass(frozen=True)
class LeafRegion:
    """Where a chunk of leaves lives: lo / hi, the box [n_in] shared by all leaves or one
    box per leaf [n, n_in], cut by `ball` (centre, radius) when given."""

    lo: np.ndarray
    hi: np.ndarray
    ball: Optional[tuple] = None
    # The spec region's rows (A [K, n_in], b [K]: A x <= b) besides its box: each leaf's
    # bound is also taken over its box cut by them (input-split leaves; the checker does
    # the same, `verifier/checker/region64.py`).
    rows: Optional[tuple] = None


@dataclass(frozen=True)
class LeafParameters:
    """A chunk of leaves' splits and logged multipliers, as `_dense` makes them: signs /
    betas: tensor -> [n, n_z] / [n, S, n_z]; alphas: relu -> [n, S, n_z] (NaN: CROWN's
    default)."""

    signs: dict
    betas: dict
    alphas: dict


def float64_leaf_bounds(model: Model, n: int, region: LeafRegion, C: np.ndarray, d: np.ndarray,
                        params: LeafParameters, optimise: bool = False) -> tuple[np.ndarray, dict, dict, dict]:
    """Row bounds [n, S] of C y - d (+inf on infeasible leaves) by the engine in float64.

    The ball cuts every box of `region` with no SDP-CROWN bias: the checker does not
    re-derive it. With `optimise`, alphas and betas are optimised (alpha/beta-CROWN,
    from scratch) instead of `params`'. Returns the bounds, the alphas and betas used
    (per row, those that gave the bound) and the unstable masks [n, n_z] of the split
    tensors' intervals.
    """
    lo, hi, ball = region.lo, region.hi, region.ball
    signs, betas, alphas = params.signs, params.betas, params.alphas
    graph = model.graph
    ev = GraphEvaluator(graph, dtype=torch.float64)
    S = C.shape[0]
    tensors = _relu_tensors(model)
    shaped = {z: s.reshape(n, *graph.shapes[z]) for z, s in signs.items()}
    box = IntervalBounds(torch.tensor(lo).reshape(-1, *graph.input_shape).expand(n, *graph.input_shape),
                         torch.tensor(hi).reshape(-1, *graph.input_shape).expand(n, *graph.input_shape))
    if ball is not None:
        centre = torch.tensor(np.asarray(ball[0], np.float64)).reshape(1, *graph.input_shape)
        box = BallBox(box.lower, box.upper, centre.expand(n, *graph.input_shape),
                      torch.full((n,), float(ball[1]), dtype=torch.float64))
    Ct = torch.tensor(C, dtype=torch.float64)
    if optimise:
        opts = BoundOptions(method="alpha-crown", alpha_iterations=_REOPT_ITERATIONS, keep_betas=True,
                            sdp_crown=False)
        res = compute_bounds(graph, box, Ct, opts, want_upper=False, ev=ev, given=Given(splits=shaped or None))
    else:  # the logged parameters as they are (NaN alphas: the rule's default; projected into range)
        given_a = {k: v.reshape(n, S, *graph.shapes[tensors[k]]) for k, v in alphas.items()}
        given_b = {z: betas[z].reshape(n, S, *graph.shapes[z]) for z in signs}
        res = compute_bounds(graph, box, Ct, BoundOptions(method="crown", sdp_crown=False), want_upper=False, ev=ev,
                             given=Given(splits=shaped or None, alphas=given_a, betas=given_b))
    lb = res.lower
    used_a = {k: v.reshape(n, S, -1) for k, v in res.alphas.items()}
    used_b = {z: v.reshape(n, S, -1) for z, v in res.betas.items()}
    if not optimise:
        used_b = {z: used_b.get(z, betas[z].clamp(min=0.0)) for z in betas}
    table, infeasible = res.table, res.infeasible
    lb = lb.numpy() - d
    if region.rows is not None and res.linear is not None:
        lb = np.maximum(lb, under_rows(res.linear, box, region.rows, d))
    lb[infeasible.numpy()] = np.inf
    unstable = {z: ((table[z].lower < 0) & (table[z].upper > 0)).reshape(n, -1) for z in set(tensors.values())}
    return lb, used_a, used_b, unstable


def under_rows(linear, box, rows: tuple, d: np.ndarray) -> np.ndarray:
    """Lower bounds [n, S] of C y - d from CROWN's `linear` bound over each box of `box`
    cut by the region's rows (A x <= b, numpy: `bab.clipping.min_under_region`, as the
    search takes them): +inf on a box outside them."""
    A, b = (torch.tensor(np.asarray(v, np.float64), dtype=linear.A.dtype) for v in rows)
    return min_under_region(linear, box, A, -b).numpy() - d


_proved = _rows_proved  # the engine's rule, not the checker's


def _chunk_entry(model: Model, leaves: ActivationLeaves, rows: np.ndarray, disjunct, shapes: dict,
                 ball: Optional[tuple] = None) -> tuple[np.ndarray, list, dict]:
    """float64 claims [n, S], per-split betas (in the leaves' order) and sparse alphas for
    `rows` (over the root box cut by `ball` when given)."""
    C, d, strict, owner = spec_rows(disjunct)
    S, K = C.shape[0], len(disjunct.outputs)
    lo, hi = np.asarray(disjunct.region.lower), np.asarray(disjunct.region.upper)
    tensors = _relu_tensors(model)
    signs, betas, alphas = _dense(leaves, rows, tensors, shapes, S)
    region = LeafRegion(lo, hi, ball)
    lb, used_a, used_b, unstable = float64_leaf_bounds(model, len(rows), region, C, d,
                                                       LeafParameters(signs, betas, alphas))
    bad = ~_proved(lb, strict, owner, K)
    if bad.any():
        sub = np.nonzero(bad)[0]
        s2 = {z: v[sub] for z, v in signs.items()}
        lb2, a2, b2, _ = float64_leaf_bounds(model, len(sub), region, C, d, LeafParameters(s2, {}, {}),
                                             optimise=True)
        better = lb2 > lb[sub]                                        # [m, S]
        lb[sub] = np.maximum(lb[sub], lb2)
        pick = torch.as_tensor(better)[:, :, None]
        for k in used_a:
            if k in a2:
                used_a[k][sub] = torch.where(pick, a2[k], used_a[k][sub])
        for z in used_b:
            if z in b2:
                used_b[z][sub] = torch.where(pick, b2[z], used_b[z][sub])
        still = ~_proved(lb, strict, owner, K)
        if still.any():
            raise ActivationRederivationFailed(
                f"float64 bounds do not prove {int(still.sum())} of the leaves (worst row bound "
                f"{float(np.min(np.where(np.isfinite(lb), lb, 0)[still])):.3g})")
    offsets = np.concatenate([[0], np.cumsum(leaves.counts)])
    beta_rows = []
    for r, j in enumerate(rows):
        for k in range(offsets[j], offsets[j + 1]):
            pos, idx, _ = (int(v) for v in leaves.splits[k])
            beta_rows.append(used_b[tensors[leaves.relus[pos]]][r, :, idx].clamp(min=0.0).numpy())
    sparse = {}
    for name, a in used_a.items():
        z = tensors[name]
        mask = unstable[z] & ((signs[z] == 0) if z in signs else True)
        leaf, idx = torch.nonzero(mask, as_tuple=True)
        sparse[name] = (rows[leaf.numpy()], idx.numpy(), a[leaf, :, idx].numpy())
    return lb, beta_rows, sparse


def activation_split_entry(model: Model, entry: dict, disjunct, ball: Optional[tuple] = None) -> dict:
    """The certificate entry of one disjunct proved by activation split (float64 claims,
    over the root box cut by `ball` when given)."""
    leaves: ActivationLeaves = entry["leaves"]
    tensors = _relu_tensors(model)
    shapes = {z: tuple(model.graph.shapes[z]) for z in tensors.values()}
    S = spec_rows(disjunct)[0].shape[0]
    claims, betas, alphas = [], [], {}
    for s in range(0, len(leaves), _CHUNK):
        check_time()
        rows = np.arange(s, min(s + _CHUNK, len(leaves)))
        lb, b, a = _chunk_entry(model, leaves, rows, disjunct, shapes, ball)
        claims.append(lb)
        betas += b
        for k, v in a.items():
            alphas.setdefault(k, []).append(v)
    alphas_out = {}
    for k, parts in alphas.items():
        leaf, idx, vals = (np.concatenate([p[i] for p in parts]) for i in range(3))
        alphas_out[k] = {"leaf": encode_array(leaf), "index": encode_array(idx),
                         "values": encode_array(vals.reshape(-1, S))}
    root = {"lower": [float(v) for v in disjunct.region.lower], "upper": [float(v) for v in disjunct.region.upper]}
    return {"root": root, "kind": "activation-split", "method": "beta-crown",
            "leaves": {"relus": list(leaves.relus), "counts": encode_array(leaves.counts),
                       "splits": encode_array(leaves.splits.reshape(-1, 3)),
                       "betas": encode_array(np.asarray(betas).reshape(-1, S)),
                       "claims": encode_array(np.concatenate(claims)), "alphas": alphas_out}}
