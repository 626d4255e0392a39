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

Every sdp-* run first certifies the closed-form multipliers (ECLipsE-Fast style, no
solver), then lets the solver try to beat them: a solver that fails, diverges, stops
at its time limit or returns multipliers that do not certify only costs tightness,
and ``solver_status`` says which multipliers the bound rests on. The LMI is solved
for a balanced network (``balance``: block scales that are powers of two), because on
networks with large layer norms (ACAS Xu) the raw LMI spans 15 orders of magnitude and
solvers overflow; the certificate maps the answer back exactly and names the scales.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from models import UnsupportedModel
from relaxations.lipschitz.graph_naive import graph_naive_bound
from relaxations.lipschitz.lmi import (
    assemble_lmi,
    expand_layer_multiplier,
    fast_layer_multipliers,
    lmi_scale,
    nsd_with_margin,
    output_metric,
    repair_layer,
    repair_sweep,
    schur_sweep,
)
from relaxations.lipschitz.network import FeedForward, network_sha256
from relaxations.lipschitz.norms import naive_bound
from relaxations.sdp.network import NotReluMlp, relu_mlp_from_graph
from verifier.solvers.cvxpy_lipsdp import solve_layer_step, solve_lipsdp
from verifier.solvers.killable import SolverKilled, call_with_time_limit

__all__ = [
    "lipschitz",
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


def _remaining(deadline: float | None) -> float:
    return math.inf if deadline is None else deadline - time.monotonic()


def _solver_budget(deadline: float | None, steps_left: int) -> float | None:
    """Seconds a solver call may take for the next of ``steps_left`` steps: an equal
    share of what is left, less room to certify its answer (None: no limit). The solver
    itself is asked to stop at ``SOLVER_SHARE`` of it (SCS overshoots its limit by up to
    a second or two); its process is killed at the budget."""
    if deadline is None:
        return None
    share = _remaining(deadline) / max(steps_left, 1)
    return share - min(0.1 * share, 1.5) - 0.25


SOLVER_SHARE = 0.9


def _layerwise_multipliers(
    net: FeedForward, output_rows: Sequence[int] | None, solver: str | None, scs_eps: float | None = None,
    deadline: float | None = None,
) -> tuple[list[np.ndarray], str]:
    """One small SDP per layer from the output end; a layer with no time left (or whose
    solve fails) takes the closed-form multipliers, which are always certifiable."""
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
        fast = fast_layer_multipliers(net.activation, net.negative_slope, h / hmax)
        best = repair_layer(net.activation, net.negative_slope, fast * hmax, h)
        budget = _solver_budget(deadline, k)
        m = None
        if budget is not None and budget < 0.5:
            statuses.add("deadline:closed-form-layers")
        else:
            try:
                m, status = call_with_time_limit(
                    solve_layer_step, (net, w_in, h / hmax),
                    {"solver": solver, "scs_eps": scs_eps,
                     "time_limit_s": None if budget is None else SOLVER_SHARE * budget}, seconds=budget)
                statuses.add(status)
            except SolverKilled:
                statuses.add("killed-at-time-limit")
            except (ValueError, ArithmeticError, RuntimeError, np.linalg.LinAlgError) as exc:
                statuses.add(f"solver-failed:{type(exc).__name__}")
            if m is None or not np.all(np.isfinite(m)):
                m = None
                statuses.add("fallback-fast")
        if m is not None:
            # Keep the solver's step only if it passes back a smaller metric than the
            # closed form: an inaccurate solve, once repaired, can be far worse.
            try:
                with np.errstate(all="ignore"):
                    cand = repair_layer(net.activation, net.negative_slope, m * hmax, h)
                if _pulled_back_max(ws[k - 1], cand[1]) <= _pulled_back_max(ws[k - 1], best[1]):
                    best = cand
                else:
                    statuses.add("fast-step-kept")
            except (ArithmeticError, np.linalg.LinAlgError, ValueError):
                statuses.add("fast-step-kept")
        out[k - 1], g = best
    return out, ",".join(sorted(statuses))


def _pulled_back_max(w: np.ndarray, g: np.ndarray) -> float:
    """lambda_max(W^T G W): what the previous layer (or rho) inherits from this one."""
    k = w.T @ g @ w
    return float(np.linalg.eigvalsh(0.5 * (k + k.T))[-1])


def _pow2(x: float) -> float:
    """The power of two nearest to x (1 for 0 or non-finite x): scaling by it is exact."""
    if not (math.isfinite(x) and x > 0):
        return 1.0
    return math.ldexp(1.0, int(round(math.log2(x))))


def _scaled(net: FeedForward, d: Sequence[float]) -> FeedForward:
    """The network whose LMI is ``D M D`` (D = blockdiag(d_k I), see ``balance``):
    ``W'_k = W_k d_k / d_{k+1}`` with ``d_{l+1} = 1``. Powers of two: exact."""
    dd = list(d) + [1.0]
    ws = tuple(w * (dd[k] / dd[k + 1]) for k, w in enumerate(net.weights))
    return FeedForward(ws, tuple(net.biases), net.activation, net.negative_slope)


def balance(net: FeedForward) -> tuple[FeedForward, list[float]]:
    """Block scales d (powers of two) that make every block of the LMI O(1), and the
    network whose LMI is ``D M D``.

    Why: block k of the LMI scales like the squared Lipschitz constant of the layers
    after it; on ACAS Xu (layer norms 1 to 30, product ~3e7) the blocks span 1e15, the
    solvers return overflowing multipliers and a margin relative to the largest block
    swamps the smallest. Multipliers ``T'`` and input weights ``tau'`` of ``D M D``
    give those of M as ``T_k = T'_k / d_k^2`` and ``tau = tau' / d_0^2``: a congruence
    (which keeps negative definiteness) with power-of-two factors (which add no
    rounding). The checker verifies ``D M D`` from the original weights.

    Two passes: scales from the layer norms (``d_k = prod_{j<k} c_j / prod_j c_j``),
    then from the closed-form multipliers of that network, so that they and rho are
    about 1 (what SCS's absolute tolerance assumes)."""
    cs = [_pow2(float(np.linalg.norm(w, 2))) if w.size else 1.0 for w in net.weights]
    d = [1.0 / math.prod(cs)]
    for c in cs[:-1]:
        d.append(d[-1] * c)
    first = _scaled(net, d)
    try:
        with np.errstate(all="ignore"):
            mults, tau = _fast_block(first, None, False)
        size = [float(tau[0])] + [float(np.max(np.abs(m))) for m in mults]
        if all(math.isfinite(v) and v > 0 for v in size):
            d = [dk / math.sqrt(_pow2(v)) if _pow2(v) >= 1 else dk * math.sqrt(1.0 / _pow2(v))
                 for dk, v in zip(d, size)]
            d = [_pow2(x) for x in d]
    except (np.linalg.LinAlgError, RuntimeError, ArithmeticError, ValueError):
        pass  # keep the norm scales
    if not all(2.0 ** -250 <= x <= 2.0 ** 250 for x in d):
        d = [1.0] * len(d)  # d_k^2 could leave float64's normal range: exactness would be lost
    return _scaled(net, d), d


def _fast_block(net: FeedForward, rows: Sequence[int] | None, vector_input: bool
                ) -> tuple[list[np.ndarray], np.ndarray]:
    """Closed-form multipliers, certified: the bound every sdp-* method starts from."""
    fast = _fast_multipliers(net, rows)
    tau0 = np.zeros(net.weights[0].shape[1])
    if vector_input:  # Gershgorin: diag(tau) >= K needs no solver
        sw = schur_sweep(net, fast, rows)
        tau0 = np.sum(np.abs(sw.k_input), axis=1) if sw.k_input is not None else tau0
    mults, tau = _certify(net, fast, tau0, rows, vector_input)
    return list(mults), tau


def _solver_block(net: FeedForward, method: str, rows: Sequence[int] | None, vector_input: bool,
                  solver: str | None, scs_eps: float | None, budget: float | None
                  ) -> tuple[list[np.ndarray] | None, np.ndarray | None, str]:
    """The solver's multipliers for one LMI, certified; (None, None, status) when the
    solver failed, stopped without usable multipliers, or they do not certify."""
    if method == "sdp-layerwise":
        row_deadline = None if budget is None else time.monotonic() + budget
        mults, status = _layerwise_multipliers(net, rows, solver, scs_eps, row_deadline)
        tau0 = np.zeros(net.weights[0].shape[1])
        if vector_input:
            sw = schur_sweep(net, mults, rows)
            tau0 = np.sum(np.abs(sw.k_input), axis=1) if sw.k_input is not None else tau0
    else:
        variant = "neuron" if method == "sdp-neuron" else "layer"
        try:  # in a child process when there is a time limit: cvxpy's build cannot be interrupted
            sol = call_with_time_limit(solve_lipsdp, (net, variant, rows, vector_input, solver),
                                       {"time_limit_s": None if budget is None else SOLVER_SHARE * budget},
                                       seconds=budget)
        except SolverKilled as exc:
            return None, None, f"solver {exc}"
        status = f"{sol.solver}:{sol.status}"
        if not sol.multipliers or not all(np.all(np.isfinite(m)) for m in sol.multipliers):
            return None, None, status + ",no-usable-multipliers"
        mults = list(sol.multipliers)
        if variant == "layer":  # keep the shared value exactly shared
            mults = [
                expand_layer_multiplier(net.activation, w.shape[0], float(np.mean(m[..., 0])))
                if net.activation != "maxmin"
                else np.tile(np.mean(m, axis=0), (m.shape[0], 1))
                for m, w in zip(mults, net.weights[:-1])
            ]
        tau0 = sol.input_weights
    try:
        with np.errstate(all="ignore"):  # a wild solver answer fails below, loudly enough
            mults_c, tau = _certify(net, mults, tau0, rows, vector_input)
    except (np.linalg.LinAlgError, RuntimeError, ArithmeticError, ValueError) as exc:
        return None, None, status + f",not-certifiable:{type(exc).__name__}"
    if not math.isfinite(_rho_of(tau, vector_input)):
        return None, None, status + ",not-certifiable:rho-not-finite"
    return list(mults_c), tau, status


def _sdp_bound(
    net: FeedForward, norm: str, method: str, solver: str | None, scs_eps: float | None = None,
    deadline: float | None = None, progress: Callable[[LipschitzResult], None] | None = None,
    t0: float | None = None,
) -> tuple[float, dict[str, Any], str]:
    """Certified LipSDP bound. Every LMI starts from the certified closed-form
    multipliers (reported to ``progress`` at once, so a caller hit by its own time limit
    still has a certified answer), then the solver's certified answer replaces them when
    it is smaller. Solver failures and time limits only cost tightness, and say so."""
    t0 = time.perf_counter() if t0 is None else t0
    rows_list: list[list[int] | None]
    if norm == "2":
        rows_list = [None]
    else:
        rows_list = [[j] for j in range(net.weights[-1].shape[0])]
    vector_input = norm == "inf"
    bal, scales = balance(net)
    blocks: list[dict[str, Any]] = []
    for rows in rows_list:
        try:
            mults, tau = _fast_block(bal, rows, vector_input)
        except (np.linalg.LinAlgError, RuntimeError, ArithmeticError) as exc:
            raise UnsupportedModel(f"method {method}: the LMI cannot be certified in float64 for this network "
                                   f"({type(exc).__name__}: {exc}); use --method naive") from None
        blocks.append({"rows": rows, "tau": tau, "multipliers": mults, "status": "closed-form multipliers"})

    def emit(note: str) -> tuple[float, dict[str, Any], str]:
        value, cert = _certificate(net, norm, method, blocks, scales)
        status = ";".join(sorted({b["status"] for b in blocks})) + note
        if progress is not None:
            progress(LipschitzResult(value, method, norm, cert, time.perf_counter() - t0, status))
        return value, cert, status

    emit("")
    note = ""
    for i, rows in enumerate(rows_list):
        budget = _solver_budget(deadline, len(rows_list) - i)
        if budget is not None and budget < 0.5:
            note = ";deadline:closed-form-for-the-rest"
            break
        try:
            mults, tau, status = _solver_block(bal, method, rows, vector_input, solver, scs_eps, budget)
        except (np.linalg.LinAlgError, ArithmeticError, ValueError, RuntimeError, MemoryError) as exc:
            mults, tau, status = None, None, f"solver failed: {type(exc).__name__}: {exc}"
        if mults is not None and _rho_of(tau, vector_input) < _rho_of(blocks[i]["tau"], vector_input):
            blocks[i] = {"rows": rows, "tau": tau, "multipliers": mults, "status": f"solver multipliers ({status})"}
        else:
            blocks[i]["status"] = (f"closed-form multipliers ({status}: certified bound not smaller)"
                                   if mults is not None else f"closed-form multipliers ({status})")
        emit(note)
    return emit(note)


def _certificate(net: FeedForward, norm: str, method: str, blocks: Sequence[dict[str, Any]],
                 scales: Sequence[float]) -> tuple[float, dict[str, Any]]:
    """The certificate in the ORIGINAL network's terms (see ``balance``): multipliers
    ``T'_k / d_k^2``, input weights ``tau' / d_0^2`` and the block scales d."""
    vector_input = norm == "inf"
    d2 = [d * d for d in scales]
    out = []
    for b in blocks:
        tau = np.asarray(b["tau"], dtype=np.float64) / d2[0]
        mults = [np.asarray(m, dtype=np.float64) / d2[k + 1] for k, m in enumerate(b["multipliers"])]
        out.append({"rows": b["rows"], "tau": tau, "multipliers": mults, "rho": _rho_of(tau, vector_input)})
    rho_max = max(b["rho"] for b in out)
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
        "block_scales": [float(d) for d in scales],
    }
    if norm == "2":
        cert["multipliers"] = [m.tolist() for m in out[0]["multipliers"]]
    else:
        cert["per_output"] = [
            {
                "row": b["rows"][0],
                "rho": b["rho"],
                "input_weights": b["tau"].tolist(),
                "multipliers": [m.tolist() for m in b["multipliers"]],
            }
            for b in out
        ]
    return value, cert


def _rho_of(tau: np.ndarray, vector_input: bool) -> float:
    return float(tau[0]) if not vector_input else float(np.nextafter(math.fsum(tau) * (1 + 1e-15), np.inf))


def lipschitz_of_network(
    net: FeedForward, norm: str = "2", method: str = "naive", solver: str | None = None,
    scs_eps: float | None = None, deadline: float | None = None,
    progress: Callable[[LipschitzResult], None] | None = None,
) -> LipschitzResult:
    """Certified global Lipschitz bound of ``net`` from ``norm`` to the same norm.

    ``norm``: "2" or "inf". ``method``: one of ``METHODS``. ``solver``: a cvxpy
    solver name (default: Clarabel for small LMIs, SCS otherwise). ``scs_eps``: SCS
    tolerance of the sdp-layerwise steps (default 1e-6; looser is faster and still
    certified, only less tight). ``deadline`` (a ``time.monotonic()`` value): the
    solvers get time limits that end before it and no solve starts without time left;
    what is returned then rests on the closed-form multipliers where the solver did
    not finish (``solver_status`` says so). ``progress`` receives each certified
    intermediate result (the first within a second or so), for a caller whose own
    clock runs out during a solve it cannot interrupt. A network with no hidden layer
    is linear; every method then returns the (certified) naive bound."""
    if norm not in ("2", "inf"):
        raise ValueError(f"norm must be '2' or 'inf', got {norm!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    t0 = time.perf_counter()
    if method == "naive" or net.depth == 1:
        value, cert = naive_certificate(net, norm)
        return LipschitzResult(value, "naive", norm, cert, time.perf_counter() - t0, "closed-form")
    value, cert, status = _sdp_bound(net, norm, method, solver, scs_eps, deadline, progress, t0)
    return LipschitzResult(value, method, norm, cert, time.perf_counter() - t0, status)


def lipschitz_of_graph(graph: Any, norm: str = "2", method: str = "naive", solver: str | None = None,
                       deadline: float | None = None,
                       progress: Callable[[LipschitzResult], None] | None = None) -> LipschitzResult:
    """Certified global Lipschitz bound of a loaded `models.Graph` (flattened input/output).

    A ReLU MLP goes through `lipschitz_of_network` (every method; its certificates are
    checked by ``verifier.checker.lipschitz``). Any other supported graph (CNNs,
    residual blocks, BatchNorm, pooling, other activations) gets the naive bound of
    `relaxations.lipschitz.graph_naive`, whose certificate records the factor of each
    step; the sdp-* methods refuse it with `UnsupportedModel`, naming the first node
    that is not part of a ReLU MLP."""

    if norm not in ("2", "inf"):
        raise ValueError(f"norm must be '2' or 'inf', got {norm!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    try:
        weights, biases = relu_mlp_from_graph(graph)
    except NotReluMlp as exc:
        if method != "naive":
            raise UnsupportedModel(f"method {method} needs a chain of affine layers and ReLUs (a ReLU MLP; "
                                   f"convolutions become dense layers): {exc}; use --method naive for other graphs"
                                   ) from None
    else:
        return lipschitz_of_network(FeedForward(tuple(weights), tuple(biases), "relu"), norm, method, solver,
                                    deadline=deadline, progress=progress)
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


def lipschitz(model: Any, norm: str = "2", method: str = "naive", solver: str | None = None,
              timeout: float | None = None) -> LipschitzResult:
    """A certified global Lipschitz constant of a network, from its input to its output in
    one norm: '2' (l2 to l2) or 'inf' (l-inf to l-inf).

    `model`: what `verifier.load_model` returns, or a `models.Graph`. `method`: naive
    (any supported graph), or sdp-neuron / sdp-layer / sdp-layerwise (LipSDP; ReLU MLPs
    only). `timeout` (seconds) bounds the solver; the multipliers found by then still
    give a certified bound. For a ReLU MLP the result's `certificate` is what `nncert
    check` (or `verifier.check`) re-derives in float64; the naive bound of any other graph
    records its factors, for which no independent checker exists yet.

        >>> import verifier
        >>> res = verifier.lipschitz(verifier.load_model("mlp.onnx"), norm="inf", method="sdp-layer")
        >>> res.value, res.certificate["kind"]
    """
    graph = getattr(model, "graph", model)
    deadline = None if timeout is None else time.monotonic() + timeout
    return lipschitz_of_graph(graph, norm=norm, method=method, solver=solver, deadline=deadline)
