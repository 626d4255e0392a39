"""Sampling check of bounds against onnxruntime on real models and specs.

For a model and a spec's first input region: compute IBP / CROWN / alpha-CROWN
bounds of every output, evaluate onnxruntime on many points of the region (corners
included), and report any output outside its bounds. Used by the tests on a subset
and by `python -m verifier.bench.soundness INSTANCES.csv` over whole suites.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

import vnnlib
from models.ort_check import onnxruntime_session, run_onnxruntime
from verifier.api import bounds
from verifier.model import load_model

__all__ = ["onnxruntime_batch", "check_instance"]


def onnxruntime_batch(onnx_bytes: bytes, xs: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Outputs [N, n_out] for inputs [N, n_in]: one batched call when the graph allows a
    symbolic batch dimension, otherwise one call per point."""
    model = onnx.load_from_string(onnx_bytes)
    inp = model.graph.input[[i.name for i in model.graph.input].index(
        next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}))]
    if len(input_shape) >= 2 and input_shape[0] == 1:
        inp.type.tensor_type.shape.dim[0].dim_param = "N"
        for out in model.graph.output:
            if out.type.tensor_type.shape.dim:
                out.type.tensor_type.shape.dim[0].dim_param = "N"
        try:
            sess = onnxruntime_session(model.SerializeToString())
            feed = {sess.get_inputs()[0].name: xs.reshape(len(xs), *input_shape[1:]).astype(
                np.float64 if sess.get_inputs()[0].type == "tensor(double)" else np.float32)}
            return np.asarray(sess.run(None, feed)[0], dtype=np.float64).reshape(len(xs), -1)
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.RuntimeException,
                ort.capi.onnxruntime_pybind11_state.InvalidArgument, ValueError):
            pass  # a graph that hard-codes its batch size: fall back to single calls
    sess = onnxruntime_session(onnx_bytes)
    return np.stack([run_onnxruntime(sess, x, input_shape) for x in xs])


def check_instance(onnx_path: str | Path, spec_path: str | Path, n: int = 10_000,
                   methods=("ibp", "crown", "alpha-crown"), seed: int = 0, config=None) -> dict:
    """Violations (count and worst excess) per method over the spec's first region.
    `config`: the `BoundsConfig` the bounds are computed with (None: `bounds()`'s
    default, alpha-crown with optimised intermediate bounds)."""
    model = load_model(onnx_path)
    spec = vnnlib.load(spec_path, model.n_inputs, model.n_outputs)
    region = spec.disjuncts[0].region
    rng = np.random.default_rng(seed)
    lo, hi = region.lower, region.upper
    u = rng.random((n, lo.size))
    u[: n // 10] = u[: n // 10] > 0.5        # a tenth of the points on corners
    xs = (lo + (hi - lo) * u).astype(np.float32)
    xs = np.clip(xs, lo.astype(np.float32), hi.astype(np.float32))
    ys = onnxruntime_batch(model.onnx_bytes, xs, model.input_shape)
    report = {"model": str(onnx_path), "spec": str(spec_path), "samples": n}
    for m in methods:
        t = time.perf_counter()
        lower, upper = bounds(model, lo, hi, method=m, config=config)
        report[f"{m}_time_s"] = time.perf_counter() - t
        lower, upper = lower.double().cpu().numpy(), upper.double().cpu().numpy()
        excess = np.maximum(lower - ys, ys - upper).max()
        report[f"{m}_violations"] = int(((ys < lower) | (ys > upper)).sum())
        report[f"{m}_worst_excess"] = float(excess)
        report[f"{m}_mean_width"] = float((upper - lower).mean())
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("instances", help="VNN-COMP instances.csv")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--methods", default="ibp,crown,alpha-crown")
    parser.add_argument("--per-model", type=int, default=0, help="only the first N instances of each model (0: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.instances).parent
    seen: dict[str, int] = {}
    bad = 0
    with open(args.instances) as f:
        for row in csv.reader(f):
            if not row:
                continue
            onnx_path, spec_path = row[0].strip(), row[1].strip()
            seen[onnx_path] = seen.get(onnx_path, 0) + 1
            if args.per_model and seen[onnx_path] > args.per_model:
                continue
            r = check_instance(root / onnx_path, root / spec_path, args.samples, tuple(args.methods.split(",")))
            viol = sum(r[f"{m}_violations"] for m in args.methods.split(","))
            bad += viol
            print(f"{onnx_path} {spec_path} violations={viol} " + " ".join(
                f"{m}:width={r[f'{m}_mean_width']:.4g},t={r[f'{m}_time_s']:.2f}s" for m in args.methods.split(",")),
                flush=True)
    print(f"total violations: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
