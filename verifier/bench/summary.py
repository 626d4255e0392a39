"""Per-family summary of a benchmark run: counts, solved, wrong, and time of the solved.

"Solved" means a definite verdict (sat/unsat) that is not wrong against the ground
truth. A wrong verdict is counted in `wrong` and never in `solved`: VNN-COMP penalises
it, and a summary that credited it would hide the worst bug a verifier can have.
Times are summarised over solved instances only, because the time of an `unknown`
or a `timeout` says how long we gave up after, not how fast we are.
"""
from __future__ import annotations

import csv
import os
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from verifier.bench.records import Outcome

__all__ = ["FamilySummary", "summarize", "format_markdown", "format_text", "summary_paths",
           "write_summary", "wrong_lines"]

_VERDICT_COLUMNS = ("sat", "unsat", "unknown", "timeout", "error")


@dataclass(frozen=True)
class FamilySummary:
    family: str
    instances: int
    sat: int
    unsat: int
    unknown: int
    timeout: int
    error: int
    solved: int
    wrong: int
    median_time_s: Optional[float]
    total_time_s: float


def _summarize_one(family: str, outcomes: Sequence[Outcome]) -> FamilySummary:
    counts = {v: sum(o.verdict == v for o in outcomes) for v in _VERDICT_COLUMNS}
    solved = [o for o in outcomes if o.verdict in ("sat", "unsat") and not o.wrong]
    times = [o.time_s for o in solved]
    return FamilySummary(family, len(outcomes), solved=len(solved), wrong=sum(o.wrong for o in outcomes),
                         median_time_s=statistics.median(times) if times else None,
                         total_time_s=sum(times), **counts)


def summarize(outcomes: Iterable[Outcome]) -> list[FamilySummary]:
    """One summary per family, in the order the families first appear."""
    groups: dict[str, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault(o.instance.family, []).append(o)
    return [_summarize_one(family, group) for family, group in groups.items()]


def _cells(s: FamilySummary) -> list[str]:
    median = "" if s.median_time_s is None else f"{s.median_time_s:.2f}"
    return [s.family, str(s.instances), str(s.sat), str(s.unsat), str(s.unknown), str(s.timeout),
            str(s.error), str(s.solved), str(s.wrong), median, f"{s.total_time_s:.2f}"]


_HEADER = ["family", "instances", "sat", "unsat", "unknown", "timeout", "error", "solved", "wrong",
           "median_time_s", "total_time_s"]


def format_markdown(summaries: Sequence[FamilySummary]) -> str:
    lines = ["| " + " | ".join(_HEADER) + " |", "|---" + "|---:" * (len(_HEADER) - 1) + "|"]
    lines += ["| " + " | ".join(_cells(s)) + " |" for s in summaries]
    return "\n".join(lines) + "\n"


def format_text(summaries: Sequence[FamilySummary]) -> str:
    """A fixed-width table for the terminal."""
    rows = [_HEADER] + [_cells(s) for s in summaries]
    widths = [max(len(r[k]) for r in rows) for k in range(len(_HEADER))]
    return "\n".join("  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(r, widths)))
                     for r in rows) + "\n"


def wrong_lines(outcomes: Iterable[Outcome]) -> list[str]:
    return [f"WRONG: {o.instance.family} {o.instance.onnx} {o.instance.vnnlib}: "
            f"verdict {o.verdict}, expected {o.expected}" for o in outcomes if o.wrong]


def summary_paths(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``results.csv`` -> ``results.summary.csv``, ``results.summary.md``."""
    out = Path(out)
    stem = out.name[:-4] if out.name.endswith(".csv") else out.name
    return out.with_name(stem + ".summary.csv"), out.with_name(stem + ".summary.md")


def write_summary(out: str | os.PathLike[str], summaries: Sequence[FamilySummary], outcomes: Sequence[Outcome],
                  command: str = "") -> tuple[Path, Path]:
    """Write the CSV and markdown summaries next to ``out``; the markdown names the command."""
    csv_path, md_path = summary_paths(out)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_HEADER)
        writer.writeheader()
        for s in summaries:
            row = asdict(s)
            row["median_time_s"] = "" if s.median_time_s is None else round(s.median_time_s, 3)
            row["total_time_s"] = round(s.total_time_s, 3)
            writer.writerow(row)
    parts = []
    if command:
        parts.append(f"```\n{command}\n```\n")
    parts.append(format_markdown(summaries))
    wrong = wrong_lines(outcomes)
    if wrong:
        parts.append("\n" + "\n".join(f"- **{w}**" for w in wrong) + "\n")
    md_path.write_text("\n".join(parts))
    return csv_path, md_path
