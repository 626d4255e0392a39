"""`verifier.bench.bab`: the worker's record on a tiny net whose proof needs branch and
bound, the fresh-process measurement that imports the code under test from --source,
and the side-by-side comparison of two result files. No ../shared files are read."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from models import GraphEvaluator
from tests.helpers import relu_mlp_onnx
from verifier.bench import bab as bench_bab
from verifier.model import load_model

ROOT = Path(__file__).resolve().parents[3]


def _instance(tmp_path: Path) -> tuple[Path, Path]:
    """A 2-16-16-1 ReLU net and `y <= t somewhere in [-1, 1]^2` with t just below the true
    minimum: unsat, and too close for one bound pass, so the search has to split."""
    onnx_path = relu_mlp_onnx(tmp_path / "net.onnx", 0)
    g = np.linspace(-1, 1, 401)
    xs = torch.from_numpy(np.stack(np.meshgrid(g, g), -1).reshape(-1, 1, 2))
    m = float(GraphEvaluator(load_model(onnx_path).graph, dtype=torch.float64)(xs).min())
    t = m - 0.01 * (1 + abs(m))
    spec_path = tmp_path / "prop.vnnlib"
    spec_path.write_text("\n".join(
        ["(declare-const X_0 Real)", "(declare-const X_1 Real)", "(declare-const Y_0 Real)"]
        + [f"(assert ({op} X_{i} {v}))" for i in range(2) for op, v in (("<=", "1.0"), (">=", "-1.0"))]
        + [f"(assert (<= Y_0 {t!r}))", ""]))
    return onnx_path, spec_path


SETS = ["attack.enabled=false", "bab.mode=input"]


def _check(rec: dict, onnx_path: Path) -> None:
    assert rec["schema"] == bench_bab.SCHEMA
    assert rec["verdict"] == "unsat", rec["reason"]
    assert rec["method"] == "bab-input"
    assert rec["domains"] > 0
    assert rec["verify_s"] > 0
    assert abs(rec["domains_per_s"] - rec["domains"] / rec["verify_s"]) < 1e-9 * rec["domains_per_s"]
    assert 0 < rec["search_s"] <= rec["verify_s"]
    assert abs(rec["search_domains_per_s"] - rec["domains"] / rec["search_s"]) < 1e-9 * rec["search_domains_per_s"]
    assert rec["device"] == "cpu" and rec["threads"] == 1 and rec["timeout"] == 20.0
    assert rec["onnx"] == str(onnx_path)
    assert set(rec["modules"]) >= {"verifier", "vnnlib", "bab"}


def test_worker_prints_one_json_record(tmp_path, capsys) -> None:
    onnx_path, spec_path = _instance(tmp_path)
    args = [str(onnx_path), str(spec_path), "--timeout", "20", "--device", "auto", "--threads", "1"]
    for s in SETS:
        args += ["--set", s]
    threads = torch.get_num_threads()
    assert bench_bab.main(["--worker", *args]) == 0
    assert torch.get_num_threads() == threads
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1
    rec = json.loads(lines[0])
    _check(rec, onnx_path)
    assert rec["overrides"] == SETS


def test_measure_runs_the_source_code_in_a_fresh_process(tmp_path) -> None:
    onnx_path, spec_path = _instance(tmp_path)
    rec = bench_bab.measure(onnx_path, spec_path, source=ROOT, timeout=20, threads=1, overrides=tuple(SETS))
    _check(rec, onnx_path.resolve())
    assert all(Path(f).resolve().is_relative_to(ROOT) for f in rec["modules"].values())
    assert rec["process_s"] >= rec["verify_s"]


def test_compare_reads_two_result_files(tmp_path) -> None:
    def write(path: Path, rate: float) -> None:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=bench_bab._COLUMNS)
            w.writeheader()
            for name, fam, dom in (("a 1", "fa", 100), ("b 2", "fb", 300)):
                for rep, t in enumerate((dom / rate, 2 * dom / rate, dom / rate / 2)):  # median: dom / rate
                    w.writerow({"instance": name, "family": fam, "repeat": rep, "verdict": "unsat", "domains": dom,
                                "verify_s": t, "domains_per_s": dom / t, "search_s": "", "code": "x",
                                "device": "cpu"})

    write(tmp_path / "old.csv", 100.0)
    write(tmp_path / "new.csv", 150.0)
    text = "\n".join(bench_bab.compare(tmp_path / "old.csv", tmp_path / "new.csv"))
    assert "| a 1 | unsat | 100 | 100 | unsat | 100 | 150 | 1.50 | - |" in text
    assert "| **total, all** | | 400 | 100 | | 400 | 150 | 1.50 | - |" in text
