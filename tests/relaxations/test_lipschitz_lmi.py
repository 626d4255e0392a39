"""LipSDP problem data: certified norms, the LMI's algebra, the MaxMin QC."""

from __future__ import annotations


import numpy as np
import pytest

from tests.conftest import SHARED as _SHARED

from relaxations.lipschitz import (
    FeedForward,
    assemble_lmi,
    certified_spectral_norm,
    fast_layer_multipliers,
    is_spectral_upper_bound,
    load_lipsdp_mat,
    load_maxmin_mat,
    maxmin_pair_form,
    naive_bound,
    nsd_with_margin,
    qc_blocks,
    repair_sweep,
    schur_sweep,
)

SHARED = _SHARED / "models"


def _net(act: str, widths=(3, 6, 4, 2), seed: int = 0) -> FeedForward:
    rng = np.random.default_rng(seed)
    ws = tuple(rng.standard_normal((widths[k + 1], widths[k])) for k in range(len(widths) - 1))
    bs = tuple(rng.standard_normal(widths[k + 1]) for k in range(len(widths) - 1))
    return FeedForward(ws, bs, act)


@pytest.mark.parametrize("shape", [(5, 7), (40, 3), (50, 784)])
def test_certified_spectral_norm_is_tight_upper_bound(shape):
    w = np.random.default_rng(1).standard_normal(shape)
    exact = np.linalg.norm(w, 2)
    s = certified_spectral_norm(w)
    assert exact <= s <= exact * (1 + 1e-6)
    assert not is_spectral_upper_bound(w, exact * (1 - 1e-6))


def test_naive_inf_is_product_of_row_sums():
    net = _net("relu")
    expected = np.prod([np.abs(w).sum(axis=1).max() for w in net.weights])
    assert naive_bound(net, "inf").value == pytest.approx(expected, rel=1e-12)
    assert naive_bound(net, "inf").value >= expected


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "leaky_relu", "maxmin"])
def test_lmi_quadratic_form_equals_s_procedure_identity(act):
    """x^T M x == |dy|^2 - rho |dx|^2 + sum of the QC terms, on real increments."""
    net = _net(act)
    rng = np.random.default_rng(2)
    mults = []
    for w in net.weights[:-1]:
        n = w.shape[0]
        mults.append(rng.random((n // 2, 5)) if act == "maxmin" else rng.random(n))
    rho = 3.7
    m = assemble_lmi(net, mults, np.full(3, rho)).dense()
    x1, x2 = rng.standard_normal((2, 3))
    zs1, zs2, vs1, vs2 = [x1], [x2], [], []
    for w, b in zip(net.weights[:-1], net.biases[:-1]):
        vs1.append(w @ zs1[-1] + b)
        vs2.append(w @ zs2[-1] + b)
        zs1.append(net.activate(vs1[-1]))
        zs2.append(net.activate(vs2[-1]))
    xi = np.concatenate([z1 - z2 for z1, z2 in zip(zs1, zs2)])
    dy = net.forward(x1) - net.forward(x2)
    qc = 0.0
    for k, mult in enumerate(mults):
        q_vv, q_vz, q_zz = qc_blocks(act, net.negative_slope, mult)
        dv, dz = vs1[k] - vs2[k], zs1[k + 1] - zs2[k + 1]
        term = dv @ q_vv @ dv + 2 * dv @ q_vz @ dz + dz @ q_zz @ dz
        assert term >= -1e-9  # the QC holds on real increments
        qc += term
    expected = dy @ dy - rho * (x1 - x2) @ (x1 - x2) + qc
    assert xi @ m @ xi == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_maxmin_pair_qc_is_valid_on_samples():
    rng = np.random.default_rng(3)
    u, up = rng.standard_normal((2, 5000, 2)) * rng.choice([0.01, 1.0, 100.0], size=(1, 5000, 1))
    z = np.stack([u.max(-1), u.min(-1)], -1)
    zp = np.stack([up.max(-1), up.min(-1)], -1)
    x = np.concatenate([u - up, z - zp], -1)
    for _ in range(5):
        p = maxmin_pair_form(rng.random(), rng.standard_normal(4))
        vals = np.einsum("ij,jk,ik->i", x, p, x)
        assert vals.min() >= -1e-9 * np.abs(x).max() ** 2


def test_fast_multipliers_certify_one_for_orthogonal_maxmin_layer():
    rng = np.random.default_rng(4)
    q1, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    q2, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    net = FeedForward((q1, q2), (), "maxmin")
    m = fast_layer_multipliers("maxmin", 0.0, q2.T @ q2)
    k_in = schur_sweep(net, [m]).k_input
    assert np.linalg.eigvalsh(k_in)[-1] == pytest.approx(1.0, abs=1e-5)


def test_repair_makes_infeasible_multipliers_certifiable():
    net = _net("relu")
    zeros = [np.zeros(w.shape[0]) for w in net.weights[:-1]]
    assert schur_sweep(net, zeros).k_input is None
    mults, k_in = repair_sweep(net, zeros, delta=1e-3)
    assert all(np.all(m >= 0) for m in mults)
    rho = np.linalg.eigvalsh(k_in)[-1] + 2e-3
    m = assemble_lmi(net, list(mults), np.full(3, rho))
    assert np.linalg.eigvalsh(m.dense())[-1] <= -0.9e-3
    assert nsd_with_margin(m, 0.0)[0]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/models (published weights) is not beside the checkout")
def test_loaders_read_shared_models():
    net = load_lipsdp_mat(SHARED / "lipsdp" / "random_weights.mat")
    assert net.widths == (2, 10, 30, 20, 2)
    mm = load_maxmin_mat(SHARED / "qcs_maxmin" / "weights_2_16.mat")
    assert mm.activation == "maxmin" and mm.widths == (784, 16, 10)
    with pytest.raises(ValueError, match="residual"):
        load_maxmin_mat(SHARED / "qcs_maxmin" / "resweights_5_32.mat")


def test_network_validation_errors():
    with pytest.raises(ValueError, match="even"):
        FeedForward((np.ones((3, 2)), np.ones((1, 3))), (), "maxmin")
    with pytest.raises(ValueError, match="expects"):
        FeedForward((np.ones((3, 2)), np.ones((1, 4))), (), "relu")
    with pytest.raises(ValueError, match="unknown activation"):
        FeedForward((np.ones((3, 2)),), (), "gelu")
