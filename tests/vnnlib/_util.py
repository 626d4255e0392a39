"""Helpers shared by the vnnlib tests: where the shared bench lives, small spec texts."""

from __future__ import annotations

from pathlib import Path

__all__ = ["SHARED", "BENCH", "header", "box"]

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
BENCH = SHARED / "bench"


def header(n_inputs: int, n_outputs: int) -> str:
    """The declarations of a spec with the given counts."""
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(n_inputs)) + "".join(
        f"(declare-const Y_{j} Real)\n" for j in range(n_outputs))


def box(lower: list[float], upper: list[float]) -> str:
    """Top-level asserts for an input box."""
    return "".join(f"(assert (>= X_{i} {lo!r}))\n(assert (<= X_{i} {hi!r}))\n"
                   for i, (lo, hi) in enumerate(zip(lower, upper)))
