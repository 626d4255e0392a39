"""alpha-CROWN with optimised intermediate bounds (`BoundOptions(optimise_intermediate=True)`):
sound on sampled points, never looser than without the option or than plain CROWN's
intervals, strictly tighter where intermediate neurons are unstable, with splits, known
intervals and deadlines."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

import relaxations.alpha_intermediate as joint
from models import Graph, GraphEvaluator, graph_from_proto
from relaxations import BoundOptions, DeadlineExceeded, Given, IntervalBounds, compute_bounds
from tests.builders import small_relu_cnn
from tests.helpers import relu_mlp_layers, sample_box
from tests.op_cases import make_model

OFF = BoundOptions(method="alpha-crown", alpha_iterations=8)
ON = BoundOptions(method="alpha-crown", alpha_iterations=8, optimise_intermediate=True)
TOL = 1e-9


def _mlp(seed: int, widths=(3, 16, 16, 16, 3)) -> Graph:
    nodes, inits = relu_mlp_layers(np.random.default_rng(seed), widths, 1.5, 0.3)
    return graph_from_proto(make_model(nodes, inits, (1, widths[0]), (1, widths[-1])))


def _box(graph: Graph, seed: int, radius: float, B: int = 2) -> IntervalBounds:
    x0 = torch.tensor(np.random.default_rng(seed).uniform(-0.5, 0.5, size=(B, *graph.input_shape)))
    return IntervalBounds(x0 - radius, x0 + radius)


def _assert_sound(graph: Graph, box: IntervalBounds, res, splits=None) -> None:
    """Sampled points (those that satisfy the splits) lie in every interval and above the bounds."""
    ev = GraphEvaluator(graph, dtype=torch.float64)
    for i in range(box.lower.shape[0]):
        xs = sample_box(box.lower[i:i + 1], box.upper[i:i + 1], 1500, seed=i)
        values = ev.forward_all(xs)
        keep = torch.ones(len(xs), dtype=torch.bool)
        for z, sign in (splits or {}).items():
            s = sign[i].reshape(1, -1)
            v = values[z].reshape(len(xs), -1)
            keep &= ((s == 0) | (s * v >= 0)).all(1)
        assert int(keep.sum()) > 0
        for name, b in res.table.items():
            v = values[name][keep].reshape(int(keep.sum()), -1)
            assert bool((v >= b.lower[i].reshape(1, -1) - 1e-9).all()), f"{name}: below its lower bound"
            assert bool((v <= b.upper[i].reshape(1, -1) + 1e-9).all()), f"{name}: above its upper bound"
        y = values[graph.output_name][keep].reshape(int(keep.sum()), -1)
        assert bool((y >= res.lower[i] - 1e-9).all()) and bool((y <= res.upper[i] + 1e-9).all())


def _assert_not_looser(tight, loose) -> None:
    assert bool((tight.lower >= loose.lower - TOL).all()) and bool((tight.upper <= loose.upper + TOL).all())


def _assert_table_inside(tight, loose) -> None:
    for name, b in loose.table.items():
        assert bool((tight.table[name].lower >= b.lower - TOL).all()), name
        assert bool((tight.table[name].upper <= b.upper + TOL).all()), name


@pytest.mark.parametrize("seed", range(3))
def test_mlp_bounds_and_intervals_are_sound_and_never_looser(seed: int) -> None:
    graph = _mlp(seed)
    box = _box(graph, seed, 0.4)
    on = compute_bounds(graph, box, options=ON)
    _assert_sound(graph, box, on)
    _assert_not_looser(on, compute_bounds(graph, box, options=OFF))
    _assert_table_inside(on, compute_bounds(graph, box, options=BoundOptions(method="crown")))


def test_cnn_bounds_and_intervals_are_sound_and_never_looser() -> None:
    graph = small_relu_cnn()
    box = _box(graph, 5, 0.3)
    on = compute_bounds(graph, box, options=ON)
    _assert_sound(graph, box, on)
    _assert_not_looser(on, compute_bounds(graph, box, options=OFF))
    _assert_table_inside(on, compute_bounds(graph, box, options=BoundOptions(method="crown")))


def test_strictly_tighter_where_intermediate_neurons_are_unstable() -> None:
    graph = _mlp(0, (4, 24, 24, 24, 3))
    box = _box(graph, 0, 0.5)
    off = compute_bounds(graph, box, options=OFF)
    on = compute_bounds(graph, box, options=ON)
    crown = compute_bounds(graph, box, options=BoundOptions(method="crown"))
    h = crown.table["h1"]
    assert bool(((h.lower < 0) & (h.upper > 0)).any())          # the premise: unstable intermediate neurons
    assert float((on.lower - off.lower).max()) > 0.1
    assert float((on.table["h2"].width() - crown.table["h2"].width()).min()) < 0
    assert on.alpha_iterations == 2 * ON.alpha_iterations       # both stages ran in full


def test_a_split_domain_stays_sound_and_never_looser() -> None:
    graph = _mlp(1)
    box = _box(graph, 1, 0.4, B=1)
    box = IntervalBounds(box.lower.expand(2, -1, -1), box.upper.expand(2, -1, -1))
    crown = compute_bounds(graph, box, options=BoundOptions(method="crown"))
    h = crown.table["h1"]
    j = int(((h.lower < 0) & (h.upper > 0))[0].reshape(-1).nonzero()[0])
    sign = torch.zeros_like(h.lower)
    sign[0].view(-1)[j], sign[1].view(-1)[j] = 1.0, -1.0      # domain 0: h1[j] >= 0; domain 1: h1[j] <= 0
    splits = {"h1": sign}
    on = compute_bounds(graph, box, options=ON, given=Given(splits=splits))
    off = compute_bounds(graph, box, options=OFF, given=Given(splits=splits))
    _assert_sound(graph, box, on, splits)
    _assert_not_looser(on, off)
    assert float(on.table["h1"].lower[0].reshape(-1)[j]) >= 0 and float(on.table["h1"].upper[1].reshape(-1)[j]) <= 0


def test_known_intervals_are_kept() -> None:
    graph = _mlp(2)
    box = _box(graph, 2, 0.4)
    first = compute_bounds(graph, box, options=ON)
    known = {"h1": first.table["h1"]}
    again = compute_bounds(graph, box, options=ON, given=Given(known=known))
    _assert_sound(graph, box, again)
    assert bool((again.table["h1"].lower >= known["h1"].lower).all())
    assert bool((again.table["h1"].upper <= known["h1"].upper).all())


def test_a_passed_deadline_raises() -> None:
    graph = _mlp(0)
    with pytest.raises(DeadlineExceeded):
        compute_bounds(graph, _box(graph, 0, 0.4), options=BoundOptions(
            method="alpha-crown", optimise_intermediate=True, deadline=time.monotonic() - 1))


def test_a_deadline_inside_the_joint_stage_stops_it_with_a_sound_bound(monkeypatch) -> None:
    graph = _mlp(0)
    box = _box(graph, 0, 0.4)
    real, late = time.monotonic, {"offset": 0.0}
    monkeypatch.setattr(time, "monotonic", lambda: real() + late["offset"])
    first_pass = joint._pass

    def pass_then_late(*args, **kwargs):
        out = first_pass(*args, **kwargs)
        late["offset"] = 1e6  # the deadline passes right after the joint stage's first pass
        return out

    monkeypatch.setattr(joint, "_pass", pass_then_late)
    options = BoundOptions(method="alpha-crown", alpha_iterations=8, optimise_intermediate=True,
                           deadline=real() + 600)
    res = compute_bounds(graph, box, options=options)
    assert res.alpha_iterations == 8 + 1
    monkeypatch.undo()
    _assert_sound(graph, box, res)
    _assert_not_looser(res, compute_bounds(graph, box, options=OFF))


def test_a_clip_hook_falls_back_to_plain_alpha_crown() -> None:
    graph = _mlp(0)
    box = _box(graph, 0, 0.4)

    def clip(name, lin, lb):
        return lb

    clip.split_linear = None
    on = compute_bounds(graph, box, options=ON, given=Given(clip=clip))
    off = compute_bounds(graph, box, options=OFF, given=Given(clip=clip))
    torch.testing.assert_close(on.lower, off.lower)
    assert on.alpha_iterations == off.alpha_iterations


@pytest.mark.parametrize("joint", [False, True])
def test_optimisation_stops_once_every_row_is_above_its_threshold(joint: bool) -> None:
    """`stop_above` under the CROWN bound: one step per stage, the bound no looser than
    CROWN's; above every bound reachable: every step runs. With coefficients captured
    (branching needs the last step's) the threshold is ignored."""
    graph = _mlp(0)
    box = _box(graph, 0, 0.4)
    base = BoundOptions(method="alpha-crown", alpha_iterations=6, optimise_intermediate=joint)
    crown = compute_bounds(graph, box, options=BoundOptions(method="crown"), want_upper=False)
    low = crown.lower.min(0).values - 1.0                          # under every domain's CROWN bound
    early = compute_bounds(graph, box, options=dataclasses.replace(base, stop_above=low), want_upper=False)
    assert early.alpha_iterations == (2 if joint else 1)
    assert bool((early.lower >= crown.lower - 1e-6).all())
    full = compute_bounds(graph, box, options=dataclasses.replace(base, stop_above=low + 1e6), want_upper=False)
    assert full.alpha_iterations == (12 if joint else 6)
    kept = compute_bounds(graph, box, options=dataclasses.replace(base, stop_above=low, coefficients=True),
                          want_upper=False)
    assert kept.alpha_iterations == (12 if joint else 6)
    assert compute_bounds(graph, box, options=dataclasses.replace(base, stop_above=low)).alpha_iterations \
        == (12 if joint else 6)                                  # upper rows too: no threshold for them
