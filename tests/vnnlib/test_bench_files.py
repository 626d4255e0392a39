"""Every VNN-LIB file of the shared benchmark parses, and its counts fit its model."""

from __future__ import annotations

import csv
import math
import time
from functools import lru_cache
from pathlib import Path

import pytest

import vnnlib
from tests.vnnlib._util import BENCH

pytestmark = pytest.mark.skipif(not BENCH.exists(), reason=f"shared bench not found at {BENCH}")


def _bench_dirs() -> list[Path]:
    return sorted(p for p in BENCH.iterdir() if p.is_dir()) if BENCH.exists() else []


@lru_cache(maxsize=None)
def _model_sizes(model: Path) -> tuple[int, int]:
    """(input size, output size) of an ONNX model, batch/symbolic dims counted as 1."""
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(model), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]

    def size(value_info) -> int:
        return math.prod(d.dim_value if d.dim_value > 0 else 1
                         for d in value_info.type.tensor_type.shape.dim)

    return size(inputs[0]), size(graph.output[0])


def test_every_vnnlib_file_parses() -> None:
    files = sorted(BENCH.rglob("*.vnnlib")) + sorted(BENCH.rglob("*.vnnlib.gz"))
    assert files, "no .vnnlib files found"
    slowest = (0.0, None)
    for path in files:
        start = time.perf_counter()
        spec = vnnlib.load(path)
        elapsed = time.perf_counter() - start
        slowest = max(slowest, (elapsed, path), key=lambda item: item[0])
        assert spec.n_inputs > 0 and spec.n_outputs > 0
        assert spec.disjuncts
        for disjunct in spec.disjuncts:
            assert (disjunct.region.lower <= disjunct.region.upper).all()
            assert disjunct.outputs
    print(f"\n{len(files)} files; slowest {slowest[0] * 1000:.0f} ms: {slowest[1]}")


@pytest.mark.parametrize("bench", _bench_dirs(), ids=lambda p: p.name)
def test_instances_match_model_sizes(bench: Path) -> None:
    table = bench / "instances.csv"
    if not table.exists():
        pytest.skip(reason="no instances.csv")
    with open(table, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    assert rows
    for model_name, spec_name, *_ in rows:
        n_in, n_out = _model_sizes(bench / model_name)
        spec = vnnlib.load(bench / spec_name, n_inputs=n_in, n_outputs=n_out)
        assert (spec.n_inputs, spec.n_outputs) == (n_in, n_out)


def test_count_mismatch_names_both_counts() -> None:
    spec_path = BENCH / "2022_acasxu" / "vnnlib" / "prop_1.vnnlib"
    if not spec_path.exists():
        pytest.skip(reason="acasxu prop_1 not present")
    with pytest.raises(vnnlib.VnnlibError) as info:
        vnnlib.load(spec_path, n_inputs=784)
    assert "5 input variables" in info.value.message and "784" in info.value.message
    assert str(spec_path) in str(info.value)
    # a shape is accepted as well as a count
    assert vnnlib.load(spec_path, n_inputs=(1, 1, 1, 5), n_outputs=(1, 5)).n_inputs == 5


def test_acasxu_property_6_has_two_regions() -> None:
    spec_path = BENCH / "2022_acasxu" / "vnnlib" / "prop_6.vnnlib"
    if not spec_path.exists():
        pytest.skip(reason="acasxu prop_6 not present")
    spec = vnnlib.load(spec_path)
    assert len(spec.disjuncts) == 2
    for disjunct in spec.disjuncts:
        assert len(disjunct.outputs) == 4  # Y_k <= Y_0 for k = 1..4
        for k, conj in enumerate(disjunct.outputs, start=1):
            expected = [0.0] * 5
            expected[0], expected[k] = -1.0, 1.0
            assert conj.C.tolist() == [expected] and conj.d.tolist() == [0.0]
    assert spec.disjuncts[0].region.lower[1] == 0.11140846
    assert spec.disjuncts[1].region.upper[1] == -0.11140846
