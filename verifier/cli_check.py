"""`nncert check CERT --model M.onnx --spec S.vnnlib`: run the independent certificate checker.

Prints `accepted` (exit 0) or `rejected: <first reason>` (exit 3). Files that cannot be
read or parsed are bad input: one line on stderr and exit 2, like the rest of the CLI.
The checker itself (`verifier.checker.verdict`) uses no torch and none of the engine.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["register", "cmd_check", "REJECTED"]

REJECTED = 3


def cmd_check(args: argparse.Namespace) -> int:
    from verifier.checker.verdict import CheckInputError, check_files

    try:
        result = check_files(args.certificate, args.model, args.spec)
    except CheckInputError as exc:
        print(f"nncert: error: {exc}", file=sys.stderr)
        return 2
    print(result.line())
    return 0 if result.accepted else REJECTED


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `check` subcommand to the CLI's subparsers."""
    p = subparsers.add_parser("check", help="check a verdict certificate independently of the verifier")
    p.add_argument("certificate", help="certificate JSON written by `nncert verify --certificate`")
    p.add_argument("--model", required=True, help="the ONNX model the certificate is about")
    p.add_argument("--spec", required=True, help="the VNN-LIB property the certificate is about")
    p.set_defaults(func=cmd_check)
