"""`nncert check CERT --model M.onnx [--spec S.vnnlib]`: run the independent checker that fits CERT.

A certificate of a VNN-LIB 2.0 query over several networks is checked against each
network's file, given as the standard's command line gives them: ``nncert check CERT
--network f=f.onnx --network g=g.onnx --spec QUERY.vnnlib`` (``equal-to`` copies need
none).

The certificate's own fields say what it is, and `verifier.checker.dispatch` (also
behind `verifier.check`) dispatches on them:

* verdict certificates (``"format": "nncert-certificate"``, from ``nncert verify
  --certificate``): need ``--spec``; checked by ``verifier.checker.verdict`` against the
  hashes of both files;
* Lipschitz certificates (``"kind"``: ``lipschitz-sdp``, ``lipschitz-naive``,
  ``lipschitz-local``, from ``nncert lipschitz --certificate``): need no spec; the
  checker's own ONNX reader lowers the model to a ReLU MLP and
  ``verifier.checker.lipschitz`` / ``lipschitz_local`` re-derive the bound in float64
  (the certificate names the network by a hash of its weights, not of the file);
* anything else, including ``lipschitz-naive-graph`` (no independent checker exists
  for the naive graph walk yet): bad input, exit 2, naming the kind.

Prints ``accepted`` (exit 0) or ``rejected: <first reason>`` (exit 3). ``--timeout``:
past it the answer is ``timeout`` with exit 3 too, since a check that did not finish
accepted nothing (a script testing ``nncert check && ...`` must not go on). Files that
cannot be read or parsed, a missing ``--spec``, an unknown kind: one line on stderr
and exit 2. ``--report`` writes the common report (verifier/report.py) with verdict
accepted / rejected / timeout / error.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Optional

from verifier.guard import Guard, command_start
from verifier.report import OutputPathError, check_output_path, write_report

__all__ = ["register", "cmd_check", "REJECTED"]

REJECTED = 3


def cmd_check(args: argparse.Namespace) -> int:
    # lazy: the checker imports numpy (and onnx when it reads a model), off the CLI's start-up
    from verifier.checker.dispatch import check_loaded, kind_of, load_certificate
    from verifier.checker.verdict import CheckInputError

    start = command_start(getattr(args, "_process", False))
    t0 = time.monotonic()
    fields: dict[str, Any] = {"certificate": args.certificate, "model": args.model, "spec": args.spec,
                              "timeout": args.timeout}

    def report(verdict: str, reason: str, info: Optional[dict] = None) -> None:
        fields.update(verdict=verdict, reason=reason, method="checker" if verdict != "error" else "",
                      time={"startup": round(t0 - start, 3), "total": time.monotonic() - start})
        if info is not None:
            fields["info"] = info
        write_report(args.report, "check", fields)

    def bad(msg: str) -> int:
        print(f"nncert: error: {msg}", file=sys.stderr)
        try:
            report("error", msg)
        except Exception:  # the report is second to the message
            pass
        return 2

    try:
        check_output_path(args.report, "--report")
    except OutputPathError as exc:
        print(f"nncert: error: {exc}", file=sys.stderr)
        return 2
    if args.timeout is not None and not args.timeout > 0:
        return bad(f"--timeout must be a positive number of seconds (or inf), got {args.timeout!r}")

    def on_timeout(_: Any) -> int:
        print(f"timeout: not checked within --timeout {args.timeout:g} s", flush=True)
        report("timeout", f"hard timeout: the check did not finish within --timeout {args.timeout:g} s; "
                          "nothing was accepted")
        return REJECTED

    if bool(args.model) == bool(args.network):
        return bad("give the model as --model M.onnx, or a VNN-LIB 2.0 query's networks as --network NAME=PATH "
                   "(one of the two)")
    model: Any = args.model
    if args.network:
        from vnnlib.standard import network_pairs  # lazy: vnnlib imports numpy, off the CLI's start-up

        try:
            model = network_pairs(args.network)
        except ValueError as exc:
            return bad(str(exc))
    fields["model"] = args.model or " ".join(args.network)
    limited = args.timeout is not None and args.timeout != float("inf")
    guard = Guard(start + args.timeout, on_timeout) if limited else None
    try:
        cert = load_certificate(args.certificate)
        kind = kind_of(cert, args.certificate)
        fields["kind"] = kind
        if kind == "verdict" and not args.spec:
            raise CheckInputError(f"{args.certificate}: a verdict certificate is checked against its VNN-LIB "
                                  "property: give --spec S.vnnlib")
        result = check_loaded(cert, kind, args.certificate, model, args.spec)
    except CheckInputError as exc:
        if guard is not None:
            guard.cancel()
        return bad(str(exc))
    except BaseException as exc:
        if guard is not None:
            guard.cancel()
        try:
            report("error", f"{type(exc).__name__}: {exc}")
        except Exception:  # the error itself matters more than its report
            pass
        raise

    def answer() -> int:
        line = result.line()
        if result.accepted and kind != "verdict":
            info = result.info or {}
            line = f"accepted: L <= {info.get('L')} ({info.get('input_norm')} -> {info.get('output_norm')}, {kind})"
        print(line, flush=True)
        why = result.reason or (result.info or {}).get("checker") or "every check passed"
        report("accepted" if result.accepted else "rejected", why, result.info)
        return 0 if result.accepted else REJECTED

    return guard.finish(answer) if guard is not None else answer()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `check` subcommand to the CLI's subparsers."""
    p = subparsers.add_parser("check", help="check a certificate (verdict or Lipschitz) independently of the verifier")
    p.add_argument("certificate", help="certificate JSON written by `nncert verify/lipschitz --certificate`")
    p.add_argument("--model", default=None, help="the ONNX model the certificate is about")
    p.add_argument("--network", action="append", default=None, metavar="NAME=PATH",
                   help="a VNN-LIB 2.0 query's network and its ONNX file (repeat for each; instead of --model)")
    p.add_argument("--spec", default=None, help="the VNN-LIB property (verdict certificates only)")
    p.add_argument("--timeout", type=float, default=None, help="seconds for the whole check (default and inf: no "
                                                              "limit); past it: 'timeout', exit 3")
    p.add_argument("--report", default=None, help="write a JSON report here")
    p.set_defaults(func=cmd_check)
