"""Relaxed clipping in activation split (bab.relaxed_clip): split decisions plus the split
neurons' linear bounds constrain each domain's inputs, and bounds are concretised under
those constraints. Soundness by sampling (points of the box that satisfy a domain's
splits), never looser than the plain bound, known answers with the switch on, config
checks, and the switch forced off when a proof is recorded."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from bab.activation_split import ReluSearch, activation_split_bab
from bab.clip_hooks import SplitClipper, min_under_constraints_at, split_constraints
from bab.clipping import min_under_constraints
from bab.search import SearchLimits
from models import GraphEvaluator
from relaxations import BoundOptions, Given, IntervalBounds, compute_bounds
from tests.builders import clip_objective, known_answer_min, known_answer_net, known_answer_spec
from tests.helpers import assert_verdicts_bracket
from verifier import Config
from verifier.config import ConfigError, with_overrides
from verifier.searches import search_problem as _problem

T = torch.Tensor


def _domains(model, ev: GraphEvaluator, seed: int, B: int = 12, per_layer: int = 3,
             lo: float = -1.0, hi: float = 1.0) -> tuple[dict, IntervalBounds]:
    """B domains of random splits on pre-activations; most are made non-empty by taking each
    split's sign at a random anchor point, a few are random (possibly empty: vacuous)."""
    g = torch.Generator().manual_seed(seed)
    n_in = model.graph.input_shape[-1]
    anchors = lo + (hi - lo) * torch.rand(B, 1, n_in, generator=g, dtype=torch.float64)
    vals = GraphEvaluator(model.graph, dtype=torch.float64).forward_all(anchors)
    splits = {}
    for z in sorted(set(relu_inputs_of(model).values())):
        v = vals[z].reshape(B, -1)
        s = torch.zeros(B, v.shape[1], dtype=torch.int8)
        for b in range(B):
            idx = torch.randperm(v.shape[1], generator=g)[:per_layer]
            sign = torch.where(v[b, idx] >= 0, 1, -1).to(torch.int8)
            if b >= B - 2:                                              # random signs
                sign = torch.where(torch.rand(per_layer, generator=g) < 0.5, 1, -1).to(torch.int8)
            s[b, idx] = sign
        splits[z] = s.reshape(B, *model.graph.shapes[z])
    dt = ev.dtype
    box = IntervalBounds(torch.full((B, *model.graph.input_shape), lo, dtype=dt),
                         torch.full((B, *model.graph.input_shape), hi, dtype=dt))
    return splits, box


def relu_inputs_of(model) -> dict[str, str]:
    return {n.name: n.inputs[0] for n in model.graph.nodes if n.op == "Relu"}


def _samples(model, splits: dict, n: int, seed: int, lo: float = -1.0, hi: float = 1.0):
    """Points of the box in float64, their tensors, and the mask [B, n] of those in each domain."""
    g = torch.Generator().manual_seed(seed + 100)
    n_in = model.graph.input_shape[-1]
    x = lo + (hi - lo) * torch.rand(n, 1, n_in, generator=g, dtype=torch.float64)
    x = torch.cat([x, torch.tensor(np.array(np.meshgrid(*[[lo, hi]] * n_in)).reshape(n_in, -1).T).unsqueeze(1)])
    vals = GraphEvaluator(model.graph, dtype=torch.float64).forward_all(x)
    B = next(iter(splits.values())).shape[0]
    inside = torch.ones(B, x.shape[0], dtype=torch.bool)
    for z, s in splits.items():
        sv = s.reshape(B, 1, -1).to(torch.float64)
        zv = vals[z].reshape(1, x.shape[0], -1)
        inside &= ((sv * zv) >= 0).all(-1)
    return x, vals, inside


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_clipped_bounds_hold_on_sampled_domain_points(tmp_path, seed: int, method: str) -> None:
    model = known_answer_net(tmp_path, seed, widths=(2, 12, 12, 12, 1))
    ev = GraphEvaluator(model.graph)
    splits, box = _domains(model, ev, seed)
    opts = BoundOptions(method=method, alpha_iterations=5)
    clipper = SplitClipper(box.lower, box.upper, k=4)
    res = compute_bounds(model.graph, box, None, opts, want_upper=False, ev=ev,
                         given=Given(splits=splits, clip=clipper))
    lb = clipper.final(res.linear, res.lower.detach())
    x, vals, inside = _samples(model, splits, 20_000, seed)
    assert bool(inside.any(1)[:-2].all())                              # anchored domains are non-empty
    y = vals[model.graph.output_name].reshape(1, -1)
    for b in range(lb.shape[0]):
        if not bool(inside[b].any()):
            continue
        assert float(lb[b, 0]) <= float(y[0, inside[b]].min()) + 1e-9, (b, float(lb[b, 0]))
        for z in set(relu_inputs_of(model).values()):                  # clipped intermediate intervals
            zv = vals[z].reshape(x.shape[0], -1)[inside[b]]
            t = res.table[z]
            assert bool((zv >= t.lower[b].reshape(1, -1).double() - 1e-9).all())
            assert bool((zv <= t.upper[b].reshape(1, -1).double() + 1e-9).all())
    # every kept constraint holds at every sampled point of its domain
    a, c = split_constraints(list(clipper.split_linear.values()), clipper.lo, clipper.hi, k=64)
    xf = x.reshape(x.shape[0], -1)
    for b in range(lb.shape[0]):
        ok = torch.isfinite(c[b])
        viol = xf[inside[b]] @ a[b, ok].double().T + c[b, ok].double()
        assert bool((viol <= 1e-9).all())


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_clipped_final_bound_is_never_looser_and_sometimes_tighter(tmp_path, seed: int) -> None:
    """With intermediate clipping off, the final bound is max(plain, clipped) of the same
    pass; over the seeds it must rise somewhere (else the feature does nothing). Keeping the
    split neurons' bounds CROWN-bounds them too (they look stable once clamped), which only
    tightens their intervals; here that never made the pass looser than without it."""
    model = known_answer_net(tmp_path, seed, widths=(2, 12, 12, 1))
    ev = GraphEvaluator(model.graph)
    splits, box = _domains(model, ev, seed, per_layer=4)
    opts = BoundOptions(method="crown")
    plain = compute_bounds(model.graph, box, None, opts, want_upper=False, ev=ev, given=Given(splits=splits))
    clipper = SplitClipper(box.lower, box.upper, k=4, intermediate=False)
    res = compute_bounds(model.graph, box, None, opts, want_upper=False, ev=ev,
                         given=Given(splits=splits, clip=clipper))
    assert bool((res.lower >= plain.lower - 1e-6).all())
    lb = clipper.final(res.linear, res.lower)
    assert bool((lb >= res.lower).all())
    _GAIN.append(float((lb - res.lower)[torch.isfinite(lb)].max()))


_GAIN: list[float] = []


def test_some_gain_was_seen() -> None:
    assert _GAIN and max(_GAIN) > 1e-3, _GAIN


def test_sparse_matches_dense_min_under_constraints() -> None:
    g = torch.Generator().manual_seed(0)
    B, R, K, n = 5, 6, 3, 7
    w, b = torch.randn(B, R, n, generator=g, dtype=torch.float64), torch.randn(B, R, generator=g, dtype=torch.float64)
    lo = -torch.rand(B, n, generator=g, dtype=torch.float64)
    hi = torch.rand(B, n, generator=g, dtype=torch.float64)
    a, c = torch.randn(B, K, n, generator=g, dtype=torch.float64), -torch.rand(B, K, generator=g, dtype=torch.float64)
    c[0, 1] = torch.nan                                                # an unused slot
    sel = torch.rand(B, R, generator=g) < 0.6
    mass = torch.zeros(B, R, dtype=torch.float64)
    obj, box = clip_objective(w, b, mass), IntervalBounds(lo, hi)
    dense = min_under_constraints(obj, box, a, c)
    sparse = min_under_constraints_at(obj, box, a, c, sel)
    plain = min_under_constraints(obj, box, a[:, :0], c[:, :0])   # no constraint: the box bound
    assert torch.allclose(torch.maximum(sparse, plain)[sel], dense[sel])
    assert bool(torch.isneginf(sparse[~sel]).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bab_with_relaxed_clip_agrees_with_the_true_minimum(tmp_path, seed: int) -> None:
    model = known_answer_net(tmp_path, seed)
    m = known_answer_min(model)
    spread = 0.05 * (1 + abs(m))
    cfg = with_overrides(Config(timeout=60), ["bab.mode=activation", "attack.enabled=false", "attack.samples=1",
                                              "bab.relaxed_clip=true"])
    assert_verdicts_bracket(model, known_answer_spec, m, spread, cfg)


def test_config_switch() -> None:
    assert Config().bab.relaxed_clip is False
    assert with_overrides(Config(), ["bab.relaxed_clip=true"]).bab.relaxed_clip is True
    with pytest.raises(ConfigError):
        with_overrides(Config(), ["bab.relaxed_clip=maybe"])


def test_off_when_recording_a_proof(tmp_path, monkeypatch) -> None:
    """The certificate checker cannot replay relaxed clipping: with a proof it is not used."""
    import bab.activation_split as act

    def boom(*a, **k):
        raise AssertionError("relaxed clipping used while recording a proof")

    model = known_answer_net(tmp_path, 0)
    m = known_answer_min(model)
    spec = known_answer_spec(m - 0.05 * (1 + abs(m)))
    ev = GraphEvaluator(model.graph)
    p = _problem(model, ev, spec.disjuncts[0], Config())
    monkeypatch.setattr(act, "SplitClipper", boom)
    # The clipper would be built at the first bound; a few seconds of search (this net's
    # search runs a minute to 'unknown': its fully split leaves stay open) show it is not.
    out = activation_split_bab(p, BoundOptions(method="alpha-crown", alpha_iterations=5),
                               SearchLimits(time.monotonic() + 3), how=ReluSearch(record_proof=True, relaxed_clip=True))
    assert out.status in ("unsat", "unknown", "timeout")
    with pytest.raises(AssertionError, match="relaxed clipping used"):
        activation_split_bab(p, BoundOptions(method="alpha-crown", alpha_iterations=5), SearchLimits(1e18),
                             how=ReluSearch(relaxed_clip=True))
