"""One search on N workers against one process, on workers kept warm across runs (issue 21).

For each instance (a VNN-COMP style CSV: onnx,vnnlib[,timeout], paths relative to the
CSV's folder or --root), the workers are started once (`verifier.shards.search_pool`)
and booted on the instance's first disjunct; then the instance is verified
`--repeat` times in one process and on the kept workers, alternating. Printed per run:
verdict, domains, total and search-phase seconds; per instance the speed-up of the
search phase and what the messages cost (`verifier.shards.Traffic`): bytes and
seconds per domain beyond the bounding itself. `--json` keeps every figure, with the
one-process run's open-domain count over time, for the scaling projection of
BENCHMARKS.md ("One search across workers, measured").

    python benchmarks/sharded_search.py LIST.csv --workers 2 [--backend ray [--address A]] \\
        [--repeat 2] [--timeout 120] [--json out.json]
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import vnnlib
from verifier import Config, heap, verify
from verifier.config import with_overrides
from verifier.model import load_model
from verifier.progress import QUIET, Progress
from verifier.searches import SearchRecipe
from verifier.shards import search_pool


class _Trace(Progress):
    """Progress that keeps (seconds, open, bounded) after every round."""

    def __init__(self) -> None:
        super().__init__(verbosity=QUIET)
        self.t0 = time.monotonic()
        self.points: list[tuple[float, int, int]] = []

    def update(self, **facts: Any) -> None:
        super().update(**facts)
        if "open" in facts:
            self.points.append((round(time.monotonic() - self.t0, 3), int(facts["open"]), int(facts["bounded"])))


def _rows(path: Path, root: Path | None) -> list[tuple[Path, Path, float]]:
    base = root or path.parent
    with open(path, newline="") as f:
        return [(base / r[0].strip(), base / r[1].strip(), float(r[2]) if len(r) > 2 and r[2].strip() else 120.0)
                for r in csv.reader(f) if r and not r[0].startswith("#")]


def _run(model, spec, cfg: Config, pool=None) -> dict:
    trace = _Trace()
    t = time.monotonic()
    r = verify(model, spec, cfg, progress=trace, workers=pool)
    wall = time.monotonic() - t
    return {"verdict": r.verdict, "domains": int(r.stats.get("domains", 0)), "wall_s": round(wall, 3),
            "bab_s": round(r.timings.get("bab", 0.0), 3), "workers": r.stats.get("workers"),
            "trace": trace.points if pool is None else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("instances", type=Path)
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backend", choices=("local", "ray"), default="local")
    ap.add_argument("--address", default="")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=None, help="seconds per run (default: the CSV's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.workers < 2:
        ap.error("--workers: at least 2 (with fewer the search runs in one process: nothing to compare)")
    heap.keep_freed()   # as `nncert verify` and every search worker do (verifier/heap.py)
    out = []
    for onnx_path, spec_path, timeout in _rows(args.instances, args.root):
        model = load_model(onnx_path)
        spec = vnnlib.load(spec_path, model.n_inputs, model.n_outputs)
        base = with_overrides(Config(timeout=args.timeout or timeout, threads=1), args.set)
        one = base
        many = dataclasses.replace(base, bab=dataclasses.replace(base.bab, workers=args.workers, backend=args.backend,
                                                                 address=args.address))
        t = time.monotonic()
        pool = search_pool(model, many.bab)
        try:
            pool.setup(SearchRecipe("input", spec.disjuncts[0], many, time.monotonic() + 600))
            booted = pool.wait_ready(600)
            boot_s = time.monotonic() - t
            runs = []
            for _ in range(args.repeat):
                runs.append({"n": 1, **_run(model, spec, one)})
                runs.append({"n": args.workers, **_run(model, spec, many, pool)})
        finally:
            pool.close()
        name = f"{onnx_path.name} {spec_path.name}"
        alone = [r for r in runs if r["n"] == 1]
        shard = [r for r in runs if r["n"] > 1]
        speed = [a["bab_s"] / s["bab_s"] for a, s in zip(alone, shard) if s["bab_s"] > 0]
        print(f"{name}: boot {boot_s:.1f} s ({'ready' if booted else 'not ready'}); "
              + "; ".join(f"{r['n']}w {r['verdict']} {r['domains']} dom {r['wall_s']:.1f}/{r['bab_s']:.1f} s"
                          for r in runs)
              + f"; bab speed-up {', '.join(f'{x:.2f}' for x in speed)}", flush=True)
        for r in shard:
            w = r["workers"]
            if w["domains"]:
                per = {"bytes_per_domain": round((w["bytes_out"] + w["bytes_in"]) / w["domains"]),
                       "bound_ms_per_domain": round(1e3 * w["worker_s"] / w["domains"], 3),
                       "trip_over_bound_ms_per_domain": round(1e3 * (w["trip_s"] - w["worker_s"]) / w["domains"], 3),
                       "pickle_ms_per_domain": round(1e3 * w["pickle_s"] / w["domains"], 3)}
                print("   ", w, per, flush=True)
                r["per_domain"] = per
        out.append({"instance": name, "boot_s": round(boot_s, 3), "runs": runs})
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
