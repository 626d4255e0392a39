"""The package face (`verifier/__init__.py`): every public name resolves to what it says,
importing a submodule of the same name does not shadow the function, and the three
entry points added for DESIGN.md section 2 (`lipschitz`, `certify_sdp`, `check`) work
end to end with the command line's checker."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import verifier
from tests.helpers import relu_mlp_onnx
from verifier.checker.verdict import CheckInputError
from verifier.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_every_public_name_resolves() -> None:
    for name in verifier.__all__:
        assert getattr(verifier, name) is not None, name
    for name in ("verify", "lipschitz"):      # a module of that name exists too
        importlib.import_module(f"verifier.{name}")
        assert callable(getattr(verifier, name)) and not isinstance(getattr(verifier, name), type(verifier))


def test_importing_the_checker_face_pulls_in_no_torch() -> None:
    code = "import sys, verifier; verifier.check; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


@pytest.fixture()
def mlp(tmp_path) -> Path:
    return relu_mlp_onnx(tmp_path / "mlp.onnx", 0, (4, 8, 8, 3))


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_lipschitz_is_certified_and_checked(mlp, tmp_path, norm) -> None:
    model = verifier.load_model(mlp)
    res = verifier.lipschitz(model, norm=norm, method="sdp-layer", timeout=5)
    naive = verifier.lipschitz(model.graph, norm=norm)
    assert 0 < res.value <= naive.value * (1 + 1e-9) and res.norm == norm
    cert = tmp_path / "lip.json"
    cert.write_text(json.dumps(res.certificate))
    assert verifier.check(cert, mlp).accepted
    g = torch.Generator().manual_seed(0)     # never below what pairs of points show
    with torch.no_grad():
        x = torch.rand(2000, 4, generator=g, dtype=torch.float64)
        x2 = x + 1e-3 * torch.randn(2000, 4, generator=g, dtype=torch.float64)
        ev = importlib.import_module("models").GraphEvaluator(model.graph, dtype=torch.float64)
        dy, dx = ev(x2) - ev(x), x2 - x
    p = 2 if norm == "2" else float("inf")
    assert float((dy.norm(p=p, dim=1) / dx.norm(p=p, dim=1)).max()) <= res.value
    bad = dict(res.certificate, L=res.value / 10)
    cert.write_text(json.dumps(bad))
    assert not verifier.check(cert, mlp).accepted


def test_check_takes_what_nncert_verify_wrote(mlp, tmp_path) -> None:
    """A verdict certificate from `nncert verify --certificate` is accepted by
    `verifier.check` as by `nncert check`; without its spec the call is bad input."""
    import vnnlib

    model = verifier.load_model(mlp)
    x0 = np.full(4, 0.5)
    lo, hi = verifier.bounds(model, x0 - 0.01, x0 + 0.01, method="crown")
    spec = tmp_path / "p.vnnlib"
    # y_0 below its certified lower bound minus 0.5 is unreachable: unsat.
    vnnlib.write_vnnlib(spec, vnnlib.Spec(4, 3, [vnnlib.Disjunct(vnnlib.InputRegion(x0 - 0.01, x0 + 0.01), (
        vnnlib.OutputConstraints(np.array([[1.0, 0.0, 0.0]]), np.array([float(lo.reshape(-1)[0]) - 0.5]),
                                 np.array([False])),))]))
    cert = tmp_path / "cert.json"
    assert main(["verify", str(mlp), str(spec), "--certificate", str(cert), "--timeout", "30", "-q"]) == 0
    assert verifier.check(cert, mlp, spec).accepted
    with pytest.raises(CheckInputError, match="give the spec"):
        verifier.check(cert, mlp)
    assert main(["check", str(cert), "--model", str(mlp), "--spec", str(spec)]) == 0


def test_certify_sdp_bounds_hold_on_samples(mlp) -> None:
    model = verifier.load_model(mlp)
    lo, hi = np.full(4, 0.4), np.full(4, 0.6)
    C = np.eye(3)
    res = verifier.certify_sdp(model, lo, hi, C)
    g = np.random.default_rng(1)
    xs = lo + (hi - lo) * g.random((3000, 4))
    ys = np.stack([model.run_onnxruntime(x.astype(np.float32)) for x in xs[:300]]).reshape(300, 3)
    assert np.all(np.asarray(res.lower_bounds).reshape(-1) <= ys.min(0) + 1e-5)


def test_bounds_take_the_verifiers_bounds_config(mlp) -> None:
    """`bounds(config=...)` reads the same section a YAML file sets: no config is the
    section's defaults, its `method` is not read (this call's is), and anything but a
    BoundsConfig is refused by name."""
    from verifier.config import BoundsConfig

    model = verifier.load_model(mlp)
    lo, hi = np.full(4, 0.4), np.full(4, 0.6)
    for method in ("ibp", "crown", "alpha-crown"):
        plain = verifier.bounds(model, lo, hi, method=method, device="cpu")
        same = verifier.bounds(model, lo, hi, method=method, device="cpu", config=BoundsConfig(method="sdp"))
        assert all(torch.equal(a, b) for a, b in zip(plain, same)) and plain[0].dtype == torch.float32
    wide = verifier.bounds(model, lo, hi, device="cpu", config=BoundsConfig(dtype="float64", patches=False))
    assert wide[0].dtype == torch.float64
    with pytest.raises(TypeError, match="BoundsConfig"):
        verifier.bounds(model, lo, hi, config={"dtype": "float64"})
    with pytest.raises(ValueError, match="method must be one of"):
        verifier.bounds(model, lo, hi, method="sdp")


def test_bounds_honour_the_configs_optimised_intermediate_bounds(tmp_path) -> None:
    """`bounds.optimise_intermediate` reaches `bounds()`: on (the default, as in verify's
    root bound) alpha-crown optimises the intermediate bounds too, tighter here than
    the plain alpha-CROWN it gives off; both hold at samples; ibp and crown do not read it.
    verify and bounds() take these options from one place (`region_options`): a
    certificate's run turns the optimisation off, and it gets `optimise_share` of the time
    left before the deadline."""
    import time

    from verifier.api import region_options
    from verifier.config import BoundsConfig

    model = verifier.load_model(relu_mlp_onnx(tmp_path / "deep.onnx", 0, (4, 16, 16, 16, 3)))
    lo, hi = np.full(4, 0.2), np.full(4, 0.8)
    off = BoundsConfig(optimise_intermediate=False)
    plain = verifier.bounds(model, lo, hi, "alpha-crown", device="cpu", config=off)
    optimised = verifier.bounds(model, lo, hi, "alpha-crown", device="cpu")
    assert float((optimised[1] - optimised[0]).sum()) < 0.9 * float((plain[1] - plain[0]).sum())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x = torch.tensor(lo) + torch.tensor(hi - lo) * torch.rand(3000, 4, generator=g, dtype=torch.float64)
        ys = importlib.import_module("models").GraphEvaluator(model.graph, dtype=torch.float64)(x).reshape(3000, -1)
    for low, up in (plain, optimised):
        assert bool((low.double() <= ys.min(0).values + 1e-5).all() and (up.double() >= ys.max(0).values - 1e-5).all())
    for method in ("ibp", "crown"):
        assert all(torch.equal(a, b) for a, b in zip(verifier.bounds(model, lo, hi, method, device="cpu"),
                                                     verifier.bounds(model, lo, hi, method, device="cpu", config=off)))
    deadline = time.monotonic() + 100.0
    assert not region_options(BoundsConfig(), "alpha-crown", deadline, optimise=False).optimise_intermediate
    opts = region_options(BoundsConfig(optimise_share=0.5), "alpha-crown", deadline)
    assert opts.optimise_intermediate and opts.deadline == deadline
    assert time.monotonic() + 40.0 < opts.optimise_deadline < deadline - 49.0   # half of the 100 s left
    assert region_options(BoundsConfig(), "crown", None).optimise_deadline is None


def test_bounds_of_a_torch_module_are_those_of_its_onnx_export_and_hold() -> None:
    """`verifier.bounds` takes a torch module and a batch of boxes [B, *input] (no files):
    the same bounds as the exported model's, [B, S] even for B = 1, and every output of the
    module at points of each box inside them."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(12, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.rand(3, 1, 4, 4)
    lo, hi = verifier.bounds(net, x - 0.05, x + 0.05, method="crown", device="cpu")
    assert lo.shape == hi.shape == (3, 2)
    model = verifier.module_model(net, (1, 1, 4, 4))
    for b in range(3):
        ref_lo, ref_hi = verifier.bounds(model, (x[b:b + 1] - 0.05).numpy(), (x[b:b + 1] + 0.05).numpy(), method="crown",
                                         device="cpu")
        torch.testing.assert_close(lo[b], ref_lo)
        torch.testing.assert_close(hi[b], ref_hi)
        points = x[b] + (torch.rand(2000, 1, 4, 4) * 2 - 1) * 0.05
        with torch.no_grad():
            out = net(points)
        assert bool((out >= lo[b] - 1e-6).all() and (out <= hi[b] + 1e-6).all())
    one_lo, _ = verifier.bounds(net, (x[:1] - 0.05).numpy(), (x[:1] + 0.05).numpy(), device="cpu")
    assert one_lo.shape == (1, 2)
    C = np.array([[1.0, -1.0]])
    diff_lo, _ = verifier.bounds(net, x - 0.05, x + 0.05, C=C, method="ibp", device="cpu")
    assert diff_lo.shape == (3, 1)


def test_bounds_refuse_an_unbatched_box_for_a_torch_module_and_other_objects() -> None:
    net = torch.nn.Linear(4, 2)
    with pytest.raises(verifier.ShapeError, match=r"\[B, \*input_shape\]"):
        verifier.bounds(net, np.zeros(4), np.ones(4))
    with pytest.raises(verifier.ShapeError, match="does not accept"):
        verifier.bounds(net, np.zeros((2, 5)), np.ones((2, 5)))
    with pytest.raises(TypeError, match="verifier.Model"):
        verifier.bounds("model.onnx", np.zeros(4), np.ones(4))
