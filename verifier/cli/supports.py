"""`nncert supports FLAG`: the VNN-LIB standard's capability query.

One flag per call, as the standard's solver interface defines them; the answer is one
item a line on stdout (``verifier.vnnlib2.supports`` derives each from the op registry
and the 2.0 front end). Higher-level tools (VNN-COMP's scripts, conformance suites)
use these answers to decide which queries to send, so they claim only what a run
decides: a construct listed here never ends in "not supported".
"""
from __future__ import annotations

import argparse

__all__ = ["register", "cmd_supports", "SUPPORTS_FLAGS"]

SUPPORTS_FLAGS = ("--onnx-opset-versions", "--onnx-element-types", "--onnx-operators", "--vnnlib-versions",
                  "--hidden-node-theories", "--multiple-input-output-theories",
                  "--multiple-network-theories", "--multiple-node-comparison-theories",
                  "--arithmetic-complexity-theories", "--optimised-disjunctive-reasoning",
                  "--serialise-assignments")


def cmd_supports(args: argparse.Namespace) -> int:
    from verifier.vnnlib2 import supports  # lazy: the 2.0 front end and op registry import torch and onnx

    print("\n".join(supports(args.flag)))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("supports", help="what this verifier supports (the VNN-LIB standard's capability flags)")
    group = p.add_mutually_exclusive_group(required=True)
    for flag in SUPPORTS_FLAGS:
        group.add_argument(flag, dest="flag", action="store_const", const=flag)
    p.set_defaults(func=cmd_supports)
