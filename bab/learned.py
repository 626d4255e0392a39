"""Nogoods learned from proved domains: BICCOS's cuts, kept in the space of split decisions.

A domain proved with split decisions S says that no counterexample has the activation
pattern S (on the closed pieces: a point with a split neuron at exactly 0 lies on both
sides, and the side S holds is proved). Inside the tree that proved it this says nothing
new: every other open domain parted from S at some neuron split the other way. BICCOS
("Scalable Neural Network Verification with Branch-and-bound Inferred Cutting Planes",
2024) strengthens such a set first: the decisions whose beta multiplier is zero in every
row of the proof are dropped, and the shorter set is proved again by a bound of its own
(the multipliers only suggest what the proof did not use; the new bound is what makes
the shorter set a fact). A proved shorter set speaks about other subtrees:

- a domain with every decision of a nogood lies inside its proved region: closed
  without a bound;
- a domain with all decisions of a nogood but one, that neuron still free, has its
  counterexamples (if any) on the other side of that neuron: the opposite decision is
  implied, a split for free that tightens the domain's bound (unit propagation, as a
  SAT solver's learnt clauses do; repeated while new decisions imply more).

BICCOS adds the cuts to the bound as constraints on the ReLU indicators; kept as
decisions, a nogood acts only when a domain meets all of it but one, which needs no
change to the bounding. The set is capped (the oldest go first).
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["Nogoods"]

T = torch.Tensor


class Nogoods:
    """Learned nogoods over the split tensors `sizes` (name -> neurons), flattened in
    that order into one decision vector [M] of int8 signs (+1 active, -1 inactive, 0 free)."""

    def __init__(self, sizes: dict[str, int], device: torch.device, limit: int = 2048,
                 propagation_rounds: int = 4) -> None:
        self.names = list(sizes)
        self.sizes = [sizes[z] for z in self.names]
        self.M = sum(self.sizes)
        self.device = device
        self.limit = limit
        self.propagation_rounds = propagation_rounds
        self.G = torch.zeros(0, self.M, dtype=torch.int8, device=device)
        self.stats = {"learned": 0, "closed": 0, "implied": 0, "strengthen_tried": 0}

    def __len__(self) -> int:
        return int(self.G.shape[0])

    def flat(self, splits: dict) -> T:
        """Split decisions (name -> [N, *shape] int8) as one [N, M] int8 matrix."""
        parts = [splits[z].reshape(splits[z].shape[0], -1) for z in self.names]
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def unflat(self, X: T, shapes: dict[str, tuple]) -> dict:
        out, start = {}, 0
        for z, n in zip(self.names, self.sizes):
            out[z] = X[:, start:start + n].reshape(X.shape[0], *shapes[z])
            start += n
        return out

    def add(self, rows: T) -> None:
        """Nogoods [K, M] (each a proved set of decisions, at least one nonzero)."""
        rows = rows[(rows != 0).any(1)]
        if not len(rows):
            return
        # Drop duplicates and those that a known nogood already closes (a superset of it).
        rows = torch.unique(rows, dim=0)
        if len(self):
            closed, _ = self._match(rows)
            rows = rows[~closed.any(1)]
        self.G = torch.cat([self.G, rows.to(torch.int8)])[-self.limit:]
        self.stats["learned"] += int(len(rows))

    def _match(self, X: T) -> tuple[T, T]:
        """(closed [N, K], unit [N, K]): domain n has every decision of nogood k, or all
        but one (that neuron free) and none against it. Read on the columns some nogood
        uses only."""
        cols = torch.nonzero((self.G != 0).any(0)).flatten()
        G = self.G[:, cols].float()
        Xc = X[:, cols].float()
        dot, both = Xc @ G.T, Xc.abs() @ G.abs().T      # agree - against, agree + against
        agree, against = (both + dot) / 2, (both - dot) / 2
        length = G.abs().sum(1).unsqueeze(0)
        free = against == 0
        return free & (agree == length), free & (agree == length - 1)

    def apply(self, X: T) -> tuple[T, T]:
        """Decisions [N, M] with the implied ones added, and which domains are closed [N]."""
        closed = torch.zeros(X.shape[0], dtype=torch.bool, device=X.device)
        if not len(self) or not X.shape[0]:
            return X, closed
        X = X.clone()
        for _ in range(self.propagation_rounds):
            full, unit = self._match(X)
            closed |= full.any(1)
            unit &= ~closed.unsqueeze(1)
            if not bool(unit.any()):
                break
            n_idx, k_idx = torch.nonzero(unit, as_tuple=True)
            # The one free neuron of each (domain, nogood) pair, set against the nogood.
            # Two pairs may set one neuron both ways: the next pass then finds a nogood
            # fully met and closes the domain (both its sides are proved).
            missing = (self.G[k_idx] != 0) & (X[n_idx] == 0)
            j = missing.float().argmax(1)
            X[n_idx, j] = -self.G[k_idx, j]
            self.stats["implied"] += int(len(n_idx))
        self.stats["closed"] += int(closed.sum())
        return X, closed

    def strengthened(self, X: T, betas: dict, proved: T) -> Optional[T]:
        """Candidates [K, M]: the decisions of the proved domains whose beta multiplier
        is positive in some row (betas: name -> [N, S, *shape]), where that drops at
        least one decision and keeps at least one. None when there is none."""
        idx = torch.nonzero(proved).flatten()
        if not len(idx):
            return None
        used = []
        for z, n in zip(self.names, self.sizes):
            b = betas.get(z)
            if b is None:
                used.append(torch.zeros(len(idx), n, dtype=torch.bool, device=X.device))
            else:
                used.append((b[idx].reshape(len(idx), b.shape[1], -1) > 0).any(1))
        keep = torch.cat(used, 1) if len(used) > 1 else used[0]
        S = X[idx]
        cand = torch.where(keep, S, torch.zeros_like(S))
        before, after = (S != 0).sum(1), (cand != 0).sum(1)
        ok = (after < before) & (after >= 1)
        if not bool(ok.any()):
            return None
        cand = torch.unique(cand[ok], dim=0)
        if len(self):
            closed, _ = self._match(cand)
            cand = cand[~closed.any(1)]
        return cand if len(cand) else None
