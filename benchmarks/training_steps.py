"""What a certified-training step costs over a clean one (issue 24's measure).

One SGD step = loss + backward + update on a batch of scikit-learn digits, one torch
thread, for the digits MLP 64-128-128-10 and a CNN of two convolutions and two linear
layers: the clean cross-entropy step, then `certified_loss` with IBP and CROWN-IBP at
eps 0.1 (tightness off: it is a diagnostic, not part of the step), taking turns in short
blocks. Prints milliseconds per step and the ratio to the clean step.

`--keep-heap` first calls `verifier.heap.keep_freed()` (glibc: freed blocks stay in the
heap for the next step instead of going back to the system and faulting in again), as
a training script may; it applies to every loss alike, the clean one included.

    python benchmarks/training_steps.py [--batch 128] [--reps 20] [--keep-heap]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import nn

from verifier import heap
from verifier.pytorch.training import certified_loss

from digits_nets import DigitsCNN, digits


def _steps_ms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, losses: dict, reps: int,
              block: int = 5) -> dict:
    """Milliseconds per step of each loss. The losses take turns in blocks of `block` steps,
    each after one untimed step (caches warm for that loss, as in a training loop), so that
    a change in the machine's load weighs on every loss alike and the ratios to the clean
    step hold where the absolute times drift."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    spent = dict.fromkeys(losses, 0.0)

    def step(loss_fn) -> None:
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        opt.step()

    for _ in range(max(1, reps // block)):
        for name, loss_fn in losses.items():
            step(loss_fn)
            start = time.perf_counter()
            for _ in range(block):
                step(loss_fn)
            spent[name] += time.perf_counter() - start
    return {name: t / (max(1, reps // block) * block) * 1e3 for name, t in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--keep-heap", action="store_true",
                        help="keep freed blocks in the heap (verifier.heap.keep_freed) before timing")
    args = parser.parse_args()
    if args.keep_heap and not heap.keep_freed():
        parser.error("--keep-heap needs glibc, which this process does not run on")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images, labels = digits()
    X, Y = images[:args.batch].reshape(args.batch, 64), labels[:args.batch]
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    losses = {
        "clean": lambda m, x, y: F.cross_entropy(m(x), y),
        "ibp": lambda m, x, y: certified_loss(m, x, y, args.eps, method="ibp")[0],
        "crown-ibp": lambda m, x, y: certified_loss(m, x, y, args.eps, method="crown-ibp")[0],
    }
    heap_note = ", heap kept" if args.keep_heap else ""
    print(f"| model | clean step | IBP | CROWN-IBP |  (batch {args.batch}, one thread{heap_note}, ms and x clean)")
    print("|---|---:|---:|---:|")
    for name, model, x in (("MLP 64-128-128-10", mlp, X), ("CNN 2 conv + 2 linear", DigitsCNN(), X.reshape(-1, 1, 8, 8))):
        ms = _steps_ms(model, x, Y, losses, args.reps)
        clean = ms["clean"]
        print(f"| {name} | {clean:.2f} | {ms['ibp']:.2f} ({ms['ibp'] / clean:.1f}x) | "
              f"{ms['crown-ibp']:.2f} ({ms['crown-ibp'] / clean:.1f}x) |")


if __name__ == "__main__":
    main()
