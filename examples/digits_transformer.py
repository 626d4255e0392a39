"""A small vision transformer on scikit-learn's digits, exported to ONNX and verified.

The 8x8 image is cut into four 4x4 patches (tokens of 16 pixels); a linear patch
embedding with learned positions feeds one attention block (LayerNorm, one head of
query/key/value projections, softmax(Q K^T / 4), output projection, residual) and an
MLP block (LayerNorm, Linear, GELU, Linear, residual); the tokens are averaged and a
linear head gives the 10 logits. It trains in seconds on a CPU. The model reads the
64 pixels as the demo's MLP does, so the same l-inf robustness properties apply.

What nncert bounds here that a ReLU network does not have: products of two variable
tensors (Q K^T and the attention times V), Softmax, LayerNormalization (expanded at
import) and GELU; the general activation split branches on GELU and LayerNorm's Sqrt
and Reciprocal.

    python examples/digits_transformer.py --out out/vit --count 50 --eps 0.01 --timeout 60
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
from digits_demo import accuracy, digits_split, fit, train_and_pick, write_specs, export as export_onnx  # noqa: E402,F401  (the demo's helpers)


class TinyViT(nn.Module):
    """Patches -> embedding -> attention block -> MLP block -> mean over tokens -> head."""

    def __init__(self, d: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(16, d)
        self.pos = nn.Parameter(0.1 * torch.randn(4, d))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.head = nn.Linear(d, 10)
        self.scale = 1.0 / d ** 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [N, 64] -> [N, 4, 16]: patch (r, c) holds rows 4r..4r+3 and columns 4c..4c+3
        p = x.reshape(-1, 2, 4, 2, 4).permute(0, 1, 3, 2, 4).reshape(-1, 4, 16)
        t = self.embed(p) + self.pos
        h = self.ln1(t)
        scores = torch.matmul(self.q(h), self.k(h).transpose(1, 2)) * self.scale
        t = t + self.o(torch.matmul(torch.softmax(scores, dim=-1), self.v(h)))
        t = t + self.mlp(self.ln2(t))
        return self.head(t.mean(dim=1))


def train(epochs: int = 40, seed: int = 0) -> tuple[TinyViT, np.ndarray, np.ndarray, float]:
    """The trained model, the test points and labels, and the test accuracy."""
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = digits_split(seed)
    net = TinyViT()
    fit(net, xtr, ytr, epochs)
    return net, xte, yte, accuracy(net, xte, yte)


def export(net: nn.Module, path: Path) -> None:
    """ONNX opset 20: LayerNormalization and Gelu as single ops."""
    export_onnx(net, path, opset=20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, kind, default in (("--out", str, "out/vit"), ("--eps", float, 0.01), ("--count", int, 10),
                                ("--timeout", float, 60.0), ("--epochs", int, 40)):
        parser.add_argument(flag, type=kind, default=default)
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "digits_vit.onnx"
    _, xs, ys = train_and_pick(train, export, onnx_path, args.epochs, args.count)
    model = load_model(onnx_path)
    rows = []
    for path in write_specs(out, xs, ys, args.eps):
        spec = vnnlib.load(path, model.n_inputs, model.n_outputs)
        row = {"spec": path.name}
        for label, cfg in (("alpha-crown", with_overrides(Config(timeout=args.timeout), ["bab.enabled=false"])),
                           ("bab", Config(timeout=args.timeout))):
            t = time.monotonic()
            res = verify(model, spec, cfg)
            row[label] = res.verdict
            row[f"{label}_s"] = round(time.monotonic() - t, 2)
        rows.append(row)
        print(json.dumps(row))
    bounds_only = sum(r["alpha-crown"] == "unsat" for r in rows)
    rest = [r for r in rows if r["alpha-crown"] != "unsat"]
    by_search = sum(r["bab"] == "unsat" for r in rest)
    sat = sum(r["bab"] == "sat" for r in rows)
    print(f"eps {args.eps}: {len(rows)} points, alpha-CROWN alone proves {bounds_only}; of the other "
          f"{len(rest)}, branch and bound proves {by_search}, finds {sat} counterexamples (timeout {args.timeout} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
