"""What a run has done so far: one object the search updates, the terminal shows and the
report (and the hard-timeout watchdog) reads.

A live line is drawn on stderr only when stderr is a terminal and the verbosity is
normal or higher, so logs and pipes stay clean; `-v` adds one line per phase, on a
terminal or not; `-q` shows nothing. The facts are kept either way: the report carries
them, including the report the watchdog writes when it must end a run early.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any, Optional, TextIO

__all__ = ["Progress", "QUIET", "NORMAL", "VERBOSE"]

QUIET, NORMAL, VERBOSE = 0, 1, 2


class Progress:
    """Thread-safe record of a run's phase and counters, with an optional live line."""

    def __init__(self, verbosity: int = NORMAL, stream: Optional[TextIO] = None,
                 deadline: Optional[float] = None, interval: float = 0.25) -> None:
        self.verbosity = verbosity
        self.stream = stream if stream is not None else sys.stderr
        self.deadline = deadline
        self.interval = interval
        self._facts: dict[str, Any] = {"phase": "start"}
        self._lock = threading.Lock()
        self._draw_lock = threading.Lock()   # the ticker and the caller may draw at once
        self._stop = threading.Event()
        self._last_draw = 0.0
        self._drawn = False
        try:
            self._live = verbosity >= NORMAL and self.stream.isatty()
        except (AttributeError, ValueError):
            self._live = False

    def phase(self, name: str) -> None:
        """Enter a phase (attack, bounds, bab-input, certificate...); -v logs it."""
        with self._lock:
            self._facts["phase"] = name
        if self.verbosity >= VERBOSE:
            self._clear()
            print(f"nncert: {name} ({self._left()})", file=self.stream, flush=True)

    def update(self, **facts: Any) -> None:
        """Record counters (domains bounded/open, best lower bound...) and redraw, throttled."""
        with self._lock:
            self._facts.update(facts)
        if self._live:
            now = time.monotonic()
            if now - self._last_draw >= self.interval:
                self._last_draw = now
                self._draw()

    def start_ticker(self) -> None:
        """Redraw the live line every `interval` from a daemon thread, so that a phase
        that reports nothing for a while (an SDP solve, a long bound pass) still shows
        that it runs and how much time is left. Nothing happens off a terminal."""
        if not self._live:
            return

        def tick() -> None:
            while not self._stop.wait(self.interval):
                self._draw()

        threading.Thread(target=tick, name="nncert-progress", daemon=True).start()

    def snapshot(self) -> dict[str, Any]:
        """The facts so far, as plain values for the report."""
        with self._lock:
            return dict(self._facts)

    def close(self) -> None:
        """Stop the ticker and erase the live line, so the verdict prints on a clean line."""
        self._stop.set()
        self._live = False
        self._clear()

    def _left(self) -> str:
        if self.deadline is None or self.deadline == float("inf"):
            return "no time limit"
        return f"{max(0.0, self.deadline - time.monotonic()):.1f} s left"

    def _draw(self) -> None:
        f = self.snapshot()
        parts = [str(f.get("phase", ""))]
        if "bounded" in f:
            parts.append(f"{f['bounded']} domains bounded")
        if "open" in f:
            parts.append(f"{f['open']} open")
        if f.get("best_lower") is not None:
            parts.append(f"worst lower bound {f['best_lower']:.4g}")
        if f.get("best_bound") is not None:
            parts.append(f"best certified bound so far {f['best_bound']:.4g}")
        parts.append(self._left())
        line = "nncert: " + ", ".join(parts)
        with self._draw_lock:
            if not self._live:
                return
            try:
                self.stream.write("\r" + line[:120].ljust(120))
                self.stream.flush()
                self._drawn = True
            except (OSError, ValueError):
                self._live = False

    def _clear(self) -> None:
        with self._draw_lock:
            self._clear_unlocked()

    def _clear_unlocked(self) -> None:
        if self._drawn:
            try:
                self.stream.write("\r" + " " * 120 + "\r")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self._drawn = False
