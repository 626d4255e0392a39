"""Global Lipschitz constants of feed-forward networks, with checkable certificates.

Methods (``method=``):

* ``naive``: product of certified layer norms (l2: Cholesky-confirmed spectral
  norms; l-inf: max absolute row sums) times the activation's constant.
* ``sdp-neuron`` / ``sdp-layer``: LipSDP (Fazlyab et al. 2019) with a diagonal /
  scalar multiplier per layer; MaxMin layers use the QCs of ``relaxations.lipschitz.lmi``.
* ``sdp-layerwise``: the block-tridiagonal LMI is split by Schur complements from the
  output end; each layer solves a small SDP (size n_{k-1} + n_k) given the metric its
  successors pass back (ECLipsE-style), so depth costs linearly.

A solver's answer is never reported as is. Its multipliers are projected onto the
valid set, repaired layer by layer until every inner Schur complement is positive
definite with a margin, and rho is then the smallest value that makes the whole LMI
negative definite with a margin in float64; the certificate carries exactly what
``verifier.checker.lipschitz`` needs to confirm that.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from relaxations.lipschitz.lmi import (
    assemble_lmi,
    expand_layer_multiplier,
    fast_layer_multipliers,
    lmi_scale,
    nsd_with_margin,
    output_metric,
    repair_layer,
    repair_sweep,
)
from relaxations.lipschitz.network import FeedForward, network_sha256
from relaxations.lipschitz.norms import naive_bound

__all__ = [
    "LipschitzResult",
    "METHODS",
    "CERT_MARGIN_REL",
    "lipschitz_of_graph",
    "lipschitz_of_network",
    "naive_certificate",
]

METHODS: tuple[str, ...] = ("naive", "sdp-neuron", "sdp-layer", "sdp-layerwise")
# The checker demands -M - 1e-9 * scale * I > 0; certify against twice that.
CERT_MARGIN_REL = 2e-9


@dataclass(frozen=True)
class LipschitzResult:
    """A certified upper bound ``value`` on the Lipschitz constant in ``norm``."""

    value: float
    method: str
    norm: str
    certificate: dict[str, Any]
    time_s: float
    solver_status: str


def _sqrt_up(x: float) -> float:
    return float(np.nextafter(math.sqrt(max(x, 0.0)), np.inf))


def naive_certificate(net: FeedForward, norm: str) -> tuple[float, dict[str, Any]]:
    nb = naive_bound(net, norm)
    cert = {
        "kind": "lipschitz-naive",
        "version": 1,
        "norm": norm,
        "L": nb.value,
        "layer_norms": list(nb.layer_norms),
        "activation": net.activation,
        "negative_slope": net.negative_slope,
        "network_sha256": network_sha256(net.weights),
    }
    return nb.value, cert


def _fast_multipliers(net: FeedForward, output_rows: Sequence[int] | None) -> list[np.ndarray]:
    """Closed-form per-layer multipliers (always feasible): the fallback point."""
    ws = net.weights
    g = output_metric(ws[-1].shape[0], output_rows)
    out: list[np.ndarray] = [np.empty(0)] * (len(ws) - 1)
    for k in range(len(ws) - 1, 0, -1):
        h = ws[k].T @ g @ ws[k]
        m = fast_layer_multipliers(net.activation, net.negative_slope, h)
        out[k - 1], g = repair_layer(net.activation, net.negative_slope, m, h)
    return out


def _certify(
    net: FeedForward,
    multipliers: Sequence[np.ndarray],
    tau_guess: np.ndarray,
    output_rows: Sequence[int] | None,
    vector_input: bool,
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Turn (possibly infeasible) multipliers into ones that pass the checker.

    Returns (multipliers, tau) with ``assemble_lmi(...)`` negative definite with
    margin ``CERT_MARGIN_REL``; rho = tau[0] (l2) or sum(tau) (l-inf)."""
    n0 = net.weights[0].shape[1]
    tau = np.maximum(np.asarray(tau_guess, dtype=np.float64), 0.0)
    if tau.size != n0 or not np.all(np.isfinite(tau)):
        tau = np.ones(n0)
    rel = 2.0 * CERT_MARGIN_REL
    for _ in range(12):
        scale = lmi_scale(assemble_lmi(net, list(multipliers), tau, output_rows))
        delta = rel * max(scale, 1e-300)
        mults, k_in = repair_sweep(net, multipliers, output_rows, delta)
        if vector_input:
            low = float(np.linalg.eigvalsh(np.diag(tau) - k_in)[0])
            need = 2.0 * delta - low
            if need > 0:
                tau = tau + need
        else:
            rho = (float(np.linalg.eigvalsh(k_in)[-1]) + 2.0 * delta) * (1.0 + 1e-12)
            tau = np.full(n0, max(rho, 1e-300))
        m = assemble_lmi(net, list(mults), tau, output_rows)
        ok, _ = nsd_with_margin(m, CERT_MARGIN_REL)
        if ok:
            return mults, tau
        rel *= 4.0  # scale changed with tau (or rounding bit): retry with more room
    raise RuntimeError("could not certify the LMI in float64")  # not expected in practice


def _layerwise_multipliers(
    net: FeedForward, output_rows: Sequence[int] | None, solver: str | None, scs_eps: float | None = None
) -> tuple[list[np.ndarray], str]:
    from verifier.solvers.cvxpy_lipsdp import solve_layer_step

    ws = net.weights
    g = output_metric(ws[-1].shape[0], output_rows)
    out: list[np.ndarray] = [np.empty(0)] * (len(ws) - 1)
    statuses: set[str] = set()
    for k in range(len(ws) - 1, 0, -1):
        h = ws[k].T @ g @ ws[k]
        h = 0.5 * (h + h.T)
        hmax = float(np.linalg.eigvalsh(h)[-1])
        if hmax <= 0.0:
            hmax = 1.0
        w_in = ws[k - 1]
        if k == 1 and w_in.shape[1] > w_in.shape[0] and output_rows is None:
            w_in = w_in @ np.linalg.qr(w_in.T)[0]  # same lambda_max, smaller SDP
        m, status = solve_layer_step(net, w_in, h / hmax, solver=solver, scs_eps=scs_eps)
        statuses.add(status)
        fast = fast_layer_multipliers(net.activation, net.negative_slope, h / hmax)
        best = repair_layer(net.activation, net.negative_slope, fast * hmax, h)
        if m is None:
            statuses.add("fallback-fast")
        else:
            # Keep the solver's step only if it passes back a smaller metric than the
            # closed form: an inaccurate solve, once repaired, can be far worse.
            cand = repair_layer(net.activation, net.negative_slope, m * hmax, h)
            if _pulled_back_max(ws[k - 1], cand[1]) <= _pulled_back_max(ws[k - 1], best[1]):
                best = cand
            else:
                statuses.add("fast-step-kept")
        out[k - 1], g = best
    return out, ",".join(sorted(statuses))


def _pulled_back_max(w: np.ndarray, g: np.ndarray) -> float:
    """lambda_max(W^T G W): what the previous layer (or rho) inherits from this one."""
    k = w.T @ g @ w
    return float(np.linalg.eigvalsh(0.5 * (k + k.T))[-1])


def _sdp_bound(
    net: FeedForward, norm: str, method: str, solver: str | None, scs_eps: float | None = None
) -> tuple[float, dict[str, Any], str]:
    rows_list: list[list[int] | None]
    if norm == "2":
        rows_list = [None]
    else:
        rows_list = [[j] for j in range(net.weights[-1].shape[0])]
    vector_input = norm == "inf"
    blocks, statuses = [], []
    for rows in rows_list:
        if method == "sdp-layerwise":
            mults, status = _layerwise_multipliers(net, rows, solver, scs_eps)
            tau0 = np.zeros(net.weights[0].shape[1])
            if vector_input:  # Gershgorin: diag(tau) >= K needs no solver
                from relaxations.lipschitz.lmi import schur_sweep

                sw = schur_sweep(net, mults, rows)
                tau0 = np.sum(np.abs(sw.k_input), axis=1) if sw.k_input is not None else tau0
        else:
            from verifier.solvers.cvxpy_lipsdp import solve_lipsdp

            variant = "neuron" if method == "sdp-neuron" else "layer"
            sol = solve_lipsdp(net, variant, rows, vector_input, solver)
            status = f"{sol.solver}:{sol.status}"
            if sol.multipliers:
                mults = list(sol.multipliers)
                if variant == "layer":  # keep the shared value exactly shared
                    mults = [
                        expand_layer_multiplier(net.activation, w.shape[0], float(np.mean(m[..., 0])))
                        if net.activation != "maxmin"
                        else np.tile(np.mean(m, axis=0), (m.shape[0], 1))
                        for m, w in zip(mults, net.weights[:-1])
                    ]
                tau0 = sol.input_weights
            else:
                mults, tau0 = _fast_multipliers(net, rows), np.zeros(net.weights[0].shape[1])
                status += ",fallback-fast"
        try:
            mults_c, tau = _certify(net, mults, tau0, rows, vector_input)
            rho = _rho_of(tau, vector_input)
        except (np.linalg.LinAlgError, RuntimeError, FloatingPointError):
            if method != "sdp-layerwise":
                raise
            mults_c, tau, rho = list(mults), tau0, math.inf  # the closed form below replaces it
            status += ",solver-multipliers-not-certifiable"
        if not math.isfinite(rho):
            if method != "sdp-layerwise":
                raise RuntimeError("the certified rho is not finite")
            rho = math.inf
        if method == "sdp-layerwise":
            # Deep contractive networks: the solver's multipliers at the input end can sit
            # below the checker's margin (relative to the LMI's largest entry) and then
            # certify far worse than the closed form. Both are checked; keep the smaller.
            fast = _fast_multipliers(net, rows)
            f_tau0 = np.zeros(net.weights[0].shape[1])
            if vector_input:
                from relaxations.lipschitz.lmi import schur_sweep

                sw = schur_sweep(net, fast, rows)
                f_tau0 = np.sum(np.abs(sw.k_input), axis=1) if sw.k_input is not None else f_tau0
            f_mults, f_tau = _certify(net, fast, f_tau0, rows, vector_input)
            if _rho_of(f_tau, vector_input) < rho:
                mults_c, tau, rho = f_mults, f_tau, _rho_of(f_tau, vector_input)
                status += ",fast-certified-smaller"
        blocks.append({"rows": rows, "rho": rho, "tau": tau, "multipliers": mults_c})
        statuses.append(status)
    rho_max = max(b["rho"] for b in blocks)
    value = _sqrt_up(rho_max)
    cert: dict[str, Any] = {
        "kind": "lipschitz-sdp",
        "version": 1,
        "norm": norm,
        "method": method,
        "L": value,
        "rho": rho_max,
        "activation": net.activation,
        "negative_slope": net.negative_slope,
        "network_sha256": network_sha256(net.weights),
    }
    if norm == "2":
        cert["multipliers"] = [m.tolist() for m in blocks[0]["multipliers"]]
    else:
        cert["per_output"] = [
            {
                "row": b["rows"][0],
                "rho": b["rho"],
                "input_weights": b["tau"].tolist(),
                "multipliers": [m.tolist() for m in b["multipliers"]],
            }
            for b in blocks
        ]
    return value, cert, ";".join(sorted(set(statuses)))


def _rho_of(tau: np.ndarray, vector_input: bool) -> float:
    return float(tau[0]) if not vector_input else float(np.nextafter(math.fsum(tau) * (1 + 1e-15), np.inf))


def lipschitz_of_network(
    net: FeedForward, norm: str = "2", method: str = "naive", solver: str | None = None,
    scs_eps: float | None = None,
) -> LipschitzResult:
    """Certified global Lipschitz bound of ``net`` from ``norm`` to the same norm.

    ``norm``: "2" or "inf". ``method``: one of ``METHODS``. ``solver``: a cvxpy
    solver name (default: Clarabel for small LMIs, SCS otherwise). ``scs_eps``: SCS
    tolerance of the sdp-layerwise steps (default 1e-6; looser is faster and still
    certified, only less tight). A network with no
    hidden layer is linear; every method then returns the (certified) naive bound."""
    if norm not in ("2", "inf"):
        raise ValueError(f"norm must be '2' or 'inf', got {norm!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    t0 = time.perf_counter()
    if method == "naive" or net.depth == 1:
        value, cert = naive_certificate(net, norm)
        return LipschitzResult(value, "naive", norm, cert, time.perf_counter() - t0, "closed-form")
    value, cert, status = _sdp_bound(net, norm, method, solver, scs_eps)
    return LipschitzResult(value, method, norm, cert, time.perf_counter() - t0, status)


def lipschitz_of_graph(graph: Any, norm: str = "2", method: str = "naive", solver: str | None = None) -> LipschitzResult:
    """Certified global Lipschitz bound of a loaded `models.Graph` (flattened input/output).

    A ReLU MLP goes through `lipschitz_of_network` (every method; its certificates are
    checked by ``verifier.checker.lipschitz``). Any other supported graph (CNNs,
    residual blocks, BatchNorm, pooling, other activations) gets the naive bound of
    `relaxations.lipschitz.graph_naive`, whose certificate records the factor of each
    step; the sdp-* methods refuse it with `UnsupportedModel`, naming the first node
    that is not part of a ReLU MLP."""
    from models import UnsupportedModel
    from relaxations.lipschitz.graph_naive import graph_naive_bound
    from relaxations.sdp.network import NotReluMlp, relu_mlp_from_graph

    if norm not in ("2", "inf"):
        raise ValueError(f"norm must be '2' or 'inf', got {norm!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    try:
        weights, biases = relu_mlp_from_graph(graph)
    except NotReluMlp as exc:
        if method != "naive":
            raise UnsupportedModel(f"method {method} needs a ReLU MLP (Gemm/MatMul/Add/Relu/Flatten): {exc}; "
                                   "use --method naive for other graphs") from None
    else:
        return lipschitz_of_network(FeedForward(tuple(weights), tuple(biases), "relu"), norm, method, solver)
    t0 = time.perf_counter()
    nb = graph_naive_bound(graph, norm)
    cert = {
        "kind": "lipschitz-naive-graph",
        "version": 1,
        "norm": norm,
        "L": nb.value,
        "model_sha256": getattr(graph, "sha256", None),
        "steps": list(nb.steps),
    }
    return LipschitzResult(nb.value, "naive", norm, cert, time.perf_counter() - t0, "closed-form (graph walk)")
