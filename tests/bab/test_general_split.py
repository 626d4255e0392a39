"""Activation split on general nonlinearities (bab/general_split.py): every child's row
bounds hold on sampled points of its region, the children of a domain cover it, and
verify() agrees with the true minimum of small sigmoid, tanh and mixed networks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper

import vnnlib
from bab.general_split import IntervalBrancher, needs_general_split, product_nodes, split_nodes, split_point
from models import GraphEvaluator
from relaxations import BoundOptions
from tests.helpers import assert_verdicts_bracket, relu_mlp_layers
from tests.op_cases import make_model
from verifier import Config, load_model, verify
from verifier.config import with_overrides
from verifier.searches import search_problem as _problem

GRID = np.linspace(-1, 1, 301)


def _net(tmp_path, seed: int, ops: tuple[str, ...], widths=(2, 12, 12, 1)):
    """A random MLP whose hidden activations are `ops` in turn (Relu layers replaced)."""
    nodes, inits = relu_mlp_layers(np.random.default_rng(seed), widths, 2.0, 0.5)
    out, k = [], 0
    for n in nodes:
        if n.op_type == "Relu":
            n = helper.make_node(ops[k % len(ops)], list(n.input), list(n.output))
            k += 1
        out.append(n)
    path = tmp_path / f"net{seed}_{'_'.join(ops)}.onnx"
    path.write_bytes(make_model(out, inits, (1, widths[0]), (1, widths[-1])).SerializeToString())
    return load_model(path)


def _product_net(tmp_path, seed: int, width: int = 8):
    """X [1, 2] -> two Gemms h1, h2 [1, width] -> Mul(h1, h2) -> Gemm -> Y [1, 1]: the
    only nonlinearity is the product of two variable tensors."""
    r = np.random.default_rng(seed)
    inits = {"W1": r.normal(size=(2, width)).astype(np.float32), "b1": r.normal(size=width).astype(np.float32),
             "W2": r.normal(size=(2, width)).astype(np.float32), "b2": r.normal(size=width).astype(np.float32),
             "W3": (r.normal(size=(width, 1)) / np.sqrt(width)).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["X", "W1", "b1"], ["h1"]), helper.make_node("Gemm", ["X", "W2", "b2"], ["h2"]),
             helper.make_node("Mul", ["h1", "h2"], ["q"]), helper.make_node("Gemm", ["q", "W3"], ["Y"])]
    path = tmp_path / f"product{seed}.onnx"
    path.write_bytes(make_model(nodes, inits, (1, 2), (1, 1)).SerializeToString())
    return load_model(path)


def _true_min(model) -> float:
    xs = np.stack(np.meshgrid(GRID, GRID), -1).reshape(-1, 1, 2)
    return float(GraphEvaluator(model.graph, dtype=torch.float64)(torch.from_numpy(xs)).min())


def _spec(threshold: float) -> vnnlib.Spec:
    region = vnnlib.InputRegion(np.full(2, -1.0), np.full(2, 1.0))
    conj = vnnlib.OutputConstraints(np.array([[1.0]]), np.array([threshold]), np.array([False]))
    return vnnlib.Spec(2, 1, (vnnlib.Disjunct(region, (conj,)),))


def test_split_point() -> None:
    lo = torch.tensor([-1.0, -0.01, -4.0, 2.0])
    hi = torch.tensor([3.0, 10.0, 0.2, 6.0])
    assert split_point("Relu", lo, hi).tolist()[:3] == [0.0, 0.0, 0.0]     # exact on each side
    assert split_point("Sigmoid", lo, hi).tolist() == pytest.approx([0.0, 4.995, -1.9, 4.0])
    assert split_point("Exp", lo, hi).tolist() == pytest.approx([1.0, 4.995, -1.9, 4.0])
    p = split_point("Tanh", lo, hi)
    assert bool(((p > lo) & (p < hi)).all())


def test_which_networks_need_it(tmp_path) -> None:
    relu = _net(tmp_path, 0, ("Relu",))
    assert not needs_general_split(relu.graph, GraphEvaluator(relu.graph).constants)
    mixed = _net(tmp_path, 0, ("Relu", "Tanh"))
    ev = GraphEvaluator(mixed.graph)
    assert needs_general_split(mixed.graph, ev.constants)
    assert len(split_nodes(mixed.graph, ev.constants)) == 2
    product = _product_net(tmp_path, 0)
    ev = GraphEvaluator(product.graph)
    assert product_nodes(product.graph, ev.constants) == {next(n.name for n in product.graph.nodes if n.op == "Mul"):
                                                          ("h1", "h2")}
    assert needs_general_split(product.graph, ev.constants) and not split_nodes(product.graph, ev.constants)


def _inside(vals: dict, lo: dict, hi: dict, shrink: float) -> torch.Tensor:
    """[B, n]: points (their tensors' values `vals`) whose split tensors lie inside each
    domain's intervals."""
    B = next(iter(lo.values())).shape[0]
    n = next(iter(vals.values())).shape[0]
    ok = torch.ones(B, n, dtype=torch.bool)
    for z in lo:
        v = vals[z].reshape(1, n, -1)
        ok &= ((v >= lo[z].double().reshape(B, 1, -1) + shrink)
               & (v <= hi[z].double().reshape(B, 1, -1) - shrink)).all(-1)
    return ok


@pytest.mark.parametrize("ops,warm", [(("Sigmoid",), False), (("Tanh",), False), (("Relu", "Tanh"), False),
                                      (("Sigmoid", "Relu"), False), (("Sigmoid",), True), (("Relu", "Tanh"), True),
                                      (("Mul",), False)])
def test_children_hold_on_samples_and_cover_their_parent(tmp_path, ops, warm: bool) -> None:
    model = _product_net(tmp_path, 1) if ops == ("Mul",) else _net(tmp_path, 1, ops)
    m = _true_min(model)
    ev = GraphEvaluator(model.graph, dtype=torch.float32)
    p = _problem(model, ev, _spec(m - 0.01 * (1 + abs(m))).disjuncts[0], Config())
    br = IntervalBrancher(p, BoundOptions(method="alpha-crown", alpha_iterations=4), warm_start=warm)
    g = torch.Generator().manual_seed(0)
    xs = 2 * torch.rand(6000, 1, 2, generator=g, dtype=torch.float64) - 1
    ys = GraphEvaluator(model.graph, dtype=torch.float64)(xs).reshape(len(xs), -1)
    gaps = ys @ p.C.double().T - p.d.double()
    vals = GraphEvaluator(model.graph, dtype=torch.float64).forward_all(xs)
    doms = br.root().domains
    rounds = 0
    for r in range(4):
        if not len(doms) or bool((doms.branch[:, 0] < 0).all()):
            break
        doms, _ = br.select(doms)
        out = br.bound(br.split(doms, r), r)
        rounds += 1
        n = len(doms)
        kids = out.domains
        inside = _inside(vals, kids.lo, kids.hi, 0.0)
        lb = kids.lb.double()
        for b in range(len(lb)):
            sel = _inside(vals, {z: v[b:b + 1] for z, v in kids.lo.items()},
                          {z: v[b:b + 1] for z, v in kids.hi.items()}, 1e-5)[0]
            if bool(sel.any()):
                assert bool((lb[b] <= gaps[sel].min(0).values + 1e-5).all()), (r, b, lb[b])
        # Every sample of a parent lies in one of its two children (proved children included).
        parent = _inside(vals, doms.lo, doms.hi, 1e-5)
        covered = inside[:n] | inside[n:]
        assert not bool((parent & ~covered).any()), r
        doms = kids.take(~out.proved)
        if warm:   # every domain keeps a start for each row (and, once cut, each cut's multipliers)
            assert kids.alphas and all(v.shape[:2] == (len(kids), p.C.shape[0]) for v in kids.alphas.values())
            assert all(v.shape[:2] == (len(kids), p.C.shape[0]) for v in kids.betas.values())
    assert rounds >= 2


# (Relu, Tanh) seed 2 is not here: its net's unsat side is `test_the_search_is_what_proves`
# (about 20 s more at this spread), and seed 3 brackets a net of both kinds.
@pytest.mark.parametrize("ops,seed", [(("Sigmoid",), 2), (("Tanh",), 3), (("Relu", "Tanh"), 3), (("Mul",), 2)])
def test_verify_agrees_with_the_true_minimum(tmp_path, ops, seed: int) -> None:
    model = _product_net(tmp_path, seed) if ops == ("Mul",) else _net(tmp_path, seed, ops)
    m = _true_min(model)
    spread = 0.1 * (1 + abs(m))
    cfg = with_overrides(Config(timeout=60), ["bab.mode=activation", "attack.enabled=false", "attack.samples=1",
                                              "lp.milp=off"])
    assert_verdicts_bracket(model, _spec, m, spread, cfg)


def _assert_the_search_proves(model, margin: float, min_domains: int) -> None:
    """unsat for "output below the true minimum less `margin` (1 + |m|)" by activation
    split alone: the root bound's gap is negative and the search bounds over
    `min_domains` domains."""
    m = _true_min(model)
    cfg = with_overrides(Config(timeout=60), ["bab.mode=activation", "attack.enabled=false", "attack.samples=1"])
    r = verify(model, _spec(m - margin * (1 + abs(m))), cfg)
    assert r.verdict == "unsat", (r.reason, r.stats)
    assert r.method == "bab-activation" and r.stats.get("domains", 0) > min_domains, r.stats
    assert r.stats["bounds"][-1]["min_gap"] < 0


def test_the_search_is_what_proves(tmp_path) -> None:
    """A margin the root bound cannot prove (its gap is about -1.6): the unsat comes from
    interval splits (about 2,000 domains), with the split points dualised (without them,
    at the smaller margin 0.2: no proof in 30 s)."""
    _assert_the_search_proves(_net(tmp_path, 2, ("Relu", "Tanh")), 0.4, 100)


def test_splitting_the_factors_of_a_product_proves(tmp_path) -> None:
    """A product of two variable tensors and a margin its McCormick planes cannot prove at
    the root (gap about -1.7): splitting the factors' intervals proves it."""
    _assert_the_search_proves(_product_net(tmp_path, 2), 0.05, 10)
