"""What proved each leaf of a branch-and-bound search, kept for certificates.

For input split the leaves are boxes that tile the root region; each carries the
lower bounds of the spec rows that the bound computation claimed on it. A checker
re-derives those bounds independently (it never trusts the claimed numbers) and
checks that the leaves cover the root.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["ProofLog"]


@dataclass
class ProofLog:
    """Leaves as numpy arrays: lower/upper [L, n_in], claimed row bounds [L, S]."""

    lowers: list = field(default_factory=list)
    uppers: list = field(default_factory=list)
    claims: list = field(default_factory=list)
    method: str = "crown"

    def add_leaves(self, lower: torch.Tensor, upper: torch.Tensor, lb: torch.Tensor) -> None:
        n = lower.shape[0]
        self.lowers.append(lower.detach().reshape(n, -1).cpu().double().numpy())
        self.uppers.append(upper.detach().reshape(n, -1).cpu().double().numpy())
        self.claims.append(lb.detach().cpu().double().numpy())

    def leaves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.lowers:
            return np.zeros((0, 0)), np.zeros((0, 0)), np.zeros((0, 0))
        return np.concatenate(self.lowers), np.concatenate(self.uppers), np.concatenate(self.claims)

    def __len__(self) -> int:
        return sum(len(x) for x in self.lowers)
