"""Local Lipschitz bounds with branch and bound, their certificates, and the CLI.

Done-when items of issue 7 covered here: every local bound is at least the largest
gradient norm found by sampling and by gradient ascent (random and trained networks),
at most the global naive bound; BaB never loosens; the certificate is accepted by the
float64 checker and rejected after tampering; bad CLI input exits 2."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from relaxations.lipschitz.network import FeedForward
from tests.builders import empirical_max_grad_norm, random_feedforward
from tests.conftest import BENCH
from tests.op_cases import make_model
from verifier.checker.lipschitz_local import check_local_lipschitz_certificate as check, mlp_from_onnx
from verifier.lipschitz import naive_certificate
from verifier.lipschitz_local import CLAIM_REL, LocalSearch, local_lipschitz

ROOT = Path(__file__).resolve().parents[2]
MNIST = BENCH / "2022_mnist_fc/onnx/mnist-net_256x2.onnx"


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "tanh"])
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_bab_is_sound_never_looser_and_below_naive(act: str, norm: str) -> None:
    net = random_feedforward(11, act, (4, 16, 16, 3))
    x0 = np.random.default_rng(5).standard_normal(4)
    naive = naive_certificate(net, norm)[0]
    for r in (0.1, 0.5):
        res = local_lipschitz(net, x0, r, norm, search=LocalSearch(max_domains=40, timeout=30))
        for j in range(3):
            assert res.per_row[j] <= res.root[j] * (1 + CLAIM_REL) * (1 + 1e-12) + 1e-300
            assert res.per_row[j] <= res.naive_rows[j] <= naive * (1 + 1e-9)
            emp = empirical_max_grad_norm(net, x0, r, np.eye(3)[j], norm)
            assert emp <= res.per_row[j], (act, norm, r, j, emp, res.per_row[j])
        assert res.value == max(res.per_row)


def test_bab_reaches_the_exact_value_when_it_exhausts_the_splits() -> None:
    net = random_feedforward(1, "relu", (4, 16, 16, 16, 3))
    x0 = np.random.default_rng(1).standard_normal(4)
    res = local_lipschitz(net, x0, 0.1, "inf", search=LocalSearch(max_domains=400, timeout=60))
    assert res.exhausted
    emp = max(empirical_max_grad_norm(net, x0, 0.1, np.eye(3)[j], "inf") for j in range(3))
    assert emp <= res.value <= emp * 1.2  # leaves with d fixed: only the d-x correlation is lost


def _mnist_net() -> FeedForward:
    from models import load_onnx
    from relaxations.sdp.network import relu_mlp_from_graph

    w, b = relu_mlp_from_graph(load_onnx(MNIST))
    return FeedForward(tuple(w), tuple(b), "relu")


@pytest.mark.skipif(not MNIST.exists(), reason="shared_mnist_fc_model_missing")
def test_trained_mnist_net_local_bound_is_sound_and_below_global() -> None:
    net = _mnist_net()
    x0 = np.random.default_rng(0).uniform(0.1, 0.9, 784)
    for norm in ("inf", "2"):
        res = local_lipschitz(net, x0, 0.002, norm, search=LocalSearch(max_domains=5, timeout=60))
        assert res.value <= naive_certificate(net, norm)[0]
        for j in (0, 3, 7):
            emp = empirical_max_grad_norm(net, x0, 0.002, np.eye(10)[j], norm)
            assert emp <= res.per_row[j]
        ok, why = check(res.certificate, net.weights, net.biases)
        assert ok, why


@pytest.fixture(scope="module")
def certified():
    net = random_feedforward(2, "relu", (4, 16, 16, 3))
    x0 = np.random.default_rng(2).standard_normal(4)
    res = local_lipschitz(net, x0, 0.3, "inf", search=LocalSearch(max_domains=30))
    assert res.leaves > 2
    return net, x0, res


def test_certificate_is_accepted(certified) -> None:
    net, _, res = certified
    ok, why = check(res.certificate, net.weights, net.biases)
    assert ok, why
    ok, why = check(json.loads(json.dumps(res.certificate)), net.weights, net.biases)
    assert ok, why
    for norm in ("2",):
        r2 = local_lipschitz(net, certified[1], 0.3, norm, search=LocalSearch(max_domains=20))
        assert check(r2.certificate, net.weights, net.biases)[0]
    leaky = FeedForward(net.weights, net.biases, "leaky_relu", 0.05)
    r3 = local_lipschitz(leaky, certified[1], 0.3, "inf", search=LocalSearch(max_domains=20))
    assert check(r3.certificate, leaky.weights, leaky.biases)[0]


def _tampered(cert: dict) -> list[tuple[str, dict]]:
    out = []
    c = copy.deepcopy(cert)
    c["per_row"] = [v * 0.98 for v in c["per_row"]]
    c["L"] = max(c["per_row"])
    out.append(("lowered claim", c))
    c = copy.deepcopy(cert)
    c["L"] = c["L"] * 1.5
    out.append(("L raised alone (inconsistent with per_row)", c))
    c = copy.deepcopy(cert)
    c["radius"] = cert["radius"] * 3
    out.append(("larger box", c))
    c = copy.deepcopy(cert)
    c["leaves"] = cert["leaves"][1:]
    out.append(("dropped leaf", c))
    c = copy.deepcopy(cert)
    c["leaves"][0] = c["leaves"][0][:-1]
    out.append(("merged leaf", c))
    c = copy.deepcopy(cert)
    c["layer_norms"] = [v * 0.5 for v in cert["layer_norms"]]
    out.append(("shrunk layer norms", c))
    c = copy.deepcopy(cert)
    c["rows"] = [[2 * v for v in row] for row in cert["rows"]]
    out.append(("scaled rows", c))
    c = copy.deepcopy(cert)
    c["activation"] = "sigmoid"
    out.append(("activation", c))
    c = copy.deepcopy(cert)
    del c["leaves"]
    out.append(("missing field", c))
    return out


def test_tampering_is_rejected(certified) -> None:
    net, _, res = certified
    for what, cert in _tampered(res.certificate):
        ok, why = check(cert, net.weights, net.biases)
        assert not ok, what
    # a moved box where sampling shows the claim is false (elsewhere it may still hold)
    rng = np.random.default_rng(3)
    for _ in range(20):
        x1 = np.array(res.certificate["center"]) + rng.uniform(-2, 2, 4)
        emp = [empirical_max_grad_norm(net, x1, res.radius, np.eye(3)[j], "inf") for j in range(3)]
        if any(e > p for e, p in zip(emp, res.per_row)):
            break
    else:
        pytest.fail("no moved box found where the claim is false")
    c = copy.deepcopy(res.certificate)
    c["center"] = x1.tolist()
    assert not check(c, net.weights, net.biases)[0]
    w = [np.array(x) for x in net.weights]
    w[1] = w[1] * 1.01
    assert not check(res.certificate, w, net.biases)[0]
    b = [np.array(x) for x in net.biases]
    b[0] = b[0] + 0.1
    assert not check(res.certificate, net.weights, b)[0]


def test_bad_inputs_raise_value_error() -> None:
    net = random_feedforward(0, "relu")
    with pytest.raises(ValueError, match="inputs"):
        local_lipschitz(net, np.zeros(5), 0.1)
    with pytest.raises(ValueError, match="radius"):
        local_lipschitz(net, np.zeros(4), -0.1)
    with pytest.raises(ValueError, match="norm"):
        local_lipschitz(net, np.zeros(4), 0.1, norm="1")
    for bad, word in [(dict(max_domains=2.5), "max_domains"), (dict(timeout=-1.0), "timeout"),
                      (dict(timeout=float("nan")), "timeout"), (dict(batch=0), "batch"), (dict(linear="no"), "linear")]:
        with pytest.raises(ValueError, match=word):
            LocalSearch(**bad)
    with pytest.raises(TypeError, match="LocalSearch"):
        local_lipschitz(net, np.zeros(4), 0.1, search={"max_domains": 5})
    assert local_lipschitz(net, np.zeros(4), 0.1, search=LocalSearch(max_domains=0, timeout=0)).domains == 1


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "verifier.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def _cli_in_process(capsys, *args: str) -> tuple[int, str]:
    """`nncert ARGS` run by `main` in this process (no interpreter start-up): exit code and stderr."""
    from verifier.cli import main

    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:   # argparse's own errors
        code = exc.code
    return code, capsys.readouterr().err


def _mlp_file(tmp_path: Path, seed: int, act: str = "Relu") -> tuple[Path, np.ndarray, np.ndarray]:
    """A 3-6-2 MLP with `act` written to an ONNX file, and its two weight matrices."""
    r = np.random.default_rng(seed)
    W1, W2 = r.normal(size=(3, 6)).astype(np.float32), r.normal(size=(6, 2)).astype(np.float32)
    model = make_model([helper.make_node("Gemm", ["X", "W1"], ["h"]), helper.make_node(act, ["h"], ["r"]),
                        helper.make_node("Gemm", ["r", "W2"], ["Y"])], {"W1": W1, "W2": W2}, (1, 3), (1, 2))
    path = tmp_path / f"mlp_{act}.onnx"
    path.write_bytes(model.SerializeToString())
    return path, W1, W2


def test_cli_local_method_and_bad_input(tmp_path, capsys) -> None:
    path, _, _ = _mlp_file(tmp_path, 0)
    center = tmp_path / "x.npy"
    np.save(center, np.array([[0.1, -0.2, 0.3]], np.float32))
    rep, crt = tmp_path / "r.json", tmp_path / "c.json"
    proc = _cli("lipschitz", str(path), "--method", "local", "--center", str(center), "--radius", "0.05",
                "--norm", "inf", "--report", str(rep), "--certificate", str(crt))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(rep.read_text())
    assert report["value"] <= max(report["naive_rows"])
    ws, bs = mlp_from_onnx(path.read_bytes())
    ok, why = check(json.loads(crt.read_text()), ws, bs)
    assert ok, why
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros(4))
    for args, needle in [((), "--center"), (("--center", str(bad), "--radius", "0.1"), "inputs"),
                         (("--center", str(center), "--radius", "-1"), "radius"),
                         (("--center", str(center)), "--radius"),
                         (("--center", str(tmp_path / "none.npy"), "--radius", "0.1"), "none.npy")]:
        # the run above is the CLI as a process; the refusals are the same code in this one
        code, err = _cli_in_process(capsys, "lipschitz", str(path), "--method", "local", *args)
        err = err.strip()
        assert code == 2, (args, code, err)
        assert "Traceback" not in err and len(err.splitlines()) == 1 and needle in err, err


def test_the_face_takes_a_loaded_model_and_refuses_what_is_no_relu_mlp(tmp_path) -> None:
    """`verifier.local_lipschitz` on a loaded ONNX model gives the FeedForward path's bound
    and a certificate the checker accepts; a model that is not a ReLU MLP is refused."""
    import verifier
    from models import UnsupportedModel

    path, W1, W2 = _mlp_file(tmp_path, 4)
    x0 = np.array([0.1, -0.2, 0.3])
    res = verifier.local_lipschitz(verifier.load_model(str(path)), x0, 0.05, norm="2")
    net = FeedForward((W1.T.astype(np.float64), W2.T.astype(np.float64)), (np.zeros(6), np.zeros(2)), "relu")
    assert res.value == local_lipschitz(net, x0, 0.05, norm="2").value
    ws, bs = mlp_from_onnx(path.read_bytes())
    ok, why = check(res.certificate, ws, bs)
    assert ok, why
    tanh, _, _ = _mlp_file(tmp_path, 4, "Tanh")
    with pytest.raises(UnsupportedModel, match="ReLU MLP"):
        verifier.local_lipschitz(verifier.load_model(str(tanh)), x0, 0.05)
