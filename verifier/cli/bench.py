"""``nncert bench``: run a VNN-COMP instance list and summarise it per family.

Kept apart from ``verifier/cli/__init__.py`` and light at import (argparse, and the config and
report modules the CLI loads anyway): the parser is built for every ``nncert`` call, and the
runner and torch are imported only when the subcommand actually runs.

Exit codes: 0 the run finished (whatever the verdicts), 2 bad input (instances CSV,
expected CSV or config), 3 at least one verdict contradicts the ground truth of
``--expected`` (so CI fails on it), 130 interrupted (the finished rows and their
summary are still written).
"""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from typing import Any

from verifier.config import load_config
from verifier.report import OutputPathError, check_output_path

__all__ = ["register", "cmd_bench", "WRONG_EXIT", "INTERRUPTED_EXIT"]

WRONG_EXIT, INTERRUPTED_EXIT = 3, 130

_EPILOG = """\
Timings are meant to be taken with --jobs 1: parallel instances share CPU cores and
memory bandwidth (this machine has 2 cores), so --jobs > 1 is for throughput only.
--isolate process times start-up as VNN-COMP does; --isolate worker imports once.
"""


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand to ``nncert``'s subparsers."""
    p = subparsers.add_parser("bench", help="run a VNN-COMP instances.csv and summarise per family",
                              description="Run a VNN-COMP instance list and summarise it per family.", epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("instances", metavar="INSTANCES.csv", help="rows onnx,vnnlib,timeout (VNN-COMP format)")
    p.add_argument("--root", default=None, help="folder the CSV's paths are relative to (default: the CSV's)")
    p.add_argument("--out", default="results.csv",
                   help="results CSV; summaries go to <out>.summary.csv and .summary.md (default: results.csv)")
    p.add_argument("--jobs", type=int, default=1, help="instances in parallel (default 1; time with 1)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per instance, replacing the CSV's")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every timeout by this")
    p.add_argument("--isolate", choices=("process", "worker"), default="process",
                   help="process: fresh `nncert verify` per instance (default); worker: long-lived workers")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: this machine's processes (default); ray: each instance a Ray task "
                        "(pip install nncert[ray])")
    p.add_argument("--address", default=None,
                   help="with --backend ray: a running cluster's address (default: a local cluster of --jobs CPUs)")
    p.add_argument("--expected", default=None, help="reference CSV (family,onnx,vnnlib,...,expected,...)")
    p.add_argument("--filter", default=None, metavar="SUBSTRING", help="only rows whose onnx or vnnlib path has it")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows (after --filter)")
    p.add_argument("--mem-limit-mb", type=float, default=None,
                   help="worker RSS limit before it is killed (default: 70%% of RAM / jobs)")
    p.add_argument("--grace", type=float, default=5.0, help="seconds past the timeout before a kill (default 5)")
    p.add_argument("--config", default=None, help="YAML config file passed to every instance")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override for every instance")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines (WRONG lines still print)")
    p.set_defaults(func=cmd_bench)


def _sigterm_as_interrupt() -> None:
    """Let SIGTERM stop a run the way Ctrl-C does, so children are killed and rows kept."""
    if threading.current_thread() is threading.main_thread():
        def handler(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, handler)


def cmd_bench(args: argparse.Namespace) -> int:
    # lazy: the suite runner (verifier.bench and its modules) loads only when `bench` runs (see the docstring)
    from verifier.bench import (RayOptions, RunSettings, Slots, format_text, read_expected, read_instances,
                                run_bench, select_instances, summarize, write_outcomes, write_summary, wrong_lines)

    if args.jobs < 1:
        print("nncert: error: --jobs must be at least 1", file=sys.stderr)
        return 2
    if args.address is not None and args.backend != "ray":
        print("nncert: error: --address needs --backend ray", file=sys.stderr)
        return 2
    if args.backend == "ray":
        # lazy: socket and logging come with it, for --backend ray only (ray itself stays optional)
        from verifier.ray_connect import INSTALL_HINT, ray_available, unreachable

        if not ray_available():
            print(f"nncert: error: --backend ray needs the ray package ({INSTALL_HINT})", file=sys.stderr)
            return 2
        why = unreachable(args.address) if args.address is not None else ""
        if why:
            print(f"nncert: error: --address: {why}", file=sys.stderr)
            return 2
    try:
        check_output_path(args.out, "--out")  # before the suite, not after it
    except OutputPathError as exc:
        print(f"nncert: error: {exc}", file=sys.stderr)
        return 2
    overrides = list(args.set or [])
    load_config(args.config, overrides)  # a bad key fails here once, not as N error rows
    try:
        instances = read_instances(args.instances, args.root, args.timeout, args.timeout_scale)
        expected = read_expected(args.expected) if args.expected else None
    except (ValueError, KeyError) as exc:
        print(f"nncert: error: {exc}", file=sys.stderr)
        return 2
    instances = select_instances(instances, args.filter, args.limit)
    settings = RunSettings(config_path=args.config, overrides=tuple(overrides), grace_s=args.grace,
                           mem_limit_mb=args.mem_limit_mb)
    if not args.quiet:
        print(f"nncert bench: {len(instances)} instance(s), isolate={args.isolate}, jobs={args.jobs}, "
              f"backend={args.backend}", flush=True)
    _sigterm_as_interrupt()
    write_outcomes(args.out, [])
    slots = Slots(args.isolate, args.jobs, RayOptions(args.address) if args.backend == "ray" else None)
    run = run_bench(instances, slots, settings, expected, args.out, args.quiet)
    write_outcomes(args.out, run.outcomes)
    summaries = summarize(run.outcomes)
    command = "nncert bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] else ""
    csv_path, md_path = write_summary(args.out, summaries, run.outcomes, command)
    print(("\ninterrupted: summary of the finished instances\n" if run.interrupted else "\n") + format_text(summaries),
          end="")
    for line in wrong_lines(run.outcomes):
        print(line, file=sys.stderr)
    print(f"results: {args.out}; summary: {csv_path}, {md_path}")
    if run.interrupted:
        return INTERRUPTED_EXIT
    return WRONG_EXIT if run.wrong else 0
