"""What a certificate costs beside the verification it certifies (input-split proofs).

For each ACAS Xu network and property named: verify with proof recording, then time the
certificate's construction (`build_certificate`: the float64 re-derivation of every
leaf, with refinement rounds for leaves it does not prove) and the independent
checker's run over it. One thread.

    python benchmarks/certificate_time.py --shared ../shared 1_1:3 1_1:4 1_2:3
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import vnnlib
from verifier import Config, load_model, verify
from verifier.certificates.writer import build_certificate
from verifier.checker.verdict import check_certificate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("instances", nargs="+", help="NETWORK:PROPERTY, e.g. 1_1:3 (ACAS Xu run2a)")
    parser.add_argument("--shared", default="../shared", help="the folder holding bench/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bench = Path(args.shared) / "bench" / "2022_acasxu"
    print("| instance | domains | verify s | certificate s | leaves | check s | accepted |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for item in args.instances:
        net, prop = item.split(":")
        onnx_path = bench / "onnx" / f"ACASXU_run2a_{net}_batch_2000.onnx"
        spec_path = bench / "vnnlib" / f"prop_{prop}.vnnlib"
        model = load_model(onnx_path)
        spec = vnnlib.load(spec_path, model.n_inputs, model.n_outputs)
        t = time.perf_counter()
        result = verify(model, spec, Config(timeout=120, proof=True))
        t_verify = time.perf_counter() - t
        t = time.perf_counter()
        cert = build_certificate(model, spec_path, spec, result)
        t_cert = time.perf_counter() - t
        if cert is None:
            print(f"| {net} prop_{prop} | {result.stats.get('domains')} | {t_verify:.1f} | ({result.verdict}) | | | |")
            continue
        leaves = cert["disjuncts"][0].get("leaves", {}).get("lower")
        n = leaves["shape"][0] if isinstance(leaves, dict) else (len(leaves) if leaves is not None else "")
        t = time.perf_counter()
        report = check_certificate(cert, onnx_path.read_bytes(), spec_path.read_text())
        t_check = time.perf_counter() - t
        print(f"| {net} prop_{prop} | {result.stats.get('domains')} | {t_verify:.1f} | {t_cert:.1f} | {n} | "
              f"{t_check:.1f} | {report.accepted} |", flush=True)


if __name__ == "__main__":
    main()
