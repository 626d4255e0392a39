"""alpha-CROWN's hand-written Adam matches torch.optim.Adam step for step."""
from __future__ import annotations

import torch

from relaxations.alpha import _Adam


def test_adam_matches_torch() -> None:
    torch.manual_seed(0)
    target = torch.randn(5, 3)
    a = torch.zeros(5, 3, requires_grad=True)
    b = torch.zeros(5, 3, requires_grad=True)
    ours = _Adam([a], lr=0.1)
    ref = torch.optim.Adam([b], lr=0.1)
    for _ in range(25):
        loss_a = ((a - target) ** 4).sum()
        ours.step(torch.autograd.grad(loss_a, [a]))
        ref.zero_grad()
        ((b - target) ** 4).sum().backward()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
