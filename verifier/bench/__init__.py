"""The benchmark runner behind ``nncert bench``: VNN-COMP instance lists in, results and summaries out.

    >>> from verifier.bench import Slots, read_instances, run_bench, summarize
    >>> run = run_bench(read_instances("2022_acasxu/instances.csv", timeout=30), Slots(isolate="worker"))
    >>> print(format_text(summarize(run.outcomes)))

Two isolation modes: ``process`` (a fresh ``nncert verify`` per instance, start-up
included, as VNN-COMP measures) and ``worker`` (long-lived workers that import once; the
verifier's own speed). Timings are comparable only within one mode, one machine and
``jobs=1``: parallel instances share cores and memory bandwidth.
"""
from __future__ import annotations

from verifier.bench.process import ChildTracker, RunSettings, run_in_process
from verifier.bench.records import (COLUMNS, Instance, Outcome, expected_for, judge, read_expected, read_instances,
                                    read_outcomes, select_instances, write_outcomes)
from verifier.bench.runner import ISOLATION_MODES, BenchRun, RayOptions, Slots, run_bench
from verifier.bench.summary import (FamilySummary, format_markdown, format_text, summarize, summary_paths,
                                    write_summary, wrong_lines)
from verifier.bench.worker import WorkerSlot, default_mem_limit_mb

__all__ = ["COLUMNS", "ISOLATION_MODES", "BenchRun", "ChildTracker", "FamilySummary", "Instance",
           "Outcome", "RayOptions", "RunSettings", "Slots", "WorkerSlot", "default_mem_limit_mb", "expected_for",
           "format_markdown", "format_text", "judge", "read_expected", "read_instances", "read_outcomes", "run_bench",
           "run_in_process", "select_instances", "summarize", "summary_paths", "write_outcomes", "write_summary",
           "wrong_lines"]
