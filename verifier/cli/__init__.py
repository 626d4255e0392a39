"""`nncert`: the command line. Exit codes: 0 any verdict, 2 bad input, 1 internal error.

Bad input (a missing or malformed file, a spec that does not fit the model, an
unknown config key, an unsupported op) prints one line on stderr that says which
file or node and what was expected; it never prints a traceback and never a verdict.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import time
import traceback
from typing import Callable, Optional, Sequence

from verifier import __version__, heap
from verifier.cli.flags import add_config_flags, flag_overrides
from verifier.config import (PROPAGATION_METHODS, Config, ConfigError, config_to_dict, describe, describe_markdown,
                             load_config)
from verifier.guard import Guard, command_start
from verifier.progress import NORMAL, QUIET, VERBOSE, Progress
from verifier.report import OutputPathError, check_output_path, versions, write_report

__all__ = ["main", "BAD_INPUT", "INTERNAL"]

BAD_INPUT, INTERNAL = 2, 1
NAME = "nncert"  # `nncert --name` (the VNN-LIB standard's global option)


def _bad_input_types() -> tuple[type, ...]:
    # Each error type is looked up where its module is already loaded, never imported here:
    # an exception of a type whose module was never imported cannot have been raised, and
    # importing models or verifier.verify (torch, onnx: seconds) would only delay a config
    # error's one line.
    # (getattr: a module whose import failed half-way may lack the name; this runs inside
    # the exception handler, which must not raise.)
    found = [getattr(sys.modules.get(m), name, None) for m, name in _BAD_INPUT_ELSEWHERE]
    return (ConfigError, OutputPathError, FileNotFoundError, *(t for t in found if isinstance(t, type)))


# (module, name) of the bad-input exceptions that the CLI's start-up does not import
_BAD_INPUT_ELSEWHERE = (("models.errors", "ModelError"), ("verifier.verify", "SpecMismatch"),
                        ("vnnlib.errors", "VnnlibError"))


def _write_results(path: Optional[str], verdict: str, x=None, y=None) -> None:
    if path:
        from vnnlib import write_results  # lazy: vnnlib imports numpy, which the CLI's start-up does not load

        write_results(path, verdict, x, y)


# Seconds kept back from the budget for what follows the search: the results file, the
# report and the process's exit. The watchdog fires this long after the deadline.
FINISH_MARGIN_S = 0.4
WATCHDOG_GRACE_S = 0.3


class _Run:
    """One command's promises: whichever comes first, the run's own end or the watchdog
    (`verifier.guard.Guard`), writes the results file and the report exactly once, and
    the other one stands down."""

    def __init__(self, command: str, args: argparse.Namespace, start: float, startup: Optional[float]) -> None:
        self.command, self.args, self.start, self.startup = command, args, start, startup
        self.progress = None
        self.fields: dict = {}              # extra report fields known so far (model, spec...)
        self.timings: dict[str, float] = {}
        self._guard = None
        # Set once a verdict exists: the watchdog then writes that verdict, not "timeout"
        # (a proof that ends too late to be certified still gets its verdict on time).
        self.final: Optional[tuple] = None   # (verdict, x, y, report fields)
        # A VNN-LIB 2.0 query's network files by name when its networks are bounded side by side.
        self.network_files: Optional[dict[str, str]] = None
        self.standard = False  # the VNN-LIB standard's command line: its verdict names
        self.deadline = float("inf")   # the time promise (`arm`)
        # The search's workers start a local Ray cluster, which `release` stops before the
        # process ends by os._exit (no exit handler of Ray's runs then).
        self.ray_cluster = False

    def verdict_name(self, verdict: str) -> str:
        """The verdict as printed: the standard calls a timeout `timed-out`."""
        return "timed-out" if self.standard and verdict == "timeout" else verdict

    def claim(self) -> bool:
        """True for the first caller only: it owns the outputs from now on."""
        return True if self._guard is None else self._guard.take()

    def times(self) -> dict[str, float]:
        t = dict(self.timings)
        if self.startup is not None:
            t["startup"] = self.startup
        t["total"] = time.monotonic() - self.start
        return t

    def report(self, fields: dict) -> None:
        data = dict(self.fields)
        data.update(fields)
        data.setdefault("time", self.times())
        if self.progress is not None and not data.get("progress"):
            data["progress"] = self.progress.snapshot()
        write_report(getattr(self.args, "report", None), self.command, data)

    def arm(self, deadline: float) -> None:
        """Start the watchdog for a deadline (time.monotonic()); none when it is infinite."""
        self.deadline = deadline
        self._guard = Guard(deadline, self._on_timeout, grace_s=WATCHDOG_GRACE_S)

    def release(self) -> None:
        """Stop what the run started that would outlive the process's `os._exit`: a local
        Ray cluster (`verifier.ray_connect.shutdown_local`, by the deadline; a note on
        stderr says why when it had to be killed instead). The outputs are written by
        now: a failure here is a note too, never another exit code."""
        if not self.ray_cluster:
            return
        # lazy: ray_connect brings socket and logging; only a run that started a local Ray cluster gets here
        from verifier.ray_connect import shutdown_local

        try:
            why = shutdown_local(self.deadline)
        except Exception as exc:  # noqa: BLE001 - on the way out: say it, change nothing else
            why = f"the local Ray cluster may be left running: {type(exc).__name__}: {exc}"
        if why:
            print(f"nncert: note: {why}", file=sys.stderr, flush=True)

    def _on_timeout(self, _best: object) -> int:
        """The run did not return in time: write what is known (the guard then ends the process)."""
        if self.progress is not None:
            self.progress.close()
        if self.final is not None:
            verdict, x, y, fields = self.final
            _write_results(getattr(self.args, "results_file", None), verdict, x, y)
            if getattr(self.args, "certificate", None) and verdict in ("sat", "unsat"):
                fields = {**fields, "certificate": "not written: the time limit was reached while writing it"}
            elif getattr(self.args, "certificate", None):
                fields = {**fields, "certificate": f"none for verdict {verdict}"}
            self.report(fields)
        else:
            verdict = "timeout"
            _write_results(getattr(self.args, "results_file", None), verdict)
            self.report({"verdict": verdict, "reason": "hard timeout"})
        print(self.verdict_name(verdict), flush=True)
        self.release()   # no time is left: a local Ray cluster is killed, with a note
        return 0


def _start(args: argparse.Namespace, command: str, outputs: Sequence[tuple[str, str]]) -> _Run:
    """Check every output path before any work; the budget counts from the process's start
    when the CLI is the process (`verifier.guard.command_start`)."""
    start = command_start(getattr(args, "_process", False))
    startup = time.monotonic() - start if getattr(args, "_process", False) else None
    run = _Run(command, args, start, startup)
    for attr, what in outputs:
        check_output_path(getattr(args, attr, None), what)
    return run


def _verbosity(args: argparse.Namespace) -> int:
    return QUIET if getattr(args, "quiet", False) else VERBOSE if getattr(args, "verbose", 0) else NORMAL


def _inputs_exist(args: argparse.Namespace) -> None:
    """FileNotFoundError for the first input file that is not there, before the engine's
    import (seconds): a mistyped path is told at once. A path that exists and fails to
    load is told by the loader, which names what is wrong with it, as is a --network
    without NAME= (a path for a 1.0 file, a mistake for a 2.0 one: the loader tells which)."""
    named = [n.partition("=")[2] for n in getattr(args, "network", None) or [] if "=" in n]
    paths = [args.model, args.spec, *named]
    for path in paths:
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))


def _load_problem(args: argparse.Namespace, run: _Run) -> tuple:
    """The model, the Spec the engine decides and, for a VNN-LIB 2.0 file, its Query and
    the input elements it leaves unbounded (their ends in the Spec are stand-ins).

    Two forms: VNN-COMP's ``verify MODEL SPEC`` and the standard's ``verify QUERY
    --network NAME=PATH``; a 2.0 file works in either (one network), a 1.0 file in the
    standard form takes its one ``--network`` as the model.
    """
    # lazy: verifier.model and verifier.verify import torch, vnnlib numpy; the CLI's start-up loads neither
    import vnnlib
    from verifier.model import load_model
    from verifier.verify import SpecMismatch
    from vnnlib.standard import file_version

    query_path = args.spec if args.spec is not None else args.model
    t = time.monotonic()
    if file_version(query_path) is not None:
        # lazy: the VNN-LIB 2.0 front end (verifier.vnnlib2: torch, onnx) only for a 2.0 query
        from verifier.vnnlib2 import bind, network_files
        from vnnlib.query import load_query

        query = load_query(query_path)
        run.timings["parse"] = time.monotonic() - t
        t = time.monotonic()
        files = network_files(query, getattr(args, "network", None), args.model if args.spec else None)
        bound = bind(query, files)
        run.timings["load"] = time.monotonic() - t
        if bound.model_file is None:   # a side-by-side model: a certificate names each network's file
            run.network_files = files
        if getattr(args, "certificate", None) and bound.unbounded:
            raise SpecMismatch(f"{query_path}: input {bound.unbounded[0]} has no lower or upper bound, and a "
                               "certificate is checked over the query's input box (`nncert check` reads it as "
                               "written): run without --certificate")
        if bound.unbounded:
            print(f"nncert: note: {query_path}: input {bound.unbounded[0]}"
                  f"{f' (and {len(bound.unbounded) - 1} more)' if len(bound.unbounded) > 1 else ''} has no "
                  "lower or upper bound; a counterexample is searched in a stand-in box, and no unsat "
                  "can be claimed", file=sys.stderr)
        return bound.model, bound.spec, query, bound.unbounded
    if args.spec is None:
        if not getattr(args, "network", None) or len(args.network) != 1:
            raise SpecMismatch(f"{query_path} is a VNN-LIB 1.0 file: give its model as --network NAME=PATH "
                               "(once) or as `verify MODEL SPEC`")
        model_path = args.network[0].partition("=")[2] or args.network[0]
    else:
        model_path = args.model
    t = time.monotonic()
    model = load_model(model_path)
    run.timings["load"] = time.monotonic() - t
    t = time.monotonic()
    spec = vnnlib.load(query_path, model.n_inputs, model.n_outputs)
    run.timings["parse"] = time.monotonic() - t
    return model, spec, None, ()


def cmd_verify(args: argparse.Namespace) -> int:
    run = _start(args, "verify", [("results_file", "results file"), ("report", "report"),
                                  ("certificate", "certificate")])
    args._run = run
    if args.spec is None or args.network:
        run.standard = True  # the standard's output: `timed-out`, and a sat's assignment
    overrides = list(args.set or []) + flag_overrides(args)   # a flag wins over --set of the same key
    if getattr(args, "certificate", None):
        overrides.append("proof=true")
    config = load_config(args.config, overrides)
    deadline = run.start + config.timeout
    run.fields.update({"model": str(args.model) if args.spec else " ".join(args.network or []),
                       "spec": str(args.spec or args.model)})
    run.progress = Progress(_verbosity(args), deadline=deadline)
    run.progress.start_ticker()
    run.arm(deadline)
    _inputs_exist(args)
    t = time.monotonic()
    # lazy, and timed as the run's "import" phase: the engine (torch, onnx) is not for the CLI's start-up
    import vnnlib  # noqa: F401
    from verifier.verify import verify

    versions()  # imported now, so that the watchdog never imports
    run.timings["import"] = time.monotonic() - t
    from verifier.ray_connect import SHUTDOWN_S   # its module imported now: the watchdog never imports
    from verifier.shards import starts_ray_cluster  # lazy: verifier.shards imports torch and onnx

    # Stopping a local Ray cluster before the process ends takes SHUTDOWN_S, kept from the
    # search's time so that the promise holds (a long-lived caller of main() keeps it up).
    run.ray_cluster = args._process and starts_ray_cluster(config.bab)
    margin = FINISH_MARGIN_S + (SHUTDOWN_S if run.ray_cluster else 0.0)
    run.progress.phase("load")
    model, spec, query, unbounded = _load_problem(args, run)
    result = verify(model, spec, config, start=run.start, progress=run.progress,
                    deadline=deadline - margin)
    if unbounded and result.verdict == "unsat":
        from verifier.result import Result  # lazy: verifier.result imports numpy

        result = Result("unknown", f"unsat inside a stand-in box only: input {unbounded[0]} is unbounded",
                        timings=result.timings, stats=result.stats)
    lines: list[str] = []
    if query is not None and result.verdict == "sat":
        # lazy: the VNN-LIB 2.0 front end (verifier.vnnlib2: torch, onnx) only for a 2.0 query
        from verifier.vnnlib2 import assignment, format_assignment, serialise_assignment

        z = assignment(query, result.x, result.y)
        if query.satisfied_by(z):
            if args.serialise_assignments:   # the standard's serialised form instead of stdout lines
                serialise_assignment(query, z, args.serialise_assignments)
            else:
                lines = format_assignment(query, z)
        else:  # a strict input bound the engine's box closes, or a constant its rows widened by an ulp
            from verifier.result import Result  # lazy: verifier.result imports numpy

            result = Result("unknown", "the counterexample found does not satisfy the query as written "
                            "(a strict bound, or a constant the engine's rows round outward)",
                            timings=result.timings, stats=result.stats)
    extra = {}
    run.final = (result.verdict, result.x, result.y, result.to_dict())
    if args.certificate:
        # lazy: the certificate writer imports torch and the engine, only for --certificate
        from verifier.certificates.writer import SideBySide, write_certificate

        run.progress.phase("certificate")
        t = time.monotonic()
        spec_path = args.spec if args.spec is not None else args.model   # the standard's form: the query
        side = None
        if run.network_files is not None:
            side = SideBySide(query, run.network_files)
        extra["certificate"] = write_certificate(args.certificate, model, spec_path, spec, result,
                                                 deadline=deadline - margin, side=side)
        result.timings["certificate"] = time.monotonic() - t
    if not run.claim():
        time.sleep(10)  # the watchdog owns the outputs and is ending the process
    run.progress.close()
    result.timings.update({k: v for k, v in run.times().items()})
    _write_results(args.results_file, result.verdict, result.x, result.y)
    run.report({**result.to_dict(), **extra})
    if args.quiet:
        return 0
    if run.standard:
        print("\n".join([run.verdict_name(result.verdict), *lines]))
    else:
        print(result.verdict if not args.verbose else f"{result.verdict} ({result.reason}; "
              f"{result.timings['total']:.2f} s)")
    return 0


def cmd_bounds(args: argparse.Namespace) -> int:
    run = _start(args, "bounds", [("report", "report")])
    args._run = run
    _inputs_exist(args)
    from verifier.api import bounds  # lazy: verifier.api imports torch, which the CLI's start-up does not load

    timeout = Config(timeout=args.timeout).timeout  # the same checks as every config value
    deadline = run.start + timeout
    run.arm(deadline)
    model, spec, _, _ = _load_problem(args, run)
    region = spec.disjuncts[0].region
    lo, hi = bounds(model, region.lower, region.upper, method=args.method, deadline=deadline - FINISH_MARGIN_S)
    lo, hi = lo.cpu().numpy(), hi.cpu().numpy()  # bounds() answers on its device (auto: cuda when present)
    if not run.claim():
        time.sleep(10)
    run.report({"verdict": "bound", "reason": "bounds of the outputs over the first input region",
                "method": args.method, "model": str(args.model), "spec": str(args.spec),
                "lower": lo.tolist(), "upper": hi.tolist()})
    for i, (a, b) in enumerate(zip(lo, hi)):
        print(f"y[{i}] in [{a:.6g}, {b:.6g}]")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.markdown:
        print(describe_markdown(), end="")
    elif args.yaml:
        import yaml  # lazy: only `nncert config --yaml` needs yaml

        print(yaml.safe_dump(config_to_dict(Config()), sort_keys=False), end="")
    else:
        print("\n".join(describe()))
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("-v", "--verbose", action="count", default=0, help="one line per phase, and the reason")
    g.add_argument("-q", "--quiet", action="store_true", help="print nothing; the exit code and files say it all")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nncert", description="Verify and certify neural networks.")
    parser.add_argument("--version", action="version", version=__version__, help="print the version and exit")
    parser.add_argument("--name", action="version", version=NAME, help="print the verifier's name and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="decide an ONNX model against a VNN-LIB property",
                       usage="nncert verify MODEL SPEC [options]  |  nncert verify QUERY --network NAME=PATH "
                             "[options]")
    v.add_argument("model", metavar="MODEL|QUERY", help="the ONNX model (VNN-COMP form) or the query "
                   "(the VNN-LIB standard's form, with --network)")
    v.add_argument("spec", nargs="?", default=None, metavar="SPEC", help="the VNN-LIB property (VNN-COMP form)")
    v.add_argument("--network", action="append", metavar="NAME=PATH",
                   help="the ONNX file of a network the query declares (once per network)")
    v.add_argument("--serialise-assignments", default=None, metavar="DIR",
                   help="after sat on a 2.0 query, write each declared tensor to DIR/NAME.pb (ONNX TensorProto) "
                        "instead of printing it")
    v.add_argument("--results-file", default=None, help="write the VNN-COMP results file here")
    v.add_argument("--report", default=None, help="write a JSON report here (schema: docs/report.md)")
    v.add_argument("--certificate", default=None, help="write a certificate of the verdict here (JSON)")
    add_config_flags(v)   # --timeout, --device, --method, --threads, --seed: declared on their config keys
    v.add_argument("--config", default=None, help="YAML config file (see `nncert config`)")
    v.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    _add_common(v)
    v.set_defaults(func=cmd_verify)
    b = sub.add_parser("bounds", help="print bounds of the outputs over the spec's first input region")
    b.add_argument("model")
    b.add_argument("spec")
    b.add_argument("--method", default="crown", choices=PROPAGATION_METHODS)
    b.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300; inf: no limit)")
    b.add_argument("--report", default=None, help="write a JSON report here (schema: docs/report.md)")
    _add_common(b)
    b.set_defaults(func=cmd_bounds)
    c = sub.add_parser("config", help="list every config key with its type and default")
    form = c.add_mutually_exclusive_group()
    form.add_argument("--markdown", action="store_true", help="as the table of docs/config.md")
    form.add_argument("--yaml", action="store_true",
                      help="the defaults as a YAML file that --config reads (a starting point to edit)")
    c.set_defaults(func=cmd_config)
    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list[Callable] = []
_EXTRA_COMMANDS.append(__import__("verifier.cli.bench", fromlist=["register"]).register)  # nncert bench
_EXTRA_COMMANDS.append(__import__("verifier.cli.check", fromlist=["register"]).register)  # nncert check
_EXTRA_COMMANDS.append(__import__("verifier.cli.lipschitz", fromlist=["register"]).register)  # nncert lipschitz
_EXTRA_COMMANDS.append(__import__("verifier.cli.supports", fromlist=["register"]).register)  # nncert supports
_EXTRA_COMMANDS.append(__import__("verifier.cli.spec", fromlist=["register"]).register)  # nncert spec convert


def _fail(args: argparse.Namespace, verdict: str, reason: str) -> None:
    """On an exit path with no verdict: the results file and the report still say what happened."""
    run: Optional[_Run] = getattr(args, "_run", None)
    if run is not None and not run.claim():
        time.sleep(10)  # the watchdog is ending the process
    if run is not None and run.progress is not None:
        run.progress.close()
    if run is None:
        return  # the output paths were not checked yet (or one of them is the bad input)
    try:
        _write_results(getattr(args, "results_file", None), verdict)
        run.report({"verdict": verdict, "reason": reason})
    except Exception as exc:  # an output that fails now was checked before the run: say so, keep the exit code
        print(f"nncert: error: could not write the outputs: {exc}", file=sys.stderr)


_BUDGETED = ("verify", "bounds", "lipschitz", "check")  # commands whose --timeout ends the process


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._process = argv is None  # the CLI is the process: its start-up counts against --timeout
    if args._process and args.command in _BUDGETED:
        heap.keep_freed()
    code = _dispatch(args)
    if args._process and args.command in _BUDGETED:
        # The outputs are written and flushed; the interpreter's teardown (torch's
        # modules, thread pools) costs up to a second under load, past the budget.
        # (Not for `bench`, whose worker pool shuts down on the way out.)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BrokenPipeError:
            pass
        run: Optional[_Run] = getattr(args, "_run", None)
        if run is not None:
            run.release()   # a local Ray cluster: Ray's exit handler does not run after os._exit
        os._exit(code)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("nncert: interrupted", file=sys.stderr)
        _fail(args, "unknown", "interrupted by the user")
        return 130
    except BrokenPipeError:
        # The reader closed stdout early (`nncert verify ... | head -1`): the results
        # file and the report are written before anything is printed; nothing is wrong.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # classified below; never turned into a verdict
        if isinstance(exc, _bad_input_types()):
            msg = str(exc) if not isinstance(exc, FileNotFoundError) else f"{exc.filename}: no such file"
            print(f"nncert: error: {msg}", file=sys.stderr)
            _fail(args, "error", msg)
            return BAD_INPUT
        print(f"nncert: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if os.environ.get("NNCERT_DEBUG"):
            traceback.print_exc()
        _fail(args, "error", f"internal error: {type(exc).__name__}: {exc}")
        return INTERNAL

