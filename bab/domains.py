"""Domains of branch and bound as tensors on one device, never as lists of dicts.

Every kind of domain is a frozen batch of tensors whose first dimension is the domain
(`Batch`): input boxes (`DomainBatch`), ReLU split decisions (`SplitDomains`). The
search keeps them in a `DomainStore`, which pops the worst domains in one tensor
operation and pushes children back; nothing is moved to the host per domain.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

import torch

__all__ = ["Batch", "DomainBatch", "SplitDomains", "DomainStore"]

T = torch.Tensor
B = TypeVar("B", bound="Batch")


@dataclass(frozen=True)
class Batch:
    """A frozen batch of domains: every field is a tensor [N, ...] or a dict of them.

    Subclasses declare their fields and must have `score` [N] (lower: further from
    proved, popped first).
    """

    def __len__(self) -> int:
        return int(self.score.shape[0])  # type: ignore[attr-defined]

    def _map(self: B, fn) -> B:
        def one(v):
            return {k: fn(x) for k, x in v.items()} if isinstance(v, dict) else fn(v)
        return type(self)(**{f.name: one(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def take(self: B, idx: T) -> B:
        """The domains `idx` (indices or a boolean mask), in that order."""
        return self._map(lambda t: t[idx])

    def concat(self: B, other: B) -> B:
        def cat(a, b):
            return {k: torch.cat([v, b[k]]) for k, v in a.items()} if isinstance(a, dict) else torch.cat([a, b])
        return type(self)(**{f.name: cat(getattr(self, f.name), getattr(other, f.name))
                             for f in dataclasses.fields(self)})

    def pop_worst(self: B, k: int) -> tuple[B, B]:
        """The k domains with the lowest score, and the rest."""
        n = len(self)
        if k >= n:
            return self, self.take(torch.zeros(0, dtype=torch.long, device=self.score.device))  # type: ignore
        order = torch.argsort(self.score)  # type: ignore[attr-defined]
        return self.take(order[:k]), self.take(order[k:])


@dataclass(frozen=True)
class DomainBatch(Batch):
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


@dataclass(frozen=True)
class SplitDomains(Batch):
    """N activation-split domains over the problem's whole input region.

    splits: tensor -> int8 signs [N, *shape] (+1: z >= 0, -1: z <= 0, 0: free);
    lb [N, S]; score [N]; branch [N, 2]: the next split chosen when the domain was
    bounded (ReLU index, flat neuron index), -1 when nothing is left to split.
    alphas / betas: the best alpha-CROWN slopes and beta multipliers found for the
    domain, kept compactly for its children's warm start (Relu node / split tensor ->
    float16 [N, S, U] over the U neurons unstable at the root; empty without warm starts).
    more [N, k, 2]: further split choices (BaBSR order) for rounds that split several.
    """

    splits: dict
    lb: T
    score: T
    branch: T
    alphas: dict = dataclasses.field(default_factory=dict)
    betas: dict = dataclasses.field(default_factory=dict)
    more: T = dataclasses.field(default_factory=lambda: torch.zeros(0, 0, 2, dtype=torch.long))


class DomainStore:
    """The open domains of one search: pop the worst in batches, push children.

    Best-first by score (a domain's worst row gap, or for input split the smallest
    objective seen in it). With `depth_first` on (when memory is short), the newest
    domains are popped instead: children are finished before the frontier grows, so
    the store stays about depth x batch in size instead of growing with the tree.
    """

    def __init__(self, domains: Batch, depth_first: bool = False) -> None:
        self._domains = domains
        self.depth_first = depth_first

    def __len__(self) -> int:
        return len(self._domains)

    @property
    def domains(self) -> Batch:
        return self._domains

    def pop(self, k: int) -> Batch:
        if self.depth_first:
            n = len(self._domains)
            dev = self._domains.score.device  # type: ignore[attr-defined]
            idx = torch.arange(n, device=dev)
            batch, self._domains = self._domains.take(idx[max(0, n - k):]), self._domains.take(idx[:max(0, n - k)])
            return batch
        batch, self._domains = self._domains.pop_worst(k)
        return batch

    def push(self, domains: Batch) -> None:
        self._domains = self._domains.concat(domains)
