"""Torch modules and the ONNX path give the same verdicts (issue 24's measure).

The digits CNN of `l2_digits.py` (trained normally, the first N correctly classified test
digits) is decided twice per l-inf radius: by `verifier.verify_module(net, x, y, eps)` and
by `verifier.verify` on the module exported to ONNX with a VNN-LIB robustness spec per
point (`vnnlib.robustness_spec`, pixels clipped to [0, 1]), the route a user without the
torch API takes. Prints the verdict counts of each and how many points got the same
verdict; a point decided (sat or unsat) one way and the other way round is a mismatch
and makes the script exit 1. A timeout on one side and a verdict on the other is
counted apart: the two runs share the machine's time, not its luck.

    python benchmarks/module_vs_onnx.py [--count 100] [--radii 0.05 0.1 0.15] [--timeout 10]
"""
from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

import torch

import verifier
import vnnlib
from verifier.config import load_config
from verifier.pytorch.verify_module import module_model

from digits_nets import digits, trained_cnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--radii", type=float, nargs="+", default=[0.05, 0.1, 0.15])
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    X, Y = digits()
    net, right = trained_cnn(X, Y, count=args.count)
    xs, ys = X[right], Y[right]
    config = load_config(None, [f"timeout={args.timeout}"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cnn.onnx"
        path.write_bytes(module_model(net, (1, 1, 8, 8)).onnx_bytes)
        loaded = verifier.load_model(path)
        print("| l-inf radius | verify_module: unsat / sat / other | seconds | ONNX path: unsat / sat / other "
              "| seconds | same verdict | decided both ways, different | timeout one side only |")
        print("|---:|---|---:|---|---:|---:|---:|---:|")
        wrong = 0
        for r in args.radii:
            t = time.time()
            mine = [res.verdict for res in verifier.verify_module(net, xs, ys, r, config=config)]
            t_module, t = time.time() - t, time.time()
            theirs = [verifier.verify(loaded, vnnlib.robustness_spec(x.double().numpy(), r, int(y), 10, 0.0, 1.0),
                                      config).verdict for x, y in zip(xs, ys)]
            t_onnx = time.time() - t
            pairs = list(zip(mine, theirs))
            decided = {"sat", "unsat"}
            differ = sum(a != b and a in decided and b in decided for a, b in pairs)
            wrong += differ

            def counts(vs: list[str]) -> str:
                c = collections.Counter(vs)
                return f"{c['unsat']} / {c['sat']} / {len(vs) - c['unsat'] - c['sat']}"

            print(f"| {r} | {counts(mine)} | {t_module:.0f} | {counts(theirs)} | {t_onnx:.0f} | "
                  f"{sum(a == b for a, b in pairs)} | {differ} | {sum(a != b and (a in decided) != (b in decided) for a, b in pairs)} |",
                  flush=True)
    raise SystemExit(1 if wrong else 0)


if __name__ == "__main__":
    main()
