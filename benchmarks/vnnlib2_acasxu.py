"""VNN-LIB 2.0 measures of issue 23, on ../shared/bench (mostly ACAS Xu):

``forms``: every instance of a family (ACAS Xu by default) written as a 2.0 query
(one network, its tensors shaped like the model's) and decided by ``nncert bench``
beside its 1.0 form: the verdicts must be equal.

``monotonicity``: the VNN-COMP 2026 style of query on every ACAS Xu network: two
``equal-to`` copies f and g, ``X_f[0] >= X_g[0]`` (distance), the other four inputs
equal (one variable each), both in property 3's box, and ``Y_f[3] < Y_g[3]``; each
``sat`` is printed by nncert only after onnxruntime replays the side-by-side model,
which runs both copies.

``roundtrip``: every .vnnlib of ../shared/bench written as 2.0 reads back to the same
Spec, with both forms' parse times.

    python benchmarks/vnnlib2_acasxu.py forms --timeout 30 --out out/vnnlib2_forms.csv [--family 2022_mnist_fc]
    python benchmarks/vnnlib2_acasxu.py monotonicity --timeout 20 --out out/vnnlib2_mono.csv
    python benchmarks/vnnlib2_acasxu.py roundtrip --out out/vnnlib2_roundtrip.csv

Monotonicity runs each query in a fresh ``nncert`` process, forms through ``nncert
bench --isolate worker``; both with OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import argparse
import csv
import glob
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import vnnlib
from vnnlib.query import parse_query
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


def forms(timeout: float, out: Path, work: Path, family: str) -> None:
    """Write the family's instances as 2.0 queries (shaped like each model), run `nncert
    bench` on both CSVs and compare the verdicts instance by instance."""
    from verifier.model import load_model  # lazy: verifier.model imports torch; only `forms` loads models

    bench = BENCH.parent / family
    rows = list(csv.reader(open(bench / "instances.csv")))
    shapes: dict[str, tuple] = {}
    written: set[Path] = set()
    with open(work / "instances.csv", "w", newline="") as handle:
        w = csv.writer(handle)
        for onnx_rel, spec_rel, budget in rows:
            model, prop = bench / onnx_rel, bench / spec_rel
            if onnx_rel not in shapes:
                g = load_model(model).graph
                shapes[onnx_rel] = (g.input_shape, g.output_shape)
            # Whole stems: mnist_fc's prop_0_0.03 and prop_0_0.05 differ only after a dot.
            query = work / f"{model.stem}_{prop.stem}.vnnlib"
            if query in written:
                raise SystemExit(f"two instances would write {query}")
            written.add(query)
            query.write_text(format_vnnlib2(vnnlib.load(prop, *[math.prod(s) for s in shapes[onnx_rel]]),
                                            *shapes[onnx_rel]))
            w.writerow([str(model.resolve()), str(query.resolve()), budget])
    results = {}
    for name, table in (("v1", bench / "instances.csv"), ("v2", work / "instances.csv")):
        target = out.parent / f"{out.stem}_{name}.csv"
        subprocess.run([NNCERT, "bench", str(table), "--isolate", "worker", "--jobs", "1", "--timeout", str(timeout),
                        "--out", str(target), "-q"], check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        results[name] = list(csv.DictReader(open(target)))
    with open(out, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["instance", "v1", "v1_s", "v2", "v2_s"])
        for a, b in zip(results["v1"], results["v2"]):
            w.writerow([f"{a['onnx']} {a['vnnlib']}", a["verdict"], a["time_s"], b["verdict"], b["time_s"]])
    same = sum(a["verdict"] == b["verdict"] for a, b in zip(results["v1"], results["v2"]))
    print(f"{same} of {len(rows)} verdicts equal", flush=True)


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


def roundtrip(out: Path) -> None:
    """Every .vnnlib of ../shared/bench written as 2.0 and read back by the standard's
    parser: the same Spec? And the parse times of both forms."""
    files = sorted(glob.glob(str(BENCH.parent / "*" / "vnnlib" / "*.vnnlib*")))
    with open(out, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["vnnlib", "bytes", "same", "v1_s", "v2_s"])
        for f in files:
            t = time.perf_counter()
            spec = vnnlib.load(f)
            t1 = time.perf_counter() - t
            text = format_vnnlib2(spec)
            t = time.perf_counter()
            same = parse_query(text, f).to_spec() == spec
            w.writerow([f, os.path.getsize(f), same, f"{t1:.4f}", f"{time.perf_counter() - t:.4f}"])
    rows = list(csv.DictReader(open(out)))
    print(f"{sum(r['same'] == 'True' for r in rows)} of {len(rows)} files read back to the same Spec")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["forms", "monotonicity", "roundtrip"])
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--family", default="2022_acasxu", help="forms: a folder of ../shared/bench")
    args = parser.parse_args()
    work = args.out.parent / f"{args.out.stem}_queries"
    work.mkdir(parents=True, exist_ok=True)
    if args.part == "roundtrip":
        roundtrip(args.out)
    elif args.part == "forms":
        forms(args.timeout, args.out, work, args.family)
    else:
        monotonicity(args.timeout, args.out, work)


if __name__ == "__main__":
    main()
