"""A scaling projection for one search on N workers, from figures measured here
(BENCHMARKS.md, "One search across workers, measured").

Reads the JSON of `benchmarks/sharded_search.py` and, per instance:

- fits the one-process run's round times to `a + m * children` (a: what a round costs
  whatever its size, m: each child domain bounded), from the trace of
  (seconds, open domains, domains bounded) after every round;
- takes from the N-worker runs what a batch costs beyond its bounding: `tau`, the
  hand-out-to-reply time less the worker's own time, and `kappa`, the coordinator's
  busy time (its search loop less the time it waited for answers and the rounds it ran
  itself before a worker was ready), per batch;
- replays the search as waves: at a point of the search where the one-process run had
  `open` domains, up to min(N, open / B) batches of at most B parents go out at once,
  and a wave takes the largest batch's time plus tau, or the coordinator's kappa per
  batch where that is longer. The frontier at each point is the one-process run's
  (the same tree, explored in waves), so a search that never has many domains open
  cannot use many workers, whatever N.

Printed per instance: the fitted a and m, the model's one-process time against the
measured one (a check of the fit), its N-worker time against the measured one (a
check of the model), and the projected speed-up on 8, 64 and 512 workers; then the
ceiling for a search whose frontier is never short (hours-long instances): N w / (w +
tau), capped at w / kappa, with w the time of a batch as the N-worker runs handed them
out (two children per parent: both split kinds halve a domain). For a run
that timed out (its trace holds only the start of the search) the measured domains in
the budget and that ceiling. An instance whose N-worker runs cannot give tau and kappa
is skipped with the reason (no batch answered; a run without its loop time, as JSON
written before `loop_s` was recorded on every exit of a search left it at 0).

    python benchmarks/shard_projection.py acas.json [mnist.json ...] [--batch 256]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _fit(trace: list) -> tuple[float, float]:
    """Least-squares a, m of round time = a + m * children bounded in the round."""
    t = np.array([p[0] for p in trace], dtype=float)
    b = np.array([p[2] for p in trace], dtype=float)
    dt, dc = np.diff(t), np.diff(b)
    keep = dc > 0
    A = np.stack([np.ones(keep.sum()), dc[keep]], 1)
    (a, m), *_ = np.linalg.lstsq(A, dt[keep], rcond=None)
    return max(float(a), 0.0), max(float(m), 0.0)


def _simulate(trace: list, n: int, batch: int, a: float, m: float, tau: float, kappa: float) -> float:
    """Seconds for the search on n workers (n = 1 with tau = kappa = 0: one process)."""
    bounded = np.array([p[2] for p in trace], dtype=float)
    opened = np.array([p[1] for p in trace], dtype=float)
    total = bounded[-1]
    # children per parent, from the whole run: a parent's children are what a round bounds
    popped = np.minimum(np.concatenate([[1.0], opened[:-1]]), batch)
    rho = float(np.diff(np.concatenate([[0.0], bounded])).sum() / max(popped.sum(), 1.0))
    done, seconds = 0.0, 0.0
    while done < total:
        frontier = max(1.0, float(np.interp(done, bounded, opened)))
        k = int(min(n, np.ceil(frontier / batch)))
        parents = min(frontier, k * batch)
        largest = min(batch, parents)
        wave = a + m * rho * largest + tau
        seconds += max(wave, k * kappa)
        done += rho * parents
    return seconds


def _costs(many: list) -> tuple[float, float]:
    """tau and kappa (seconds per batch, see the module docstring) of the N-worker runs;
    ValueError saying why when these runs cannot give them."""
    w = [r["workers"] for r in many]
    answered = sum(x.get("answered", x["batches"]) for x in w)   # older JSON: every batch
    if not answered:
        raise ValueError("no batch handed to the workers was answered: tau (a batch's cost beyond its bounding) "
                         "is unknown")
    if any(x.get("loop_s", 0.0) <= 0.0 for x in w):
        raise ValueError("a run has no loop time (loop_s 0: JSON written before it was "
                         "recorded when a search ends by an exception); rerun benchmarks/sharded_search.py")
    tau = sum(x["trip_s"] - x["worker_s"] for x in w) / answered
    kappa = sum(x["loop_s"] - x["wait_s"] - x["rounds_here_s"] for x in w) / sum(x["batches"] for x in w)
    if kappa < 0:
        raise ValueError(f"the coordinator's busy time per batch comes out negative (kappa {1e3 * kappa:.1f} ms): "
                         "its loop time is less than the time it waited plus the rounds it ran itself")
    return tau, kappa


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="+", type=Path)
    ap.add_argument("--batch", type=int, default=256, help="bab.batch_size of the runs (parents per batch)")
    args = ap.parse_args()
    for path in args.json:
        for inst in json.loads(path.read_text()):
            ones = [r for r in inst["runs"] if r["n"] == 1 and r.get("trace")]
            many = [r for r in inst["runs"] if r["n"] > 1 and r["workers"] and r["workers"]["batches"]]
            if not ones or not many or len(ones[0]["trace"]) < 3:
                continue
            trace = ones[0]["trace"]
            a, m = _fit(trace)
            try:
                tau, kappa = _costs(many)
            except ValueError as exc:
                print(f"{inst['instance']}: skipped: {exc}")
                continue
            n = many[0]["n"]
            w = [r["workers"] for r in many]
            batches = sum(x["batches"] for x in w)
            children = 2 * sum(x["domains"] for x in w) / batches   # a batch's children, as handed out
            full = a + m * children
            wide = {k: min(k * full / (full + tau), full / kappa if kappa > 0 else float("inf")) for k in (8, 64, 512)}
            ceiling = f"never-short frontier x{wide[8]:.1f} / x{wide[64]:.1f} / x{wide[512]:.1f}"
            head = (f"{inst['instance']}: a {1e3 * a:.1f} ms, m {1e3 * m:.3f} ms/child, tau {1e3 * tau:.1f} ms, "
                    f"kappa {1e3 * kappa:.1f} ms per batch; ")
            if ones[0]["verdict"] == "timeout":
                # The search outlived the budget with its frontier still growing: the trace
                # holds only its start, so only the throughput and the ceiling are shown.
                d1 = float(np.mean([r["domains"] for r in ones]))
                dn = float(np.mean([r["domains"] for r in many]))
                print(head + f"timeout: domains in the budget {d1:.0f} -> {dn:.0f} on {n} workers, "
                             f"x{dn / d1:.2f}; {ceiling}")
                continue
            t1 = float(np.mean([r["bab_s"] for r in ones]))
            tn = float(np.mean([r["bab_s"] for r in many]))
            m1 = _simulate(trace, 1, args.batch, a, m, 0.0, 0.0)
            mn = _simulate(trace, n, args.batch, a, m, tau, kappa)
            proj = {k: m1 / _simulate(trace, k, args.batch, a, m, tau, kappa) for k in (8, 64, 512)}
            print(head + f"1 process {t1:.2f} s (model {m1:.2f}); "
                         f"{n} workers {tn:.2f} s, x{t1 / tn:.2f} (model {mn:.2f} s, x{m1 / mn:.2f}); "
                         f"projected x{proj[8]:.2f} / x{proj[64]:.2f} / x{proj[512]:.2f} on 8 / 64 / 512; {ceiling}")


if __name__ == "__main__":
    main()
