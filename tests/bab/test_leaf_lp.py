"""Fully split leaves decided by an LP (bab/leaf_lp.py): a leaf holding a counterexample is
never proved and yields a point of it; a leaf whose minimum is above the threshold is proved
(the rows are exact on a fully split ReLU leaf); the search that set such leaves aside as
'unknown' now ends unsat."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vnnlib
from bab.activation_split import relu_inputs
from bab.leaf_lp import decide_leaves
from models import GraphEvaluator
from relaxations import BoundOptions
from tests.builders import activation_split_config, four_conjunction_spec, known_answer_net, output_mins
from verifier import Config, verify
from verifier.lp.region import polytope_point
from verifier.searches import search_problem as _problem


def _one_output_spec(threshold: float) -> vnnlib.Spec:
    region = vnnlib.InputRegion(np.full(2, -1.0), np.full(2, 1.0))
    conj = vnnlib.OutputConstraints(np.array([[1.0]]), np.array([threshold]), np.array([False]))
    return vnnlib.Spec(2, 1, (vnnlib.Disjunct(region, (conj,)),))


def _pattern(model, p, x: torch.Tensor) -> dict:
    """Every ReLU input split by its sign at the points x [N, 2]: fully split domains holding them."""
    vals = GraphEvaluator(model.graph, dtype=torch.float64).forward_all(x.double())
    return {z: torch.where(vals[z] >= 0, 1, -1).to(torch.int8) for z in relu_inputs(p).values()}


@pytest.mark.parametrize("partial", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_leaves_with_a_counterexample_are_never_proved(tmp_path, seed: int, partial: bool) -> None:
    """A domain built around a counterexample x (its ReLUs split by their signs at x; with
    `partial` only the first layer's, the rest relaxed by CROWN) is never proved."""
    model = known_answer_net(tmp_path, seed, widths=(2, 8, 8, 1))
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.uniform(-1, 1, size=(12, 2)), dtype=torch.float32)
    y = GraphEvaluator(model.graph, dtype=torch.float64)(x.double()).reshape(-1)
    for k in range(len(x)):
        # x[k] violates y <= y(x[k]) + 1e-4, and lies in the leaf of its own pattern.
        p = _problem(model, GraphEvaluator(model.graph), _one_output_spec(float(y[k]) + 1e-4).disjuncts[0], Config())
        splits = {z: s[k:k + 1] for z, s in _pattern(model, p, x).items()}
        if partial:
            splits = {z: s if i == 0 else torch.zeros_like(s) for i, (z, s) in enumerate(splits.items())}
        proved, points = decide_leaves(p, splits, torch.ones(1, 1, dtype=torch.bool), BoundOptions(), polytope_point)
        assert not bool(proved[0])
        assert len(points) == 1
        if not partial:   # exact rows: the LP's point is (nearly) a counterexample
            got = GraphEvaluator(model.graph, dtype=torch.float64)(torch.from_numpy(points[0]).reshape(1, 2))
            assert float(got) <= float(y[k]) + 1e-4 + 1e-3


@pytest.mark.parametrize("seed", [0, 1])
def test_leaves_above_the_threshold_are_proved(tmp_path, seed: int) -> None:
    """Each leaf's own minimum (a fine grid over its points) minus a margin is proved."""
    model = known_answer_net(tmp_path, seed, widths=(2, 8, 8, 1))
    g = np.linspace(-1, 1, 161)
    xs = torch.tensor(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2))
    ev64 = GraphEvaluator(model.graph, dtype=torch.float64)
    ys = ev64(xs).reshape(-1)
    p0 = _problem(model, GraphEvaluator(model.graph), _one_output_spec(0.0).disjuncts[0], Config())
    pats = _pattern(model, p0, xs)
    key = torch.cat([s.reshape(len(xs), -1) for s in pats.values()], 1)
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    proved_some = 0
    for u in range(min(len(uniq), 15)):
        members = inverse == u
        low = float(ys[members].min())
        first = int(torch.nonzero(members)[0])
        p = _problem(model, GraphEvaluator(model.graph), _one_output_spec(low - 0.05 * (1 + abs(low))).disjuncts[0],
                     Config())
        splits = {z: s[first:first + 1] for z, s in pats.items()}
        proved, _ = decide_leaves(p, splits, torch.ones(1, 1, dtype=torch.bool), BoundOptions(), polytope_point)
        proved_some += int(proved[0])
    # The grid may miss a sliver of a leaf where the net dips lower; most leaves have none.
    assert proved_some >= 10


def test_the_search_ends_unsat_where_it_set_leaves_aside(tmp_path) -> None:
    """Without the LP the activation split sets fully split leaves aside (unknown) and the
    verifier falls back to input split; with it on fully split leaves the activation split
    proves the spec; with domains of at most 8 unstable ReLUs too, in fewer domains."""
    model = known_answer_net(tmp_path, 5, widths=(2, 12, 12, 3))
    m = output_mins(model)
    spec = four_conjunction_spec(m - 0.1 * (1 + np.abs(m)))   # 100-300 fully split leaves each way
    sets = ("bab.warm_start=true", "bab.open_rows=true")
    without = verify(model, spec, activation_split_config(60, *sets, "bab.leaf_lp=false"))
    assert without.verdict == "unsat" and "fully split" in without.stats["bab_stop"]
    assert without.stats["fallback"] == ["bab-input"]
    leaves = verify(model, spec, activation_split_config(60, *sets, "bab.leaf_lp_unstable=0"))
    assert leaves.verdict == "unsat" and leaves.method == "bab-activation"
    assert "fallback" not in leaves.stats and "bab_stop" not in leaves.stats
    near = verify(model, spec, activation_split_config(60, *sets, "bab.leaf_lp_unstable=8"))
    assert near.verdict == "unsat" and near.stats["leaf_lps"] > leaves.stats["leaf_lps"]
    assert near.stats["domains"] < leaves.stats["domains"]

