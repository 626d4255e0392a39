"""Benchmark: CROWN, alpha-CROWN, full SDP and low-rank SDP on the BM-r MNIST MLPs.

    python -m verifier.bench.sdp [--images 15] [--eps 0.1] [--row-time 20] [--full-sdp]

Models: ``../shared/models/bm_r/{ADV,LPD,NOR}-MNIST.mat`` (784-100-100-10; the
first layer reads the image flattened in column-major order, as MATLAB stores it).
Images: the centres of the ``mnist_fc`` specs (recovered from the clipped boxes);
the label is the class in every ``Y_j >= Y_label`` row. An image is certified when
every margin ``y_label - y_j`` has a positive certified lower bound; the SDPs are run
only on the rows alpha-CROWN leaves open (target 0: the low-rank method stops once a
row is proved), and an image is abandoned at its first row the low-rank method
cannot prove. ``--no-target`` runs each open row to its iteration/time limit instead,
to report how far above 0 the bound gets.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch
from scipy.io import loadmat

import vnnlib
from relaxations.sdp import mlp_forward
from verifier.sdp import SdpNetwork, SdpOptions, certify_rows, graph_from_weights, pre_activation_bounds
from verifier.solvers.burer_monteiro import LowRankOptions

__all__ = ["load_bm_model", "load_image", "main"]

SHARED = Path(__file__).resolve().parents[3] / "shared"


def load_bm_model(name: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Weights of a BM-r MNIST model, first layer re-indexed to row-major images."""
    m = loadmat(str(SHARED / "models" / "bm_r" / f"{name}-MNIST.mat"))
    ws = [np.asarray(w, dtype=np.float64) for w in m["W"][0]]
    bs = [np.asarray(b, dtype=np.float64).reshape(-1) for b in m["b"][0]]
    perm = np.arange(784).reshape(28, 28).ravel(order="F")
    w0 = np.zeros_like(ws[0])
    w0[:, perm] = ws[0]
    return [w0] + ws[1:], bs


def load_image(index: int) -> tuple[np.ndarray, int]:
    path = SHARED / "bench" / "2022_mnist_fc" / "vnnlib" / f"prop_{index}_0.03.vnnlib"
    spec = vnnlib.load(str(path), (1, 784), 10)
    reg = spec.disjuncts[0].region
    lo, hi, eps = np.asarray(reg.lower).ravel(), np.asarray(reg.upper).ravel(), 0.03
    x = np.where(lo <= 1e-9, np.maximum(hi - eps, 0.0), np.where(hi >= 1 - 1e-9, np.minimum(lo + eps, 1.0),
                                                                   (lo + hi) / 2))
    label = int(re.search(r"label: (\d+)", path.read_text()).group(1))
    return x, label


def _run_image(ws, bs, graph, x, label, eps, args) -> dict:
    lo, hi = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    C = np.array([np.eye(10)[label] - np.eye(10)[j] for j in range(10) if j != label])
    out: dict = {"correct": int(np.argmax(mlp_forward(ws, bs, x))) == label}
    t0 = time.perf_counter()
    pl, pu, crown = pre_activation_bounds(graph, lo, hi, C)
    out["crown"] = (float(crown.min()), time.perf_counter() - t0)
    t0 = time.perf_counter()
    _, _, alpha = pre_activation_bounds(graph, lo, hi, C, method="alpha-crown")
    out["alpha"] = (float(alpha.min()), time.perf_counter() - t0)
    open_rows = [int(r) for r in np.argsort(alpha) if alpha[r] <= 0]
    best, lr_time, lr_ok = alpha.copy(), 0.0, out["correct"]
    net = SdpNetwork(ws, bs, lo, hi, pl, pu)
    opts = SdpOptions(lowrank=LowRankOptions(rank=args.rank, max_rank=args.rank, time_limit_s=args.row_time))
    for r in open_rows:
        b, _, st = certify_rows(net, C[r:r + 1], "sdp-lowrank", None if args.no_target else np.zeros(1),
                                options=opts)
        lr_time += st[0]["time_s"]
        best[r] = max(best[r], float(b[0]))  # both are valid bounds
        if b[0] <= 0:
            lr_ok = False
            break
    out["lowrank"] = (float(best.min()), lr_time, lr_ok and out["correct"] and best.min() > 0)
    if args.full_sdp and open_rows:
        r = open_rows[0]
        b, _, st = certify_rows(net, C[r:r + 1], "sdp", options=SdpOptions(scs_time_limit_s=args.row_time))
        out["sdp"] = (float(b[0]), st[0]["time_s"], st[0]["status"])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ADV,LPD,NOR")
    ap.add_argument("--images", type=int, default=15)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--no-target", action="store_true", help="do not stop a row at bound > 0")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--row-time", type=float, default=20.0)
    ap.add_argument("--full-sdp", action="store_true", help="also run SCS on the first open row")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    last = args.first + args.images - 1
    print(f"eps={args.eps} images={args.first}..{last} rank={args.rank} row-time={args.row_time}s")
    print("model img label | crown min-margin (s) | alpha min-margin (s) | lowrank min-margin (s) cert | sdp")
    for name in args.models.split(","):
        ws, bs = load_bm_model(name)
        graph = graph_from_weights(ws, bs)
        counts = {"crown": 0, "alpha": 0, "lowrank": 0}
        times = {"crown": 0.0, "alpha": 0.0, "lowrank": 0.0}
        for i in range(args.first, args.first + args.images):
            x, label = load_image(i)
            o = _run_image(ws, bs, graph, x, label, args.eps, args)
            counts["crown"] += o["correct"] and o["crown"][0] > 0
            counts["alpha"] += o["correct"] and o["alpha"][0] > 0
            counts["lowrank"] += bool(o["lowrank"][2])
            for key in times:
                times[key] += o[key][1]
            sdp = "" if "sdp" not in o else f"{o['sdp'][0]:.3f} ({o['sdp'][1]:.1f}s, {o['sdp'][2]})"
            print(f"{name} {i} {label} | {o['crown'][0]:.3f} ({o['crown'][1]:.2f}) | "
                  f"{o['alpha'][0]:.3f} ({o['alpha'][1]:.2f}) | {o['lowrank'][0]:.3f} ({o['lowrank'][1]:.1f}) "
                  f"{'yes' if o['lowrank'][2] else 'no'} | {sdp}", flush=True)
        print(f"{name} certified of {args.images}: crown {counts['crown']} ({times['crown']:.1f}s), "
              f"alpha-crown {counts['alpha']} ({times['alpha']:.1f}s), lowrank {counts['lowrank']} "
              f"(+{times['lowrank']:.1f}s on alpha-crown's open rows)", flush=True)


if __name__ == "__main__":
    main()
