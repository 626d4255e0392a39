"""The rows a benchmark reads and writes: instances in, outcomes out, ground truth beside.

Instances use VNN-COMP's ``instances.csv`` format (``onnx,vnnlib,timeout``, no
header, paths relative to the CSV's folder). The paths are kept *as written* next to
the resolved ones because the reference file (``expected.csv``) and every results table
name instances by the written form; resolving them would make rows from two machines
impossible to join.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Optional, Sequence

__all__ = ["Instance", "Outcome", "COLUMNS", "GROUND_TRUTH", "read_instances", "select_instances",
           "read_expected", "expected_for", "judge", "write_outcomes", "read_outcomes"]

COLUMNS = ("onnx", "vnnlib", "verdict", "time_s", "domains", "peak_mem_mb", "error", "expected", "correct")
GROUND_TRUTH = ("sat", "unsat")  # `sat?` and `unknown` in expected.csv are opinions, not facts


@dataclass(frozen=True)
class Instance:
    """One benchmark row. ``onnx``/``vnnlib`` as written in the CSV; ``*_path`` resolved."""

    index: int
    family: str
    onnx: str
    vnnlib: str
    onnx_path: str
    vnnlib_path: str
    timeout: float


@dataclass
class Outcome:
    """What one instance gave. ``domains``/``peak_mem_mb`` are None when not measured."""

    instance: Instance
    verdict: str
    time_s: float
    domains: Optional[int] = None
    peak_mem_mb: Optional[float] = None
    error: str = ""
    expected: str = ""
    correct: str = ""   # "yes", "no" (a wrong verdict), or "" (no ground truth or no definite verdict)

    @property
    def wrong(self) -> bool:
        return self.correct == "no"

    def as_row(self) -> dict[str, str]:
        return {
            "onnx": self.instance.onnx,
            "vnnlib": self.instance.vnnlib,
            "verdict": self.verdict,
            "time_s": f"{self.time_s:.3f}",
            "domains": "" if self.domains is None else str(int(self.domains)),
            "peak_mem_mb": "" if self.peak_mem_mb is None else f"{self.peak_mem_mb:.1f}",
            "error": " ".join(self.error.split()),  # one line per row, whatever the message was
            "expected": self.expected,
            "correct": self.correct,
        }


def _resolve(written: str, base: Path) -> str:
    path = Path(written)
    return str(path if path.is_absolute() else base / path)


def read_instances(csv_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
                   timeout: Optional[float] = None, timeout_scale: float = 1.0) -> list[Instance]:
    """Every row of a VNN-COMP instances CSV; ``timeout`` replaces the row's, then the scale applies.

    The family is the name of the folder holding the CSV (``2022_acasxu``) even with
    ``root``, since that is how the reference file and published results name it.
    """
    csv_path = Path(csv_path)
    text = csv_path.read_text()  # FileNotFoundError is the caller's bad-input case
    base = Path(root) if root is not None else csv_path.parent
    family = csv_path.resolve().parent.name
    instances = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) < 3:
            raise ValueError(f"{csv_path}:{lineno}: expected onnx,vnnlib,timeout; got {','.join(row)!r}")
        try:
            row_timeout = float(cells[2])
        except ValueError:
            raise ValueError(f"{csv_path}:{lineno}: timeout {cells[2]!r} is not a number") from None
        seconds = (row_timeout if timeout is None else timeout) * timeout_scale
        if not seconds > 0:
            raise ValueError(f"{csv_path}:{lineno}: timeout must be positive, got {seconds}")
        instances.append(Instance(len(instances), family, cells[0], cells[1], _resolve(cells[0], base),
                                  _resolve(cells[1], base), seconds))
    return instances


def select_instances(instances: Sequence[Instance], substring: Optional[str] = None,
                     limit: Optional[int] = None) -> list[Instance]:
    """Rows whose onnx or vnnlib path contains ``substring``, the first ``limit`` of them."""
    chosen = [i for i in instances if not substring or substring in i.onnx or substring in i.vnnlib]
    return chosen if limit is None else chosen[:max(limit, 0)]


def _norm(path: str) -> str:
    return os.path.normpath(path.strip())


def read_expected(path: str | os.PathLike[str]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """``(onnx, vnnlib) -> [(family, expected), ...]`` from a file shaped like expected.csv.

    A list, because two families may name files alike (``test.onnx``); ``expected_for``
    picks by family.
    """
    table: dict[tuple[str, str], list[tuple[str, str]]] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"onnx", "vnnlib", "expected"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            key = (_norm(row["onnx"]), _norm(row["vnnlib"]))
            table.setdefault(key, []).append(((row.get("family") or "").strip(), row["expected"].strip()))
    return table


def expected_for(table: dict[tuple[str, str], list[tuple[str, str]]], instance: Instance) -> str:
    """The expected verdict of ``instance``: same family first, else the only candidate, else ''."""
    candidates = table.get((_norm(instance.onnx), _norm(instance.vnnlib)), [])
    same = [e for f, e in candidates if f == instance.family]
    if same:
        return same[0]
    return candidates[0][1] if len(candidates) == 1 else ""


def judge(verdict: str, expected: str) -> str:
    """'yes' when a definite verdict agrees with ground truth, 'no' when it contradicts it."""
    if expected not in GROUND_TRUTH or verdict not in GROUND_TRUTH:
        return ""
    return "yes" if verdict == expected else "no"


def write_outcomes(path: str | os.PathLike[str], outcomes: Iterable[Outcome]) -> None:
    """The results CSV, header first; written whole (and atomically) so readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for outcome in outcomes:
            writer.writerow(outcome.as_row())
    os.replace(tmp, path)


def read_outcomes(path: str | os.PathLike[str], family: str = "") -> list[Outcome]:
    """Read a results CSV back (for summaries of earlier or partial runs)."""
    outcomes = []
    with open(path, newline="") as handle:
        for k, row in enumerate(csv.DictReader(handle)):
            inst = Instance(k, family, row["onnx"], row["vnnlib"], row["onnx"], row["vnnlib"], 0.0)
            outcomes.append(Outcome(
                inst, row["verdict"], float(row["time_s"] or 0.0),
                int(row["domains"]) if row.get("domains") else None,
                float(row["peak_mem_mb"]) if row.get("peak_mem_mb") else None,
                row.get("error", ""), row.get("expected", ""), row.get("correct", "")))
    return outcomes


assert tuple(f.name for f in fields(Outcome))[1:] == COLUMNS[2:], "Outcome and COLUMNS drifted apart"
