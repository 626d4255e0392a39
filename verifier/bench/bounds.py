"""Tightness and time of IBP, CROWN and alpha-CROWN over instances' input regions.

    python -m verifier.bench.bounds ../shared/bench/2022_mnist_fc/instances.csv --limit 15

For each instance: the mean width of the output bounds over the spec's first region,
and the wall time of one bound computation (model already loaded; 1 thread; with
`--device cuda` after one untimed call per model and method, synchronised).
Prints a markdown table and the per-method averages. alpha-CROWN is plain here unless
`--optimise-intermediate on` (`verifier.bounds`' default, as `verify`'s root bound):
BENCHMARKS.md's figures of section 1 are of plain alpha-CROWN.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

import vnnlib
from verifier.api import bounds
from verifier.config import BoundsConfig, resolve_device
from verifier.model import load_model

__all__ = ["main"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("instances")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--methods", default="ibp,crown,alpha-crown")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda when present)")
    parser.add_argument("--patches", choices=("on", "off"), default="on",
                        help="CROWN's intermediate rows through convolutions as windows (on) or whole maps")
    parser.add_argument("--optimise-intermediate", choices=("on", "off"), default="off",
                        help="alpha-CROWN also optimises the intermediate bounds (bounds.optimise_intermediate)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    config = BoundsConfig(patches=args.patches == "on", optimise_intermediate=args.optimise_intermediate == "on")
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print(f"verifier.bench.bounds: --device {args.device}: this torch sees no CUDA device", file=sys.stderr)
        return 2
    methods = args.methods.split(",")
    root = Path(args.instances).parent
    rows = [r for r in csv.reader(open(args.instances)) if r]
    if args.limit:
        rows = rows[:: max(1, len(rows) // args.limit)][: args.limit]
    widths = {m: [] for m in methods}
    times = {m: [] for m in methods}
    models: dict = {}
    print("| onnx | vnnlib | " + " | ".join(f"{m} width | {m} s" for m in methods) + " |")
    print("|---|---|" + "---:|---:|" * len(methods))
    for onnx_path, spec_path, *_ in rows:
        fresh = onnx_path not in models
        if fresh:
            models[onnx_path] = load_model(root / onnx_path.strip())
        model = models[onnx_path]
        spec = vnnlib.load(root / spec_path.strip(), model.n_inputs, model.n_outputs)
        region = spec.disjuncts[0].region
        cells = []
        for m in methods:
            if fresh and cuda:  # CUDA's lazy start-up (context, kernels) is not the bound's time
                bounds(model, region.lower, region.upper, method=m, device=device, config=config)
            t = time.perf_counter()
            lo, hi = bounds(model, region.lower, region.upper, method=m, device=device, config=config)
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            w = float((hi - lo).double().mean())
            widths[m].append(w)
            times[m].append(dt)
            cells.append(f"{w:.4g} | {dt:.3f}")
        print(f"| {Path(onnx_path).name} | {Path(spec_path).name} | " + " | ".join(cells) + " |", flush=True)
    print()
    for m in methods:
        print(f"{m}: mean width {np.mean(widths[m]):.4g}, median time {np.median(times[m]):.3f} s, "
              f"mean time {np.mean(times[m]):.3f} s over {len(times[m])} instances")
    if "ibp" in methods and "crown" in methods:
        tighter = np.mean(np.array(widths["crown"]) <= np.array(widths["ibp"]) + 1e-12)
        print(f"crown no looser than ibp on {tighter:.0%} of instances; mean width ratio crown/ibp "
              f"{np.mean(np.array(widths['crown']) / np.maximum(widths['ibp'], 1e-30)):.4g}")
    if "crown" in methods and "alpha-crown" in methods:
        never_looser = np.all(np.array(widths["alpha-crown"]) <= np.array(widths["crown"]) + 1e-9)
        print(f"alpha-crown never looser than crown: {bool(never_looser)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
