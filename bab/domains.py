"""Domains of branch and bound as tensors on one device, never as lists of dicts.

An input-split domain is a box with the current lower bounds of every spec row over
it. Selecting, splitting and dropping domains are tensor operations on the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DomainBatch"]

T = torch.Tensor


@dataclass(frozen=True)
class DomainBatch:
    """N input boxes [N, *input_shape] with row lower bounds lb [N, S] (of C y - d),
    a priority score [N] (lower means further from proved) and the coefficients
    coef [N, S, n_in] of the linear bound that produced lb (for choosing splits)."""

    lower: T
    upper: T
    lb: T
    score: T
    coef: T

    def __len__(self) -> int:
        return int(self.lower.shape[0])

    @staticmethod
    def empty_like(lower: T, S: int) -> "DomainBatch":
        n_shape = (0, *lower.shape[1:])
        n_in = lower[0].numel()
        return DomainBatch(lower.new_zeros(n_shape), lower.new_zeros(n_shape), lower.new_zeros(0, S),
                           lower.new_zeros(0), lower.new_zeros(0, S, n_in))

    def take(self, idx: T) -> "DomainBatch":
        return DomainBatch(self.lower[idx], self.upper[idx], self.lb[idx], self.score[idx], self.coef[idx])

    def concat(self, other: "DomainBatch") -> "DomainBatch":
        return DomainBatch(torch.cat([self.lower, other.lower]), torch.cat([self.upper, other.upper]),
                           torch.cat([self.lb, other.lb]), torch.cat([self.score, other.score]),
                           torch.cat([self.coef, other.coef]))

    def pop_worst(self, k: int) -> tuple["DomainBatch", "DomainBatch"]:
        """The k domains with the lowest score, and the rest."""
        n = len(self)
        if k >= n:
            return self, self.take(torch.zeros(0, dtype=torch.long, device=self.lower.device))
        order = torch.argsort(self.score)
        return self.take(order[:k]), self.take(order[k:])
