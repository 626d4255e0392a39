"""VNN-LIB 2.0 on ACAS Xu (issue 23's measures), two parts:

``forms``: every ACAS Xu instance of ../shared/bench written as a 2.0 query (one
network, ``X float32 [1,1,1,5]``, ``Y float32 [1,5]``) and decided in the standard's
form (``nncert verify Q --network N=M``) beside its 1.0 form (``nncert verify M P``):
the verdicts must be equal.

``monotonicity``: the VNN-COMP 2026 style of query on every ACAS Xu network: two
``equal-to`` copies f and g, ``X_f[0] >= X_g[0]`` (distance), the other four inputs
equal (one variable each), both in property 3's box, and ``Y_f[3] < Y_g[3]``; each
``sat`` is printed by nncert only after onnxruntime replays the side-by-side model,
which runs both copies.

    python benchmarks/vnnlib2_acasxu.py forms --timeout 30 --out out/vnnlib2_forms.csv
    python benchmarks/vnnlib2_acasxu.py monotonicity --timeout 20 --out out/vnnlib2_mono.csv

Each query runs in a fresh ``nncert`` process with OMP_NUM_THREADS=1, as ``nncert bench
--isolate process`` would.
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import vnnlib
from vnnlib.writer import format_vnnlib2

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("SHARED", ROOT.parent / "shared")) / "bench" / "2022_acasxu"
NNCERT = str(Path(sys.executable).with_name("nncert"))


def _run(args: list[str], timeout: float) -> tuple[str, float]:
    start = time.monotonic()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([NNCERT, "verify", *args, "--timeout", str(timeout)], capture_output=True, text=True,
                          env=env, timeout=timeout + 60)
    first = proc.stdout.splitlines()[0] if proc.stdout.strip() else f"exit {proc.returncode}: {proc.stderr.strip()}"
    return first, time.monotonic() - start


def forms(timeout: float, out: Path, work: Path) -> None:
    rows = list(csv.reader(open(BENCH / "instances.csv")))
    with open(out, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["onnx", "vnnlib", "v1", "v1_s", "v2", "v2_s"])
        for onnx_rel, spec_rel, _ in rows:
            model, prop = BENCH / onnx_rel, BENCH / spec_rel
            query = work / f"{model.stem}_{prop.stem}.vnnlib"
            query.write_text(format_vnnlib2(vnnlib.load(prop, 5, 5), (1, 1, 1, 5), (1, 5)))
            v1, t1 = _run([str(model), str(prop)], timeout)
            v2, t2 = _run([str(query), "--network", f"N={model}"], timeout)
            w.writerow([onnx_rel, spec_rel, v1, f"{t1:.2f}", v2.replace("timed-out", "timeout"), f"{t2:.2f}"])
            handle.flush()
            print(model.stem, prop.stem, v1, v2, flush=True)


def monotonicity(timeout: float, out: Path, work: Path) -> None:
    box = vnnlib.load(BENCH / "vnnlib" / "prop_3.vnnlib", 5, 5).disjuncts[0].region
    x = lambda name, i: f"{name}[0,0,0,{i}]"
    lines = ["(vnnlib-version <2.0>)",
             "(declare-network f (declare-input X float32 [1,1,1,5]) (declare-output Y float32 [1,5]))",
             "(declare-network g (equal-to f) (declare-input X2 float32 [1,1,1,5]) (declare-output Y2 float32 [1,5]))"]
    for name in ("X", "X2"):
        for i, (lo, hi) in enumerate(zip(box.lower, box.upper)):
            lines += [f"(assert (>= {x(name, i)} {float(lo)!r}))", f"(assert (<= {x(name, i)} {float(hi)!r}))"]
    lines.append(f"(assert (>= {x('X', 0)} {x('X2', 0)}))")
    lines += [f"(assert (== {x('X', i)} {x('X2', i)}))" for i in range(1, 5)]
    lines.append("(assert (< Y[0,3] Y2[0,3]))")
    query = work / "monotonicity.vnnlib"
    query.write_text("\n".join(lines) + "\n")
    with open(out, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["onnx", "verdict", "seconds"])
        for model in sorted((BENCH / "onnx").glob("*.onnx")):
            verdict, seconds = _run([str(query), "--network", f"f={model}"], timeout)
            w.writerow([model.name, verdict, f"{seconds:.2f}"])
            handle.flush()
            print(model.stem, verdict, f"{seconds:.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["forms", "monotonicity"])
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    work = args.out.parent / f"{args.out.stem}_queries"
    work.mkdir(parents=True, exist_ok=True)
    (forms if args.part == "forms" else monotonicity)(args.timeout, args.out, work)


if __name__ == "__main__":
    main()
