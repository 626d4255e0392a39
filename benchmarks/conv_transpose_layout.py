"""What a convolution's backward step (the transposed convolution of CROWN's coefficients)
costs on this CPU in torch's default layout and from channels-last coefficients, for
the shapes the searches and certified training meet: one thread, no autograd (branch and
bound) and with it (a training step's backward), milliseconds per call.

    python benchmarks/conv_transpose_layout.py [--reps 20]

Columns: the default layout; channels-last coefficients as given (what a pass kept in
that layout would pay); converted to channels-last and back around the call (what
`relaxations/ops/conv.py` does for a strided transpose onto several channels).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

# name, rows (domains x spec rows), out channels of the convolution, its in channels,
# the coefficients' side, kernel, stride, padding, output padding
CASES = [
    ("oval21 base conv1 (s2)", 576, 8, 3, 16, 4, 2, 1, 0),
    ("oval21 base conv2 (s2)", 576, 16, 8, 8, 4, 2, 1, 0),
    ("digits CNN c2 (s2)", 1152, 32, 16, 4, 3, 2, 1, 1),
    ("s2, 32 -> 16 on 14x14", 576, 32, 16, 14, 4, 2, 1, 0),
    ("s2, 16 -> 1 on 14x14", 576, 16, 1, 14, 3, 2, 1, 1),
    ("s1, 8 -> 8 on 16x16", 576, 8, 8, 16, 3, 1, 1, 0),
    ("s1, 16 -> 16 on 32x32", 288, 16, 16, 32, 3, 1, 1, 0),
    ("verivital avgpool conv (s1, 32 -> 1)", 576, 32, 1, 27, 2, 1, 0, 0),
]


def _ms(f, reps: int) -> float:
    f()
    f()
    start = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - start) / reps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print("| shape | no grad: default | channels-last given | converted | with grad: default | converted |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, n, co, ci, side, k, s, p, op in CASES:
        A = torch.randn(n, co, side, side)
        W = torch.randn(co, ci, k, k)
        last = A.contiguous(memory_format=torch.channels_last)

        def call(a: torch.Tensor, w: torch.Tensor, convert: bool) -> torch.Tensor:
            a = a.contiguous(memory_format=torch.channels_last) if convert else a
            out = F.conv_transpose2d(a, w, stride=s, padding=p, output_padding=op)
            return out.contiguous() if convert else out

        def plain(a=A, convert=False):
            with torch.no_grad():
                call(a, W, convert)

        def grad(convert: bool):
            a, w = A.clone().requires_grad_(), W.clone().requires_grad_()
            call(a, w, convert).sum().backward()

        cols = [_ms(lambda: plain(), args.reps), _ms(lambda: plain(last), args.reps),
                _ms(lambda: plain(convert=True), args.reps), _ms(lambda: grad(False), args.reps),
                _ms(lambda: grad(True), args.reps)]
        print(f"| {name} | " + " | ".join(f"{c:.1f}" for c in cols) + " |", flush=True)


if __name__ == "__main__":
    main()
