"""Domains of branch and bound as tensors on one device, never as lists of dicts.

An input-split domain is a box with the current lower bounds of every spec row over
it. Selecting, splitting and dropping domains are tensor operations on the batch.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

__all__ = ["DomainBatch"]

T = torch.Tensor


@dataclass(frozen=True)
class DomainBatch:
    """N input boxes [N, *input_shape] with row lower bounds lb [N, S] (of C y - d),
    a priority score [N] (lower means further from proved), the coefficients
    coef [N, S, n_in] of the linear bound that produced lb (for choosing splits), and
    linear constraints `cons_a x + cons_c <= 0` ([N, K, n_in], [N, K]) that every
    counterexample in the box satisfies (domain clipping; K = 0 without it)."""

    lower: T
    upper: T
    lb: T
    score: T
    coef: T
    cons_a: T
    cons_c: T

    def __len__(self) -> int:
        return int(self.lower.shape[0])

    def _map(self, fn) -> "DomainBatch":
        return DomainBatch(**{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def take(self, idx: T) -> "DomainBatch":
        return self._map(lambda t: t[idx])

    def concat(self, other: "DomainBatch") -> "DomainBatch":
        return DomainBatch(**{f.name: torch.cat([getattr(self, f.name), getattr(other, f.name)])
                              for f in dataclasses.fields(self)})

    def pop_worst(self, k: int) -> tuple["DomainBatch", "DomainBatch"]:
        """The k domains with the lowest score, and the rest."""
        n = len(self)
        if k >= n:
            return self, self.take(torch.zeros(0, dtype=torch.long, device=self.lower.device))
        order = torch.argsort(self.score)
        return self.take(order[:k]), self.take(order[k:])
