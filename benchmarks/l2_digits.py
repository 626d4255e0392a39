"""l2 robustness of a digits CNN through `verifier.verify_module` (issue 24's l2 measure).

A CNN (two convolutions, two linear layers) is trained normally on scikit-learn's digits
for a few seconds; then for each l2 radius, each of the first N correctly classified test
points is decided by `verify_module(..., perturbation=Perturbation(norm="2"))`: the l2
attack, then CROWN and alpha-CROWN with the ball at the input and SDP-CROWN's bias at
each ReLU. Beside it, the same without SDP-CROWN (`bounds.sdp_crown=false`), and
alpha-CROWN over the ball's bounding box alone (what an l-inf verifier would have to
use). What bounds leave open goes to branch and bound over the ball (its count is a
column of its own).

    python benchmarks/l2_digits.py [--count 100] [--radii 0.1 0.2 0.3] [--timeout 10] [--no-compare]
        [--set bab.enabled=false]       # bounds alone, as before branch and bound took balls
"""
from __future__ import annotations

import argparse
import time

import torch

import verifier
from relaxations import BoundOptions, IntervalBounds, compute_bounds
from verifier.config import load_config
from verifier.pytorch.verify_module import module_model
from verifier.pytorch.training import margin_matrix

from digits_nets import digits, trained_cnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--radii", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run (e.g. bab.enabled=false: bounds alone)")
    parser.add_argument("--no-compare", action="store_true",
                        help="skip the runs without SDP-CROWN and over the bounding box")
    args = parser.parse_args()
    torch.set_num_threads(1)
    X, Y = digits()
    t = time.time()
    net, right = trained_cnn(X, Y, args.epochs, args.count)
    with torch.no_grad():
        accuracy = float((net(X[1400:]).argmax(1) == Y[1400:]).float().mean())
    print(f"trained in {time.time() - t:.0f} s; test accuracy {accuracy:.3f}; {len(right)} points")
    xs, ys = X[right], Y[right]
    model = module_model(net, (1, 1, 8, 8))
    config = load_config(None, [f"timeout={args.timeout}", *args.set])
    plain = load_config(None, [f"timeout={args.timeout}", "bounds.sdp_crown=false", *args.set])
    l2 = verifier.Perturbation(norm="2")   # inputs in [0, 1]
    print("| l2 radius | unsat | of which by branch and bound | sat | unknown | timeout | seconds | "
          "unsat without SDP-CROWN | alpha-CROWN over the bounding box alone |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in args.radii:
        t = time.time()
        results = verifier.verify_module(net, xs, ys, r, perturbation=l2, config=config)
        secs = time.time() - t
        verdicts = [res.verdict for res in results]
        by_bab = sum(res.verdict == "unsat" and res.method.startswith("bab") for res in results)
        print(f"| {r} | {verdicts.count('unsat')} | {by_bab} | {verdicts.count('sat')} | "
              f"{verdicts.count('unknown')} | {verdicts.count('timeout')} | {secs:.0f} |", end="", flush=True)
        if args.no_compare:
            print(" - | - |")
            continue
        without = [res.verdict for res in verifier.verify_module(net, xs, ys, r, perturbation=l2, config=plain)]
        box = IntervalBounds((xs - r).clamp(min=0).unsqueeze(1), (xs + r).clamp(max=1).unsqueeze(1))
        lb = compute_bounds(model.graph, box, margin_matrix(ys, 10), BoundOptions(method="alpha-crown"),
                            want_upper=False).lower
        print(f" {without.count('unsat')} | {int((lb > 0).all(1).sum())} |")


if __name__ == "__main__":
    main()
