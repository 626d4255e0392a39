"""`nncert lipschitz MODEL`: a certified Lipschitz bound of a model in ONNX (sdp-*, local: ReLU MLPs).

Every run keeps its word on three things:

* the norms: the line and the report name the pair of norms actually bounded (global
  methods: ``--norm`` to the same norm; ``local``: ``--norm`` on the input, l-inf on the
  output, since its value is the largest per-output constant);
* the time: ``--timeout`` covers the whole command from the process start, for every
  method (solver time limits and checks inside; a watchdog as the last resort). When
  it runs out, the answer is the best CERTIFIED bound computed so far (the sdp-*
  methods certify closed-form multipliers before calling a solver), or ``timeout``;
* the outputs: ``--report``/``--certificate`` are checked before any work, and the
  report (verifier/report.py) says ``bound``, ``timeout`` or ``error`` and why.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Optional

from verifier.config import ConfigError
from verifier.guard import Guard, command_start
from verifier.progress import NORMAL, Progress
from verifier.report import OutputPathError, check_output_path, write_report, write_text

__all__ = ["register", "Guard", "DEFAULT_TIMEOUT", "LOCAL_DEFAULT_TIMEOUT", "command_start", "norm_pair"]

DEFAULT_TIMEOUT = 300.0
LOCAL_DEFAULT_TIMEOUT = 60.0
# The watchdog fires this long after the deadline; the work itself aims to end before it.
WATCHDOG_GRACE_S = 0.6
# Solvers are told to stop this long before the deadline (room to certify and write).
RESERVE_S = 0.8
def norm_pair(norm: str, method: str) -> tuple[str, str]:
    """(input norm, output norm) of the constant a method bounds, as words."""
    name = {"2": "l2", "inf": "l-inf"}[norm]
    return (name, "l-inf") if method == "local" else (name, name)


def _timeout_of(args: argparse.Namespace) -> float:
    t = args.timeout
    if t is None:
        t = LOCAL_DEFAULT_TIMEOUT if args.method == "local" else DEFAULT_TIMEOUT
    if not t > 0:
        raise ConfigError(f"--timeout must be a positive number of seconds (or inf: no limit), got {args.timeout!r}")
    return float(t)


def _common_fields(args: argparse.Namespace, start: float, t0: float) -> dict[str, Any]:
    inp, out = norm_pair(args.norm, args.method)
    return {"model": str(args.model), "norm": args.norm, "input_norm": inp, "output_norm": out,
            "timeout": args.timeout_s, "time": {"startup": round(t0 - start, 3), "total": time.monotonic() - start}}


def _report_error(args: argparse.Namespace, start: float, t0: float, exc: BaseException) -> None:
    try:
        fields = _common_fields(args, start, t0)
        fields.update(verdict="error", reason=f"{type(exc).__name__}: {exc}", method="")
        fields["progress"] = {"phase": "input" if isinstance(exc, (ValueError, OSError)) else "bound"}
        write_report(args.report, "lipschitz", fields)
    except Exception:  # the error being reported matters more than its report
        pass


def _answer_global(args: argparse.Namespace, start: float, t0: float, result: Any, late: bool) -> int:
    """Print the line, write the certificate and the report of a certified global bound."""
    inp, out = norm_pair(args.norm, result.method)
    why = f"certified {inp} -> {out} Lipschitz bound ({result.solver_status})"
    if late:
        why = ("hard timeout: the solver did not return in time; certified bound from the multipliers "
               f"certified before it ({result.solver_status})")
    print(f"L <= {result.value:.6g}  ({result.method}, {inp} -> {out}, {time.monotonic() - start:.2f} s, "
          f"{result.solver_status})", flush=True)
    if args.certificate:
        write_text(args.certificate, json.dumps(result.certificate) + "\n")
    fields = _common_fields(args, start, t0)
    fields.update(verdict="bound", reason=why, method=result.method, value=result.value, time_s=result.time_s,
                  solver_status=result.solver_status, certificate=args.certificate,
                  certificate_kind=result.certificate.get("kind"),
                  progress={"phase": "solver" if late else "done", "stopped_by_time_limit": late})
    fields["time"]["bound"] = result.time_s
    write_report(args.report, "lipschitz", fields)
    return 0


def _answer_timeout(args: argparse.Namespace, start: float, t0: float, what: str) -> int:
    print("timeout", flush=True)
    fields = _common_fields(args, start, t0)
    fields.update(verdict="timeout", method=args.method, progress={"phase": "bound"},
                  reason=f"hard timeout: no certified bound within --timeout {args.timeout_s:g} s ({what})")
    write_report(args.report, "lipschitz", fields)
    return 0


def _run(args: argparse.Namespace) -> int:
    start = command_start(getattr(args, "_process", False))
    t0 = time.monotonic()
    try:
        check_output_path(args.report, "--report")
        check_output_path(args.certificate, "--certificate")
    except OutputPathError as exc:
        print(f"nncert: error: {exc}", file=sys.stderr)
        return 2
    args.timeout_s = None
    try:
        args.timeout_s = _timeout_of(args)
    except Exception as exc:
        _report_error(args, start, t0, exc)
        raise
    deadline = None if args.timeout_s == float("inf") else start + args.timeout_s
    work_deadline = None if deadline is None else deadline - RESERVE_S

    progress = Progress(NORMAL, deadline=deadline)  # a live line on a terminal only
    progress.phase(args.method)
    progress.start_ticker()

    def on_timeout(best: Optional[Any]) -> int:
        progress.close()
        if best is not None:
            return _answer_global(args, start, t0, best, late=True)
        return _answer_timeout(args, start, t0, "the computation did not finish")

    def offer(result: Any) -> None:
        progress.update(best_bound=float(result.value))
        guard.offer(result)

    guard = Guard(deadline, on_timeout, grace_s=WATCHDOG_GRACE_S)
    try:
        if args.method == "local":  # local bound over a box: verifier/cli/lipschitz_local.py
            from verifier.cli.lipschitz_local import run_local  # lazy: it imports numpy and torch

            progress.close()  # run_local prints as it goes; no live line under it
            return run_local(args, start, t0, work_deadline, guard)
        # lazy: verifier.lipschitz and verifier.model import torch, which the CLI's start-up does not load
        from verifier.lipschitz import lipschitz_of_graph
        from verifier.model import load_model

        model = load_model(args.model)
        # naive: any supported graph (graph walk); sdp-*: ReLU MLPs only, UnsupportedModel otherwise
        result = lipschitz_of_graph(model.graph, norm=args.norm, method=args.method, deadline=work_deadline,
                                    progress=offer)
    except BaseException as exc:
        progress.close()
        guard.cancel()
        _report_error(args, start, t0, exc)
        raise
    progress.close()
    return guard.finish(lambda: _answer_global(args, start, t0, result, late=False))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lipschitz", help="certified Lipschitz bound (naive: any supported graph; sdp-*, local: "
                                         "ReLU MLPs)")
    p.add_argument("model")
    p.add_argument("--norm", default="2", choices=["2", "inf"],
                   help="input norm; global methods bound that norm to itself, local bounds it to l-inf "
                        "(the largest per-output constant)")
    p.add_argument("--method", default="naive", choices=["naive", "sdp-neuron", "sdp-layer", "sdp-layerwise", "local"])
    p.add_argument("--center", default=None, help="local: centre of the l-inf input box (.npy)")
    p.add_argument("--radius", type=float, default=None, help="local: l-inf radius of the input box")
    p.add_argument("--domains", type=int, default=200, help="local: branch-and-bound budget (bound computations)")
    p.add_argument("--timeout", type=float, default=None,
                   help=f"seconds for the whole command from the process start, every method (default "
                        f"{LOCAL_DEFAULT_TIMEOUT:g} for local, {DEFAULT_TIMEOUT:g} otherwise; inf: no limit); at the "
                        "limit: the best certified bound so far, else 'timeout'")
    p.add_argument("--report", default=None, help="write a JSON report here")
    p.add_argument("--certificate", default=None, help="write the certificate (JSON) here")
    p.set_defaults(func=_run)
