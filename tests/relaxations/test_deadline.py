"""The cooperative deadline of bound passes (`BoundOptions.deadline`).

Past the deadline a pass raises DeadlineExceeded (no bound exists, so no verdict may be
taken); alpha-CROWN, once it has a bound, stops early and returns it instead; with no
deadline nothing changes.
"""
from __future__ import annotations

import dataclasses
import time

import pytest
import torch
from torch import nn

import relaxations
import relaxations.compute as compute
import relaxations.intermediate as intermediate
from models.from_torch import graph_from_module
from relaxations import BoundOptions, DeadlineExceeded, IntervalBounds, compute_bounds

torch.set_num_threads(1)


def _cnn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return graph_from_module(net, (1, 1, 8, 8))


def _mlp():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return graph_from_module(net, (1, 5))


GRAPHS = {"cnn": _cnn, "mlp": _mlp}


def _box(graph) -> IntervalBounds:
    x0 = torch.rand(2, *graph.input_shape, generator=torch.Generator().manual_seed(0))
    return IntervalBounds(x0 - 0.1, x0 + 0.1)


def test_deadline_exceeded_is_exported() -> None:
    assert "DeadlineExceeded" in relaxations.__all__ and issubclass(DeadlineExceeded, Exception)


@pytest.mark.parametrize("method", ["ibp", "crown", "alpha-crown"])
@pytest.mark.parametrize("case", sorted(GRAPHS))
def test_a_deadline_in_the_past_raises(case: str, method: str) -> None:
    graph = GRAPHS[case]()
    past = time.monotonic() - 1.0
    with pytest.raises(DeadlineExceeded):
        compute_bounds(graph, _box(graph), options=BoundOptions(method=method, deadline=past))


@pytest.mark.parametrize("case", sorted(GRAPHS))
def test_no_deadline_changes_nothing(case: str) -> None:
    graph = GRAPHS[case]()
    box = _box(graph)
    for method in ("ibp", "crown"):
        free = compute_bounds(graph, box, options=BoundOptions(method=method))
        late = compute_bounds(graph, box, options=BoundOptions(method=method, deadline=time.monotonic() + 3600))
        torch.testing.assert_close(free.lower, late.lower, rtol=0, atol=0)
        torch.testing.assert_close(free.upper, late.upper, rtol=0, atol=0)


class _Clock:
    """A fake time.monotonic that advances by one per call."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def test_a_deadline_passing_inside_the_intermediate_crown_chunks_raises(monkeypatch) -> None:
    """Many small chunks (max_elements tiny): the per-chunk check stops the loop."""
    graph = _cnn()
    clock = _Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    chunks: list[int] = []
    real = intermediate._crown_tensor

    def counting(*args, **kwargs):
        chunks.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(intermediate, "_crown_tensor", counting)
    options = BoundOptions(method="crown", max_elements=2_000, deadline=40.0)
    with pytest.raises(DeadlineExceeded):
        compute_bounds(graph, _box(graph), options=options)
    assert chunks, "the deadline should pass inside the CROWN intermediate passes, not before them"


def test_alpha_crown_stops_early_with_a_sound_bound_past_the_deadline(monkeypatch) -> None:
    """A deadline that passes once alpha optimisation has started: a bound, no exception,
    never looser than CROWN (alpha starts at CROWN's slopes)."""
    graph = _mlp()
    box = _box(graph)
    crown = compute_bounds(graph, box, options=BoundOptions(method="crown"))
    real = compute.optimise_alpha

    def late_alpha(ctx, box_, A, options, *args, **kwargs):
        assert time.monotonic() <= options.deadline
        past = dataclasses.replace(options, deadline=time.monotonic() - 1.0)
        return real(ctx, box_, A, past, *args, **kwargs)

    monkeypatch.setattr(compute, "optimise_alpha", late_alpha)
    res = compute_bounds(graph, box, options=BoundOptions(method="alpha-crown", alpha_iterations=50,
                                                          deadline=time.monotonic() + 3600))
    assert bool((res.lower >= crown.lower - 1e-6).all()) and bool((res.upper <= crown.upper + 1e-6).all())
