"""`nncert check CERT --model M.onnx [--spec S.vnnlib]`: run the independent checker that fits CERT.

The certificate's own fields say what it is, and the command dispatches on them:

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
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

__all__ = ["register", "cmd_check", "REJECTED", "LIPSCHITZ_KINDS"]

REJECTED = 3
LIPSCHITZ_KINDS = ("lipschitz-sdp", "lipschitz-naive", "lipschitz-local")


class _BadInput(Exception):
    """Exit 2 with this message (one line)."""


def _load_cert(path: str) -> Any:
    from verifier.checker.verdict import CheckInputError

    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise CheckInputError(f"{path}: cannot read the certificate file ({exc.strerror or exc})") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckInputError(f"{path}: not a JSON file ({exc})") from None


def _kind_of(cert: Any, path: str) -> str:
    if not isinstance(cert, dict):
        raise _BadInput(f"{path}: not a certificate (a JSON object with 'format' or 'kind' expected)")
    if cert.get("format") == "nncert-certificate":
        return "verdict"
    kind = cert.get("kind")
    if kind in LIPSCHITZ_KINDS:
        return str(kind)
    if kind == "lipschitz-naive-graph":
        raise _BadInput(f"{path}: certificate kind 'lipschitz-naive-graph' has no independent checker yet "
                        "(only ReLU-MLP Lipschitz certificates and verdict certificates can be checked)")
    if kind is None and "format" in cert:
        raise _BadInput(f"{path}: unknown certificate format {cert.get('format')!r}")
    raise _BadInput(f"{path}: unknown certificate kind {kind!r} (expected a verdict certificate or one of "
                    f"{', '.join(LIPSCHITZ_KINDS)})")


def _check_lipschitz(cert: dict, kind: str, model_path: str) -> Any:
    """Accept or reject a Lipschitz certificate against the model's weights."""
    from verifier.checker.lipschitz import check_lipschitz_certificate
    from verifier.checker.lipschitz_local import check_local_lipschitz_certificate, mlp_from_onnx
    from verifier.checker.onnx_net import Unsupported
    from verifier.checker.verdict import CheckInputError, CheckResult, _read, io_sizes

    data = _read(model_path, "model")
    try:
        io_sizes(data)  # an unreadable model is bad input, as for verdict certificates
    except CheckInputError as exc:
        raise CheckInputError(f"{model_path}: {exc}") from None
    try:
        ws, bs = mlp_from_onnx(data)
    except Unsupported as exc:
        return CheckResult(False, f"the model is not a ReLU MLP that the checker can read ({exc}); "
                                  f"a {kind} certificate is about one")
    if kind == "lipschitz-local":
        ok, why = check_local_lipschitz_certificate(cert, ws, bs)
    else:
        ok, why = check_lipschitz_certificate(cert, ws, "relu")
    norm = {"2": "l2", "inf": "l-inf"}.get(str(cert.get("norm")), str(cert.get("norm")))
    out = "l-inf" if kind == "lipschitz-local" else norm
    info = {"kind": kind, "L": cert.get("L"), "input_norm": norm, "output_norm": out, "checker": why}
    return CheckResult(ok, "" if ok else why, info)


def cmd_check(args: argparse.Namespace) -> int:
    from verifier.checker.verdict import CheckInputError, check_files
    from verifier.guard import Guard, command_start
    from verifier.report import OutputPathError, check_output_path, write_report

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

    limited = args.timeout is not None and args.timeout != float("inf")
    guard = Guard(start + args.timeout, on_timeout) if limited else None
    try:
        cert = _load_cert(args.certificate)
        kind = _kind_of(cert, args.certificate)
        fields["kind"] = kind
        if kind == "verdict":
            if not args.spec:
                raise _BadInput(f"{args.certificate}: a verdict certificate is checked against its VNN-LIB "
                                "property: give --spec S.vnnlib")
            result = check_files(args.certificate, args.model, args.spec)
        else:
            result = _check_lipschitz(cert, kind, args.model)
    except (CheckInputError, _BadInput) as exc:
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
    p.add_argument("--model", required=True, help="the ONNX model the certificate is about")
    p.add_argument("--spec", default=None, help="the VNN-LIB property (verdict certificates only)")
    p.add_argument("--timeout", type=float, default=None, help="seconds for the whole check (default and inf: no "
                                                              "limit); past it: 'timeout', exit 3")
    p.add_argument("--report", default=None, help="write a JSON report here")
    p.set_defaults(func=cmd_check)
