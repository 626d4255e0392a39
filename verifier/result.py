"""The outcome of a verification run and its JSON report (schema: verifier/report.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from verifier.report import versions as _versions
from verifier.report import write_report

__all__ = ["Result", "VERDICTS", "versions"]

VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")


def versions() -> dict[str, str]:
    return _versions()


@dataclass
class Result:
    """Verdict plus evidence. `x`/`y` are set only for `sat`, after onnxruntime replay."""

    verdict: str
    reason: str = ""
    x: Optional[np.ndarray] = None
    y: Optional[np.ndarray] = None
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    method: str = ""
    proof: Optional[dict] = None
    progress: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "method": self.method,
            "time": {k: round(v, 6) for k, v in self.timings.items()},
            "progress": self.progress,
            "stats": self.stats,
            "counterexample": None if self.x is None else {
                "x": [float(v) for v in np.asarray(self.x).reshape(-1)],
                "y": [float(v) for v in np.asarray(self.y).reshape(-1)]},
            "versions": versions(),
        }

    def write_report(self, path: str | Path, extra: Optional[dict] = None) -> None:
        data = self.to_dict()
        if extra:
            data.update(extra)
        write_report(path, "verify", data)
