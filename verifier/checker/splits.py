"""Activation-split proofs for the certificate checker: the split tree and the leaf bounds.

Trusted code. A leaf is a set of ReLU split decisions (`z_i >= 0` or `z_i <= 0` on
pre-activation neurons) on the disjunct's whole input box. The leaves prove the
disjunct when (1) they cover every input: their decision sets are the leaves of a
complete binary split tree, and (2) on each leaf, the spec rows are bounded above 0
by bounds re-derived here: intervals with the splits applied (an empty leaf is proved),
and the final CROWN pass with the leaf's alphas and beta terms (beta-CROWN).

Why beta terms are sound: on a leaf every split holds, `s_i z_i(x) >= 0` (s_i = +1 for
z_i >= 0, -1 for z_i <= 0). For beta_i >= 0, `c.f(x) - sum_i beta_i s_i z_i(x) <= c.f(x)`
on the leaf, so a lower bound of the left side over (a relaxation of) the leaf is a
lower bound of `c.f(x)` there. Negative betas are rejected, not clipped: a producer that
writes them is broken.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from verifier.checker.bounds64 import row_lower_bounds, split_interval_table
from verifier.checker.onnx_net import Network

__all__ = ["SplitLeaves", "read_leaves", "read_alphas", "dense_alphas", "tree_error", "leaf_bounds"]

Decision = tuple[str, int]  # (pre-activation tensor, flat index)


class SplitLeaves:
    """Leaves of one disjunct, validated: decisions per leaf, betas [total, S], alphas."""

    def __init__(self, decisions: list[dict[Decision, int]], offsets: np.ndarray, flat: list[tuple[str, int, int]],
                 betas: np.ndarray, alphas: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        self.decisions = decisions      # leaf -> {(tensor, index): sign}
        self.offsets = offsets          # leaf j owns rows offsets[j]:offsets[j + 1] of flat and betas
        self.flat = flat                # (tensor, index, sign) in the certificate's order
        self.betas = betas
        self.alphas = alphas            # relu name -> (leaf [K], index [K], values [K, S])

    def __len__(self) -> int:
        return len(self.decisions)


def _ints(a: np.ndarray, what: str, reject: Callable[[str], Exception]) -> np.ndarray:
    if not (np.isfinite(a).all() and np.array_equal(a, np.round(a)) and np.all(np.abs(a) < 2 ** 52)):
        raise reject(f"{what} must hold integers")
    return a.astype(np.int64)


def read_leaves(raw: Any, net: Network, S: int, decode: Callable[[Any, str], np.ndarray],
                reject: Callable[[str], Exception]) -> SplitLeaves:
    """Parse and validate the `leaves` object of an activation-split entry (see docs)."""
    if not isinstance(raw, dict):
        raise reject("leaves must be an object")
    relu_of = {l.name: l for l in net.layers if l.kind == "relu"}
    names = raw.get("relus")
    if not isinstance(names, list) or not all(isinstance(n, str) and n in relu_of for n in names):
        raise reject("leaves.relus must list ReLU node names of the model")
    counts = _ints(decode(raw.get("counts"), "leaves.counts").reshape(-1), "leaves.counts", reject)
    if counts.size == 0 or (counts < 0).any():
        raise reject("leaves.counts must be one count >= 0 per leaf (at least one leaf)")
    total = int(counts.sum())
    splits = _ints(decode(raw.get("splits"), "leaves.splits"), "leaves.splits", reject).reshape(-1)
    if splits.size != 3 * total:
        raise reject(f"leaves.splits must be [{total}, 3]")
    splits = splits.reshape(total, 3)
    betas = decode(raw.get("betas"), "leaves.betas")
    if betas.size != total * S:
        raise reject(f"leaves.betas must be [{total}, {S}]")
    betas = betas.reshape(total, S)
    if not np.isfinite(betas).all() or (betas < 0).any():
        raise reject("leaves.betas must be finite and >= 0")
    flat = []
    for pos, idx, sign in splits.tolist():
        if not 0 <= pos < len(names) or sign not in (1, -1):
            raise reject("a split names no listed ReLU or has a sign other than +1 / -1")
        z = relu_of[names[pos]].inputs[0]
        if not 0 <= idx < net.sizes[z]:
            raise reject(f"split index {idx} is outside ReLU '{names[pos]}'")
        flat.append((z, int(idx), int(sign)))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    decisions = []
    for j in range(counts.size):
        leaf = {(z, i): s for z, i, s in flat[offsets[j]:offsets[j + 1]]}
        if len(leaf) != counts[j]:
            raise reject(f"leaf {j} splits one neuron twice")
        decisions.append(leaf)
    return SplitLeaves(decisions, offsets, flat, betas, read_alphas(raw.get("alphas"), net, S, counts.size,
                                                                    decode, reject))


def read_alphas(rawa: Any, net: Network, S: int, n_leaves: int, decode: Callable[[Any, str], np.ndarray],
                reject: Callable[[str], Exception]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Sparse per-leaf alphas: relu name -> (leaf [K], index [K], values [K, S]), validated."""
    relu_of = {l.name: l for l in net.layers if l.kind == "relu"}
    alphas = {}
    rawa = rawa or {}
    if not isinstance(rawa, dict):
        raise reject("leaves.alphas must map ReLU node names to objects")
    for name, v in rawa.items():
        if name not in relu_of or not isinstance(v, dict):
            raise reject(f"leaves.alphas names '{name}', which is not a ReLU node of the model")
        leaf = _ints(decode(v.get("leaf"), f"alphas['{name}'].leaf").reshape(-1), "alpha leaves", reject)
        index = _ints(decode(v.get("index"), f"alphas['{name}'].index").reshape(-1), "alpha indices", reject)
        values = decode(v.get("values"), f"alphas['{name}'].values")
        n = net.sizes[relu_of[name].inputs[0]]
        if leaf.size != index.size or values.size != leaf.size * S or not np.isfinite(values).all():
            raise reject(f"alphas['{name}'] must be leaf [K], index [K] and finite values [K, {S}]")
        if ((leaf < 0) | (leaf >= n_leaves) | (index < 0) | (index >= n)).any():
            raise reject(f"alphas['{name}'] points outside the leaves or the ReLU")
        alphas[name] = (leaf, index, values.reshape(-1, S))
    return alphas


def dense_alphas(net: Network, alphas: dict, rows: np.ndarray, n_leaves: int, S: int) -> dict[str, np.ndarray]:
    """relu name -> [len(rows), S, n] slopes of the leaves `rows`; NaN (CROWN's default) where none is given."""
    where = np.full(n_leaves, -1)
    where[rows] = np.arange(len(rows))
    out = {}
    by_name = {l.name: l for l in net.layers if l.kind == "relu"}
    for name, (leaf, index, values) in alphas.items():
        pick = where[leaf] >= 0
        if pick.any():
            a = np.full((len(rows), S, net.sizes[by_name[name].inputs[0]]), np.nan)
            a[where[leaf[pick]], :, index[pick]] = values[pick]
            out[name] = a
    return out


def tree_error(decisions: list[dict[Decision, int]]) -> str:
    """'' when the decision sets cover every input (a complete split tree), else why not.

    Top down from the root (no decisions): a node is covered when some leaf has no
    decision beyond the node's own; otherwise there must be a neuron that every leaf
    under the node decides, with leaves of both signs, and both children must be
    covered (every input has z >= 0 or z <= 0). For an honest tree any such neuron
    works: a complete tree in which every leaf decides n, regrouped by n's sign, is
    again complete on each side. Overlapping leaves are harmless (both are proved).
    """
    if not decisions:
        return "no leaves"
    stack: list[tuple[list[int], dict[Decision, int]]] = [(list(range(len(decisions))), {})]
    while stack:
        idx, fixed = stack.pop()
        if any(len(decisions[j]) == len(fixed) for j in idx):
            continue  # that leaf's decisions are exactly the node's: it covers the node
        count: dict[Decision, int] = {}
        for j in idx:
            for key in decisions[j]:
                if key not in fixed:
                    count[key] = count.get(key, 0) + 1
        key = next((k for k, c in count.items() if c == len(idx)), None)
        if key is None:
            return f"the leaves do not form a complete split tree (near leaf {idx[0]})"
        for sign in (1, -1):
            side = [j for j in idx if decisions[j][key] == sign]
            if not side:
                z, i = key
                return f"no leaf covers {z}[{i}] {'>=' if sign > 0 else '<='} 0 (near leaf {idx[0]})"
            stack.append((side, {**fixed, key: sign}))
    return ""


def leaf_bounds(net: Network, leaves: SplitLeaves, rows: np.ndarray, root_lo: np.ndarray, root_hi: np.ndarray,
                C: np.ndarray, d: np.ndarray, ball: Optional[tuple] = None) -> tuple[np.ndarray, np.ndarray]:
    """(lower bounds [n, S] of C y - d, +inf on empty leaves; empty [n]) on the leaves `rows`
    (over the root box cut by the l2 `ball` (centre, radius) when given)."""
    n, S = len(rows), C.shape[0]
    signs: dict[str, np.ndarray] = {}
    extra: dict[str, np.ndarray] = {}
    for r, j in enumerate(rows):
        for k in range(leaves.offsets[j], leaves.offsets[j + 1]):
            z, i, s = leaves.flat[k]
            if z not in signs:
                signs[z] = np.zeros((n, net.sizes[z]))
                extra[z] = np.zeros((n, S, net.sizes[z]))
            signs[z][r, i] = s
            extra[z][r, :, i] = -s * leaves.betas[k]      # the Lagrangian's term -beta * s * z
    alphas = dense_alphas(net, leaves.alphas, rows, len(leaves), S)
    lo = np.broadcast_to(root_lo, (n, root_lo.size))
    hi = np.broadcast_to(root_hi, (n, root_hi.size))
    table, empty = split_interval_table(net, lo, hi, signs, ball)
    lb = row_lower_bounds(net, table, C, d, alphas or None, extra)
    lb[empty] = np.inf
    return lb, empty
