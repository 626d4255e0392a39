"""Result files and VNN-LIB writing round-trip exactly; robustness specs mean what they say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import vnnlib
from tests.vnnlib._util import BENCH


def _float32_bits(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).view(np.uint32)


def test_sat_counterexample_round_trips_float32_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(784) * 10.0 ** rng.integers(-30, 30, 784)).astype(np.float32)
    x[:6] = [0.0, -0.0, 1e-45, -3.4028235e38, 0.1, np.float32(1) / 3]
    y = rng.standard_normal(10).astype(np.float32)
    path = tmp_path / "results.txt"
    vnnlib.write_results(path, "sat", x, y)
    lines = path.read_text().splitlines()
    assert lines[0] == "sat" and lines[1] == "(" and lines[-1] == ")"
    assert lines[2] == "(X_0 0.0)" and lines[2 + 784] == f"(Y_0 {float(y[0])!r})"
    verdict, x_back, y_back = vnnlib.read_results(path)
    assert verdict == "sat" and x_back.dtype == np.float64
    assert np.array_equal(_float32_bits(x_back), _float32_bits(x))
    assert np.array_equal(_float32_bits(y_back), _float32_bits(y))
    assert np.signbit(x_back[1])  # -0.0 stays -0.0


@pytest.mark.parametrize("verdict", ["unsat", "unknown", "timeout", "error"])
def test_other_verdicts_have_no_counterexample(tmp_path: Path, verdict: str) -> None:
    path = tmp_path / "r.txt"
    vnnlib.write_results(path, verdict)
    assert path.read_text() == verdict + "\n"
    assert vnnlib.read_results(path) == (verdict, None, None)


def test_write_results_refuses_inconsistent_calls(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        vnnlib.write_results(tmp_path / "r", "maybe")
    with pytest.raises(ValueError):
        vnnlib.write_results(tmp_path / "r", "sat", x=[1.0])
    with pytest.raises(ValueError):
        vnnlib.write_results(tmp_path / "r", "unsat", x=[1.0], y=[2.0])
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_read_results_accepts_other_layouts_and_old_words() -> None:
    assert vnnlib.parse_results("violated\n((X_0 -0.5) (X_1 2)\n(Y_0 1e-05))")[0] == "sat"
    verdict, x, y = vnnlib.parse_results("sat\n((X_1 2) (X_0 -0.5) (Y_0 1e-05))")
    assert x.tolist() == [-0.5, 2.0] and y.tolist() == [1e-05]
    assert vnnlib.parse_results("holds\n") == ("unsat", None, None)
    assert vnnlib.parse_results("sat\n") == ("sat", None, None)


@pytest.mark.parametrize("text, expected", [
    ("", "empty results file"),
    ("proved", "expected a verdict"),
    ("unsat\n(X_0 1)", "after the verdict"),
    ("sat\n((X_0 1) (X_0 2))", "given twice"),
    ("sat\n((X_0 1) (X_2 2))", "lacks X_1"),
    ("sat\n((X_0 abc))", "expected a number"),
    ("sat\n((X_0 1)", "expected ')'"),
    ("sat\n((Q_0 1))", "X_<i> or Y_<j>"),
    ("sat\n((Y_0 1))", "no input values"),
])
def test_malformed_results_are_located_errors(text: str, expected: str) -> None:
    with pytest.raises(vnnlib.VnnlibError) as info:
        vnnlib.parse_results(text, "r.txt")
    assert expected in info.value.message and str(info.value).startswith("r.txt:")


def test_robustness_spec_rows_and_clipping() -> None:
    spec = vnnlib.robustness_spec([0.05, 0.5, 0.98], 0.1, label=2, n_classes=4,
                                  lower_clip=0.0, upper_clip=1.0)
    (disjunct,) = spec.disjuncts
    assert disjunct.region.lower.tolist() == [0.0, 0.4, 0.88]
    assert disjunct.region.upper.tolist() == [0.15000000000000002, 0.6, 1.0]
    assert [c.C.tolist() for c in disjunct.outputs] == [
        [[-1.0, 0.0, 1.0, 0.0]], [[0.0, -1.0, 1.0, 0.0]], [[0.0, 0.0, 1.0, -1.0]]]
    assert all(c.d.tolist() == [0.0] and c.strict.tolist() == [False] for c in disjunct.outputs)
    # a tie counts as a counterexample; a strictly larger label score does not
    assert spec.is_counterexample([0.05, 0.5, 0.98], [0.0, 0.0, 1.0, 1.0])
    assert not spec.is_counterexample([0.05, 0.5, 0.98], [0.0, 0.0, 1.0, 0.5])


@pytest.mark.parametrize("kwargs", [
    dict(x0=[0.5], eps=-0.1, label=0, n_classes=2),
    dict(x0=[0.5], eps=0.1, label=2, n_classes=2),
    dict(x0=[0.5], eps=0.1, label=0, n_classes=1),
    dict(x0=[2.0], eps=0.1, label=0, n_classes=2, upper_clip=1.0),
    dict(x0=[np.nan], eps=0.1, label=0, n_classes=2),
])
def test_robustness_spec_refuses_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        vnnlib.robustness_spec(**kwargs)


@pytest.mark.parametrize("kwargs,expected", [
    (dict(x0=np.array([0.5]), eps=0.1, label=0, n_classes=2, lower_clip=0.9, upper_clip=0.95),
     "input 0 has lower 0.9 > upper 0.6"),
    (dict(x0=[0.5], eps=0.1, label=np.int64(5), n_classes=np.int64(3)), "got 5"),
    (dict(x0=[0.5], eps=0.1, label=0, n_classes=np.float64(2.5)), "got 2.5"),
])
def test_robustness_spec_messages_show_plain_numbers(kwargs: dict, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        vnnlib.robustness_spec(**kwargs)
    assert expected in str(info.value) and "np." not in str(info.value)


def test_written_robustness_spec_reads_back_equal(tmp_path: Path) -> None:
    x0 = np.random.default_rng(1).random((1, 3, 4, 4)).astype(np.float32)
    spec = vnnlib.robustness_spec(x0, 2 / 255, label=7, n_classes=10, lower_clip=0, upper_clip=1)
    path = tmp_path / "robust.vnnlib"
    vnnlib.write_vnnlib(path, spec)
    assert vnnlib.load(path, n_inputs=x0.shape, n_outputs=10) == spec
    assert "(<= Y_7 Y_0)" in path.read_text()


def _small_bench_files() -> list[Path]:
    if not BENCH.exists():
        return []
    files = sorted(BENCH.rglob("*.vnnlib"))
    seen, picked = set(), []
    for path in files:  # one file per benchmark folder, plus every ACAS Xu property
        key = path.parent
        if key not in seen or "acasxu" in str(path):
            seen.add(key)
            picked.append(path)
    return picked


@pytest.mark.parametrize("path", _small_bench_files(), ids=lambda p: p.name)
def test_bench_specs_survive_write_and_read(path: Path) -> None:
    spec = vnnlib.load(path)
    assert vnnlib.parse_text(vnnlib.format_vnnlib(spec)) == spec


def test_multi_region_spec_with_general_rows_round_trips() -> None:
    region_a = vnnlib.InputRegion([0.0, 0.0], [1.0, 1.0], A=[[1.0, 1.0]], b=[1.5])
    region_b = vnnlib.InputRegion([-1.0, 2.0], [0.0, 2.0])
    conj_1 = vnnlib.OutputConstraints([[0.5, -0.25]], [0.1], [True])
    conj_2 = vnnlib.OutputConstraints([[0.0, 1.0], [-1.0, 0.0]], [3.0, -2.0], [False, False])
    spec = vnnlib.Spec(2, 2, (vnnlib.Disjunct(region_a, (conj_1, conj_2)),
                              vnnlib.Disjunct(region_b, (conj_2,))))
    text = vnnlib.format_vnnlib(spec)
    assert vnnlib.parse_text(text) == spec
    assert "(< (+ (* 0.5 Y_0) (* -0.25 Y_1)) 0.1)" in text
