"""`nncert bench`: rows, summaries, ground truth, and a suite that survives bad instances.

The models are y = relu(x) on two inputs, so the verdicts are known by hand: around
(0, 1) class 1 wins (sat for "class 0 is robust"); around (1, 0) class 0 wins by a
margin of 0.8 everywhere in the 0.1-ball (unsat).
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import vnnlib
from tests.conftest import BENCH, REFERENCE
from tests.verifier.bench.bench_faults import faulty_worker_main
from verifier.bench import (Instance, Outcome, RunSettings, Slots, expected_for, judge, read_expected,
                            read_instances, run_bench, select_instances, summarize, summary_paths)
from verifier.cli import main

FAMILY = "tinyfam"


def _relu_model() -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.eye(2, dtype=np.float32), "W"),
             numpy_helper.from_array(np.zeros(2, dtype=np.float32), "b")]
    nodes = [helper.make_node("Gemm", ["X", "W", "b"], ["H"]), helper.make_node("Relu", ["H"], ["Y"])]
    graph = helper.make_graph(nodes, "relu2", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 2])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A family folder: one model, a sat and an unsat spec, a malformed spec, two CSVs."""
    root = tmp_path_factory.mktemp("bench") / FAMILY
    root.mkdir()
    onnx.save(_relu_model(), root / "relu2.onnx")
    shutil.copy(root / "relu2.onnx", root / "boom_relu2.onnx")
    vnnlib.write_vnnlib(root / "sat.vnnlib", vnnlib.robustness_spec([0.0, 1.0], 0.1, 0, 2))
    vnnlib.write_vnnlib(root / "unsat.vnnlib", vnnlib.robustness_spec([1.0, 0.0], 0.1, 0, 2))
    (root / "bad.vnnlib").write_text("(declare-const X_0 Real)\n(assert (<= X_0 \n")
    (root / "instances.csv").write_text(
        "relu2.onnx,sat.vnnlib,20\nrelu2.onnx,unsat.vnnlib,20\nmissing.onnx,unsat.vnnlib,20\n"
        "relu2.onnx,bad.vnnlib,20\n")
    (root / "expected.csv").write_text(  # the unsat instance deliberately mislabelled sat
        "family,onnx,vnnlib,timeout_s,expected\n"
        f"{FAMILY},relu2.onnx,sat.vnnlib,20,sat\n{FAMILY},relu2.onnx,unsat.vnnlib,20,sat\n"
        f"{FAMILY},relu2.onnx,bad.vnnlib,20,sat?\n")
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# jobs=1 in worker mode is covered by the fault test and the 2022_test family; in process mode by
# test_process_mode_one_job_keeps_going_after_errors (each process here costs seconds of imports).
@pytest.mark.parametrize("isolate,jobs", [("process", 2), ("worker", 2)])
def test_bench_rows_summary_and_wrong_verdict(family: Path, tmp_path: Path, isolate: str, jobs: int) -> None:
    out = tmp_path / "res.csv"
    code = main(["bench", str(family / "instances.csv"), "--isolate", isolate, "--jobs", str(jobs), "--out", str(out),
                 "--expected", str(family / "expected.csv"), "-q"])
    assert code == 3  # one wrong verdict against the (mislabelled) expected file
    rows = _rows(out)
    assert list(rows[0]) == ["onnx", "vnnlib", "verdict", "time_s", "domains", "peak_mem_mb", "error", "expected",
                             "correct"]
    assert [(r["onnx"], r["vnnlib"]) for r in rows] == [("relu2.onnx", "sat.vnnlib"), ("relu2.onnx", "unsat.vnnlib"),
                                                        ("missing.onnx", "unsat.vnnlib"), ("relu2.onnx", "bad.vnnlib")]
    assert [r["verdict"] for r in rows] == ["sat", "unsat", "error", "error"]
    assert [r["expected"] for r in rows] == ["sat", "sat", "", "sat?"]
    assert [r["correct"] for r in rows] == ["yes", "no", "", ""]
    assert "missing.onnx: no such file" in rows[2]["error"]
    assert "bad.vnnlib" in rows[3]["error"]
    assert float(rows[0]["time_s"]) > 0 and float(rows[0]["peak_mem_mb"]) > 10
    summary_csv, summary_md = summary_paths(out)
    (s,) = _rows(summary_csv)
    assert s["family"] == FAMILY
    assert {k: int(s[k]) for k in ("instances", "sat", "unsat", "unknown", "timeout", "error", "solved", "wrong")} == \
        {"instances": 4, "sat": 1, "unsat": 1, "unknown": 0, "timeout": 0, "error": 2, "solved": 1, "wrong": 1}
    assert float(s["median_time_s"]) == pytest.approx(float(rows[0]["time_s"]), abs=1e-3)
    assert "WRONG" in summary_md.read_text() and "| tinyfam | 4 |" in summary_md.read_text()


def test_process_mode_one_job_keeps_going_after_errors(family: Path) -> None:
    instances = [i for i in read_instances(family / "instances.csv") if i.vnnlib != "sat.vnnlib"
                 and i.vnnlib != "unsat.vnnlib" or i.onnx == "missing.onnx"]
    run = run_bench(instances, Slots("process", 1), quiet=True)
    assert [(o.instance.onnx, o.instance.vnnlib, o.verdict) for o in run.outcomes] == \
        [("missing.onnx", "unsat.vnnlib", "error"), ("relu2.onnx", "bad.vnnlib", "error")]
    assert "bad.vnnlib:" in run.outcomes[1].error and "Traceback" not in run.outcomes[1].error



def test_bad_slots_are_refused_before_anything_starts() -> None:
    with pytest.raises(ValueError, match="isolate must be one of process, worker"):
        Slots("thread")
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        Slots("worker", 0)
    with pytest.raises(TypeError, match="slots must be a Slots"):
        run_bench([], "worker")

def test_dead_hung_and_bloated_workers_become_rows_and_are_replaced(family: Path) -> None:
    for name in ("exit", "hang", "bloat"):
        shutil.copy(family / "relu2.onnx", family / f"{name}_relu2.onnx")
    csv_path = family / "instances_faults.csv"
    csv_path.write_text("exit_relu2.onnx,unsat.vnnlib,20\nrelu2.onnx,unsat.vnnlib,20\n"
                        "hang_relu2.onnx,unsat.vnnlib,1\nbloat_relu2.onnx,unsat.vnnlib,20\n")
    settings = RunSettings(grace_s=0.5, mem_limit_mb=1500.0, warm_up=False, worker_entry=faulty_worker_main)
    run = run_bench(read_instances(csv_path), Slots("worker", 1), settings, quiet=True)
    assert [o.verdict for o in run.outcomes] == ["error", "unsat", "timeout", "error"]
    assert "worker died (exit status 3)" in run.outcomes[0].error
    assert 1.4 < run.outcomes[2].time_s < 10 and "killed after" in run.outcomes[2].error
    assert run.outcomes[3].error.startswith("out of memory (worker RSS")


def test_read_instances_root_timeout_and_selection(family: Path, tmp_path: Path) -> None:
    insts = read_instances(family / "instances.csv", root=tmp_path, timeout=7.0, timeout_scale=0.5)
    assert insts[0].family == FAMILY and insts[0].onnx == "relu2.onnx"
    assert insts[0].onnx_path == str(tmp_path / "relu2.onnx") and insts[0].timeout == 3.5
    assert [i.timeout for i in read_instances(family / "instances.csv", timeout_scale=2.0)] == [40.0] * 4
    assert [i.vnnlib for i in select_instances(insts, "unsat")] == ["unsat.vnnlib", "unsat.vnnlib"]
    assert len(select_instances(insts, None, 3)) == 3
    (tmp_path / "bad.csv").write_text("a.onnx,b.vnnlib,soon\n")
    with pytest.raises(ValueError, match="bad.csv:1"):
        read_instances(tmp_path / "bad.csv")


def test_only_sat_and_unsat_are_ground_truth() -> None:
    assert judge("sat", "unsat") == "no" and judge("unsat", "sat") == "no"
    assert judge("unsat", "unsat") == "yes"
    assert judge("sat", "sat?") == "" and judge("unsat", "unknown") == "" and judge("timeout", "sat") == ""


def test_expected_prefers_the_same_family(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("family,onnx,vnnlib,expected\na,m.onnx,p.vnnlib,sat\nb,m.onnx,./p.vnnlib,unsat\n")
    table = read_expected(tmp_path / "e.csv")
    inst = Instance(0, "b", "m.onnx", "p.vnnlib", "m.onnx", "p.vnnlib", 1.0)
    assert expected_for(table, inst) == "unsat"
    assert expected_for(table, Instance(0, "c", "m.onnx", "p.vnnlib", "", "", 1.0)) == ""  # ambiguous


def test_summary_never_counts_a_wrong_verdict_as_solved() -> None:
    inst = Instance(0, "f", "m.onnx", "p.vnnlib", "", "", 1.0)
    outs = [Outcome(inst, "unsat", 2.0, correct="yes"), Outcome(inst, "sat", 4.0, correct="no"),
            Outcome(inst, "sat", 6.0), Outcome(inst, "timeout", 60.0), Outcome(inst, "error", 0.0)]
    (s,) = summarize(outs)
    assert (s.instances, s.sat, s.unsat, s.timeout, s.error, s.solved, s.wrong) == (5, 2, 1, 1, 1, 2, 1)
    assert s.median_time_s == 4.0 and s.total_time_s == 8.0


@pytest.mark.skipif(not (BENCH / "2022_test" / "instances.csv").is_file() or
                    not (REFERENCE / "expected.csv").is_file(),
                    reason="../shared/bench/2022_test and ../shared/reference/expected.csv are not beside the checkout")
def test_2022_test_family_has_no_wrong_verdict(tmp_path: Path) -> None:
    out = tmp_path / "t.csv"
    code = main(["bench", str(BENCH / "2022_test" / "instances.csv"), "--isolate", "worker", "--out", str(out),
                 "--expected", str(REFERENCE / "expected.csv"), "-q"])
    assert code == 0
    rows = _rows(out)
    assert rows and all(r["correct"] != "no" for r in rows) and all(r["verdict"] != "error" for r in rows)
    (s,) = _rows(summary_paths(out)[0])
    assert s["family"] == "2022_test" and int(s["wrong"]) == 0


def test_process_mode_from_a_folder_that_holds_a_vnnlib_folder(family: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """VNN-COMP benchmark folders hold `vnnlib/` (and `onnx/`) folders; started from there,
    `python -m verifier.cli` would import that folder as our `vnnlib` package and every
    instance would end `error`. The fresh processes are started so that it does not."""
    (tmp_path / "vnnlib").mkdir()
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    instances = [i for i in read_instances(family / "instances.csv") if i.vnnlib == "sat.vnnlib"]
    run = run_bench(instances, Slots("process", 1), quiet=True)
    assert [(o.verdict, o.error) for o in run.outcomes] == [("sat", "")]
