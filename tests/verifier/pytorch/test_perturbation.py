"""`Perturbation` with a valid range per input feature (an array or tensor end, norm inf):
training clips each box elementwise and its bounds hold on samples, `verify_module`
clips the spec's box elementwise, and a range that cannot fit the input is a clear error."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import verifier
from verifier.pytorch.training import (BOUND_METHODS, CertifiedOptions, Perturbation, adversarial_points,
                                       certified_loss, margin_bounds)

torch.set_num_threads(1)


def _mlp() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)), (12,)


def _cnn() -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 4))
    return net, (2, 6, 6)


# Each case: the net, one example's shape, and a range per feature that is narrower than
# [0, 1] on some features and shared where its shape has 1s (per channel for the CNN).
CASES = {"mlp": (_mlp, lambda g: (0.3 * torch.rand(12, generator=g), 0.6 + 0.4 * torch.rand(12, generator=g))),
         "cnn": (_cnn, lambda g: (torch.tensor([0.1, 0.4]).reshape(2, 1, 1), np.array([[[[0.8]], [[0.6]]]])))}


def _margins(net: nn.Module, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y_true - y_j for every j != y, [B, K-1], at the points z [B, *shape]."""
    out = net(z)
    K = out.shape[1]
    others = torch.stack([torch.tensor([j for j in range(K) if j != int(t)]) for t in y])
    return out.gather(1, y.unsqueeze(1)) - out.gather(1, others)


@pytest.mark.parametrize("method", BOUND_METHODS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_bounds_over_a_range_per_feature_hold_on_samples(case: str, method: str) -> None:
    """The margin bounds over x +- eps clipped to a range per feature are below the margins
    at 2,000 points of that clipped box (a tenth of them its corners' mix of faces)."""
    make, ends = CASES[case]
    net, shape = make()
    net.eval()
    g = torch.Generator().manual_seed(1)
    lo_end, hi_end = ends(g)
    band = Perturbation(lower=lo_end, upper=hi_end)
    lower, upper = (e.float() for e in band.range_for(shape))
    x = lower + (upper - lower) * torch.rand(3, *shape, generator=g)
    y = torch.tensor([0, 1, 2])
    with torch.no_grad():
        lb = margin_bounds(net, x, y, 0.25, method, perturbation=band)
        lo, hi = torch.maximum(x - 0.25, lower), torch.minimum(x + 0.25, upper)
        u = torch.rand(2000, *x.shape, generator=g)
        u[:200] = u[:200].round()
        z = (lo + (hi - lo) * u).reshape(-1, *shape)
        margins = _margins(net, z, y.repeat(2000)).reshape(2000, 3, -1)
    assert bool((lb <= margins.min(0).values + 1e-5).all())


def test_a_range_per_feature_is_the_number_range_where_it_is_one_and_pins_where_it_is_a_point() -> None:
    """A range per feature filled with one number bounds as that number range does; a range
    whose ends meet at the point leaves the box that point, whatever eps, so every method's
    bound is the margin there; the attack and the SABR and MTL-IBP losses keep to it."""
    net, shape = _mlp()
    net.eval()
    x = 0.3 + 0.4 * torch.rand(4, *shape, generator=torch.Generator().manual_seed(2))
    y = torch.arange(4) % 4
    flat = Perturbation(lower=torch.full(shape, 0.2), upper=np.full(shape, 0.8))
    with torch.no_grad():
        for method in BOUND_METHODS:
            torch.testing.assert_close(margin_bounds(net, x, y, 0.3, method, perturbation=flat),
                                       margin_bounds(net, x, y, 0.3, method, perturbation=Perturbation(lower=0.2,
                                                                                                      upper=0.8)))
        point = Perturbation(lower=x[0], upper=x[0])
        exact = _margins(net, x[:1], y[:1])
        for method in BOUND_METHODS:
            torch.testing.assert_close(margin_bounds(net, x[:1], y[:1], 0.5, method, perturbation=point), exact,
                                       rtol=1e-5, atol=1e-5)
    band = Perturbation(lower=x.min(0).values, upper=x.max(0).values)
    adv = adversarial_points(net, x, y, 0.5, CertifiedOptions(perturbation=band, attack_steps=4))
    assert bool((adv >= band.lower.float()).all() and (adv <= band.upper.float()).all())
    for method in ("sabr", "mtl-ibp", "crown-ibp"):
        loss, _ = certified_loss(net, x, y, 0.1, method=method, options=CertifiedOptions(perturbation=band))
        loss.backward()
        assert torch.isfinite(loss)
    # One end a number, the other per feature (torch.clamp takes two numbers or two tensors).
    mixed = Perturbation(lower=0.0, upper=x.max(0).values)
    loss, _ = certified_loss(net, x, y, 0.1, method="crown-ibp", options=CertifiedOptions(perturbation=mixed))
    assert torch.isfinite(loss)
    adv = adversarial_points(net, x, y, 0.5, CertifiedOptions(perturbation=mixed, attack_steps=4))
    assert bool((adv >= 0).all() and (adv <= mixed.upper.float()).all())


def test_a_range_that_cannot_fit_is_a_clear_error() -> None:
    """Shapes that do not broadcast to an example (a batch's, a wrong length), ends that do
    not broadcast together, lower above upper at an element, a bad element, and a range per
    feature with norm 2 are refused with what was expected; the range is a copy."""
    net, shape = _mlp()
    x = torch.rand(3, *shape)
    y = torch.arange(3)
    for end, got in [(torch.zeros(5), r"\(5,\)"), (torch.zeros(3, 12), r"\(3, 12\)")]:
        with pytest.raises(ValueError, match=rf"Perturbation.lower has shape {got}, which does not broadcast to "
                                             r"one example's shape \(12,\)"):
            margin_bounds(net, x, y, 0.1, "ibp", perturbation=Perturbation(lower=end))
    with pytest.raises(ValueError, match=r"must broadcast to one shape, got \(3,\) and \(4,\)"):
        Perturbation(lower=torch.zeros(3), upper=torch.ones(4))
    with pytest.raises(ValueError, match=r"lower must be <= upper at every element, got lower=2.0 and upper=1.0 at "
                                         r"index \(1,\)"):
        Perturbation(lower=np.array([0.0, 2.0]), upper=1.0)
    for bad in (np.array([0.0, np.nan]), np.array([True, False]), np.zeros(0)):
        with pytest.raises(ValueError, match="Perturbation.lower: expected a finite number, or an array or tensor"):
            Perturbation(lower=bad)
    with pytest.raises(ValueError, match="goes with norm 'inf' only"):
        Perturbation(norm="2", upper=torch.ones(12))
    with pytest.raises(ValueError, match=r"valid range \(per feature\)"):
        verifier.verify_module(net, x, y, eps=0.1, perturbation=Perturbation(lower=torch.full(shape, 2.0),
                                                                             upper=3.0))
    end = torch.zeros(12)
    kept = Perturbation(lower=end)
    end += 1.0
    assert bool((kept.lower == 0).all()) and kept == Perturbation(lower=np.zeros(12)) != Perturbation()


def test_verify_module_clips_the_spec_box_per_feature(tmp_path) -> None:
    """Over l-inf, `verify_module` clips each point's box to the range per feature: the
    spec it writes is that box, and the certificate of its verdict is accepted."""
    import vnnlib
    from verifier.checker.verdict import check_files

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    x = torch.rand(1, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = net(x).argmax(1)
    lower, upper = x[0] - 0.002, torch.ones(6)
    result, = verifier.verify_module(net, x, y, eps=0.5, perturbation=Perturbation(lower=lower, upper=upper),
                                     config=verifier.Config(timeout=20), certificate_dir=tmp_path)
    spec = vnnlib.load(tmp_path / "point_0.vnnlib", 6, 3)
    region = spec.disjuncts[0].region
    np.testing.assert_allclose(region.lower.reshape(-1), lower.double().numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(region.upper.reshape(-1), np.minimum(x[0].double().numpy() + 0.5, 1.0), rtol=0,
                               atol=1e-7)
    assert result.verdict in ("sat", "unsat")
    report = check_files(tmp_path / "point_0.json", tmp_path / "model.onnx", tmp_path / "point_0.vnnlib")
    assert report.accepted, report.reason
