"""benchmarks/shard_projection.py on runs that cannot give a batch's costs: an instance
whose N-worker runs answered no batch, or lack the coordinator's loop time, is skipped
with the reason instead of dividing by zero or printing a negative kappa."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _projection():
    spec = importlib.util.spec_from_file_location("shard_projection", ROOT / "benchmarks" / "shard_projection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _instance(name: str, **workers) -> dict:
    """One instance: a one-process run with a short trace, and a 2-worker run whose
    workers' figures are `workers` over a sound default."""
    figures = {"batches": 3, "answered": 3, "domains": 12, "trip_s": 0.3, "worker_s": 0.2, "loop_s": 0.5,
               "wait_s": 0.2, "rounds_here_s": 0.1} | workers
    one = {"n": 1, "verdict": "unsat", "bab_s": 0.6, "domains": 24, "workers": None,
           "trace": [[0.1, 4, 8], [0.3, 6, 16], [0.6, 2, 24]]}
    return {"instance": name, "runs": [one, {"n": 2, "verdict": "unsat", "bab_s": 0.5, "domains": 24,
                                             "workers": figures}]}


@pytest.mark.parametrize("workers, words", [
    ({"answered": 0}, "no batch handed to the workers was answered"),
    ({"loop_s": 0.0}, "no loop time"),
    ({"loop_s": 0.2}, "kappa -33.3 ms"),
])
def test_runs_without_a_batch_s_costs_are_skipped_with_the_reason(tmp_path, monkeypatch, capsys, workers,
                                                                   words) -> None:
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([_instance("bad", **workers), _instance("good")]))
    monkeypatch.setattr(sys, "argv", ["shard_projection.py", str(path)])
    _projection().main()
    bad, good = capsys.readouterr().out.splitlines()
    assert bad.startswith("bad: skipped: ") and words in bad, bad
    assert good.startswith("good: a ") and "projected" in good, good
