"""A tanh MLP on scikit-learn's digits, exported to ONNX and verified at several radii.

A 64-64-64-64-10 network with tanh after each hidden layer, trained in a few seconds.
Three S-shaped layers in a row are where the choice of tangent lines decides the bound
(a ReLU network has no such choice: its relaxation of an unstable neuron is fixed up
to the lower slope). For each radius it writes an l-inf robustness property per
correctly classified test point and reports how many each method proves:

- CROWN alone (no optimisation, no search),
- alpha-CROWN alone (the tangent points and the intermediate bounds optimised),
- the whole `verify` (attack, alpha-CROWN, then the general activation split, which
  cuts tanh's input intervals).

    python examples/digits_tanh.py --out out/tanh --count 50 --eps 0.02 0.04 0.06 --timeout 30
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import vnnlib
from verifier import Config, load_model, verify
from verifier.config import with_overrides

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_demo import accuracy, digits_split, export, fit, train_and_pick, write_specs  # noqa: E402,F401  (the demo's helpers)

METHODS = ("crown", "alpha-crown", "verify")


def train(epochs: int = 60, seed: int = 0, width: int = 64) -> tuple[nn.Module, np.ndarray, np.ndarray, float]:
    """The trained network, the test points and labels, and the test accuracy."""
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = digits_split(seed)
    net = nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                        nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10))
    fit(net, xtr, ytr, epochs)
    return net, xte, yte, accuracy(net, xte, yte)


def configs(timeout: float) -> dict:
    """The three ways each property is decided, as verifier configs."""
    return {"crown": with_overrides(Config(timeout=timeout), ["bab.enabled=false", "bounds.method=crown"]),
            "alpha-crown": with_overrides(Config(timeout=timeout), ["bab.enabled=false"]),
            "verify": Config(timeout=timeout)}


def run(model, paths: list[Path], timeout: float) -> list[dict]:
    """Every property by every method: verdict and seconds per method."""
    rows = []
    for path in paths:
        spec = vnnlib.load(path, model.n_inputs, model.n_outputs)
        row = {"spec": path.name}
        for label, cfg in configs(timeout).items():
            t = time.monotonic()
            row[label] = verify(model, spec, cfg).verdict
            row[f"{label}_s"] = round(time.monotonic() - t, 2)
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/tanh")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.02, 0.04])
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "digits_tanh.onnx"
    _, xs, ys = train_and_pick(train, export, onnx_path, args.epochs, args.count)
    model = load_model(onnx_path)
    for eps in args.eps:
        rows = run(model, write_specs(out, xs, ys, eps), args.timeout)
        for row in rows:
            print(json.dumps(row))
        proved = {m: sum(r[m] == "unsat" for r in rows) for m in METHODS}
        sat = sum(r["verify"] == "sat" for r in rows)
        print(f"eps {eps}: {len(rows)} points; unsat by CROWN {proved['crown']}, alpha-CROWN {proved['alpha-crown']}, "
              f"verify {proved['verify']} (and {sat} counterexamples; timeout {args.timeout} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
