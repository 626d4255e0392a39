"""Does every run keep its time budget? `nncert verify` as a fresh process per instance.

    python -m verifier.bench.deadlines --timeout 10 ../shared/bench/2022_oval21/instances.csv ...

Each instance runs with `--timeout T --certificate --report --results-file` in a new
process, as a harness would; the wall time is measured from the launch. A row fails
when the wall time exceeds T + slack, when the report or results file is missing, or
when the exit code is not 0. Prints one line per instance and a summary (markdown).
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]


def _instances(csv_path: Path, limit: int) -> list[tuple[Path, Path]]:
    rows = []
    with open(csv_path, newline="") as f:
        for row in csv.reader(f):
            if len(row) >= 2 and row[0].strip():
                rows.append((csv_path.parent / row[0].strip(), csv_path.parent / row[1].strip()))
    return rows[:limit] if limit > 0 else rows


def _one(onnx: Path, spec: Path, timeout: float, work: Path) -> dict:
    report, results, cert = work / "r.json", work / "res.txt", work / "c.json"
    for p in (report, results, cert):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "verifier.cli", "verify", str(onnx), str(spec), "--timeout", str(timeout),
           "--certificate", str(cert), "--report", str(report), "--results-file", str(results), "-q"]
    t = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout * 3 + 60)
    wall = time.monotonic() - t
    data = json.loads(report.read_text()) if report.exists() else {}
    return {"instance": f"{onnx.stem}/{spec.stem}", "rc": proc.returncode, "wall": wall,
            "verdict": data.get("verdict", "-"), "reason": data.get("reason", proc.stderr.strip()[-80:]),
            "report": report.exists(), "results": results.exists(),
            "certificate": data.get("certificate", "-")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", nargs="+", type=Path, help="VNN-COMP instances.csv files")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--slack", type=float, default=1.0, help="seconds past the timeout that still pass")
    ap.add_argument("--limit", type=int, default=0, help="first N instances of each CSV (0: all)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.csv:
            for onnx, spec in _instances(path, args.limit):
                r = _one(onnx, spec, args.timeout, Path(tmp))
                r["ok"] = r["rc"] == 0 and r["report"] and r["results"] and r["wall"] <= args.timeout + args.slack
                rows.append(r)
                print(f"{'ok ' if r['ok'] else 'BAD'} {r['wall']:6.2f} s  {r['verdict']:8s} {r['instance']}  "
                      f"({r['reason']}; certificate: {r['certificate']})", flush=True)
    walls = [r["wall"] for r in rows]
    print(f"\n| instances | max wall (s) | over {args.timeout:g}+{args.slack:g} s | no report | exit != 0 |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {len(rows)} | {max(walls, default=0):.2f} | "
          f"{sum(w > args.timeout + args.slack for w in walls)} | {sum(not r['report'] for r in rows)} | "
          f"{sum(r['rc'] != 0 for r in rows)} |")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
