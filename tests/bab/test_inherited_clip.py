"""Clipping in input split with inherited constraints (bab.clip_generations,
bab.clip_intermediate, bab.clip_joint): the joint K-multiplier dual against an LP
(HiGHS), intermediate bounds clipped by constraints held only by sampled points that
satisfy them, and known answers of the search with each switch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vnnlib
from bab.clip_hooks import ConstraintClipper
from bab.clipping import hull_under_constraints, min_under_all_constraints, min_under_constraints
from models import GraphEvaluator
from relaxations import BoundOptions, Given, IntervalBounds, compute_bounds
from tests.builders import clip_instances, clip_lp_min, clip_objective, known_answer_net, to_tensor
from verifier import Config, verify
from verifier.config import ConfigError, with_overrides

torch.set_num_threads(1)


def _objectives(rng: np.random.Generator, N: int, M: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    w = rng.normal(0, 1, (N, M, n)) * (rng.random((N, M, n)) > 0.2)
    return w, rng.normal(0, 1, (N, M))


@pytest.mark.parametrize("K", [1, 2, 4])
def test_joint_dual_is_below_the_lp_and_exact_for_one_constraint(K: int) -> None:
    """1,000 instances per K: never above the LP optimum, never below the plain box bound,
    equal to the LP (1e-6) for one constraint, and strictly tighter than the best single
    constraint somewhere for K > 1 (else joint clipping would be dead weight)."""
    rng = np.random.default_rng(10 + K)
    N, M, n = 1000, 2, 5
    inst = clip_instances(rng, N, n, K)
    w, b = _objectives(rng, N, M, n)
    tw, tb, lo, hi, a, c = (to_tensor(x, torch.float64) for x in (w, b, inst["lo"], inst["hi"], inst["a"], inst["c"]))
    args = [clip_objective(tw, tb), IntervalBounds(lo, hi), a, c]
    joint = min_under_all_constraints(*args, sweeps=30).numpy()
    single = min_under_constraints(*args).numpy()
    plain = b + np.minimum(w * inst["lo"][:, None], w * inst["hi"][:, None]).sum(-1)
    better = 0
    for i in range(N):
        for m in range(M):
            opt = clip_lp_min(w[i, m], inst["lo"][i], inst["hi"][i], inst["a"][i], inst["c"][i])
            assert joint[i, m] >= plain[i, m] - 1e-6 * (1 + abs(plain[i, m]))
            if opt is None:          # infeasible: any finite value is a valid bound
                continue
            opt += b[i, m]
            assert joint[i, m] <= opt + 1e-9 * (1 + abs(opt)), (i, m, joint[i, m], opt)
            if K == 1:
                assert joint[i, m] == pytest.approx(opt, abs=1e-6, rel=1e-6)
            better += joint[i, m] > single[i, m] + 1e-6
    if K > 1:
        assert better > 0


def test_joint_hull_contains_the_lp_hull_and_every_feasible_sample() -> None:
    rng = np.random.default_rng(3)
    N, n, K = 300, 4, 3
    inst = clip_instances(rng, N, n, K)
    for k in ("lo", "hi", "a", "c"):  # the float32 problem, exactly, is the one the LP and samples see
        inst[k] = to_tensor(inst[k], torch.float32).double().numpy()
    lo, hi, a, c = (to_tensor(inst[k], torch.float32) for k in ("lo", "hi", "a", "c"))
    nlo, nhi, empty = hull_under_constraints(lo, hi, a, c)
    x = np.clip(inst["lo"][:, None] + rng.random((N, 2000, n)) * (inst["hi"] - inst["lo"])[:, None],
                inst["lo"][:, None], inst["hi"][:, None])
    feasible = (np.einsum("nkj,npj->npk", inst["a"], x) + inst["c"][:, None] <= 0).all(-1)
    for i in range(N):
        pts = x[i, feasible[i]]
        if empty[i]:
            assert len(pts) == 0 and clip_lp_min(np.zeros(n), inst["lo"][i], inst["hi"][i], inst["a"][i],
                                                 inst["c"][i]) is None
            continue
        assert bool((pts >= nlo[i].double().numpy() - 1e-12).all() and (pts <= nhi[i].double().numpy() + 1e-12).all())
        for j in range(n):
            e = np.eye(n)[j]
            low = clip_lp_min(e, inst["lo"][i], inst["hi"][i], inst["a"][i], inst["c"][i])
            neg_high = clip_lp_min(-e, inst["lo"][i], inst["hi"][i], inst["a"][i], inst["c"][i])
            if low is None or neg_high is None:   # tangent cases: HiGHS may call either side infeasible
                continue
            high = -neg_high
            assert float(nlo[i, j]) <= low + 1e-6 and float(nhi[i, j]) >= high - 1e-6


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("groups", [1, 2])
def test_intermediate_bounds_hold_where_the_constraints_do(tmp_path, seed: int, groups: int) -> None:
    """Constraints through a point of each box; with two groups the relevant set is the union
    of the two groups' sets. Every sampled point of that set lies inside the clipped
    intermediate intervals and above the final bound, and clipping tightens somewhere."""
    model = known_answer_net(tmp_path, seed, widths=(3, 16, 16, 16, 2))
    ev = GraphEvaluator(model.graph, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    B, n, K = 8, 3, 4
    lo = -torch.rand(B, 1, n, generator=g, dtype=torch.float64)
    hi = lo + 0.5 + torch.rand(B, 1, n, generator=g, dtype=torch.float64)
    anchor = lo + (hi - lo) * torch.rand(B, 1, n, generator=g, dtype=torch.float64)
    a = torch.randn(B, K, n, generator=g, dtype=torch.float64)
    c = -(a @ anchor.reshape(B, n, 1)).squeeze(-1) - 0.1 * torch.rand(B, K, generator=g, dtype=torch.float64)
    owner = torch.arange(K) % groups
    clipper = ConstraintClipper(lo, hi, a, c, owner, groups)
    opts = BoundOptions(method="crown")
    box = IntervalBounds(lo, hi)
    plain = compute_bounds(model.graph, box, None, opts, want_upper=False, ev=ev)
    res = compute_bounds(model.graph, box, None, opts, want_upper=False, ev=ev, given=Given(clip=clipper))
    x = lo + (hi - lo) * torch.rand(B, 20_000, n, generator=g, dtype=torch.float64)
    viol = torch.einsum("bkn,bpn->bpk", a, x) + c.unsqueeze(1)                # [B, P, K]
    inside = torch.zeros(B, x.shape[1], dtype=torch.bool)
    for grp in range(groups):
        inside |= (viol[..., owner == grp] <= 0).all(-1)
    gained = 0.0
    for b in range(B):
        pts = x[b, inside[b]].unsqueeze(1)
        assert len(pts) > 0
        vals = ev.forward_all(pts)
        for name in [nd.inputs[0] for nd in model.graph.nodes if nd.op == "Relu"]:
            v = vals[name].reshape(len(pts), -1)
            t = res.table[name]
            assert bool((v >= t.lower[b].reshape(1, -1) - 1e-9).all() and (v <= t.upper[b].reshape(1, -1) + 1e-9).all())
            p = plain.table[name]
            gained = max(gained, float((t.lower[b] - p.lower[b]).max()), float((p.upper[b] - t.upper[b]).max()))
        y = vals[model.graph.output_name].reshape(len(pts), -1)
        assert bool((y >= res.lower[b].reshape(1, -1) - 1e-9).all())
    assert gained > 1e-6


def _rows_spec(thresholds: np.ndarray, union: bool) -> vnnlib.Spec:
    """Counterexample: y_j <= t_j for both outputs j (one conjunction), or for either (a union)."""
    region = vnnlib.InputRegion(np.full(2, -1.0), np.full(2, 1.0))
    if union:
        conj = tuple(vnnlib.OutputConstraints(np.eye(2)[j:j + 1], thresholds[j:j + 1], np.array([False]))
                     for j in range(2))
    else:
        conj = (vnnlib.OutputConstraints(np.eye(2), thresholds, np.array([False, False])),)
    return vnnlib.Spec(2, 2, (vnnlib.Disjunct(region, conj),))


def _grid_min(model, union: bool, thresholds: np.ndarray) -> bool:
    """Whether a grid point is a counterexample (the true answer, up to the grid)."""
    g = np.linspace(-1, 1, 601)
    xs = np.stack(np.meshgrid(g, g), -1).reshape(-1, 1, 2)
    y = GraphEvaluator(model.graph, dtype=torch.float64)(torch.from_numpy(xs)).numpy().reshape(-1, 2)
    hit = y <= thresholds
    return bool((hit.any(1) if union else hit.all(1)).any())


@pytest.mark.parametrize("union", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("settings", [["bab.clip_generations=1"], ["bab.clip_generations=2", "bab.clip_joint=true"],
                                      ["bab.clip_generations=1", "bab.clip_intermediate=false"]])
def test_input_split_with_inherited_constraints_agrees_with_the_grid(tmp_path, seed: int, union: bool,
                                                                     settings: list[str]) -> None:
    """Thresholds just below and just above the region's smallest joint violation: unsat and
    sat, with each combination of the switches (clipping never turns a sat into unsat)."""
    model = known_answer_net(tmp_path, 40 + seed, widths=(2, 16, 16, 2))
    g = np.linspace(-1, 1, 601)
    xs = np.stack(np.meshgrid(g, g), -1).reshape(-1, 1, 2)
    y = GraphEvaluator(model.graph, dtype=torch.float64)(torch.from_numpy(xs)).numpy().reshape(-1, 2)
    # Shift both thresholds by the same amount: the smallest shift at which some grid point
    # violates is the answer's boundary.
    base = y.min(0) + 0.5 * (y.max(0) - y.min(0))
    excess = (y - base).min(1) if union else (y - base).max(1)
    s0 = float(excess.min())
    spread = 0.05 * (1 + abs(s0))
    cfg = with_overrides(Config(timeout=60), ["bab.mode=input", "attack.enabled=false", "attack.samples=1"] + settings)
    below = base + s0 - spread
    assert not _grid_min(model, union, below)
    r = verify(model, _rows_spec(below, union), cfg)
    assert r.verdict == "unsat", (r.reason, r.stats)
    assert r.stats.get("domains", 0) > 3, r.stats       # a real search: children inherited constraints
    above = base + s0 + spread
    r = verify(model, _rows_spec(above, union), cfg)
    assert r.verdict == "sat", (r.reason, r.stats)


def test_config_ranges() -> None:
    with pytest.raises(ConfigError, match="clip_generations"):
        with_overrides(Config(), ["bab.clip_generations=9"])
    assert with_overrides(Config(), ["bab.clip_joint=true"]).bab.clip_joint
    assert Config().bab.clip_generations == 1 and Config().bab.clip_intermediate and not Config().bab.clip_joint



def test_intermediate_clipping_pauses_where_it_does_not_help() -> None:
    """The search keeps clipping intermediate bounds while the last clipped round tightened
    at least 1% of the bounds it saw, and otherwise probes every 8th round."""
    from bab.input_split import _worth_it
    from bab.tuning import DEFAULT_TUNING as t

    assert (t.clip_rate, t.clip_probe_every, t.box_min_seen) == (0.01, 8, 64)
    assert _worth_it({}, 3, t)                                        # nothing seen yet
    assert _worth_it({"seen": 1000, "tightened": 10}, 3, t)
    assert not _worth_it({"seen": 1000, "tightened": 9}, 3, t)
    assert _worth_it({"seen": 1000, "tightened": 0}, 16, t)           # a probe round
    assert _worth_it({"seen": 63, "tightened": 0}, 3, t, min_seen=64)  # too few boxes to judge
    assert not _worth_it({"seen": 64, "tightened": 0}, 3, t, min_seen=64)


def test_box_tally_counts_shrunk_emptied_and_proved_boxes() -> None:
    """Box clipping pauses on the same rule; a box counts as a gain when clipping shrank
    one of its widths by over 0.1%, emptied it, or proved its rows, and only then."""
    from bab.input_split import _count_box_gains

    lo = torch.zeros(4, 2, dtype=torch.float64)
    hi = torch.ones(4, 2, dtype=torch.float64)
    nhi = hi.clone()
    nhi[0, 1] = 0.5            # shrunk
    nhi[1, 0] = 0.9995         # a 0.05% sliver: not a gain
    empty = torch.tensor([False, False, True, False])
    proved = torch.tensor([False, False, False, True])
    tally: dict = {}
    _count_box_gains(tally, lo, hi, lo, nhi, empty, proved)
    assert tally == {"seen": 4, "tightened": 3}
    _count_box_gains(tally, lo, hi, lo, hi, torch.zeros(4, dtype=torch.bool))
    assert tally == {"seen": 8, "tightened": 3}
    _count_box_gains(None, lo, hi, lo, nhi, empty)   # no tally kept: nothing to do


def test_clipper_tally_counts_unstable_and_tightened_bounds(tmp_path) -> None:
    model = known_answer_net(tmp_path, 5, widths=(3, 16, 16, 1))
    ev = GraphEvaluator(model.graph, dtype=torch.float64)
    lo, hi = -torch.ones(2, 1, 3, dtype=torch.float64), torch.ones(2, 1, 3, dtype=torch.float64)
    a = torch.tensor([[[1.0, 1.0, 1.0]], [[-1.0, 0.5, 0.0]]], dtype=torch.float64)
    c = torch.tensor([[0.5], [0.2]], dtype=torch.float64)
    tally: dict = {}
    clipper = ConstraintClipper(lo, hi, a, c, torch.zeros(1, dtype=torch.long), 1, tally=tally)
    compute_bounds(model.graph, IntervalBounds(lo, hi), None, BoundOptions(method="crown"), want_upper=False, ev=ev,
                   given=Given(clip=clipper))
    assert tally["seen"] > 0 and 0 < tally["tightened"] <= tally["seen"]
