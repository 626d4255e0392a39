"""Certified training: graphs from torch modules, gradients through bounds, schedules."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import verifier
from models import GraphEvaluator, UnsupportedModel
from models.from_torch import graph_from_module
from relaxations import BoundOptions, IntervalBounds, compute_bounds
from verifier.pytorch.training import (CertifiedOptions, EpsilonSchedule, Perturbation, certified_loss, ibp_tightness,
                                       margin_bounds, margin_matrix, module_graph, pair_rows)

torch.set_num_threads(1)


class SmallResNet(nn.Module):
    """conv-(bn)-relu, a residual conv block, average pooling, a dense head."""

    def __init__(self, bn: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 3 * 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv1(x)))
        h = h + self.conv2(h)
        h = self.pool(torch.relu(h))
        return self.fc(h.view(h.size(0), -1))


class PoolCatNet(nn.Module):
    """A flat input unflattened to an image, max pooling, a concatenation of two branches
    along channels, global average pooling: the layers training refused before."""

    def __init__(self) -> None:
        super().__init__()
        self.unflatten = nn.Unflatten(1, (1, 6, 6))
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.side = nn.Conv2d(3, 2, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.conv(self.unflatten(x))))
        h = torch.cat([h, torch.relu(self.side(h))], dim=1)
        return self.fc(torch.flatten(self.gap(h), 1))


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _resnet(seed: int = 0, bn: bool = True) -> SmallResNet:
    torch.manual_seed(seed)
    net = SmallResNet(bn)
    if not bn:
        return net.eval()
    with torch.no_grad():  # non-trivial running statistics, so BN is not the identity
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.1, 0.1)
    return net.eval()


def _poolcat(seed: int = 0) -> PoolCatNet:
    torch.manual_seed(seed)
    return PoolCatNet().eval()


CASES = {"mlp": (_mlp, (12,)), "resnet": (lambda: _resnet(bn=False), (1, 6, 6)), "resnet-bn": (_resnet, (1, 6, 6)),
         "pool-cat": (_poolcat, (36,))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_graph_forward_equals_module_forward(case: str) -> None:
    make, shape = CASES[case]
    net = make().eval()
    graph = graph_from_module(net, (1, *shape))
    x = torch.rand(7, *shape)
    ours = GraphEvaluator(graph)(x.unsqueeze(1)).reshape(7, -1)
    torch.testing.assert_close(ours, net(x), rtol=1e-5, atol=1e-6)


def test_graph_constants_are_the_live_parameters() -> None:
    net = _mlp()
    graph = graph_from_module(net, (1, 12))
    params = {id(p) for p in net.parameters()}
    assert {id(t) for t in graph.constants.values()} == params
    with torch.no_grad():  # an optimiser step in place is seen without rebuilding
        net[0].bias.add_(1.0)
    x = torch.rand(3, 12)
    torch.testing.assert_close(GraphEvaluator(graph)(x.unsqueeze(1)).reshape(3, -1), net(x))


def test_other_supported_modules_translate() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(8, 6), nn.Sigmoid(), nn.Identity(),
                        nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
    graph = graph_from_module(net, (1, 2, 4))
    assert [n.op for n in graph.nodes] == ["Flatten", "Gemm", "Sigmoid", "Gemm", "Tanh", "Gemm"]
    x = torch.rand(5, 2, 4)
    torch.testing.assert_close(GraphEvaluator(graph)(x.unsqueeze(1)).reshape(5, -1), net(x))


def test_unsupported_module_is_named() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.SiLU(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedModel, match="SiLU"):
        graph_from_module(net, (1, 4))
    with pytest.raises(UnsupportedModel, match="Softplus"):       # only beta = 1 is ONNX's Softplus
        graph_from_module(nn.Sequential(nn.Linear(4, 4), nn.Softplus(beta=2.0)), (1, 4))


def _same_forward_and_sound(graph, net, x, lo: float, width: float, atol: float) -> None:
    """The graph computes the module's forward at `x` [N, n], and its CROWN bounds over the
    box [lo, lo + width]^n hold at 500 samples."""
    from relaxations import BoundOptions, IntervalBounds, compute_bounds

    n = x.shape[1]
    torch.testing.assert_close(GraphEvaluator(graph)(x.unsqueeze(1)).reshape(len(x), -1), net(x), rtol=1e-4,
                               atol=atol)
    low = torch.full((1, 1, n), lo)
    res = compute_bounds(graph, IntervalBounds(low, low + width), None, BoundOptions(method="crown"))
    ys = net(low.reshape(1, n) + width * torch.rand(500, n))
    assert bool((res.lower.reshape(1, -1) <= ys + 1e-5).all() and (ys <= res.upper.reshape(1, -1) + 1e-5).all())


def test_smooth_activation_modules_translate() -> None:
    """nn.GELU (both forms), ELU, Softplus, Hardsigmoid and Hardswish become their ONNX ops,
    with the same forward, and get bounds (CROWN through each)."""
    torch.manual_seed(2)
    acts = [nn.GELU(), nn.GELU(approximate="tanh"), nn.ELU(alpha=0.7), nn.Softplus(), nn.Hardsigmoid(),
            nn.Hardswish()]
    layers: list = []
    for a in acts:
        layers += [nn.Linear(5, 5), a]
    net = nn.Sequential(*layers, nn.Linear(5, 2)).eval()
    graph = graph_from_module(net, (1, 5))
    assert [n.op for n in graph.nodes if n.op != "Gemm"] == ["Gelu", "Gelu", "Elu", "Softplus", "HardSigmoid",
                                                              "HardSwish"]
    _same_forward_and_sound(graph, net, 3 * torch.rand(9, 5) - 1.5, -0.2, 0.4, atol=1e-6)


def test_layernorm_module_translates() -> None:
    """nn.LayerNorm (with and without its affine part) becomes the ops ONNX's
    LayerNormalization expands into at import, with the module's forward and sound bounds."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 8),
                        nn.LayerNorm(8, elementwise_affine=False), nn.Linear(8, 2)).eval()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.normal_(0, 0.3)
    graph = graph_from_module(net, (1, 6))
    assert "LayerNormalization" not in {n.op for n in graph.nodes} and "Sqrt" in {n.op for n in graph.nodes}
    _same_forward_and_sound(graph, net, 2 * torch.rand(9, 6) - 1, -0.1, 0.2, atol=1e-5)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_gradients_reach_every_weight(case: str, method: str) -> None:
    make, shape = CASES[case]
    net = make()
    x = torch.rand(6, *shape)
    y = torch.arange(6) % 4
    loss, info = certified_loss(net, x, y, 0.05, method=method, beta=0.5)
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    assert np.isfinite(info.worst_margin) and 0.0 <= info.verified_accuracy <= 1.0


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_bounds_equal_those_of_the_exported_onnx(case: str, tmp_path) -> None:
    """Same box, same C, same relaxations code: the same numbers, up to the rounding
    margins that verification adds and training's loss terms leave out (`Precision.none()`):
    the training bound is the higher one, by about 1e-5 of the bound's scale.

    With BatchNorm the exporter folds BN into the convolution while our graph keeps it
    (folding at build time would freeze the weights), so there is one interval fewer
    to widen for rounding on the ONNX side: a difference of about 1e-5 of the bound's
    scale, which is allowed for that case only.
    """
    make, shape = CASES[case]
    net = make().eval()
    path = tmp_path / f"{case}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.zeros(1, *shape), str(path), input_names=["x"], output_names=["y"],
                          opset_version=13, dynamo=False)
    model = verifier.load_model(path)
    x = torch.rand(5, *shape)
    y = torch.tensor([0, 1, 2, 3, 1])
    eps = 0.03
    C = margin_matrix(y, 4)
    lo = (x - eps).clamp(0, 1).unsqueeze(1)
    hi = (x + eps).clamp(0, 1).unsqueeze(1)
    with torch.no_grad():
        ours_ibp = margin_bounds(net, x, y, eps, "ibp")
        ours_cibp = margin_bounds(net, x, y, eps, "crown-ibp", beta=1.0)
    ref_ibp, _ = verifier.bounds(model, lo.numpy(), hi.numpy(), method="ibp", C=C.numpy(), device="cpu")
    ref_crown = compute_bounds(model.graph, IntervalBounds(lo, hi), C,
                               BoundOptions(method="crown", intermediate="ibp"), want_upper=False).lower
    ref_cibp = torch.maximum(ref_crown, ref_ibp)  # CROWN-IBP's CROWN part is max(CROWN, folded IBP)
    tol = 1e-4 if case != "resnet-bn" else 2e-4
    torch.testing.assert_close(ours_ibp, ref_ibp, rtol=1e-4, atol=tol)
    torch.testing.assert_close(ours_cibp, ref_cibp, rtol=1e-4, atol=tol)
    if case != "resnet-bn":   # (there the exporter's folded BN rounds differently)
        assert bool((ours_ibp >= ref_ibp).all()) and bool((ours_cibp >= ref_cibp).all())
    assert bool((ours_cibp >= ours_ibp - 1e-6).all())


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_training_bounds_hold_at_samples(case: str, method: str) -> None:
    """The loss's margin bounds (no rounding margins) are below the margins of 300 points
    of each box, with a float32 slack far under any gap between the two."""
    make, shape = CASES[case]
    net = make().eval()
    x = torch.rand(3, *shape)
    y = torch.tensor([0, 2, 3])
    eps = 0.05
    with torch.no_grad():
        lb = margin_bounds(net, x, y, eps, method)
        C = margin_matrix(y, 4)
        for i in range(3):
            pts = (x[i] + eps * (2 * torch.rand(300, *shape) - 1)).clamp(0, 1)
            margins = net(pts) @ C[i].T
            assert bool((lb[i] <= margins.min(0).values + 1e-5).all()), (case, method, i)


def test_zero_radius_gives_the_exact_margins() -> None:
    net = _mlp().eval()
    x = torch.rand(4, 12)
    y = torch.tensor([0, 1, 2, 3])
    lb = margin_bounds(net, x, y, 0.0, "ibp")
    out = net(x)
    exact = torch.einsum("bsk,bk->bs", margin_matrix(y, 4), out)
    torch.testing.assert_close(lb, exact, rtol=1e-4, atol=1e-4)


def test_graph_cache_is_reused_and_invalidated() -> None:
    net = _mlp()
    g1 = module_graph(net, (1, 12))
    assert module_graph(net, (1, 12)) is g1
    net[2] = nn.Linear(16, 16)  # a structural change: a new parameter object
    assert module_graph(net, (1, 12)) is not g1


def test_tightness_is_one_for_a_linear_map_and_at_most_one_otherwise() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 12)
    lin = nn.Sequential(nn.Linear(12, 4))
    torch.testing.assert_close(ibp_tightness(lin, x), torch.ones(3))
    t = ibp_tightness(_mlp(), x)
    assert bool(((t > 0) & (t <= 1 + 1e-6)).all())


@pytest.mark.parametrize("kind", ["linear", "smooth"])
def test_epsilon_schedule(kind: str) -> None:
    s = EpsilonSchedule(0.1, warmup_epochs=2, ramp_epochs=5, kind=kind)
    assert s(0.0) == 0.0 and s(1.99) == 0.0
    assert s(7.0) == pytest.approx(0.1) and s(50.0) == pytest.approx(0.1)
    values = [s(e) for e in np.linspace(0, 10, 201)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert 0.0 < s(4.5) < 0.1
    with pytest.raises(ValueError):
        EpsilonSchedule(0.1, kind="cosine")


def test_ibp_training_steps_reduce_the_certified_loss() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.rand(24, 6)
    y = (x[:, :3] - x[:, 3:]).argmax(1)
    opt = torch.optim.Adam(net.parameters(), lr=3e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss, _ = certified_loss(net, x, y, 0.02, method="ibp")
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_certified_loss_on_cuda_matches_cpu(method: str) -> None:
    net = _resnet()
    x = torch.rand(4, 1, 6, 6)
    y = torch.tensor([0, 1, 2, 3])
    cpu, _ = certified_loss(net, x, y, 0.02, method=method)
    gpu_net = _resnet().cuda()
    gpu, info = certified_loss(gpu_net, x.cuda(), y.cuda(), 0.02, method=method)
    gpu.backward()
    assert all(p.grad is not None for p in gpu_net.parameters())
    assert float(gpu) == pytest.approx(float(cpu), rel=1e-4)


def test_crown_ibp_with_crown_weight_zero_is_ibp() -> None:
    """beta 0 runs no CROWN pass: its bound is IBP's exactly (not a mix that happens to be close)."""
    net = _mlp().eval()
    x = torch.rand(4, 12)
    y = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        ibp = margin_bounds(net, x, y, 0.05, "ibp")
        mixed = margin_bounds(net, x, y, 0.05, "crown-ibp", beta=0.0)
        crown = margin_bounds(net, x, y, 0.05, "crown-ibp", beta=1.0)
    assert torch.equal(ibp, mixed)
    assert bool((crown > ibp).any())


def test_batchnorm_in_training_mode_uses_the_batch_statistics() -> None:
    """In training mode BN's bounds hold for the network normalised by the clean batch's
    statistics (sampled), differ from the running-statistics bounds, carry gradients to
    BN's weights, and `margin_bounds` alone leaves the running statistics as they were."""
    net = _resnet().train()
    x = torch.rand(8, 1, 6, 6)
    y = torch.arange(8) % 4
    running = net.bn.running_mean.clone(), net.bn.running_var.clone()
    lb = margin_bounds(net, x, y, 0.02, "crown-ibp")
    assert torch.equal(net.bn.running_mean, running[0]) and torch.equal(net.bn.running_var, running[1])
    lb.sum().backward()
    assert net.bn.weight.grad is not None and bool(net.bn.weight.grad.abs().sum() > 0)
    with torch.no_grad():
        h = net.conv1(x)
        mean, var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
        frozen = _resnet().eval()
        frozen.load_state_dict(net.state_dict())
        frozen.bn.running_mean.copy_(mean)
        frozen.bn.running_var.copy_(var)
        C = margin_matrix(y, 4)
        for i in range(8):
            pts = (x[i] + 0.02 * (2 * torch.rand(200, 1, 6, 6) - 1)).clamp(0, 1)
            assert bool((lb[i] <= (frozen(pts) @ C[i].T).min(0).values + 1e-5).all())
        eval_lb = margin_bounds(net.eval(), x, y, 0.02, "crown-ibp")
    assert not torch.allclose(lb.detach(), eval_lb)


def test_certified_loss_updates_running_statistics_once() -> None:
    """certified_loss's one forward is the training step's: BN's running mean moves once,
    exactly as one plain forward in training mode moves it."""
    a, b = _resnet().train(), _resnet().train()
    x = torch.rand(8, 1, 6, 6)
    certified_loss(a, x, torch.arange(8) % 4, 0.02, method="ibp")
    b(x)
    torch.testing.assert_close(a.bn.running_mean, b.bn.running_mean)
    torch.testing.assert_close(a.bn.running_var, b.bn.running_var)


def test_sabr_bounds_a_small_box_inside_the_ball() -> None:
    """SABR's loss is IBP's over boxes of radius lambda*eps around PGD points found within
    (1 - lambda)*eps: inside the ball, so its bound is at least the whole ball's (IBP is
    monotone in the box), and lambda = 1 from the centre is IBP itself."""
    from verifier.pytorch.training import adversarial_points

    net = _mlp().eval()
    x = torch.rand(6, 12)
    y = torch.arange(6) % 4
    opts = CertifiedOptions(sabr_lambda=0.3)
    centres = adversarial_points(net, x, y, 0.1 * 0.7, opts)
    assert bool(((centres - x).abs() <= 0.07 + 1e-7).all() and (centres >= 0).all() and (centres <= 1).all())
    with torch.no_grad():
        small = margin_bounds(net, centres, y, 0.03, "ibp")
        whole = margin_bounds(net, x, y, 0.1, "ibp")
        assert bool((small >= whole - 1e-6).all())
        loss, info = certified_loss(net, x, y, 0.1, method="sabr", options=opts)
        _, info_ibp = certified_loss(net, x, y, 0.1, method="ibp")
    assert info.robust_loss <= info_ibp.robust_loss + 1e-6
    loss2, _ = certified_loss(net, x, y, 0.1, method="sabr", options=CertifiedOptions(sabr_lambda=1.0, attack_steps=0))
    torch.testing.assert_close(loss2, certified_loss(net, x, y, 0.1, method="ibp")[0])


def test_mtl_ibp_is_the_convex_mix() -> None:
    """MTL-IBP's loss is alpha * IBP's + (1 - alpha) * the adversarial cross-entropy, with
    gradients to every weight; alpha 1 is IBP's loss."""
    from verifier.pytorch.training import adversarial_points

    net = _mlp()
    x = torch.rand(6, 12)
    y = torch.arange(6) % 4
    ibp, _ = certified_loss(net, x, y, 0.1, method="ibp")
    adv = adversarial_points(net, x, y, 0.1)
    ce = torch.nn.functional.cross_entropy(net(adv), y)
    assert ce.item() >= torch.nn.functional.cross_entropy(net(x), y).item() - 1e-6   # PGD raised the loss
    mixed, _ = certified_loss(net, x, y, 0.1, method="mtl-ibp", options=CertifiedOptions(mtl_alpha=0.25))
    torch.testing.assert_close(mixed, 0.25 * ibp + 0.75 * ce)
    mixed.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.parameters())
    one, _ = certified_loss(net, x, y, 0.1, method="mtl-ibp", options=CertifiedOptions(mtl_alpha=1.0))
    torch.testing.assert_close(one, ibp)
    with pytest.raises(ValueError, match="mtl_alpha"):
        CertifiedOptions(mtl_alpha=2.0)
    with pytest.raises(ValueError, match="method must be one of"):
        certified_loss(net, x, y, 0.1, method="pgd")


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
@pytest.mark.parametrize("case", ["mlp", "pool-cat"])
def test_l2_training_bounds_hold_and_beat_the_box(case: str, method: str) -> None:
    """norm 2: the margin bounds hold at points of each l2 ball (within [0, 1]), with
    gradients, and are tighter than over the ball's bounding box."""
    make, shape = CASES[case]
    net = make().eval()
    x = torch.rand(3, *shape)
    y = torch.tensor([0, 2, 3])
    eps = 0.3
    lb = margin_bounds(net, x, y, eps, method, perturbation=Perturbation(norm="2"))
    lb.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    with torch.no_grad():
        box = margin_bounds(net, x, y, eps, method)
        assert bool((lb >= box - 1e-6).all()) and bool((lb > box + 1e-3).any())
        C = margin_matrix(y, 4)
        for i in range(3):
            d = torch.randn(2000, *shape)
            d = d / d.reshape(2000, -1).norm(dim=1).reshape(-1, *([1] * len(shape))) * eps
            d = d * torch.rand(2000).reshape(-1, *([1] * len(shape)))
            pts = (x[i] + d).clamp(0, 1)
            assert bool((lb[i] <= (net(pts) @ C[i].T).min(0).values + 1e-5).all())
    l2 = CertifiedOptions(perturbation=Perturbation(norm="2"))
    with pytest.raises(ValueError, match="l-inf balls only"):
        certified_loss(net, x, y, eps, method="sabr", options=l2)
    loss, info = certified_loss(net, x, y, eps, method=method, options=l2)
    assert np.isfinite(float(loss.detach()))


@pytest.mark.parametrize("batch", [16, 3])
def test_training_ibp_equals_a_hand_folded_ibp(batch: int) -> None:
    """The loss's IBP bound of the margins is, to float rounding, the hand-written IBP that
    folds the margin matrix into the last layer (issue 24's first measure: gap under 1e-3);
    with a batch of at least K examples through one C of every class pair (`pair_rows`),
    with fewer through each sample's own rows."""
    net = _mlp()
    x = torch.rand(batch, 12)
    y = torch.arange(batch) % 4
    eps = 0.1
    with torch.no_grad():
        lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        c, r = (lo + hi) / 2, (hi - lo) / 2
        for layer in (net[0], net[2]):
            c, r = layer(c), r @ layer.weight.abs().T
            lo, hi = torch.relu(c - r), torch.relu(c + r)
            c, r = (lo + hi) / 2, (hi - lo) / 2
        CW = margin_matrix(y, 4) @ net[4].weight
        hand = (CW @ c.unsqueeze(-1)).squeeze(-1) - (CW.abs() @ r.unsqueeze(-1)).squeeze(-1) \
            + margin_matrix(y, 4) @ net[4].bias
        ours = margin_bounds(net, x, y, eps, "ibp")
    torch.testing.assert_close(ours, hand, rtol=1e-5, atol=1e-5)


def test_pair_rows_list_each_class_margins_as_margin_matrix_does() -> None:
    rows = pair_rows(5, torch.float32, torch.device("cpu"))
    y = torch.arange(5)
    torch.testing.assert_close(rows.reshape(5, 4, 5), margin_matrix(y, 5))


def test_pair_rows_are_a_copy_of_the_shared_rows() -> None:
    """The rows are made once and shared by every training step: what a caller does to the
    tensor `pair_rows` returns must not reach `margin_matrix` or the next call."""
    rows = pair_rows(4, torch.float64, torch.device("cpu"))
    before = margin_matrix(torch.arange(4), 4, torch.float64).clone()
    rows.fill_(7.0)
    torch.testing.assert_close(margin_matrix(torch.arange(4), 4, torch.float64), before)
    assert not bool((pair_rows(4, torch.float64, torch.device("cpu")) == 7.0).any())
    assert margin_matrix(torch.arange(4), 4, torch.float64).dtype == torch.float64


def test_tightness_covers_max_pooling() -> None:
    """The pool/cat net (MaxPool, concatenation, adaptive pooling) gets a finite tightness
    in (0, 1]; a linear map through a max pool whose argmax is fixed gets 1."""
    net = _poolcat().eval()
    t = ibp_tightness(net, torch.rand(4, 36))
    assert bool(torch.isfinite(t).all() and (t > 0).all() and (t <= 1 + 1e-6).all())
    lin = nn.Sequential(nn.Unflatten(1, (1, 4, 4)), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        lin[3].weight.copy_(torch.eye(3, 4))
    torch.testing.assert_close(ibp_tightness(lin, torch.rand(2, 16)), torch.ones(2))


@pytest.mark.parametrize("case", sorted(CASES))
def test_full_crown_training_is_at_least_crown_ibp(case: str) -> None:
    """method crown bounds every intermediate tensor by CROWN: never looser than CROWN-IBP
    (to rounding), tighter on the MLP, with gradients to every weight."""
    make, shape = CASES[case]
    net = make().eval()
    x = torch.rand(4, *shape)
    y = torch.tensor([0, 1, 2, 3])
    full = margin_bounds(net, x, y, 0.05, "crown")
    with torch.no_grad():
        cibp = margin_bounds(net, x, y, 0.05, "crown-ibp")
    assert bool((full >= cibp - 1e-5).all())
    if case == "mlp":   # (on the pool/cat net at this radius the two coincide)
        assert bool((full > cibp + 1e-4).any())
    loss, _ = certified_loss(net, x, y, 0.05, method="crown")
    loss.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.parameters())


def test_tightness_is_computed_only_when_asked() -> None:
    """A training step pays for no diagnostic: tightness is NaN unless asked for."""
    net = _mlp()
    x = torch.rand(6, 12, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % 4
    _, info = certified_loss(net, x, y, 0.05, method="ibp")
    assert math.isnan(info.tightness)
    _, info = certified_loss(net, x, y, 0.05, method="ibp", options=CertifiedOptions(tightness=True))
    assert 0.0 < info.tightness <= 1.0


def test_the_perturbation_sets_the_range_and_refuses_bad_values() -> None:
    """The range of a `Perturbation` clips the ball, for the bounds and for the attack; a
    bad norm or range, or a call in the old positional form, is a clear error."""
    from verifier.pytorch.training import adversarial_points

    net = _mlp().eval()
    x = 0.4 + 0.2 * torch.rand(4, 12)
    y = torch.arange(4) % 4
    band = Perturbation(lower=0.4, upper=0.6)
    with torch.no_grad():   # radius 1 clipped to [0.4, 0.6] is the box 0.5 +- 0.1
        torch.testing.assert_close(margin_bounds(net, x, y, 1.0, "ibp", perturbation=band),
                                   margin_bounds(net, torch.full_like(x, 0.5), y, 0.1, "ibp"))
    adv = adversarial_points(net, x, y, 1.0, CertifiedOptions(perturbation=band))
    assert bool((adv >= 0.4).all() and (adv <= 0.6).all())
    for bad, message in [(dict(norm="1"), "Perturbation.norm: expected one of"), (dict(lower=0.7, upper=0.3),
                         "lower must be <="), (dict(upper=math.inf), "Perturbation.upper: expected a finite number")]:
        with pytest.raises(ValueError, match=message):
            Perturbation(**bad)
    with pytest.raises(ValueError, match="l-inf balls only"):
        adversarial_points(net, x, y, 0.1, CertifiedOptions(perturbation=Perturbation(norm="2")))
    with pytest.raises(TypeError, match="perturbation must be a Perturbation"):
        margin_bounds(net, x, y, 0.1, "ibp", 1.0, 0.0)        # lower and upper, as before
    with pytest.raises(TypeError, match="perturbation must be a Perturbation"):
        CertifiedOptions(perturbation="2")
    with pytest.raises(TypeError, match=r"at most 6 positional arguments .*options=CertifiedOptions\(perturbation="):
        certified_loss(net, x, y, 0.1, "ibp", 1.0, 0.0, 1.0)  # lower and upper, as before
    with pytest.raises(TypeError, match="options must be a CertifiedOptions"):
        certified_loss(net, x, y, 0.1, "ibp", 1.0, options=Perturbation())
    with pytest.raises(TypeError, match="options must be a CertifiedOptions"):
        adversarial_points(net, x, y, 0.1, 0.0)               # lower, as before
    assert Perturbation(lower=torch.tensor(-1.0), upper=np.array(2.0)) == Perturbation(lower=-1.0, upper=2.0)
    assert verifier.Perturbation is Perturbation and verifier.CertifiedOptions is CertifiedOptions


def test_an_old_positional_call_of_certified_loss_is_refused_not_read_as_kappa() -> None:
    """`certified_loss(m, x, y, eps, "ibp", 1.0, 0.5)` meant lower=0.5 before the
    Perturbation refactor; now kappa and options are keyword-only, so such a call is a
    TypeError that names the arguments kept and says where the range went, while the
    keyword forms and the signature `help` shows are the function's own."""
    import inspect

    net = _mlp()
    x = torch.rand(4, 12, generator=torch.Generator().manual_seed(1))
    y = torch.arange(4) % 4
    with pytest.raises(TypeError) as old:
        certified_loss(net, x, y, 0.1, "ibp", 1.0, 0.5)
    assert str(old.value).startswith("certified_loss() takes at most 6 positional arguments "
                                     "(model, x, y, eps, method, beta), got 7: kappa and options are keyword-only")
    assert "Perturbation(norm=..., lower=..., upper=...)" in str(old.value)
    params = inspect.signature(certified_loss).parameters
    assert [p.name for p in params.values() if p.kind is p.KEYWORD_ONLY] == ["kappa", "options"]
    positional, _ = certified_loss(net, x, y, 0.1, "crown-ibp", 0.5, kappa=0.5)
    keywords, _ = certified_loss(net, x, y, eps=0.1, method="crown-ibp", beta=0.5, kappa=0.5, options=CertifiedOptions())
    torch.testing.assert_close(positional, keywords)
