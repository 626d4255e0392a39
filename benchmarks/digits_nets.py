"""What the digits benchmark scripts share: the data and the two-convolution CNN.

Imported by the scripts beside it (`python benchmarks/<script>.py` puts this folder on
the import path); not part of the nncert packages.
"""
from __future__ import annotations

import torch
from sklearn.datasets import load_digits
import torch.nn.functional as F
from torch import nn

__all__ = ["digits", "DigitsCNN", "trained_cnn"]


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 digits as images [N, 1, 8, 8] in [0, 1] and labels [N]."""
    d = load_digits()
    return torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8), torch.tensor(d.target)


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions (the second strided to 4x4) and two linear layers, ReLU between."""

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 100) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, channels[0], 3, padding=1)
        self.c2 = nn.Conv2d(channels[0], channels[1], 3, stride=2, padding=1)
        self.l1 = nn.Linear(channels[1] * 4 * 4, hidden)
        self.l2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.l2(torch.relu(self.l1(x.flatten(1))))


def trained_cnn(X: torch.Tensor, Y: torch.Tensor, epochs: int = 40, count: int = 100) -> tuple[DigitsCNN, torch.Tensor]:
    """A DigitsCNN with 8 and 16 channels trained normally (Adam, seed 0) on the first 1,400
    digits, in eval mode, and the indices of the first `count` test digits (from 1,400 on)
    it classifies correctly: the l2 and torch-module benchmarks' net and points."""
    torch.manual_seed(0)
    net = DigitsCNN(channels=(8, 16), hidden=64)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for _ in range(epochs):
        for i in range(0, 1400, 64):
            opt.zero_grad()
            F.cross_entropy(net(X[i:i + 64]), Y[i:i + 64]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        right = (net(X[1400:]).argmax(1) == Y[1400:]).nonzero().flatten()[:count] + 1400
    return net, right
