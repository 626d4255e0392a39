"""The certificate suite runner: verify with a proof, write, check, one CSV row each."""
from __future__ import annotations

import csv

import vnnlib
from tests.builders import known_answer_min, known_answer_net, known_answer_spec
from verifier.bench.certificates import main


def test_suite_runner_writes_checked_rows(tmp_path) -> None:
    model = known_answer_net(tmp_path, 1)
    m = known_answer_min(model)
    spread = 0.05 * (1 + abs(m))
    vnnlib.write_vnnlib(tmp_path / "unsat.vnnlib", known_answer_spec(m - spread))
    vnnlib.write_vnnlib(tmp_path / "sat.vnnlib", known_answer_spec(m + spread))
    (tmp_path / "instances.csv").write_text("net1.onnx,unsat.vnnlib,30\nnet1.onnx,sat.vnnlib,30\n")
    out = tmp_path / "certs.csv"
    assert main([str(tmp_path / "instances.csv"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["verdict"] for r in rows] == ["unsat", "sat"]
    assert all(r["check"] == "accepted" for r in rows), rows
    assert all(float(r["size_kb"]) > 0 for r in rows)
