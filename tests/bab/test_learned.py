"""Nogoods learned from proved domains (bab/learned.py, `bab.learned_cuts`): closing and
implying by hand-computed cases, every learned nogood free of sampled counterexamples,
and the search's known answers kept with the switch on."""
from __future__ import annotations

import numpy as np
import torch

import vnnlib
from bab.activation_split import ReluBrancher, ReluSearch
from bab.learned import Nogoods
from models import GraphEvaluator
from relaxations import BoundOptions
from tests.helpers import assert_verdicts_bracket, relu_mlp_onnx
from verifier import Config, load_model
from verifier.config import with_overrides
from verifier.searches import search_problem as _problem


def _ng(*rows: list[int]) -> Nogoods:
    ng = Nogoods({"a": 2, "b": 2}, torch.device("cpu"))
    ng.add(torch.tensor(rows, dtype=torch.int8))
    return ng


def _x(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int8)


def test_a_domain_with_every_decision_is_closed() -> None:
    ng = _ng([1, 0, -1, 0])
    X, closed = ng.apply(_x([1, 1, -1, 0], [1, 0, 1, 0], [-1, 0, -1, 0], [0, 0, 0, 0]))
    assert closed.tolist() == [True, False, False, False]


def test_the_last_free_decision_is_implied_against_the_nogood() -> None:
    ng = _ng([1, 0, -1, 0])
    X, closed = ng.apply(_x([1, 0, 0, 1], [0, 0, -1, 0], [0, 0, 0, 0], [-1, 0, 0, 0]))
    assert not bool(closed.any())
    assert X.tolist() == [[1, 0, 1, 1], [-1, 0, -1, 0], [0, 0, 0, 0], [-1, 0, 0, 0]]


def test_implications_chain_until_a_domain_closes() -> None:
    """{a0+} alone implies a0- everywhere it is free; {a0-, b0+} and {a0-, b0-} then
    meet a domain from both sides of b0: closed."""
    ng = _ng([1, 0, 0, 0], [-1, 0, 1, 0], [-1, 0, -1, 0])
    X, closed = ng.apply(_x([0, 1, 0, 0], [1, 0, 0, 0]))
    assert closed.tolist() == [True, True]
    ng = _ng([1, 0, 0, 0], [-1, 0, 1, 0])
    X, closed = ng.apply(_x([0, 1, 0, 1]))
    assert not bool(closed.any()) and X.tolist() == [[-1, 1, -1, 1]]


def test_known_and_duplicate_nogoods_are_not_added_twice() -> None:
    ng = _ng([1, 0, 0, 0])
    ng.add(_x([1, 0, 1, 0], [1, 0, 0, 0], [0, -1, 0, 0], [0, -1, 0, 0]))
    assert len(ng) == 2 and ng.stats["learned"] == 2


def test_strengthening_keeps_the_decisions_with_a_positive_beta() -> None:
    ng = Nogoods({"a": 2, "b": 2}, torch.device("cpu"))
    X = _x([1, -1, 1, 0], [1, 0, 0, 0], [1, -1, 0, 0])
    betas = {"a": torch.tensor([[[0.5, 0.0]], [[0.2, 0.0]], [[0.0, 0.0]]]),
             "b": torch.tensor([[[0.0, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]]])}
    cand = ng.strengthened(X, betas, torch.tensor([True, True, True]))
    # Domain 0 drops a1 and b0; domain 1 would keep all (nothing to drop); domain 2 none.
    assert cand.tolist() == [[1, 0, 0, 0]]


def _net(tmp_path, seed: int, widths=(2, 16, 16, 1)):
    return load_model(relu_mlp_onnx(tmp_path / f"net{seed}.onnx", seed, widths))


def _grid(model, n: int = 301) -> tuple[torch.Tensor, np.ndarray]:
    g = np.linspace(-1, 1, n)
    xs = torch.from_numpy(np.stack(np.meshgrid(g, g), -1).reshape(-1, 1, 2))
    ys = GraphEvaluator(model.graph, dtype=torch.float64)(xs).numpy().reshape(len(xs), -1)
    return xs, ys


def _spec(t: float) -> vnnlib.Spec:
    region = vnnlib.InputRegion(np.full(2, -1.0), np.full(2, 1.0))
    conj = vnnlib.OutputConstraints(np.array([[1.0]]), np.array([t]), np.array([False]))
    return vnnlib.Spec(2, 1, (vnnlib.Disjunct(region, (conj,)),))


def test_no_learned_nogood_covers_a_counterexample(tmp_path) -> None:
    """A threshold a little above the true minimum: counterexamples exist (near the
    minimiser), the rest of the box is proved domain by domain, and nogoods are learned
    on the way; none of them may contain a sampled counterexample in its region."""
    model = _net(tmp_path, 13, widths=(2, 24, 24, 1))
    xs, ys = _grid(model)
    m = float(ys.min())
    t = m + 0.02 * (1 + abs(m))
    ev = GraphEvaluator(model.graph, dtype=torch.float32)
    p = _problem(model, ev, _spec(t).disjuncts[0], Config())
    br = ReluBrancher(p, BoundOptions(method="alpha-crown", alpha_iterations=5), ReluSearch(learn=True), room=64)
    vals = GraphEvaluator(model.graph, dtype=torch.float64).forward_all(xs)
    bad = torch.from_numpy(ys[:, 0] <= t)                                   # the counterexamples
    assert 0 < int(bad.sum()) < len(xs) // 4
    doms = br.root().domains
    for r in range(40):
        children = br.split(doms, r)
        if children is None:
            break
        out = br.bound(children, r)
        doms = out.domains.take(~out.proved)
        if not len(doms):
            break
        doms = doms.take(torch.argsort(doms.score)[:32])
    assert len(br.nogoods), "no nogood was learned: the test checks nothing"
    pattern = br.nogoods.flat({z: torch.sign(vals[z]).to(torch.int8) for z in br.nogoods.names})   # [n, M]
    G = br.nogoods.G
    for k in range(len(G)):
        on = G[k] != 0
        # A point is in the nogood's region when each decided neuron has the decided sign
        # (or is 0, which lies on both sides).
        inside = ((pattern[:, on] == G[k, on]) | (pattern[:, on] == 0)).all(1)
        assert not bool((inside & bad).any()), (k, G[k].nonzero().flatten().tolist())


def test_the_switch_keeps_the_known_answers(tmp_path) -> None:
    for seed in (0, 1):
        model = _net(tmp_path, seed)
        _, ys = _grid(model, 801)
        m = float(ys.min())
        cfg = with_overrides(Config(timeout=60), ["bab.mode=activation", "attack.enabled=false", "attack.samples=1",
                                                  "lp.milp=off", "bab.learned_cuts=true"])
        assert_verdicts_bracket(model, _spec, m, 0.05 * (1 + abs(m)), cfg)
