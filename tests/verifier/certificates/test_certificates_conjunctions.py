"""Certificates of a disjunct proved conjunction by conjunction (bab.per_conjunction, the
default with --certificate): one activation-split proof per conjunction, accepted; a
part dropped, renamed or nested, rejected."""
from __future__ import annotations

import copy

import pytest

from tests.builders import find_activation_split_run
from verifier import Config
from verifier.certificates.writer import build_certificate, write_certificate
from verifier.checker.verdict import check_certificate, check_files
from verifier.config import BabConfig

PER_CONJUNCTION = Config(timeout=60, proof=True, bab=BabConfig(mode="activation", per_conjunction="proof"))


def _per_conjunction_run(r) -> bool:
    return r.verdict == "unsat" and (r.proof or {}).get("disjuncts", [{}])[0].get("kind") == "conjunctions"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The activation-split certificate tests' MLP and radii, one search per conjunction."""
    return find_activation_split_run(tmp_path_factory.mktemp("conj"), PER_CONJUNCTION, _per_conjunction_run)


def _check(cert: dict, model, path) -> object:
    return check_certificate(cert, model.onnx_bytes, path.read_text())


def test_each_conjunction_has_its_own_proof_and_the_certificate_is_accepted(run, tmp_path) -> None:
    model, path, spec, result = run
    parts = result.proof["disjuncts"][0]["parts"]
    assert sorted(k for p in parts for k in p["conjunctions"]) == list(range(len(spec.disjuncts[0].outputs)))
    assert all(p["kind"] == "activation-split" for p in parts)
    cert_path = tmp_path / "c.json"
    assert write_certificate(cert_path, model, path, spec, result) == "written"
    res = check_files(cert_path, model.path, path)
    assert res.accepted, res.reason
    assert [p["conjunctions"] for p in res.info["disjuncts"][0]["parts"]] == [p["conjunctions"] for p in parts]


def test_missing_renamed_or_nested_parts_are_rejected(run) -> None:
    model, path, spec, result = run
    cert = build_certificate(model, path, spec, result)
    assert _check(cert, model, path).accepted
    entry = cert["disjuncts"][0]

    dropped = copy.deepcopy(cert)
    dropped["disjuncts"][0]["parts"] = entry["parts"][1:]
    assert "no part proves conjunction" in _check(dropped, model, path).reason

    # Part 0's leaves named as proving part 1's conjunction: they prove another one.
    renamed = copy.deepcopy(cert)
    renamed["disjuncts"][0]["parts"][0]["conjunctions"] = list(entry["parts"][1]["conjunctions"])
    renamed["disjuncts"][0]["parts"][1]["conjunctions"] = list(entry["parts"][0]["conjunctions"])
    assert not _check(renamed, model, path).accepted

    for bad in ([], [7], [0, 0], ["0"], None):
        broken = copy.deepcopy(cert)
        broken["disjuncts"][0]["parts"][0]["conjunctions"] = bad
        assert "must name distinct conjunctions" in _check(broken, model, path).reason, bad

    nested = copy.deepcopy(cert)
    nested["disjuncts"][0]["parts"][0] = copy.deepcopy(entry)
    assert "another kind" in _check(nested, model, path).reason

    empty = copy.deepcopy(cert)
    empty["disjuncts"][0]["parts"] = []
    assert "non-empty list" in _check(empty, model, path).reason

    outer = copy.deepcopy(cert)
    outer["disjuncts"][0]["root"]["lower"] = [v - 0.5 for v in entry["root"]["lower"]]
    assert "root region differs" in _check(outer, model, path).reason

    moved = copy.deepcopy(cert)
    moved["disjuncts"][0]["parts"][0]["root"]["lower"] = [v - 0.5 for v in entry["parts"][0]["root"]["lower"]]
    assert "root region differs" in _check(moved, model, path).reason
