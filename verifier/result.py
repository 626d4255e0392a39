"""The outcome of a verification run and its JSON report."""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

__all__ = ["Result", "VERDICTS", "versions"]

VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")


def versions() -> dict[str, str]:
    import onnxruntime
    import torch

    from verifier import __version__

    return {"nncert": __version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version()}


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

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "method": self.method,
            "time": {k: round(v, 6) for k, v in self.timings.items()},
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
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
