"""Run a solver call in a forked child that is killed at its time limit.

Why: cvxpy builds a large LMI in compiled code that holds the GIL (tens of seconds
for LipSDP on the deeper mnist_fc networks, in one call), and SCS's ``time_limit_secs`` starts
counting only after that; no thread, timer or signal handler of ours runs meanwhile,
so a deadline inside the process cannot be kept. A child process can be killed. The
child inherits the problem data by ``fork`` (nothing is pickled on the way in) and
sends back the (small) result; it touches numpy/scipy/cvxpy only, never torch.
Where ``fork`` is unavailable the call runs in-process with no hard limit.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import signal
import time
import traceback
from typing import Any, Callable

__all__ = ["SolverKilled", "call_with_time_limit"]


class SolverKilled(RuntimeError):
    """The call did not return within its time limit and its process was killed."""


def _die_with_parent() -> None:
    """Linux: have the kernel kill this child when its parent ends (also by os._exit or a
    signal), so that a solver never outlives the command that started it."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child(conn: Any, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    _die_with_parent()
    try:
        conn.send(("ok", fn(*args, **kwargs)))
    except BaseException as exc:  # everything goes back to the parent, which decides
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=3)))
    finally:
        conn.close()


def call_with_time_limit(fn: Callable[..., Any], args: tuple = (), kwargs: dict | None = None,
                         seconds: float | None = None) -> Any:
    """``fn(*args, **kwargs)``, or ``SolverKilled`` after ``seconds``; a failure in the
    child is raised here as ``RuntimeError`` with its type and message. ``seconds=None``
    calls ``fn`` in-process (no limit asked for)."""
    kwargs = kwargs or {}
    if seconds is None or "fork" not in multiprocessing.get_all_start_methods():
        return fn(*args, **kwargs)
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, fn, args, kwargs), daemon=True)
    t0 = time.monotonic()
    proc.start()
    send.close()
    try:
        if not recv.poll(max(seconds, 0.0)):
            raise SolverKilled(f"killed at its time limit after {time.monotonic() - t0:.1f} s")
        try:
            msg = recv.recv()
        except EOFError:
            raise RuntimeError(f"the solver process ended without an answer (exit code {proc.exitcode})") from None
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=5)
        recv.close()
    if msg[0] == "ok":
        return msg[1]
    raise RuntimeError(msg[1])
