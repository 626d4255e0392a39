"""The root's narrowing decisions (`bab.narrowing`) and the attack they seed: on a
hidden-needle net (verifier/bench/needles.py) the distance neuron split active confines
the inputs to the needle's box, whose centre is a counterexample."""
from __future__ import annotations

import numpy as np
import torch

import vnnlib
from bab.narrowing import narrowed_candidates, narrowing_decisions
from bab.problem import Problem
from models import GraphEvaluator
from relaxations import BoundOptions, IntervalBounds, compute_bounds
from verifier import Config, load_model, verify
from verifier.bench.needles import HALF_WIDTH, build_net, to_onnx
from verifier.config import with_overrides

N_IN = 20
# The search alone: no attack before it, no MILP beside it.
SEARCH_ONLY = ["bab.mode=activation", "lp.milp=off", "attack.enabled=false", "attack.samples=1"]


def _needle(tmp_path):
    net, proof = build_net("mlp", N_IN, 0)
    path = tmp_path / "needle.onnx"
    path.write_bytes(to_onnx(net))
    return net, proof, load_model(path)


def _sat_spec(t: float) -> vnnlib.Spec:
    """The violation Y_0 >= t somewhere in [0, 1]^n."""
    region = vnnlib.InputRegion(np.zeros(N_IN), np.ones(N_IN))
    conj = vnnlib.OutputConstraints(np.array([[-1.0]]), np.array([-t]), np.array([False]))
    return vnnlib.Spec(N_IN, 1, (vnnlib.Disjunct(region, (conj,)),))


def test_the_narrowest_box_is_the_needle_s_and_its_candidates_hold_a_counterexample(tmp_path) -> None:
    net, proof, model = _needle(tmp_path)
    shape = model.graph.input_shape
    lo, hi = torch.zeros(1, *shape), torch.ones(1, *shape)
    ev = GraphEvaluator(model.graph)
    p = Problem(model.graph, ev, lo, hi, C=torch.tensor([[-1.0]]),
                d=torch.tensor([-proof.t_sat], dtype=torch.float32), strict=torch.tensor([False]),
                owner=torch.tensor([0]), n_conj=1)
    res = compute_bounds(model.graph, IntervalBounds(lo, hi), p.C, BoundOptions(method="crown"), ev=ev)
    relus = [n.inputs[0] for n in model.graph.nodes if n.op == "Relu"]
    unstable = {z: torch.nonzero(((res.table[z].lower < 0) & (res.table[z].upper > 0)).reshape(-1)).flatten()
                for z in relus}
    shapes = {z: model.graph.shapes[z] for z in relus}
    found = narrowing_decisions(p, res.table, unstable, shapes, tries=512, deadline=None)
    assert len(found.lower) >= 1 and any(bool(f.any()) for f in found.flags.values())
    c = torch.from_numpy(np.asarray(net.centre, np.float32)).reshape(1, -1)
    first = (found.lower[0].reshape(1, -1), found.upper[0].reshape(1, -1))
    assert bool((first[0] <= c).all() and (first[1] >= c).all())          # it holds the needle's centre
    assert bool(((first[1] - first[0]) <= 2 * HALF_WIDTH * 1.01).all())    # and is no wider than the needle
    pts, obj = narrowed_candidates(p, found, focus=4, steps=4)
    assert pts is not None and float(obj.min()) <= 0


def test_the_search_meets_the_needle_at_its_root_with_the_narrowing_attack(tmp_path) -> None:
    _, proof, model = _needle(tmp_path)
    spec = _sat_spec(proof.t_sat)
    r = verify(model, spec, with_overrides(Config(timeout=60), SEARCH_ONLY))
    assert r.verdict == "sat" and r.stats["domains"] <= 1, (r.verdict, r.stats)
    assert spec.is_counterexample(r.x.astype(float), r.y)
    # Without it the root does not meet the needle (the search may, later: a few seconds are enough to show it).
    off = verify(model, spec, with_overrides(Config(timeout=4), SEARCH_ONLY + ["bab.narrowing_attack=false"]))
    assert off.verdict != "sat" or off.stats["domains"] > 1, off.stats
