"""alpha-CROWN that drops proved domains from its later steps (`BoundOptions.proved`):
the domains it keeps optimising get exactly the bounds, alphas, betas and branching
coefficients they get without it; the dropped ones keep a bound that proves what the
predicate asks and holds on sampled points; when every domain is proved it stops."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import relaxations.alpha as alpha
from models import GraphEvaluator
from relaxations import BoundOptions, Given, IntervalBounds, Precision, compute_bounds
from tests.builders import relu_mlp_graph, small_relu_cnn
from tests.helpers import sample_box

BASE = BoundOptions(method="alpha-crown", alpha_iterations=12, keep_betas=True, coefficients=True)


def _problem(kind: str, seed: int, B: int = 10):
    graph = relu_mlp_graph(seed, (4, 24, 24, 24, 3)) if kind == "mlp" else small_relu_cnn(seed)
    r = np.random.default_rng(seed)
    x0 = torch.tensor(r.uniform(-0.5, 0.5, size=(B, *graph.input_shape)), dtype=torch.float32)
    box = IntervalBounds(x0 - 0.15, x0 + 0.15)
    ev = GraphEvaluator(graph, dtype=torch.float32)
    z = next(n.inputs[0] for n in graph.nodes if n.op == "Relu")
    s = torch.zeros(B, *graph.shapes[z], dtype=torch.int8)
    g = torch.Generator().manual_seed(seed)
    for b in range(B):   # one or two split neurons per domain, some active, some inactive
        idx = torch.randperm(s[b].numel(), generator=g)[:1 + b % 2]
        s[b].view(-1)[idx] = torch.tensor([1, -1][:len(idx)], dtype=torch.int8) * (1 if b % 3 else -1)
    C = torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]).expand(B, 2, 3)
    return graph, ev, box, {z: s}, C


def _bound(graph, ev, box, splits, C, options):
    return compute_bounds(graph, box, C, options, want_upper=False, ev=ev, given=Given(splits=splits))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("sparse", [True, False])
def test_kept_domains_are_bounded_as_without_pruning(kind: str, sparse: bool, monkeypatch) -> None:
    graph, ev, box, splits, C = _problem(kind, 3)
    base = dataclasses.replace(BASE, sparse_alpha=sparse)
    ref = _bound(graph, ev, box, splits, C, base)
    first = _bound(graph, ev, box, splits, C, dataclasses.replace(base, method="crown")).lower
    # Half the domains stay open to the end; of the others, those CROWN proves leave at once.
    threshold = float(ref.lower.min(1).values.median())
    assert bool((first.min(1).values > threshold).any())

    def proved(lower: torch.Tensor) -> torch.Tensor:
        return lower.min(1).values > threshold

    takes = []
    real_take = alpha._Run.take
    monkeypatch.setattr(alpha._Run, "take", lambda self, keep: takes.append(len(keep)) or real_take(self, keep))
    got = _bound(graph, ev, box, splits, C, dataclasses.replace(base, proved=proved))
    assert takes, "no domain left the optimisation"
    done = proved(got.lower)
    assert 0 < int(done.sum()) < len(done)
    kept = ~done
    torch.testing.assert_close(got.lower[kept], ref.lower[kept], rtol=1e-5, atol=1e-5)
    for k, v in ref.alphas.items():
        torch.testing.assert_close(got.alphas[k][kept], v[kept], rtol=1e-4, atol=1e-5)
    for k, v in ref.betas.items():
        torch.testing.assert_close(got.betas[k][kept], v[kept], rtol=1e-4, atol=1e-5)
    for k, v in ref.coefficients.items():
        torch.testing.assert_close(got.coefficients[k][kept], v[kept], rtol=1e-4, atol=1e-5)
    # The dropped domains: proved, never better than the full optimisation, still sound.
    assert bool((got.lower[done] <= ref.lower[done] + 1e-5).all())
    assert bool((got.lower >= first - 1e-5).all())
    sampled = 0
    for i in range(box.lower.shape[0]):
        xs = sample_box(box.lower[i:i + 1], box.upper[i:i + 1], 2000, seed=i).to(torch.float32)
        values = ev.forward_all(xs)
        ok = torch.ones(len(xs), dtype=torch.bool)
        for z, sign in splits.items():
            ok &= ((sign[i].reshape(1, -1) == 0) | (sign[i].reshape(1, -1) * values[z].reshape(len(xs), -1) >= 0)).all(1)
        if not bool(ok.any()):
            continue   # the splits leave no sampled point (a thin or empty domain)
        sampled += 1
        y = values[graph.output_name][ok].reshape(int(ok.sum()), -1) @ C[i].T
        assert bool((y >= got.lower[i] - 1e-5).all())
    assert sampled >= box.lower.shape[0] // 2
    # The linear bound kept for each domain is the one of its best bound (its minimiser is a
    # candidate, and a proof log replays it): the kept domains' as without pruning, and a
    # dropped domain's still proves what it proved when it left.
    torch.testing.assert_close(got.linear.A[kept], ref.linear.A[kept], rtol=1e-4, atol=1e-5)
    relin = got.linear.concretize(box, Precision.for_dtype(torch.float32))
    assert bool((relin <= got.lower + 1e-5).all())
    assert bool(proved(relin[done]).all())


def test_it_stops_when_every_domain_is_proved() -> None:
    graph, ev, box, splits, C = _problem("mlp", 5)
    got = _bound(graph, ev, box, splits, C, dataclasses.replace(BASE, proved=lambda lower: torch.ones(
        lower.shape[0], dtype=torch.bool)))
    assert got.alpha_iterations == 1
    ref = _bound(graph, ev, box, splits, C, BASE)
    assert ref.alpha_iterations == BASE.alpha_iterations
