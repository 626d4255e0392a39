"""Local Lipschitz bounds vs radius, against the global naive bound (docs/bench_lipschitz.md).

    python -m verifier.bench.lipschitz_local lipsdp
    python -m verifier.bench.lipschitz_local 256x2 --domains 30 --center C.npy

Prints one markdown row per (norm, radius, BaB budget): the interval bound, the linear
bound at the root, the BaB result, the global naive bound, domains and seconds.
"""
from __future__ import annotations

import argparse

import numpy as np

from models import load_onnx
from relaxations.lipschitz import FeedForward, load_lipsdp_mat
from relaxations.sdp.network import relu_mlp_from_graph
from verifier.lipschitz import naive_certificate
from verifier.lipschitz_local import LocalSearch, local_lipschitz

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("net", help="'lipsdp' (random_weights.mat) or a mnist_fc size such as 256x2")
    ap.add_argument("--center", default=None, help=".npy centre (mnist_fc; default 0.5 everywhere)")
    ap.add_argument("--radii", type=float, nargs="+", default=None)
    ap.add_argument("--domains", type=int, nargs="+", default=[1])
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--shared", default="../shared", help="the shared data folder (default ../shared)")
    args = ap.parse_args(argv)
    if args.net == "lipsdp":
        net = load_lipsdp_mat(f"{args.shared}/models/lipsdp/random_weights.mat")
        x0 = np.array([1.0, -0.5])
        radii = args.radii or [0.001, 0.01, 0.05, 0.5, 2.0]
    else:
        w, b = relu_mlp_from_graph(load_onnx(f"{args.shared}/bench/2022_mnist_fc/onnx/mnist-net_{args.net}.onnx"))
        net = FeedForward(tuple(w), tuple(b), "relu")
        x0 = np.load(args.center).reshape(-1) if args.center else np.full(net.widths[0], 0.5)
        radii = args.radii or [0.001, 0.01, 0.05]
    print("| net | norm | radius | BaB budget | interval | linear (root) | BaB | global naive | domains | time (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for norm in ("inf", "2"):
        naive = naive_certificate(net, norm)[0]
        for r in radii:
            for d in args.domains:
                res = local_lipschitz(net, x0, r, norm, search=LocalSearch(max_domains=d, timeout=args.timeout))
                print(f"| {args.net} | l{norm} | {r} | {d} | {max(res.interval):.4g} | {max(res.root):.4g} | "
                      f"{res.value:.4g} | {naive:.4g} | {res.domains} | {res.time_s:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
