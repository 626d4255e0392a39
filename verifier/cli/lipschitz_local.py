"""`nncert lipschitz MODEL --method local --center X.npy --radius R`: the local bound.

Kept apart from ``verifier.cli.lipschitz`` (global methods) so the two can change separately.
Bad input (no or malformed center, wrong size, negative radius, not a ReLU MLP) raises
``ConfigError`` / ``UnsupportedModel``, which ``nncert`` turns into one line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from verifier.cli.lipschitz import norm_pair
from verifier.config import ConfigError
from verifier.lipschitz_local import LocalSearch, as_feedforward, local_lipschitz
from verifier.model import load_model
from verifier.report import write_report, write_text

__all__ = ["run_local"]


def _load_center(path: str | None) -> np.ndarray:
    if not path:
        raise ConfigError("--method local needs --center X.npy (the centre of the input box)")
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # numpy raises several kinds for a damaged or non-.npy file
        raise ConfigError(f"{path}: not a readable .npy array ({type(exc).__name__}: {exc})") from None
    if not np.issubdtype(arr.dtype, np.number):
        raise ConfigError(f"{path}: the center must be numeric, got dtype {arr.dtype}")
    return np.asarray(arr, dtype=np.float64)


def run_local(args: argparse.Namespace, start: float, t0: float, deadline: float | None, guard: Any) -> int:
    """Bound, print one line, and write the report / certificate if asked.

    ``deadline`` (``time.monotonic()``) ends branch and bound with time to spare; the
    result is certified whenever BaB stops (its leaves cover the box). The value is the
    largest per-output constant: from ``--norm`` on the input to l-inf on the output."""
    center = _load_center(getattr(args, "center", None))
    if args.radius is None:
        raise ConfigError("--method local needs --radius R (the l-inf radius of the input box)")
    net = as_feedforward(load_model(args.model))
    try:
        budget = float("inf") if deadline is None else max(deadline - time.monotonic(), 0.0)
        search = LocalSearch(max_domains=args.domains, timeout=budget)
        res = local_lipschitz(net, center, args.radius, norm=args.norm, search=search)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    inp, out = norm_pair(args.norm, "local")

    def answer() -> int:
        print(f"L <= {res.value:.6g}  (local, {inp} -> {out} (largest per-output constant) on the l-inf box of "
              f"radius {res.radius:g}, {res.domains} domains, {time.monotonic() - start:.2f} s; root "
              f"{max(res.root):.6g}, global naive {max(res.naive_rows):.6g})", flush=True)
        if args.certificate:
            write_text(args.certificate, json.dumps(res.certificate) + "\n")
        stopped = "" if res.exhausted or res.domains >= args.domains else " (branch and bound stopped by the time limit)"
        write_report(args.report, "lipschitz", {
            "verdict": "bound", "method": "local",
            "reason": f"certified local {inp} -> {out} bound on the l-inf box of radius {res.radius:g}{stopped}",
            "time": {"startup": round(t0 - start, 3), "total": time.monotonic() - start, "bound": res.time_s},
            "progress": {"phase": "done", "domains": res.domains, "leaves": res.leaves, "exhausted": res.exhausted},
            "model": args.model, "norm": args.norm, "input_norm": inp, "output_norm": out,
            "timeout": args.timeout_s, "value": res.value, "radius": res.radius, "per_row": list(res.per_row),
            "root": list(res.root), "interval": list(res.interval), "naive_rows": list(res.naive_rows),
            "domains": res.domains, "leaves": res.leaves, "exhausted": res.exhausted, "time_s": res.time_s,
            "certificate": args.certificate, "certificate_kind": "lipschitz-local"})
        return 0

    return guard.finish(answer)
