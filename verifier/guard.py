"""The time promise of a command: one answer, given by the run or by its watchdog.

Every command that computes (`verify`, `bounds`, `lipschitz`, `check`) shares this:
its `--timeout` counts from the start of the process when the CLI is the process (a
harness measures wall time from the launch), and a watchdog thread answers on its own
shortly after the deadline if the work has not returned (compiled code, a solver that
holds the interpreter), writing whatever the command can still say and ending the
process. Exactly one of the two gives the answer.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable, Optional

from verifier.report import startup_seconds

__all__ = ["Guard", "command_start"]


def command_start(fresh_process: bool) -> float:
    """`time.monotonic()` at which a command's budget starts: the process's start when
    the CLI is the process (`fresh_process`, set by `cli.main` when it reads sys.argv),
    so that `--timeout T` bounds the wall time a user measures; otherwise now (a
    long-lived process calling `main(argv)`, whose age means nothing)."""
    now = time.monotonic()
    s = startup_seconds() if fresh_process else None
    return now - s if s is not None else now


class Guard:
    """Lets exactly one answer out: the main thread's, or the watchdog's at the deadline.

    The watchdog cannot stop work inside compiled code, so at `deadline + grace_s` it
    calls `on_timeout(best)` itself, with the last result `offer`ed (or None), and ends
    the process with `os._exit` and the exit code that returns. `deadline` None: no
    limit (`--timeout inf`), no watchdog.
    """

    def __init__(self, deadline: Optional[float], on_timeout: Callable[[Optional[Any]], int],
                 grace_s: float = 0.6) -> None:
        self._lock = threading.Lock()
        self._done = False
        self._best: Optional[Any] = None
        self._on_timeout = on_timeout
        self._timer: Optional[threading.Timer] = None
        if deadline is not None and deadline != float("inf"):
            self._timer = threading.Timer(max(deadline - time.monotonic(), 0.0) + grace_s, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def offer(self, result: Any) -> None:
        """Remember a result the watchdog may answer with if it fires."""
        self._best = result

    def take(self) -> bool:
        """Claim the answer for the calling thread: True once, for the first caller. A
        False means the watchdog is answering and is about to end the process."""
        with self._lock:
            if self._done:
                return False
            self._done = True
        if self._timer is not None:
            self._timer.cancel()
        return True

    def _fire(self) -> None:
        if not self.take():
            return
        code = 1
        try:
            code = self._on_timeout(self._best)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def finish(self, answer: Callable[[], int]) -> int:
        """Give the main thread's answer, unless the watchdog is already giving one."""
        if not self.take():
            threading.Event().wait()  # the watchdog ends the process
        return answer()

    def cancel(self) -> None:
        """Stop the watchdog (the command ends with an error of its own)."""
        if not self.take():
            threading.Event().wait()
