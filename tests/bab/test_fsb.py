"""Filtered smart branching (bab.branching=fsb) in activation split: known answers on tiny
nets, the same verdicts as BaBSR (branching changes the search, never the answer), the
config checks, and proof recording with FSB."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vnnlib
from bab.activation_split import ReluSearch, activation_split_bab
from bab.branching import ParentDomains, ReluLayout, babsr_branch, fsb_branch, neuron_scores
from bab.search import SearchLimits
from tests.builders import (activation_split_config, check_certificate_for, known_answer_min, known_answer_net,
                            known_answer_spec, normalised_mlp_onnx)
from tests.helpers import assert_verdicts_bracket
from verifier import Config, load_model, verify
from verifier.config import ConfigError, with_overrides


def _cfg(branching: str, timeout: float = 60, **kw) -> Config:
    return with_overrides(Config(timeout=timeout, **kw), ["bab.mode=activation", "attack.enabled=false",
                                                     "attack.samples=1", f"bab.branching={branching}"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fsb_agrees_with_the_true_minimum(tmp_path, seed: int) -> None:
    model = known_answer_net(tmp_path, seed)
    m = known_answer_min(model)
    spread = 0.05 * (1 + abs(m))
    assert_verdicts_bracket(model, known_answer_spec, m, spread, _cfg("fsb"))


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_fsb_gives_the_same_verdicts_as_babsr(tmp_path, seed: int) -> None:
    """Three layers, thresholds on both sides of the minimum. A definite verdict of either
    must be the true one; BaBSR may run out of time where FSB does not (seed 7 below)."""
    model = known_answer_net(tmp_path, seed, widths=(2, 12, 12, 12, 1))
    m = known_answer_min(model)
    for t in (m - 0.1 * (1 + abs(m)), m + 0.05 * (1 + abs(m))):
        truth = "unsat" if t < m else "sat"
        a = verify(model, known_answer_spec(t), _cfg("babsr", timeout=15))
        b = verify(model, known_answer_spec(t), _cfg("fsb", timeout=15))
        assert a.verdict in (truth, "timeout", "unknown"), (t, m, a.verdict, a.reason)
        assert b.verdict == truth, (t, m, b.verdict, b.reason, b.stats)


def _three_domains(tmp_path, seed: int, widths, second: int):
    """A net's root problem bounded as three domains: unsplit, neuron 0 of the first ReLU
    active, and neuron `second` of it inactive; with what FSB reads."""
    from bab.activation_split import relu_inputs
    from models import GraphEvaluator
    from relaxations import BoundOptions, Given, IntervalBounds, compute_bounds
    from verifier.searches import search_problem as _problem

    model = known_answer_net(tmp_path, seed, widths=widths)
    m = known_answer_min(model)
    ev = GraphEvaluator(model.graph, dtype=torch.float32)
    p = _problem(model, ev, known_answer_spec(m - 0.02 * (1 + abs(m))).disjuncts[0], Config())
    relus = relu_inputs(p)
    names = list(relus)
    splits = {z: torch.zeros(3, *p.graph.shapes[z], dtype=torch.int8) for z in relus.values()}
    first = relus[names[0]]
    splits[first][1].view(-1)[0] = 1
    splits[first][2].view(-1)[second] = -1
    options = BoundOptions(method="alpha-crown", keep_betas=True, coefficients=True)
    box = IntervalBounds(p.lower.expand(3, *p.lower.shape[1:]), p.upper.expand(3, *p.upper.shape[1:]))
    res = compute_bounds(p.graph, box, p.C, options, want_upper=False, ev=p.ev, given=Given(splits=splits))
    lb = res.lower - p.d
    babsr, inter, offsets = neuron_scores(p, names, relus, res.table, res.coefficients, splits, lb)
    return p, relus, names, splits, options, res, lb, babsr, inter, offsets


def test_fsb_picks_an_unstable_unsplit_neuron(tmp_path) -> None:
    """Each domain's FSB choice is a neuron BaBSR could also have chosen (score >= 0)."""
    p, relus, names, splits, options, res, lb, babsr, inter, offsets = _three_domains(tmp_path, 1, (2, 16, 16, 1), 0)
    chosen = fsb_branch(ParentDomains(p, res, splits, lb), ReluLayout(names, relus, offsets), babsr, inter, options,
                        k=4)
    plain = babsr_branch(babsr, offsets)
    for n in range(3):
        if plain[n, 0] < 0:
            assert chosen[n, 0] < 0
            continue
        i, j = int(chosen[n, 0]), int(chosen[n, 1])
        assert babsr[n, offsets[i] + j] >= 0, (n, i, j)
        z = relus[names[i]]
        assert int(splits[z][n].reshape(-1)[j]) == 0


def test_sparse_children_scores_are_the_dense_ones(tmp_path) -> None:
    """FSB's children with sparse alphas and betas and lines made per domain
    (`bounds.sparse_alpha`) score as with every slope copied per child."""
    from dataclasses import replace

    from bab.branching import _children_scores

    p, relus, names, splits, options, res, lb, babsr, inter, offsets = _three_domains(tmp_path, 3, (2, 24, 24, 1), 1)
    cand = babsr.topk(4, 1).indices
    rows = torch.arange(3)
    parents, layout = ParentDomains(p, res, splits, lb), ReluLayout(names, relus, offsets)
    got = {s: _children_scores(parents, layout, rows, cand, replace(options, sparse_alpha=s)) for s in (False, True)}
    torch.testing.assert_close(got[True], got[False], rtol=1e-4, atol=1e-4)


def test_branching_config_is_checked() -> None:
    assert with_overrides(Config(), ["bab.branching=fsb"]).bab.branching == "fsb"
    with pytest.raises(ConfigError, match="bab.branching"):
        with_overrides(Config(), ["bab.branching=random"])
    with pytest.raises(ConfigError, match="bab.fsb_candidates"):
        with_overrides(Config(), ["bab.fsb_candidates=0"])
    with pytest.raises(ValueError, match="branching"):
        activation_split_bab(None, None, SearchLimits(0.0),  # type: ignore[arg-type]
                             how=ReluSearch(branching="random"))


def test_fsb_proof_is_recorded_and_accepted(tmp_path) -> None:
    """The certificate of an FSB search is checked like any other (the leaves do not care
    how the tree was split)."""
    from verifier.certificates.writer import build_certificate

    model = load_model(normalised_mlp_onnx(tmp_path / "net.onnx", [4, 32, 32, 3], 3))
    x0 = np.random.default_rng(3).uniform(0.2, 0.8, 4)
    label = int(np.argmax(model.run_onnxruntime(x0.astype(np.float32))))
    cfg = with_overrides(Config(timeout=60, proof=True), ["bab.mode=activation", "bab.branching=fsb"])
    for k, eps in enumerate((0.185, 0.19, 0.18, 0.195, 0.2)):
        path = tmp_path / f"spec{k}.vnnlib"
        vnnlib.write_vnnlib(path, vnnlib.robustness_spec(x0, eps, label, 3))
        spec = vnnlib.load(path, model.n_inputs, model.n_outputs)
        result = verify(model, spec, cfg)
        entry = (result.proof or {}).get("disjuncts", [{}])[0]
        if result.verdict == "unsat" and entry.get("kind") == "activation-split" and len(entry["leaves"]) >= 2:
            cert = build_certificate(model, path, spec, result)
            res = check_certificate_for(cert, model, path)
            assert res.accepted, res.reason
            return
    pytest.skip(reason="no radius gives an activation-split proof")


def _robustness_domains(tmp_path):
    """A 5-label MLP's robustness problem (four one-row conjunctions) bounded as three
    domains: unsplit, and one neuron of the first ReLU active, another inactive."""
    from bab.activation_split import relu_inputs
    from models import GraphEvaluator
    from relaxations import BoundOptions, Given, IntervalBounds, compute_bounds
    from verifier.searches import search_problem

    model = load_model(normalised_mlp_onnx(tmp_path / "net.onnx", [4, 24, 24, 5], 5))
    x0 = np.random.default_rng(4).uniform(0.2, 0.8, 4)
    label = int(np.argmax(model.run_onnxruntime(x0.astype(np.float32))))
    spec = vnnlib.robustness_spec(x0, 0.2, label, 5)
    p = search_problem(model, GraphEvaluator(model.graph, dtype=torch.float32), spec.disjuncts[0], Config())
    assert p.n_conj == p.C.shape[-2] == 4
    relus = relu_inputs(p)
    names = list(relus)
    splits = {z: torch.zeros(3, *p.graph.shapes[z], dtype=torch.int8) for z in relus.values()}
    first = relus[names[0]]
    splits[first][1].view(-1)[0] = 1
    splits[first][2].view(-1)[1] = -1
    options = BoundOptions(method="alpha-crown", keep_betas=True, coefficients=True)
    box = IntervalBounds(p.lower.expand(3, *p.lower.shape[1:]), p.upper.expand(3, *p.upper.shape[1:]))
    res = compute_bounds(p.graph, box, p.C, options, want_upper=False, ev=p.ev, given=Given(splits=splits))
    lb = res.lower - p.d
    babsr, inter, offsets = neuron_scores(p, names, relus, res.table, res.coefficients, splits, lb)
    return ParentDomains(p, res, splits, lb), ReluLayout(names, relus, offsets), options, babsr, inter


@pytest.mark.parametrize("sparse", [True, False])
def test_children_scored_on_chosen_rows(tmp_path, sparse: bool) -> None:
    """`bab.fsb_rows`: children bounded on each domain's chosen rows only. Every row, in any
    order, scores as the pass over all rows; the worst rows alone never score lower (the
    smallest of fewer row bounds), and a domain's own worst rows are picked by fsb_branch."""
    from dataclasses import replace

    from bab.branching import _children_scores

    parents, layout, options, babsr, inter = _robustness_domains(tmp_path)
    options = replace(options, sparse_alpha=sparse)
    cand = babsr.topk(4, 1).indices
    rows = torch.arange(3)
    full = _children_scores(parents, layout, rows, cand, options)
    every = torch.stack([torch.randperm(4, generator=torch.Generator().manual_seed(i)) for i in range(3)])
    torch.testing.assert_close(_children_scores(parents, layout, rows, cand, options, None, every), full)
    worst = parents.lb.topk(2, 1, largest=False).indices
    two = _children_scores(parents, layout, rows, cand, options, None, worst)
    assert bool((two >= full - 1e-5).all())
    chosen = fsb_branch(parents, layout, babsr, inter, options, k=4, rows=2)
    assert bool((chosen[:, 0] >= 0).all())


def test_fsb_on_the_worst_rows_keeps_the_verdicts(tmp_path) -> None:
    """Robustness properties that the search decides, with children scored on one row and
    on all: branching changes the search, never the answer."""
    model = load_model(normalised_mlp_onnx(tmp_path / "net.onnx", [4, 32, 32, 5], 5))
    x0 = np.random.default_rng(5).uniform(0.2, 0.8, 4)
    label = int(np.argmax(model.run_onnxruntime(x0.astype(np.float32))))
    searched = 0
    for k, eps in enumerate((0.155, 0.16, 0.165)):
        path = tmp_path / f"spec{k}.vnnlib"
        vnnlib.write_vnnlib(path, vnnlib.robustness_spec(x0, eps, label, 5))
        spec = vnnlib.load(path, model.n_inputs, model.n_outputs)
        got = {r: verify(model, spec, activation_split_config(20, "bab.branching=fsb", f"bab.fsb_rows={r}"))
               for r in (0, 1)}
        assert got[0].verdict == got[1].verdict or "timeout" in (got[0].verdict, got[1].verdict), eps
        searched += got[1].verdict == "unsat" and got[1].method == "bab-activation"
    assert searched, "no property needed the search"
