"""Worker isolation: long-lived processes that import nncert once and verify instance after instance.

Why: on small instances the torch import dominates a fresh process, which hides the
verifier's own speed. Each instance still gets a clean state (a fresh ``Config``, the
seed reset, garbage collected after) and the parent keeps the hard limits: a worker that
runs past ``timeout + grace`` or whose RSS passes the memory limit is killed and replaced,
and a worker that dies (segfault, ``os._exit``) costs one ``error`` row, not the suite.

Times here exclude start-up (interpreter, imports); use ``--isolate process`` for the
VNN-COMP figure. Peak memory is the worker's ``VmHWM`` after resetting it through
``/proc/self/clear_refs`` at the start of each instance; where the kernel refuses the
reset it is the peak since the worker started (an upper bound).
"""
from __future__ import annotations

import gc
import importlib
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any, Optional

from verifier import heap
from verifier.bench.process import ChildTracker, RunSettings, exit_code_text, kill, missing_file
from verifier.bench.records import Instance, Outcome
from verifier.config import ConfigError, load_config

__all__ = ["WorkerSlot", "worker_main", "default_mem_limit_mb"]

_POLL_S = 0.1


def default_mem_limit_mb(jobs: int) -> float:
    """70% of physical memory shared among the workers."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    return 0.7 * total / max(jobs, 1)


def _status_mb(pid: int | str, key: str) -> Optional[float]:
    """A ``kB`` field of /proc/<pid>/status in MB (None when unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _error_text(exc: BaseException) -> str:
    """The one-line message the CLI would print, without its ``nncert: error:`` prefix."""
    # lazy: models and verifier.verify import torch, which the bench parent (it imports this module) never loads
    from models import ModelError
    from verifier.verify import SpecMismatch
    from vnnlib import VnnlibError

    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename}: no such file"
    if isinstance(exc, (ModelError, VnnlibError, ConfigError, SpecMismatch)):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory (MemoryError)"
    return f"internal error: {type(exc).__name__}: {exc}"


def _verify_one(task: dict[str, Any], config_path: Optional[str], overrides: tuple[str, ...]) -> dict[str, Any]:
    # lazy: torch and the engine load in the worker process only; the bench parent imports this module too
    import torch

    import vnnlib
    from verifier.model import load_model
    from verifier.verify import verify

    _reset_peak()
    start = time.monotonic()
    out: dict[str, Any] = {"domains": None, "error": ""}
    try:
        config = load_config(config_path, list(overrides) + [f"timeout={task['timeout']!r}"])
        torch.manual_seed(config.seed)
        model = load_model(task["onnx_path"])
        spec = vnnlib.load(task["vnnlib_path"], model.n_inputs, model.n_outputs)
        result = verify(model, spec, config, start=start)
        out.update(verdict=result.verdict, domains=int(result.stats.get("domains", 0)))
        del model, spec, result
    except Exception as exc:  # recorded as this instance's error; never a verdict
        out.update(verdict="error", error=_error_text(exc))
    out["time_s"] = time.monotonic() - start
    out["peak_mem_mb"] = _status_mb("self", "VmHWM")
    gc.collect()
    heap.release()   # what this instance freed goes back before the next one's peak is measured
    return out


def _warm_up() -> None:
    """Pay lazy imports here, not in the first instance: ``torch.func`` pulls in
    ``torch._dynamo`` (seconds) on first use, and onnxruntime is imported by the first
    model check. Without this the first instance of each worker looks seconds slower."""
    for name in ("torch._dynamo", "onnxruntime"):
        try:
            importlib.import_module(name)
        except Exception:  # a warm-up that fails only costs the first instance its time
            pass


def worker_main(conn: Connection, config_path: Optional[str], overrides: tuple[str, ...],
                warm_up: bool = True) -> None:
    """Child entry point: import once, say ready, then answer one task per message until None.

    Ctrl-C reaches the whole process group; the parent decides what an interrupt means
    (it kills the workers), so a worker ignores SIGINT rather than print a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import verifier.verify  # noqa: F401  (the import is the start-up cost paid once)

    heap.keep_freed()
    if warm_up:
        _warm_up()

    conn.send(("ready", os.getpid()))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        conn.send(("done", _verify_one(task, config_path, overrides)))


class WorkerSlot:
    """One worker process, (re)started on demand; ``run`` never raises for what the worker does."""

    def __init__(self, settings: RunSettings, tracker: ChildTracker, mem_limit_mb: float) -> None:
        self.settings, self.tracker, self.mem_limit_mb = settings, tracker, mem_limit_mb
        self.proc: Optional[multiprocessing.process.BaseProcess] = None
        self.conn: Optional[Connection] = None

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # fork would copy the parent's threads and torch state
        parent_conn, child_conn = ctx.Pipe()
        proc = ctx.Process(target=self.settings.worker_entry or worker_main, args=(child_conn, self.settings.config_path, self.settings.overrides,
                                                          self.settings.warm_up),
                           daemon=True, name="nncert-bench-worker")
        proc.start()
        child_conn.close()
        self.proc, self.conn = proc, parent_conn
        self.tracker.add(proc.pid, group=False)
        try:
            ready = parent_conn.poll(self.settings.worker_start_timeout_s)
            message = parent_conn.recv() if ready else None
        except (EOFError, OSError):
            message = None
        if not message or message[0] != "ready":
            why = "did not start in time" if not ready else f"died while starting ({self._exit_text()})"
            self._discard()
            raise RuntimeError(f"worker {why}")

    def _exit_text(self) -> str:
        assert self.proc is not None
        self.proc.join(1.0)
        code = self.proc.exitcode
        if code is None:
            return "still running"
        return exit_code_text(code)

    def _discard(self) -> None:
        """Kill the worker (if alive) and forget it; the next instance starts a fresh one."""
        if self.proc is not None:
            kill(self.proc.pid, group=False)
            self.proc.join(5.0)
            self.tracker.discard(self.proc.pid)
        if self.conn is not None:
            self.conn.close()
        self.proc = self.conn = None

    def close(self) -> None:
        """Ask the worker to finish, then make sure it has."""
        if self.proc is not None and self.conn is not None:
            try:
                self.conn.send(None)
                self.proc.join(5.0)
            except (OSError, ValueError):
                pass
        self._discard()

    def run(self, instance: Instance) -> Outcome:
        missing = missing_file(instance)
        if missing:
            return Outcome(instance, "error", 0.0, error=missing)
        if self.tracker.stopping.is_set():
            return Outcome(instance, "error", 0.0, error="benchmark interrupted")
        if self.proc is None or not self.proc.is_alive():
            self._discard()
            try:
                self._start()
            except RuntimeError as exc:
                return Outcome(instance, "error", 0.0, error=str(exc))
        assert self.proc is not None and self.conn is not None
        task = {"onnx": instance.onnx, "onnx_path": instance.onnx_path, "vnnlib_path": instance.vnnlib_path,
                "timeout": float(instance.timeout)}
        start = time.monotonic()
        deadline = start + instance.timeout + self.settings.grace_s
        peak_seen: Optional[float] = None
        try:
            self.conn.send(task)
            while True:
                if self.conn.poll(_POLL_S):
                    _, result = self.conn.recv()
                    return Outcome(instance, result["verdict"], result["time_s"], result["domains"],
                                   result["peak_mem_mb"], result["error"])
                rss = _status_mb(self.proc.pid, "VmRSS")
                if rss is not None:
                    peak_seen = max(rss, peak_seen or 0.0)
                    if rss > self.mem_limit_mb:
                        self._discard()
                        return Outcome(instance, "error", time.monotonic() - start, None, rss,
                                       error=f"out of memory (worker RSS {rss:.0f} MB > limit "
                                             f"{self.mem_limit_mb:.0f} MB)")
                if time.monotonic() > deadline:
                    self._discard()
                    elapsed = time.monotonic() - start
                    return Outcome(instance, "timeout", elapsed, None, peak_seen,
                                   error=f"killed after {elapsed:.1f} s (timeout {instance.timeout:g} s + grace)")
        except (EOFError, OSError, BrokenPipeError):
            why = self._exit_text()
            self._discard()
            return Outcome(instance, "error", time.monotonic() - start, None, peak_seen,
                           error=f"worker died ({why})")
