"""`verify_module`: torch modules over l-inf and l2 balls, without files."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import verifier
import vnnlib
from relaxations import BallBox, BoundOptions, IntervalBounds, compute_bounds
from verifier.pytorch.verify_module import module_model

torch.set_num_threads(1)


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)).eval()


def _points(net: nn.Module, n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 6, generator=g)
    with torch.no_grad():
        return x, net(x).argmax(1)


CONFIG = verifier.Config(timeout=20)
L2 = verifier.Perturbation(norm="2")


def test_linf_verdicts_equal_the_onnx_path(tmp_path) -> None:
    """Each point's verdict is the one `verify` gives on the exported file and its spec."""
    net = _net()
    x, y = _points(net)
    results = verifier.verify_module(net, x, y, eps=0.05, config=CONFIG)
    model = module_model(net, (1, 6))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.onnx_bytes)
    loaded = verifier.load_model(path)
    for i, r in enumerate(results):
        spec = vnnlib.robustness_spec(x[i].double().numpy(), 0.05, int(y[i]), 3, 0.0, 1.0)
        assert r.verdict == verifier.verify(loaded, spec, CONFIG).verdict
    assert {r.verdict for r in results} <= {"sat", "unsat"}


def test_linf_sat_and_unsat_are_each_right() -> None:
    """A zero radius around a correctly classified point is robust; a radius of the whole
    range around any point of a net with 3 reachable classes is not."""
    net = _net()
    x, y = _points(net, 3)
    assert [r.verdict for r in verifier.verify_module(net, x, y, eps=0.0, config=CONFIG)] == ["unsat"] * 3
    wrong = (y + 1) % 3
    for r, xi, yi in zip(verifier.verify_module(net, x, wrong, eps=0.0, config=CONFIG), x, wrong):
        assert r.verdict == "sat"   # misclassified at the point itself
        np.testing.assert_allclose(r.x.reshape(-1), xi.numpy(), rtol=0, atol=0)


def test_ball_bounds_hold_at_samples_and_beat_the_box() -> None:
    """CROWN over a box intersected with an l2 ball: below the outputs at points of the
    intersection, and at least as tight as over the box alone (much tighter for a radius
    whose box is wide)."""
    net = _net()
    model = module_model(net, (1, 6))
    c = torch.full((1, 1, 6), 0.5, dtype=torch.float64)
    eps = 0.3
    box = IntervalBounds((c - eps).clamp(min=0), (c + eps).clamp(max=1))
    ball = BallBox(box.lower, box.upper, c, torch.full((1,), eps, dtype=torch.float64))
    for method in ("crown", "alpha-crown"):
        res_ball = compute_bounds(model.graph, ball, None, BoundOptions(method=method))
        res_box = compute_bounds(model.graph, box, None, BoundOptions(method=method))
        assert bool((res_ball.lower >= res_box.lower - 1e-9).all() and (res_ball.upper <= res_box.upper + 1e-9).all())
        assert bool(((res_ball.upper - res_ball.lower) < 0.9 * (res_box.upper - res_box.lower)).all())
        g = torch.Generator().manual_seed(0)
        d = torch.randn(4000, 6, generator=g, dtype=torch.float64)
        d = d / d.norm(dim=1, keepdim=True) * eps * torch.rand(4000, 1, generator=g, dtype=torch.float64) ** (1 / 6)
        pts = (c.reshape(1, 6) + d).clamp(0, 1)
        with torch.no_grad():
            out = net.double()(pts)
        net.float()
        assert bool((out >= res_ball.lower.reshape(1, -1) - 1e-9).all() and (out <= res_ball.upper.reshape(1, -1) + 1e-9).all())


def test_l2_verdicts_are_sound() -> None:
    """l2: every sat's point is inside the ball and the range and misclassified by the
    module; every unsat survives an l2 attack of many random points of its ball."""
    net = _net()
    x, y = _points(net, 8)
    eps = 0.25
    results = verifier.verify_module(net, x, y, eps=eps, perturbation=L2, config=CONFIG)
    verdicts = [r.verdict for r in results]
    assert "unsat" in verdicts
    g = torch.Generator().manual_seed(3)
    for r, xi, yi in zip(results, x, y):
        if r.verdict == "sat":
            xs = torch.tensor(r.x, dtype=torch.float32).reshape(1, 6)
            assert float((xs[0].double() - xi.double()).norm()) <= eps
            assert bool((xs >= 0).all() and (xs <= 1).all())
            out = np.asarray(r.y)          # onnxruntime's outputs at the point
            assert np.delete(out, int(yi)).max() >= out[int(yi)]
        elif r.verdict == "unsat":
            d = torch.randn(3000, 6, generator=g)
            d = d / d.norm(dim=1, keepdim=True) * eps * torch.rand(3000, 1, generator=g)
            with torch.no_grad():
                out = net((xi + d).clamp(0, 1))
            assert bool((out.argmax(1) == yi).all())
        else:
            assert r.verdict == "unknown"


def test_bad_arguments_are_clear_errors() -> None:
    net = _net()
    x, y = _points(net, 2)
    with pytest.raises(ValueError, match="Perturbation.norm: expected one of"):
        verifier.verify_module(net, x, y, eps=0.1, perturbation=verifier.Perturbation(norm="1"))
    with pytest.raises(ValueError, match="label 7 is not a class"):
        verifier.verify_module(net, x, torch.tensor([0, 7]), eps=0.1)
    with pytest.raises(ValueError, match="2 points and y 3 labels"):
        verifier.verify_module(net, x, torch.tensor([0, 1, 2]), eps=0.1)
    with pytest.raises(ValueError, match="eps must be finite"):
        verifier.verify_module(net, x, y, eps=float("nan"))
    with pytest.raises(verifier.ShapeError, match=r"does not accept points shaped \(5,\)"):
        verifier.verify_module(net, torch.rand(2, 5), y, eps=0.1)
    with pytest.raises(ValueError, match="valid range"):
        verifier.verify_module(net, x + 2.0, y, eps=0.1, perturbation=L2)
    with pytest.raises(ValueError, match="valid range"):
        verifier.verify_module(net, x, y, eps=0.1, perturbation=verifier.Perturbation(lower=0.5, upper=1.0))
    with pytest.raises(TypeError, match="perturbation must be a Perturbation"):
        verifier.verify_module(net, x, y, 0.1, "2")        # the norm where it stood before


def test_linf_certificates_are_written_and_accepted(tmp_path) -> None:
    from verifier.checker.verdict import check_files

    net = _net()
    x, y = _points(net, 2)
    results = verifier.verify_module(net, x, y, eps=0.02, config=CONFIG, certificate_dir=tmp_path)
    for i, r in enumerate(results):
        assert r.verdict in ("sat", "unsat")
        report = check_files(tmp_path / f"point_{i}.json", tmp_path / "model.onnx", tmp_path / f"point_{i}.vnnlib")
        assert report.accepted, report.reason
        assert r.stats["certificate"] == "written"


def test_l2_certificates_name_the_ball_and_are_accepted(tmp_path) -> None:
    """l2 (issue 24): each point's certificate (CROWN, alpha-CROWN, activation split, input
    split) names its ball; the checker cuts the spec file's box by it, re-derives the
    bounds and accepts, saying so; with the ball left out, the same claims over the box
    alone are rejected; a sat's counterexample is checked to lie in the ball."""
    import json

    from verifier.checker.verdict import check_files

    net = _steep_net(20, 32, 2.0)
    x = torch.rand(20, 20, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = net(x).argmax(1)
    eps = 0.3
    results = verifier.verify_module(net, x, y, eps=eps, perturbation=L2, config=CONFIG, certificate_dir=tmp_path)
    seen = set()
    for i, r in enumerate(results):
        files = (tmp_path / f"point_{i}.json", tmp_path / "model.onnx", tmp_path / f"point_{i}.vnnlib")
        report = check_files(*files)
        cert = json.loads(files[0].read_text())
        if r.verdict == "unsat":
            assert report.accepted and "l2 ball of radius 0.3" in report.line(), (r.method, report.reason)
            assert cert["l2_ball"]["radius"] == eps
            del cert["l2_ball"]           # the box alone: the ball's bounds no longer hold there
            files[0].write_text(json.dumps(cert))
            assert not check_files(*files).accepted
        elif r.verdict == "sat":
            assert report.accepted, report.reason
            cert["l2_ball"]["radius"] = 1e-6    # a ball the counterexample is not in
            files[0].write_text(json.dumps(cert))
            assert "outside the l2 ball" in check_files(*files).reason
        seen.add(r.method)
    assert {"crown", "alpha-crown", "bab-activation", "attack"} <= seen
    # Input split over the ball (6 inputs): its leaves are certified, each bounded over the
    # leaf cut by the ball; leaves the ball misses are recognised exactly by the checker.
    net = _steep_net()
    x = torch.rand(10, 6, generator=torch.Generator().manual_seed(1))[7:9]
    with torch.no_grad():
        y = net(x).argmax(1)
    out = tmp_path / "input_split"
    results = verifier.verify_module(net, x, y, eps=0.2, perturbation=L2, config=CONFIG, certificate_dir=out)
    for i, r in enumerate(results):
        assert r.verdict == "unsat" and r.method == "bab-input"
        report = check_files(out / f"point_{i}.json", out / "model.onnx", out / f"point_{i}.vnnlib")
        assert report.accepted, report.reason


def test_l2_per_conjunction_proofs_are_certified(tmp_path) -> None:
    """With one search per conjunction (bab.per_conjunction=always), activation split over
    the ball writes a proof per conjunction; each part is checked over the box cut by the
    ball, and the whole is rejected without it."""
    import json

    from verifier.checker.verdict import check_files

    net = _steep_net(20, 32, 2.0)
    x = torch.rand(20, 20, generator=torch.Generator().manual_seed(2))[[0, 3, 6]]   # decided by activation split
    with torch.no_grad():
        y = net(x).argmax(1)
    config = verifier.config.with_overrides(CONFIG, ["bab.per_conjunction=always"])
    results = verifier.verify_module(net, x, y, eps=0.3, perturbation=L2, config=config, certificate_dir=tmp_path)
    for i, r in enumerate(results):
        files = (tmp_path / f"point_{i}.json", tmp_path / "model.onnx", tmp_path / f"point_{i}.vnnlib")
        cert = json.loads(files[0].read_text())
        assert r.method == "bab-activation" and cert["disjuncts"][0]["kind"] == "conjunctions"
        assert check_files(*files).accepted
        del cert["l2_ball"]
        files[0].write_text(json.dumps(cert))
        assert not check_files(*files).accepted


def test_boxes_missing_the_ball_are_decided_exactly() -> None:
    from verifier.checker.verdict import boxes_missing_ball

    centre, r = np.zeros(2), 1.0
    lo = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, 0.8000001], [-0.5, -0.5]])
    hi = lo + np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    # nearest points: the rim point (1, 0); (0.6, 0.8), on the rim up to the floats' own
    # rounding (decided in rationals); one just outside; the centre, inside
    got = boxes_missing_ball(lo, hi, (centre, r))
    assert got.tolist() == [False, _exactly_outside(0.6, 0.8), True, False]
    # Boxes whose nearest point lies within a few ulps of the rim, against rationals.
    g = np.random.default_rng(0)
    u = g.standard_normal((500, 6))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    corner = np.abs(u) * (1 + g.integers(-4, 5, (500, 1)) * 1e-16)          # on the rim, +- a few ulps
    lo, hi = corner, corner + 1.0
    want = [sum(Fraction(float(v)) ** 2 for v in row) > 1 for row in corner]
    assert boxes_missing_ball(lo, hi, (np.zeros(6), 1.0)).tolist() == want
    # Near the subnormal range the float64 error is absolute, not relative: the nearest
    # point (x, x) with x = sqrt(0.51) 2^-537 is inside the ball of radius sqrt(1.1) 2^-537
    # (exactly, d^2 = 0.93 r^2) while the float sums say d^2 = 1e-323 > r^2 = 5e-324.
    x, r = np.sqrt(0.51) * 2.0 ** -537, np.sqrt(1.1) * 2.0 ** -537
    assert boxes_missing_ball(np.array([[x, x]]), np.ones((1, 2)), (np.zeros(2), float(r))).tolist() == [False]


def _exactly_outside(a: float, b: float) -> bool:
    return Fraction(a) ** 2 + Fraction(b) ** 2 > 1


def test_the_checker_ball_minimum_holds_at_sampled_points() -> None:
    """The checker's own concretisation over an l2 ball (trusted code) is below A.x + b at
    random points of the ball, and attained up to its margin at the minimiser."""
    from verifier.checker.bounds64 import _ball_minimum, _widen

    g = np.random.default_rng(0)
    A = g.standard_normal((3, 4, 7)) * 10.0 ** g.integers(-3, 3, (3, 4, 1))
    bias, mass = g.standard_normal((3, 4)), np.zeros((3, 4))
    centre, radius = g.standard_normal((3, 7)), np.array([0.5, 2.0, 1e-3])
    value = _widen(*_ball_minimum(A, bias, mass, centre, radius))
    d = g.standard_normal((3, 2000, 7))
    pts = centre[:, None] + d / np.linalg.norm(d, axis=2, keepdims=True) * radius[:, None, None] * g.random((3, 2000, 1))
    f = np.einsum("lsn,lpn->lsp", A, pts) + bias[:, :, None]
    assert (f >= value[:, :, None]).all()
    best = centre[:, None] - A / np.linalg.norm(A, axis=2, keepdims=True) * radius[:, None, None]
    attained = np.einsum("lsn,lsn->ls", A, best) + bias
    assert np.allclose(attained, value, rtol=1e-6, atol=1e-9)


def _steep_net(n_in: int = 6, width: int = 16, scale: float = 3.0) -> nn.Sequential:
    """An n_in-width-width-3 ReLU net with weights scaled up (6-16-16-3 tripled: its class
    changes within l2 radii of 0.1-0.3)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                        nn.Linear(width, 3)).eval()
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.Linear):
                m.weight.mul_(scale)
    return net


@pytest.mark.parametrize("mode", ["activation", "input"])
def test_l2_branch_and_bound_decides_what_bounds_leave_open(mode: str) -> None:
    """At radius 0.2 bounds alone leave points open (bab.enabled=false: unknown); branch and
    bound over the ball (activation split, or input split of the box around the ball with
    the ball kept in every domain) decides every point, each unsat surviving an l2 attack
    of many random points of its ball, each sat replayed inside it."""
    net = _steep_net()
    # 20 points of seed 3: three are left open, each decided in a few seconds either way
    # (seed 1's ten left one open that input split needed 45,000 domains and 24 s for).
    x = torch.rand(20, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = net(x).argmax(1)
    eps = 0.2
    off = verifier.verify_module(net, x, y, eps=eps, perturbation=L2,
                                 config=verifier.config.with_overrides(CONFIG, ["bab.enabled=false"]))
    # 60 s a point: far above the few seconds each takes, for a loaded machine (the suite
    # runs on two workers).
    results = verifier.verify_module(net, x, y, eps=eps, perturbation=L2,
                                     config=verifier.config.with_overrides(CONFIG, [f"bab.mode={mode}",
                                                                                    "timeout=60"]))
    opened = [i for i, r in enumerate(off) if r.verdict == "unknown"]
    assert opened, "the case needs points that bounds alone leave open"
    assert all(results[i].verdict in ("unsat", "sat") for i in opened)
    assert any(results[i].method == f"bab-{mode}" for i in opened)
    g = torch.Generator().manual_seed(4)
    for r, xi, yi in zip(results, x, y):
        if r.verdict == "unsat":
            d = torch.randn(20000, 6, generator=g)
            d = d / d.norm(dim=1, keepdim=True) * eps * torch.rand(20000, 1, generator=g) ** (1 / 6)
            with torch.no_grad():
                assert bool((net((xi + d).clamp(0, 1)).argmax(1) == yi).all())
        elif r.verdict == "sat":
            xs = torch.tensor(r.x, dtype=torch.float64).reshape(6)
            assert float((xs - xi.double()).norm()) <= eps
            out = np.asarray(r.y).reshape(-1)
            assert np.delete(out, int(yi)).max() >= out[int(yi)]


def test_l2_branch_and_bound_keeps_the_timeout() -> None:
    """A deadline passing inside a bound pass of the search is a timeout, not an error."""
    net = _steep_net()
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    config = verifier.config.with_overrides(CONFIG, ["timeout=0.3", "attack.enabled=false"])
    for r in verifier.verify_module(net, x, y, eps=0.25, perturbation=L2, config=config):
        assert r.verdict in ("unsat", "sat", "timeout")
