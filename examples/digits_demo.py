"""The demo: train a small digits classifier, export it to ONNX, certify it with nncert.

Everything here is made by the project itself: scikit-learn's bundled 8x8 digits, a
64-32-32-10 ReLU MLP trained for a few seconds, and l-inf robustness properties
written as VNN-LIB files. It then prints certified output bounds (IBP, CROWN,
alpha-CROWN) and runs `nncert verify` on each property.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import verifier
import vnnlib


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as pixels in [0, 1] and labels, split 1400 / 397 by a seeded permutation."""
    # lazy: scikit-learn is the demo extra (pip install nncert[demo]); only loading the digits needs it
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[:1400], order[1400:]
    return x[train], y[train], x[test], y[test]


def fit(net: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 3e-3) -> None:
    """Adam on the cross-entropy, batches of 64."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    net.eval()


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def train_digits(seed: int = 0) -> tuple[nn.Module, np.ndarray, np.ndarray, float]:
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = digits_split(seed)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    fit(net, xtr, ytr, 60)
    return net, xte, yte, accuracy(net, xte, yte)


def export(net: nn.Module, path: Path, opset: int = 13) -> None:
    """ONNX by torch's legacy exporter (the new one needs onnxscript)."""
    net.eval()
    with warnings.catch_warnings():  # the legacy exporter's notice: the new one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, torch.zeros(1, 64), str(path), input_names=["x"], output_names=["logits"],
                          opset_version=opset, dynamo=False)


def train_and_pick(train, export_fn, path: Path, epochs: int, count: int
                   ) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """Train (`train(epochs)` -> net, test points, labels, accuracy), export to `path`,
    say so, and return the net with the first `count` test points it classifies right."""
    t = time.monotonic()
    net, xte, yte, acc = train(epochs)
    export_fn(net, path)
    print(f"trained in {time.monotonic() - t:.1f} s, test accuracy {acc:.3f}; {path}")
    with torch.no_grad():
        correct = net(torch.from_numpy(xte)).argmax(1).numpy() == yte
    return net, xte[correct][:count], yte[correct][:count]


def write_specs(out: Path, xs: np.ndarray, ys: np.ndarray, eps: float) -> list[Path]:
    """One l-inf robustness property per point (inputs clipped to [0, 1])."""
    paths = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        p = out / f"prop_{i}_{eps}.vnnlib"
        vnnlib.write_vnnlib(p, vnnlib.robustness_spec(x.astype(np.float64), eps, int(y), 10, 0.0, 1.0))
        paths.append(p)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out/demo")
    parser.add_argument("--eps", type=float, default=0.03)
    parser.add_argument("--count", type=int, default=5)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t = time.time()
    net, x_test, y_test, acc = train_digits()
    onnx_path = out / "digits_mlp.onnx"
    export(net, onnx_path)
    print(f"trained a 64-32-32-10 MLP on scikit-learn digits in {time.time() - t:.1f} s "
          f"(test accuracy {acc:.3f}); exported to {onnx_path}")

    model = verifier.load_model(onnx_path)
    x0, label = x_test[0], int(y_test[0])
    lo, hi = np.clip(x0 - args.eps, 0, 1), np.clip(x0 + args.eps, 0, 1)
    C = np.eye(10)[[label] * 9] - np.eye(10)[[j for j in range(10) if j != label]]
    print(f"\ncertified lower bounds of y[{label}] - y[j] over the l-inf ball of radius {args.eps} "
          f"around test image 0 (label {label}); positive means robust against class j:")
    print("  method        min margin   time")
    for method in ("ibp", "crown", "alpha-crown"):
        t = time.time()
        lower, _ = verifier.bounds(model, lo, hi, method=method, C=C)
        print(f"  {method:<12} {float(lower.min()):>10.4f}  {time.time() - t:6.3f} s")

    print(f"\nnncert verify on {args.count} robustness properties (eps={args.eps}):")
    for i in range(args.count):
        spec = vnnlib.robustness_spec(x_test[i], args.eps, int(y_test[i]), 10, lower_clip=0.0, upper_clip=1.0)
        spec_path = out / f"digit_{i}_eps{args.eps}.vnnlib"
        vnnlib.write_vnnlib(spec_path, spec)
        t = time.time()
        run = subprocess.run([sys.executable, "-m", "verifier.cli", "verify", str(onnx_path), str(spec_path),
                              "--timeout", "60", "--results-file", str(out / f"digit_{i}.result")],
                             capture_output=True, text=True)
        verdict = run.stdout.strip() or run.stderr.strip()
        print(f"  {spec_path.name:<28} {verdict:<8} {time.time() - t:5.2f} s (exit {run.returncode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
