"""What proved each leaf of a branch-and-bound search, kept for certificates.

For input split the leaves are boxes that tile the root region; each carries the
lower bounds of the spec rows that the bound computation claimed on it. A checker
re-derives those bounds independently (it never trusts the claimed numbers) and
checks that the leaves cover the root.

For activation split a leaf is a set of ReLU split decisions on the same input region;
it carries the alpha slopes and beta multipliers (beta-CROWN) of the bound that proved
it, so that a checker can replay that bound in float64 and check that the leaves'
decision sets form a complete binary split tree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

__all__ = ["ProofLog", "ActivationProofLog", "ActivationLeaves", "ConjunctionProofs"]


@dataclass
class ProofLog:
    """Leaves as numpy arrays: lower/upper [L, n_in], claimed row bounds [L, S].

    With alpha-CROWN (`method`), each leaf also keeps the lower slopes of the bound that
    proved it, per spec row, for the neurons unstable on the leaf (elsewhere the slope
    does not enter the bound): relu -> (leaf [K], flat index [K], values [K, S]), as
    `ActivationLeaves.alphas`. Other neurons keep CROWN's default slope.
    """

    lowers: list = field(default_factory=list)
    uppers: list = field(default_factory=list)
    claims: list = field(default_factory=list)
    method: str = "crown"
    _alphas: dict = field(default_factory=dict)     # relu -> list of (leaf [K], index [K], values [K, S])

    def add_leaves(self, lower: torch.Tensor, upper: torch.Tensor, lb: torch.Tensor,
                   alphas: Optional[dict] = None, unstable: Optional[dict] = None) -> None:
        """alphas: relu -> [n, S, *shape] slopes; unstable: relu -> bool [n, *shape] (whose alpha matters)."""
        n = lower.shape[0]
        base = len(self)
        for relu, a in (alphas or {}).items():
            if unstable is None or relu not in unstable or n == 0:
                continue
            leaf, idx = torch.nonzero(unstable[relu].reshape(n, -1), as_tuple=True)
            vals = a.reshape(n, a.shape[1], -1)[leaf, :, idx]
            self._alphas.setdefault(relu, []).append(
                ((leaf + base).cpu().numpy(), idx.cpu().numpy(), vals.detach().cpu().double().numpy()))
        self.lowers.append(lower.detach().reshape(n, -1).cpu().double().numpy())
        self.uppers.append(upper.detach().reshape(n, -1).cpu().double().numpy())
        self.claims.append(lb.detach().cpu().double().numpy())

    def leaves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.lowers:
            return np.zeros((0, 0)), np.zeros((0, 0)), np.zeros((0, 0))
        return np.concatenate(self.lowers), np.concatenate(self.uppers), np.concatenate(self.claims)

    def alphas(self) -> dict:
        """relu -> (leaf [K], flat index [K], values [K, S]) over all leaves (empty without alphas)."""
        return {k: tuple(np.concatenate([p[i] for p in v]) for i in range(3)) for k, v in self._alphas.items()}

    def __len__(self) -> int:
        return sum(len(x) for x in self.lowers)


@dataclass
class ActivationLeaves:
    """Activation-split leaves in columns (numpy), as `ActivationProofLog.leaves()` returns them.

    relus: ReLU node names; a split is (position in `relus`, flat index into the ReLU's
    input, sign +1 for z >= 0 / -1 for z <= 0). Leaf j owns `counts[j]` consecutive
    rows of `splits` and `betas` (betas [total, S]: the multiplier of each split, per
    spec row). alphas: relu name -> (leaf [K], flat index [K], values [K, S]) for the
    unstable, unsplit neurons of each leaf (others keep CROWN's default slope).
    claims [L, S]: the search's row bounds (+inf on a leaf whose splits are infeasible).
    """

    relus: list
    counts: np.ndarray
    splits: np.ndarray
    betas: np.ndarray
    alphas: dict
    claims: np.ndarray

    def __len__(self) -> int:
        return int(self.counts.size)


@dataclass
class ActivationProofLog:
    """What proved each leaf of an activation-split search: its split decisions, and the
    alpha slopes and beta multipliers (per spec row) of the bound that proved it.

    Recorded only when a certificate is asked for; each proved batch of children is
    stored sparsely (the decisions, the betas at split neurons, the alphas of unstable
    unsplit neurons), so memory grows with the number of leaves times their depth.
    """

    relus: list
    _leaf_count: int = 0
    _splits: list = field(default_factory=list)     # [k, 4] int64: leaf, relu position, index, sign
    _betas: list = field(default_factory=list)      # [k, S]
    _alphas: dict = field(default_factory=dict)     # relu -> list of (leaf [K], index [K], values [K, S])
    _claims: list = field(default_factory=list)     # [n, S]

    def add_leaves(self, splits: dict, tensors: dict, lb: torch.Tensor, alphas: dict, betas: dict,
                   unstable: dict) -> None:
        """Record the leaves of one batch. splits: tensor -> signs [n, *shape]; tensors:
        relu -> its input tensor; alphas / betas: relu / tensor -> [n, S, *shape] (missing: none);
        unstable: tensor -> bool [n, *shape] (neurons whose alpha matters)."""
        n = int(lb.shape[0])
        if n == 0:
            return
        base = self._leaf_count
        rows = []
        for pos, relu in enumerate(self.relus):
            z = tensors[relu]
            if z not in splits or any(tensors[r] == z for r in self.relus[:pos]):
                continue  # a tensor read by two ReLUs is recorded once
            sign = splits[z].reshape(n, -1)
            leaf, idx = torch.nonzero(sign, as_tuple=True)
            s = sign[leaf, idx].long()
            rows.append((torch.stack([leaf + base, torch.full_like(leaf, pos), idx, s], 1),
                         None if z not in betas else betas[z].reshape(n, betas[z].shape[1], -1)[leaf, :, idx]))
        S = int(lb.shape[1])
        for r, b in rows:
            self._splits.append(r.cpu().numpy())
            self._betas.append(np.zeros((len(r), S)) if b is None else b.detach().cpu().double().numpy())
        for relu, a in alphas.items():
            z = tensors.get(relu)
            if z is None or z not in unstable:
                continue
            mask = unstable[z].reshape(n, -1) & (splits[z].reshape(n, -1) == 0 if z in splits else True)
            leaf, idx = torch.nonzero(mask, as_tuple=True)
            vals = a.reshape(n, a.shape[1], -1)[leaf, :, idx]
            self._alphas.setdefault(relu, []).append(
                ((leaf + base).cpu().numpy(), idx.cpu().numpy(), vals.detach().cpu().double().numpy()))
        self._claims.append(lb.detach().cpu().double().numpy())
        self._leaf_count += n

    def leaves(self) -> ActivationLeaves:
        """All leaves, splits grouped by leaf (stable sort keeps each leaf's order)."""
        S = self._claims[0].shape[1] if self._claims else 0
        sp = np.concatenate(self._splits) if self._splits else np.zeros((0, 4), np.int64)
        be = np.concatenate(self._betas) if self._betas else np.zeros((0, S))
        order = np.argsort(sp[:, 0], kind="stable")
        sp, be = sp[order], be[order]
        counts = np.bincount(sp[:, 0], minlength=self._leaf_count) if len(sp) else np.zeros(self._leaf_count, int)
        alphas = {k: tuple(np.concatenate([p[i] for p in v]) for i in range(3)) for k, v in self._alphas.items()}
        claims = np.concatenate(self._claims) if self._claims else np.zeros((0, S))
        return ActivationLeaves(list(self.relus), counts.astype(np.int64), sp[:, 1:], be, alphas, claims)

    def __len__(self) -> int:
        return self._leaf_count


@dataclass
class ConjunctionProofs:
    """One activation-split proof log per conjunction (`bab.per_conjunction`): the
    disjunct has no counterexample when no conjunction has one, so a proof of each,
    every leaf proving its own conjunction only, proves the disjunct."""

    parts: list = field(default_factory=list)       # (conjunction index, ActivationProofLog)
