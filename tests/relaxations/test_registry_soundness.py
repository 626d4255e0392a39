"""Registry-driven soundness: every registered op has a case, and every case's bounds
(IBP, CROWN, alpha-CROWN) contain sampled outputs over random boxes."""
from __future__ import annotations

import pytest
import torch

from models import graph_from_proto
from models.ort_check import check_against_onnxruntime
from relaxations import BoundOptions, IntervalBounds, compute_bounds, registered_ops
from tests.helpers import assert_inside, outputs_float64, sample_box
from tests.op_cases import CASES, FOLDED_ONLY

CASE_IDS = [c.name for c in CASES]


def test_every_registered_op_has_a_test_case() -> None:
    covered = set().union(*(c.ops for c in CASES))
    missing = sorted(set(registered_ops()) - covered - FOLDED_ONLY)
    assert not missing, f"registered ops without a case in tests/op_cases.py: {missing}"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_forward_matches_onnxruntime(case) -> None:
    graph = graph_from_proto(case.model)
    check_against_onnxruntime(graph, case.model.SerializeToString(), samples=5)


def _boxes(case, seed: int):
    g = torch.Generator().manual_seed(seed)
    shape = case.input_shape
    center = case.low + (case.high - case.low) * torch.rand(1, *shape, generator=g)
    for width in (0.0, 0.05, 0.5, 2.0):
        radius = width * torch.rand(1, *shape, generator=g)
        yield torch.maximum(center - radius, torch.tensor(case.low)), torch.minimum(center + radius, torch.tensor(case.high))


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bounds_contain_sampled_outputs(case, method: str, device: str) -> None:
    """On every device (`device` fixture: cuda runs where there is one): the bounds are
    computed there, the sampled outputs in float64 on the CPU."""
    graph = graph_from_proto(case.model)
    opts = BoundOptions(method=method, alpha_iterations=5)
    for seed in range(2):
        for lo, hi in _boxes(case, seed):
            res = compute_bounds(graph, IntervalBounds(lo.to(device), hi.to(device)), options=opts)
            assert res.lower.device.type == torch.device(device).type
            ys = outputs_float64(graph, sample_box(lo, hi, 1000, seed))
            assert_inside(ys, res.lower[0].cpu(), res.upper[0].cpu(), f"{case.name}/{method}/{device}")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bounds_in_float64_are_sound_too(case) -> None:
    graph = graph_from_proto(case.model)
    lo, hi = next(iter(_boxes(case, 3)))
    lo, hi = lo.double() - 0.1, hi.double() + 0.1
    lo, hi = lo.clamp(case.low, case.high), hi.clamp(case.low, case.high)
    res = compute_bounds(graph, IntervalBounds(lo, hi), options=BoundOptions(method="crown"))
    assert res.lower.dtype == torch.float64
    ys = outputs_float64(graph, sample_box(lo, hi, 500, 1))
    assert_inside(ys, res.lower[0], res.upper[0], f"{case.name}/float64", rel=1e-9)


def test_each_bounding_rule_covers_the_opsets_its_forward_does() -> None:
    """An op's bounding rules span exactly the opset ranges of its forward rules, so a
    model of an opset where nncert cannot run the op is refused at load, not at bounding,
    and a bounding rule never outlives the forward it was written for."""
    from models.ops.registry import FORWARD
    from relaxations.registry import REGISTRY

    for key, rules in REGISTRY.items():
        assert sorted((r.min_opset, r.max_opset) for r in rules) == \
            sorted((r.min_opset, r.max_opset) for r in FORWARD.get(key, [])), key
