"""Process isolation: one fresh ``nncert verify`` per instance, timed as VNN-COMP times it.

The clock starts before the fork and stops when the child is reaped, so interpreter
start-up, the torch import, model loading and parsing are all inside ``time_s``: users
pay for them, and VNN-COMP's ``run_instance.sh`` measures exactly that.

Peak memory is the child's ``ru_maxrss`` as returned by ``os.wait4`` for that one pid,
not a ``RUSAGE_CHILDREN`` delta: with ``--jobs`` > 1 children overlap, and
``RUSAGE_CHILDREN`` reports the maximum over all of them, not per child.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from verifier.bench.records import Instance, Outcome

__all__ = ["RunSettings", "ChildTracker", "run_in_process", "missing_file", "exit_code_text", "VERDICT_WORDS"]

VERDICT_WORDS = {"sat": "sat", "unsat": "unsat", "unknown": "unknown", "timeout": "timeout", "error": "error",
                 "violated": "sat", "holds": "unsat"}  # the last two: VNN-COMP 2021 wording


@dataclass(frozen=True)
class RunSettings:
    """How each instance is run. ``grace_s``: how long past its timeout a run may go before
    it is killed (the verifier's own deadline is soft; the kill is the hard one)."""

    config_path: Optional[str] = None
    overrides: tuple[str, ...] = ()
    grace_s: float = 5.0
    mem_limit_mb: Optional[float] = None     # worker isolation only; None: 70% of RAM / jobs
    worker_start_timeout_s: float = 300.0
    warm_up: bool = True                     # worker isolation: pay lazy imports before the first instance
    # worker isolation: the child's entry point, called as worker.worker_main is (None: that);
    # a module-level function, since the child is spawned and imports it by name
    worker_entry: Optional[Callable[..., None]] = None


class ChildTracker:
    """The children still running, so that an interrupted benchmark kills what it started.

    Process-isolated children lead their own process group (killed as a group, so that
    anything they spawned goes too); workers are killed by pid.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, bool] = {}
        self.stopping = threading.Event()

    def add(self, pid: int, group: bool) -> None:
        with self._lock:
            self._live[pid] = group

    def discard(self, pid: int) -> None:
        with self._lock:
            self._live.pop(pid, None)

    def kill_all(self) -> None:
        self.stopping.set()
        with self._lock:
            live = list(self._live.items())
        for pid, group in live:
            kill(pid, group)


def kill(pid: int, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def missing_file(instance: Instance) -> str:
    """An error text when the model or spec file is absent, else ''.

    Checked before anything is started: a child or worker spent on a file that is not
    there costs seconds of torch import and says nothing more.
    """
    for path in (instance.onnx_path, instance.vnnlib_path):
        if not os.path.isfile(path):
            return f"{path}: no such file"
    return ""


def _read_verdict(results: Path) -> Optional[str]:
    try:
        text = results.read_text()
    except OSError:
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return VERDICT_WORDS.get(first.lower(), f"?{first}")


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _domains(report: Path) -> Optional[int]:
    try:
        stats = json.loads(report.read_text()).get("stats", {})
    except (OSError, ValueError):
        return None
    return int(stats.get("domains", 0))


def _exit_text(status: int) -> str:
    return exit_code_text(os.waitstatus_to_exitcode(status))


def exit_code_text(code: int) -> str:
    """A child's exit code in words: negative codes are the signal that killed it."""
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def nncert_command() -> list[str]:
    """How to start a fresh `nncert`: the console script beside this interpreter when it is
    installed, else `python -m verifier.cli`. `-m` puts the working directory first on
    sys.path, and a VNN-COMP benchmark folder holds a `vnnlib/` folder that then hides
    our `vnnlib` package (every instance would end `error`); a console script does not."""
    script = Path(sys.executable).with_name("nncert")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "verifier.cli"]


def verify_command(instance: Instance, settings: RunSettings, results: Path, report: Path) -> list[str]:
    cmd = [*nncert_command(), "verify", instance.onnx_path, instance.vnnlib_path,
           "--results-file", str(results), "--report", str(report), "--timeout", repr(float(instance.timeout))]
    if settings.config_path:
        cmd += ["--config", settings.config_path]
    for item in settings.overrides:
        cmd += ["--set", item]
    return cmd


def run_in_process(instance: Instance, settings: RunSettings, tracker: ChildTracker) -> Outcome:
    """Run one instance in a fresh interpreter; never raises for anything the child does."""
    missing = missing_file(instance)
    if missing:
        return Outcome(instance, "error", 0.0, error=missing)
    if tracker.stopping.is_set():
        return Outcome(instance, "error", 0.0, error="benchmark interrupted")
    with tempfile.TemporaryDirectory(prefix="nncert-bench-") as tmp:
        results, report, log = Path(tmp, "results.txt"), Path(tmp, "report.json"), Path(tmp, "log.txt")
        with open(log, "wb") as log_handle:
            start = time.monotonic()
            proc = subprocess.Popen(verify_command(instance, settings, results, report), stdin=subprocess.DEVNULL,
                                    stdout=log_handle, stderr=subprocess.STDOUT, start_new_session=True)
        tracker.add(proc.pid, group=True)
        reaped: dict = {}

        def reap() -> None:
            # wait4, not Popen.wait: it returns this child's own rusage (its peak RSS).
            _, status, usage = os.wait4(proc.pid, 0)
            reaped.update(end=time.monotonic(), status=status, usage=usage)

        reaper = threading.Thread(target=reap, daemon=True)
        reaper.start()
        reaper.join(instance.timeout + settings.grace_s)
        killed = reaper.is_alive()
        if killed:  # the leader is not reaped yet, so its pid (= the group id) cannot have been reused
            kill(proc.pid, group=True)
            reaper.join()
        tracker.discard(proc.pid)
        proc.returncode = os.waitstatus_to_exitcode(reaped["status"])  # Popen must not wait on it again
        elapsed = reaped["end"] - start
        peak = reaped["usage"].ru_maxrss / 1024.0  # KiB on Linux
        if killed:
            return Outcome(instance, "timeout", elapsed, None, peak,
                           error=f"killed after {elapsed:.1f} s (timeout {instance.timeout:g} s + grace)")
        verdict = _read_verdict(results)
        if verdict is None:
            why = _last_line(log) or _exit_text(reaped["status"])
            return Outcome(instance, "error", elapsed, None, peak, error=f"no results file ({why})")
        if verdict.startswith("?"):
            return Outcome(instance, "error", elapsed, None, peak, error=f"results file says {verdict[1:]!r}")
        error = ""
        if verdict == "error" or proc.returncode != 0:
            error = _last_line(log) or _exit_text(reaped["status"])
            for prefix in ("nncert: ", "error: "):
                error = error[len(prefix):] if error.startswith(prefix) else error
        return Outcome(instance, verdict, elapsed, _domains(report) if verdict != "error" else None, peak,
                       error=error)
