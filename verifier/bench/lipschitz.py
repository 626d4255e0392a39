"""Scaling benchmark: certified l2 bound and time vs depth for each method.

    python -m verifier.bench.lipschitz --depths 2 5 10 20 50 100 --width 80

Random Gaussian weights, each layer rescaled to spectral norm 1 so the naive bound
is 1 at every depth and the SDP methods show how much they recover. A method is
skipped at larger depths once one run exceeds ``--budget`` seconds.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from relaxations.lipschitz.network import FeedForward
from verifier.lipschitz import METHODS, lipschitz_of_network

__all__ = ["random_network", "main"]


def random_network(depth: int, width: int, activation: str = "relu", seed: int = 0) -> FeedForward:
    """``depth`` affine layers, input/hidden width ``width``, 10 outputs."""
    rng = np.random.default_rng(seed)
    ws = []
    for k in range(depth):
        w = rng.standard_normal((10 if k == depth - 1 else width, width))
        ws.append(w / np.linalg.norm(w, 2))
    return FeedForward(tuple(ws), (), activation)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 5, 10, 20, 50, 100])
    ap.add_argument("--width", type=int, default=80)
    ap.add_argument("--activation", default="relu")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--budget", type=float, default=120.0)
    ap.add_argument("--scs-eps", type=float, default=None,
                    help="SCS tolerance of the sdp-layerwise steps (default 1e-6)")
    args = ap.parse_args(argv)
    over: set[str] = set()
    print("| depth | method | L (certified) | time (s) | status |")
    print("|---:|---|---:|---:|---|")
    for depth in args.depths:
        net = random_network(depth, args.width, args.activation)
        for method in args.methods:
            if method in over:
                print(f"| {depth} | {method} | skipped | > {args.budget:.0f} at smaller depth | |")
                continue
            t0 = time.perf_counter()
            r = lipschitz_of_network(net, "2", method, scs_eps=args.scs_eps)
            dt = time.perf_counter() - t0
            status = r.solver_status if len(r.solver_status) < 60 else r.solver_status[:57] + "..."
            print(f"| {depth} | {method} | {r.value:.6g} | {dt:.2f} | {status} |", flush=True)
            if dt > args.budget:
                over.add(method)
    return 0


if __name__ == "__main__":
    sys.exit(main())
