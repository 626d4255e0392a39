"""`nncert`: the command line. Exit codes: 0 any verdict, 2 bad input, 1 internal error.

Bad input (a missing or malformed file, a spec that does not fit the model, an
unknown config key, an unsupported op) prints one line on stderr that says which
file or node and what was expected; it never prints a traceback and never a verdict.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Optional, Sequence

__all__ = ["main", "BAD_INPUT", "INTERNAL"]

BAD_INPUT, INTERNAL = 2, 1


def _bad_input_types() -> tuple[type, ...]:
    from models import ModelError
    from verifier.config import ConfigError
    from verifier.verify import SpecMismatch
    from vnnlib import VnnlibError

    return (ModelError, VnnlibError, ConfigError, SpecMismatch, FileNotFoundError)


def _write_results(path: Optional[str], verdict: str, x=None, y=None) -> None:
    if path:
        from vnnlib import write_results

        write_results(path, verdict, x, y)


def _watchdog(seconds: float, results_file: Optional[str]) -> threading.Timer:
    """Ends the process shortly after the timeout even if a computation does not return."""
    def fire() -> None:
        try:
            _write_results(results_file, "timeout")
            print("timeout", flush=True)
        finally:
            os._exit(0)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def cmd_verify(args: argparse.Namespace) -> int:
    start = time.monotonic()
    from verifier.config import load_config

    overrides = list(args.set or [])
    if args.timeout is not None:
        overrides.append(f"timeout={args.timeout}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    if args.method is not None:
        overrides.append(f"bounds.method={args.method}")
    if getattr(args, "certificate", None):
        overrides.append("proof=true")
    config = load_config(args.config, overrides)
    timer = _watchdog(max(config.timeout - (time.monotonic() - start), 0.0) + 0.5, args.results_file)
    import vnnlib
    from verifier.model import load_model
    from verifier.verify import verify

    t = time.monotonic()
    model = load_model(args.model)
    t_load = time.monotonic() - t
    t = time.monotonic()
    spec = vnnlib.load(args.spec, model.n_inputs, model.n_outputs)
    t_parse = time.monotonic() - t
    result = verify(model, spec, config, start=start)
    timer.cancel()
    result.timings.update({"load": t_load, "parse": t_parse, "total": time.monotonic() - start})
    _write_results(args.results_file, result.verdict, result.x, result.y)
    extra = {"model": str(args.model), "spec": str(args.spec)}
    if args.certificate:
        from verifier.certificate import write_certificate

        extra["certificate"] = write_certificate(args.certificate, model, args.spec, spec, result)
    if args.report:
        result.write_report(args.report, extra)
    print(result.verdict if not args.verbose else f"{result.verdict} ({result.reason}; "
          f"{result.timings['total']:.2f} s)")
    return 0


def cmd_bounds(args: argparse.Namespace) -> int:
    import numpy as np

    import vnnlib
    from verifier.api import bounds
    from verifier.model import load_model

    model = load_model(args.model)
    spec = vnnlib.load(args.spec, model.n_inputs, model.n_outputs)
    region = spec.disjuncts[0].region
    lo, hi = bounds(model, region.lower, region.upper, method=args.method)
    for i, (a, b) in enumerate(zip(np.asarray(lo), np.asarray(hi))):
        print(f"y[{i}] in [{a:.6g}, {b:.6g}]")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from verifier.config import describe

    print("\n".join(describe()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nncert", description="Verify and certify neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="decide an ONNX model against a VNN-LIB property")
    v.add_argument("model")
    v.add_argument("spec")
    v.add_argument("--timeout", type=float, default=None, help="seconds (default: config timeout)")
    v.add_argument("--results-file", default=None, help="write the VNN-COMP results file here")
    v.add_argument("--report", default=None, help="write a JSON report here")
    v.add_argument("--certificate", default=None, help="write a certificate of the verdict here (JSON)")
    v.add_argument("--device", default=None, help="cpu or cuda")
    v.add_argument("--method", default=None, choices=["ibp", "crown", "alpha-crown", "sdp", "sdp-lowrank"],
                   help="strongest bounding method (default alpha-crown; sdp methods: ReLU MLPs, no BaB)")
    v.add_argument("--config", default=None, help="YAML config file (see `nncert config`)")
    v.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    v.add_argument("-v", "--verbose", action="store_true")
    v.set_defaults(func=cmd_verify)
    b = sub.add_parser("bounds", help="print bounds of the outputs over the spec's first input region")
    b.add_argument("model")
    b.add_argument("spec")
    b.add_argument("--method", default="crown", choices=["ibp", "crown", "alpha-crown"])
    b.set_defaults(func=cmd_bounds)
    c = sub.add_parser("config", help="list every config key with its type and default")
    c.set_defaults(func=cmd_config)
    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list[Callable] = []
_EXTRA_COMMANDS.append(__import__("verifier.cli_bench", fromlist=["register"]).register)  # nncert bench
_EXTRA_COMMANDS.append(__import__("verifier.cli_check", fromlist=["register"]).register)  # nncert check
_EXTRA_COMMANDS.append(__import__("verifier.cli_lipschitz", fromlist=["register"]).register)  # nncert lipschitz


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("nncert: interrupted", file=sys.stderr)
        return INTERNAL
    except Exception as exc:  # classified below; never turned into a verdict
        results_file = getattr(args, "results_file", None)
        if isinstance(exc, _bad_input_types()):
            msg = str(exc) if not isinstance(exc, FileNotFoundError) else f"{exc.filename}: no such file"
            print(f"nncert: error: {msg}", file=sys.stderr)
            _write_results(results_file, "error")
            return BAD_INPUT
        print(f"nncert: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if os.environ.get("NNCERT_DEBUG"):
            traceback.print_exc()
        _write_results(results_file, "error")
        return INTERNAL


if __name__ == "__main__":
    sys.exit(main())
