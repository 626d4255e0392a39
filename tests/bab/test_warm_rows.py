"""Activation split with warm starts (bab.warm_start), only the open spec rows bounded per
round (bab.open_rows) and one search per conjunction (bab.per_conjunction): every
domain's row bounds hold on sampled points of the domain, the compact alpha store
round-trips, and the switches never change a verdict on nets whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vnnlib
from bab.activation_split import ReluBrancher, ReluSearch, conjunction_problem, rows_problem
from models import GraphEvaluator
from relaxations import BoundOptions
from tests.builders import activation_split_config, four_conjunction_spec, known_answer_net, output_mins
from verifier import Config, verify
from verifier.searches import search_problem as _problem


def _inside(model, splits: dict, xs: torch.Tensor) -> torch.Tensor:
    """[B, n]: which points satisfy each domain's split decisions."""
    vals = GraphEvaluator(model.graph, dtype=torch.float64).forward_all(xs)
    B = next(iter(splits.values())).shape[0]
    ok = torch.ones(B, xs.shape[0], dtype=torch.bool)
    for z, s in splits.items():
        ok &= ((s.reshape(B, 1, -1).double() * vals[z].reshape(1, xs.shape[0], -1)) >= 0).all(-1)
    return ok


@pytest.mark.parametrize("seed,far", [(0, 3.0), (1, 0.3), (2, 0.3)])
def test_row_bounds_of_warm_started_open_row_rounds_hold_on_samples(tmp_path, seed: int, far: float) -> None:
    """`far`: how far under its minimum each other conjunction's threshold lies (3: proved
    at the root, so every round bounds one conjunction's row only)."""
    model = known_answer_net(tmp_path, seed, widths=(2, 12, 12, 3))
    m = output_mins(model)
    t = m - far * (1 + np.abs(m))
    t[1] = m[1] - 0.1 * (1 + abs(m[1]))              # one conjunction left open for longer
    ev = GraphEvaluator(model.graph, dtype=torch.float32)
    p = _problem(model, ev, four_conjunction_spec(t).disjuncts[0], Config())
    br = ReluBrancher(p, BoundOptions(method="alpha-crown", alpha_iterations=4),
                      ReluSearch(warm_start=True, open_rows=True))
    g = torch.Generator().manual_seed(seed)
    xs = (2 * torch.rand(4000, 1, 2, generator=g, dtype=torch.float64) - 1)
    ys = GraphEvaluator(model.graph, dtype=torch.float64)(xs).reshape(len(xs), -1)
    gaps = ys @ p.C.double().T - p.d.double()                                # [n, S]
    doms = br.root().domains
    restricted = 0
    for r in range(8):
        children = br.split(doms, r)
        restricted += children["rows"] is not None
        out = br.bound(children, r)
        inside = _inside(model, out.domains.splits, xs)                       # [B, n]
        lb = out.domains.lb.double()
        for b in range(len(lb)):
            if bool(inside[b].any()):
                assert bool((lb[b] <= gaps[inside[b]].min(0).values + 1e-5).all()), (r, b, lb[b])
        # The stored warm-start values cover every row and neuron unstable at the root.
        for name, v in out.domains.alphas.items():
            assert v.shape == (len(lb), p.C.shape[0], len(br.unstable[br.relus[name]]))
        doms = out.domains.take(~out.proved)
        if not len(doms):
            break
    assert restricted or far < 1, "no round bounded a subset of the rows"


def test_compact_alphas_round_trip(tmp_path) -> None:
    model = known_answer_net(tmp_path, 3, widths=(2, 16, 16, 2))
    ev = GraphEvaluator(model.graph, dtype=torch.float32)
    m = output_mins(model)
    region = vnnlib.InputRegion(np.full(2, -1.0), np.full(2, 1.0))
    conj = vnnlib.OutputConstraints(np.array([[1.0, 0.0]]), np.array([m[0] - 0.05]), np.array([False]))
    p = _problem(model, ev, vnnlib.Spec(2, 2, (vnnlib.Disjunct(region, (conj,)),)).disjuncts[0], Config())
    br = ReluBrancher(p, BoundOptions(method="alpha-crown", alpha_iterations=3), ReluSearch(warm_start=True))
    root = br.root()
    full_res = br._bound(root.domains.splits)[-1]
    kept_a, _ = br._keep(full_res, root.domains.lb)
    for name, v in kept_a.items():
        z = br.relus[name]
        back = br._spread(v, z, float("nan")).reshape(1, 1, -1)
        orig = full_res.alphas[name].reshape(1, 1, -1)
        idx = br.unstable[z]
        assert torch.allclose(back[..., idx], orig[..., idx], atol=1e-3)
        rest = torch.ones(back.shape[-1], dtype=torch.bool)
        rest[idx] = False
        assert bool(torch.isnan(back[..., rest]).all())


def test_rows_problem_keeps_whole_conjunctions(tmp_path) -> None:
    model = known_answer_net(tmp_path, 4, widths=(2, 8, 3))
    ev = GraphEvaluator(model.graph, dtype=torch.float32)
    p = _problem(model, ev, four_conjunction_spec(np.zeros(3)).disjuncts[0], Config())
    assert p.n_conj == 4 and p.C.shape[0] == 5
    q = rows_problem(p, torch.tensor([2, 3, 4]))
    assert q.n_conj == 2 and q.owner.tolist() == [0, 0, 1]
    assert torch.equal(q.C, p.C[2:]) and torch.equal(q.d, p.d[2:])
    c = conjunction_problem(p, 2)
    assert c.n_conj == 1 and c.C.shape[0] == 2


@pytest.mark.parametrize("seed", [5, 6])
def test_switches_keep_the_known_answers(tmp_path, seed: int) -> None:
    """Unsat (every threshold under its minimum) and sat (one above) with each switch."""
    model = known_answer_net(tmp_path, seed, widths=(2, 12, 12, 3))
    m = output_mins(model)
    below = m - 0.1 * (1 + np.abs(m))
    above = below.copy()
    above[1] = m[1] + 0.05 * (1 + abs(m[1]))
    variants = [("bab.warm_start=false", "bab.open_rows=false", "bab.per_conjunction=off"),
                ("bab.warm_start=true", "bab.open_rows=true", "bab.per_conjunction=off"),
                ("bab.warm_start=true", "bab.open_rows=false", "bab.per_conjunction=always")]
    for sets in variants:
        r = verify(model, four_conjunction_spec(below), activation_split_config(30, *sets))
        assert r.verdict == "unsat", (sets, r.reason, r.stats)
        r = verify(model, four_conjunction_spec(above), activation_split_config(30, *sets))
        assert r.verdict == "sat", (sets, r.reason, r.stats)


def test_multi_split_makes_every_sign_combination(tmp_path) -> None:
    """With room for it, a round splits the chosen neuron and the next choices at once:
    2^k children per domain, each a distinct sign pattern on the k neurons, all other
    decisions the parent's."""
    model = known_answer_net(tmp_path, 8, widths=(2, 16, 16, 1))
    ev = GraphEvaluator(model.graph, dtype=torch.float32)
    region = vnnlib.InputRegion(np.full(2, -1.0), np.full(2, 1.0))
    m = output_mins(model)
    conj = vnnlib.OutputConstraints(np.array([[1.0]]), np.array([m[0] - 0.3]), np.array([False]))
    p = _problem(model, ev, vnnlib.Spec(2, 1, (vnnlib.Disjunct(region, (conj,)),)).disjuncts[0], Config())
    br = ReluBrancher(p, BoundOptions(method="alpha-crown", alpha_iterations=2),
                      ReluSearch(warm_start=True, multi_split=2), room=16)
    root = br.root().domains
    assert root.more.shape == (1, 2, 2) and bool((root.more[..., 0] >= 0).all())
    children = br.split(root, 0)
    splits = children["splits"]
    n = next(iter(splits.values())).shape[0]
    assert n == 8
    patterns = set()
    for c in range(n):
        signs = []
        for dec in [root.branch[0], root.more[0, 0], root.more[0, 1]]:
            z = br.relus[br.names[int(dec[0])]]
            signs.append(int(splits[z][c].reshape(-1)[int(dec[1])]))
        assert all(s in (-1, 1) for s in signs)
        patterns.add(tuple(signs))
        assert sum(int((s != 0).sum()) for s in (v[c] for v in splits.values())) == 3
    assert len(patterns) == 8
    out = br.bound(children, 0)                                  # the children bound as any others
    assert out.domains.lb.shape == (8, 1)
