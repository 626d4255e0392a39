"""Certified training methods side by side on digits (issue 24's training benchmark).

For each model (the digits MLP 64-128-128-10, a CNN with max pooling, a small residual
CNN with batch normalisation) and each method (ibp, crown-ibp, sabr, mtl-ibp) at each
l-inf radius, and crown-ibp against one l2 radius: train with a warm-up and a smooth
ramp, then on the 397 test points report clean accuracy, PGD-robust accuracy, the share
verified by IBP, CROWN and alpha-CROWN bounds (batched `compute_bounds`, rounding margins
on: what verification uses), seconds per epoch and the IBP tightness at the end. A
verified share above the PGD-robust share would be a soundness bug: the script exits 1.

    python benchmarks/training_methods.py [--epochs 30] [--eps 0.05 0.1 0.2] [--l2 0.5]
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from relaxations import BallBox, BoundOptions, IntervalBounds, compute_bounds
from verifier.pytorch.training import (CertifiedOptions, EpsilonSchedule, Perturbation, adversarial_points,
                               certified_loss, ibp_tightness, margin_matrix, module_graph)

from digits_nets import digits


class PoolCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.l1 = nn.Linear(32 * 4 * 4, 100)
        self.l2 = nn.Linear(100, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(self.pool(torch.relu(self.c1(x)))))
        return self.l2(torch.relu(self.l1(x.flatten(1))))


class ResCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.c1(x)))
        h = torch.relu(h + self.c2(h))
        return self.fc(torch.relu(self.down(h)).flatten(1))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 10))


MODELS = {"MLP": mlp, "CNN+MaxPool": PoolCNN, "ResCNN+BN": ResCNN}


def train(make, x: torch.Tensor, y: torch.Tensor, method: str, eps: float, norm: str, epochs: int) -> tuple:
    torch.manual_seed(0)
    net = make()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    warmup, ramp = max(1, epochs // 10), max(1, epochs // 2)
    schedule = EpsilonSchedule(eps, warmup, ramp, kind="smooth")
    steps = math.ceil(len(x) / 128)
    options = CertifiedOptions(perturbation=Perturbation(norm=norm))
    start = time.time()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x))
        for k in range(steps):
            idx = perm[k * 128:(k + 1) * 128]
            t = epoch + k / steps
            progress = min(max((t - warmup) / ramp, 0.0), 1.0)
            loss, _ = certified_loss(net, x[idx], y[idx], schedule(t), method=method, beta=1.0 - progress,
                                     kappa=1.0 - progress, options=options)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            opt.step()
    return net.eval(), (time.time() - start) / epochs


def verified(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, method: str) -> float:
    graph = module_graph(net, (1, *x.shape[1:]))
    c = x.unsqueeze(1)
    lo, hi = (c - eps).clamp(0, 1), (c + eps).clamp(0, 1)
    box = BallBox(lo, hi, c, torch.full((len(x),), eps)) if norm == "2" else IntervalBounds(lo, hi)
    with torch.no_grad():
        lb = compute_bounds(graph, box, margin_matrix(y, 10), BoundOptions(method=method), want_upper=False).lower
    return float((lb > 0).all(1).float().mean())


def pgd_robust(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str) -> float:
    if norm == "2":   # l2 PGD: normalised gradient steps, projected on the ball, then the range
        adv = x.clone()
        for _ in range(40):
            adv.requires_grad_(True)
            (g,) = torch.autograd.grad(F.cross_entropy(net(adv), y), adv)
            g = g / g.reshape(len(x), -1).norm(dim=1).clamp_min(1e-12).reshape(-1, 1, 1, 1)
            d = adv.detach() + 0.1 * eps * g - x
            n = d.reshape(len(x), -1).norm(dim=1).reshape(-1, 1, 1, 1)
            adv = (x + d * torch.clamp(eps / n.clamp_min(1e-12), max=1.0)).clamp(0, 1)
    else:
        adv = adversarial_points(net, x, y, eps, CertifiedOptions(attack_steps=40, attack_step=0.1))
    with torch.no_grad():
        return float((net(adv).argmax(1) == y).float().mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--l2", type=float, default=0.5)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    X, Y = digits()
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    xtr, ytr, xte, yte = X[order[:1400]], Y[order[:1400]], X[order[1400:]], Y[order[1400:]]
    runs = [(m, e, "inf") for e in args.eps for m in ("ibp", "crown-ibp", "sabr", "mtl-ibp")]
    if args.l2 > 0:   # (0: none; over a ball the intermediate bounds walk dense, minutes on the CNNs)
        runs += [("crown-ibp", args.l2, "2")]
    print("| model | method | ball | clean | PGD-robust | IBP | CROWN | alpha-CROWN | s/epoch | IBP tightness |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    bad = False
    for name in args.models:
        for method, eps, norm in runs:
            net, secs = train(MODELS[name], xtr, ytr, method, eps, norm, args.epochs)
            with torch.no_grad():
                clean = float((net(xte).argmax(1) == yte).float().mean())
                tight = float(ibp_tightness(net, xte).nanmean())
            robust = pgd_robust(net, xte, yte, eps, norm)
            shares = [verified(net, xte, yte, eps, norm, m) for m in ("ibp", "crown", "alpha-crown")]
            ball = f"l-inf {eps}" if norm == "inf" else f"l2 {eps}"
            print(f"| {name} | {method} | {ball} | {clean:.3f} | {robust:.3f} | {shares[0]:.3f} | {shares[1]:.3f} | "
                  f"{shares[2]:.3f} | {secs:.2f} | {tight:.3f} |", flush=True)
            if max(shares) > robust + 1e-9:
                print(f"UNSOUND: {name} {method} {ball}: verified {max(shares):.3f} > PGD-robust {robust:.3f}")
                bad = True
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
