"""`verify()`: attack, then bound propagation, then (when available) branch and bound.

Verdict rules: `unsat` only when every conjunction of every disjunct is proved
infeasible by a sound bound; `sat` only after onnxruntime confirms a counterexample;
anything else is `unknown` or `timeout`. Exceptions are not caught here: the caller
(CLI or user code) sees them, so they can never turn into a verdict.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional

import numpy as np
import torch

from bab import InputSplitProblem, activation_split_bab, input_split_bab
from models import GraphEvaluator
from relaxations import IntervalBounds, compute_bounds
from vnnlib import Disjunct, Spec
from verifier.api import bound_options, dtype_of, outward_box
from verifier.attack import attack_disjunct
from verifier.config import Config
from verifier.model import Model
from verifier.replay import confirm
from verifier.result import Result

__all__ = ["verify", "SpecMismatch", "spec_rows", "conjunctions_proved"]


class SpecMismatch(ValueError):
    """The spec does not fit the model (numbers of inputs or outputs)."""


def spec_rows(disjunct: Disjunct) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All rows stacked: C [S, n_out], d [S], strict [S], and the conjunction of each row."""
    C = np.concatenate([c.C for c in disjunct.outputs]) if disjunct.outputs else np.zeros((0, 0))
    d = np.concatenate([c.d for c in disjunct.outputs]) if disjunct.outputs else np.zeros(0)
    strict = np.concatenate([c.strict for c in disjunct.outputs]) if disjunct.outputs else np.zeros(0, bool)
    owner = np.concatenate([np.full(c.C.shape[0], k) for k, c in enumerate(disjunct.outputs)]) \
        if disjunct.outputs else np.zeros(0, int)
    return C, d, strict, owner


def conjunctions_proved(lower: np.ndarray, d: np.ndarray, strict: np.ndarray, owner: np.ndarray,
                        n_conj: int) -> np.ndarray:
    """[..., K] bool: a conjunction is infeasible when one of its rows is violated everywhere.

    lower: [..., S] sound lower bounds of C @ y. A non-strict row C_i y <= d_i is
    violated everywhere when lower_i > d_i; a strict row when lower_i >= d_i.
    """
    gap = lower - d
    row_ok = np.where(strict, gap >= 0, gap > 0)
    proved = np.zeros(lower.shape[:-1] + (n_conj,), dtype=bool)
    for k in range(n_conj):
        proved[..., k] = row_ok[..., owner == k].any(-1)
    return proved


def _box(disjunct: Disjunct, shape: tuple[int, ...], dtype: torch.dtype, device: str) -> IntervalBounds:
    lo, hi = outward_box(disjunct.region.lower, disjunct.region.upper, dtype, device)
    return IntervalBounds(lo.reshape(1, *shape), hi.reshape(1, *shape))


def _prove_by_bounds(model: Model, ev: GraphEvaluator, disjunct: Disjunct, config: Config,
                     deadline: float, stats: dict, proof: list) -> tuple[bool, Optional[np.ndarray], str]:
    """Try CROWN, then alpha-CROWN. Returns (proved, minimiser candidates, method).

    On success appends to `proof` what a checker needs to replay the bound: the
    method, the per-row alphas (alpha-CROWN) and the claimed row lower bounds.
    """
    C, d, strict, owner = spec_rows(disjunct)
    K = len(disjunct.outputs)
    if K == 0:
        return False, None, ""
    dt = ev.dtype
    box = _box(disjunct, model.graph.input_shape, dt, config.device)
    Ct = torch.tensor(C, dtype=dt, device=config.device)
    if config.bounds.method in SDP_METHODS:
        return _prove_by_sdp(model, disjunct, config, stats, proof)
    methods = ["crown", "alpha-crown"] if config.bounds.method == "alpha-crown" else [config.bounds.method]
    if _bab_mode(model, config) == "input":
        methods = methods[:1]  # splitting the input tightens faster than optimising alpha
    candidates = None
    for method in methods:
        if time.monotonic() > deadline:
            break
        opts = dataclasses.replace(bound_options(config.bounds, method), deadline=deadline)
        res = compute_bounds(model.graph, box, Ct, opts, want_upper=False, ev=ev)
        lower = res.lower.detach().cpu().numpy()[0]
        stats.setdefault("bounds", []).append({"method": method, "min_gap": float(np.min(lower - d))})
        if conjunctions_proved(lower, d, strict, owner, K).all():
            alphas = res.stats.get("alphas") if method == "alpha-crown" else None
            proof.append({"kind": "bounds", "method": method, "claims": lower - d,
                          "alphas": None if alphas is None else
                          {k: v[0].detach().cpu().double().numpy() for k, v in alphas.items()}})
            return True, None, method
        if res.linear is not None:
            candidates = res.linear.minimizer(box).detach().reshape(C.shape[0], -1).cpu().numpy()
    return False, candidates, methods[-1]


def _bab_proof(mode: str, outcome) -> dict:
    """What a certificate needs from a branch-and-bound proof: the leaves and what proved them."""
    if mode == "activation":
        if outcome.proof is None:
            return {"kind": "activation-split", "method": "beta-crown",
                    "certificate": "not recorded (run with --certificate)"}
        return {"kind": "activation-split", "method": "beta-crown", "leaves": outcome.proof.leaves()}
    if outcome.proof is None:
        return {"kind": "input-split", "method": "crown", "certificate": "not recorded (run with --certificate)"}
    lowers, uppers, claims = outcome.proof.leaves()
    alphas = outcome.proof.alphas()
    # IBP leaves are re-derived by the writer with CROWN (never looser than IBP).
    method = "alpha-crown" if outcome.proof.method == "alpha-crown" else "crown"
    return {"kind": "input-split", "method": method, "lower": lowers, "upper": uppers, "claims": claims,
            "alphas": alphas}


def _bab_mode(model: Model, config: Config) -> str:
    """Input split for few inputs, otherwise activation split (when available)."""
    if not config.bab.enabled or config.bounds.method in SDP_METHODS:
        return "none"
    if config.bab.mode != "auto":
        return config.bab.mode
    return "input" if model.n_inputs <= config.bab.input_split_max_dims else "activation"


def _problem(model: Model, ev: GraphEvaluator, disjunct: Disjunct, config: Config) -> InputSplitProblem:
    C, d, strict, owner = spec_rows(disjunct)
    dt, dev = ev.dtype, config.device
    box = _box(disjunct, model.graph.input_shape, dt, dev)
    problem = InputSplitProblem(
        graph=model.graph, ev=ev, lower=box.lower, upper=box.upper,
        C=torch.tensor(C, dtype=dt, device=dev), d=torch.tensor(d, dtype=dt, device=dev),
        strict=torch.tensor(strict, device=dev), owner=torch.tensor(owner, dtype=torch.long, device=dev),
        n_conj=len(disjunct.outputs))
    return problem


def _activation_split(model: Model, ev: GraphEvaluator, disjunct: Disjunct, config: Config, deadline: float):
    problem = _problem(model, ev, disjunct, config)
    options = dataclasses.replace(bound_options(config.bounds, "alpha-crown"), deadline=deadline)
    return activation_split_bab(problem, options, deadline, batch_size=max(1, config.bab.batch_size // 4),
                                max_domains=config.bab.max_domains,
                                confirm=lambda x: confirm(model, disjunct, x) is not None,
                                record_proof=config.proof, branching=config.bab.branching,
                                fsb_candidates=config.bab.fsb_candidates, relaxed_clip=config.bab.relaxed_clip)


def _input_split(model: Model, ev: GraphEvaluator, disjunct: Disjunct, config: Config, deadline: float):
    problem = _problem(model, ev, disjunct, config)
    options = dataclasses.replace(bound_options(config.bounds, config.bab.input_split_method),
                                  alpha_iterations=config.bab.input_split_alpha_iterations, deadline=deadline)
    return input_split_bab(problem, options, deadline,
                           batch_size=config.bab.batch_size, max_domains=config.bab.max_domains,
                           confirm=lambda x: confirm(model, disjunct, x) is not None,
                           record_proof=config.proof, clip=config.bab.clip,
                           clip_generations=config.bab.clip_generations,
                           clip_intermediate=config.bab.clip_intermediate, clip_joint=config.bab.clip_joint)


SDP_METHODS = ("sdp", "sdp-lowrank")


def _prove_by_sdp(model: Model, disjunct: Disjunct, config: Config, stats: dict, proof: list
                  ) -> tuple[bool, Optional[np.ndarray], str]:
    """The SDP relaxation (full or low-rank) as the bounding method, ReLU MLPs only."""
    from verifier.sdp import certify_sdp  # cvxpy is heavy: import only when asked for

    C, d, strict, owner = spec_rows(disjunct)
    res = certify_sdp(model, disjunct.region.lower, disjunct.region.upper, C, method=config.bounds.method,
                      targets=d)
    lower = np.asarray(res.lower_bounds, dtype=np.float64)
    stats.setdefault("bounds", []).append({"method": config.bounds.method, "min_gap": float(np.min(lower - d)),
                                           "time_s": res.time_s})
    if conjunctions_proved(lower, d, strict, owner, len(disjunct.outputs)).all():
        proof.append({"kind": "sdp", "method": config.bounds.method, "claims": lower - d,
                      "certificate": res.certificate})
        return True, None, config.bounds.method
    return False, None, config.bounds.method


def _sat(found: tuple[np.ndarray, np.ndarray], timings: dict, stats: dict, method: str = "attack",
         how: str = "counterexample confirmed by onnxruntime") -> Result:
    return Result("sat", how, found[0], found[1], timings, stats, method)


def verify(model: Model, spec: Spec, config: Config = Config(), start: Optional[float] = None) -> Result:
    """Decide the spec on the model within `config.timeout` seconds (from `start`)."""
    start = time.monotonic() if start is None else start
    deadline = start + config.timeout
    if spec.n_inputs != model.n_inputs or spec.n_outputs != model.n_outputs:
        raise SpecMismatch(f"spec has {spec.n_inputs} inputs and {spec.n_outputs} outputs; model "
                           f"'{model.path}' has {model.n_inputs} inputs and {model.n_outputs} outputs")
    torch.manual_seed(config.seed)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    ev = GraphEvaluator(model.graph, dtype=dtype_of(config.bounds.dtype), device=config.device)
    timings: dict[str, float] = {"attack": 0.0, "bounds": 0.0}
    stats: dict = {"disjuncts": len(spec.disjuncts)}
    open_disjuncts = []
    for i, disjunct in enumerate(spec.disjuncts):
        t = time.monotonic()
        found = attack_disjunct(model, ev, disjunct, config.attack, deadline, seed=config.seed + i)
        timings["attack"] += time.monotonic() - t
        if found is not None:
            return _sat(found, timings, stats)
        if time.monotonic() > deadline:
            return Result("timeout", "time limit reached during the attack", timings=timings, stats=stats)
    methods = []
    proofs: list = []
    for i, disjunct in enumerate(spec.disjuncts):
        t = time.monotonic()
        proved, candidates, method = _prove_by_bounds(model, ev, disjunct, config, deadline, stats, proofs)
        timings["bounds"] += time.monotonic() - t
        if proved:
            methods.append(method)
            continue
        if candidates is not None:
            t = time.monotonic()
            found = attack_disjunct(model, ev, disjunct, config.attack, deadline, config.seed + 7, candidates)
            timings["attack"] += time.monotonic() - t
            if found is not None:
                return _sat(found, timings, stats)
        if time.monotonic() > deadline:
            return Result("timeout", "time limit reached during bound propagation", timings=timings, stats=stats)
        mode = _bab_mode(model, config)
        if mode in ("input", "activation"):
            t = time.monotonic()
            search = _input_split if mode == "input" else _activation_split
            outcome = search(model, ev, disjunct, config, deadline)
            timings["bab"] = timings.get("bab", 0.0) + time.monotonic() - t
            stats["domains"] = stats.get("domains", 0) + outcome.domains_bounded
            if outcome.status == "sat":
                found = confirm(model, disjunct, outcome.candidate)
                if found is not None:
                    return _sat(found, timings, stats, f"bab-{mode}",
                                "counterexample found by branch and bound, confirmed by onnxruntime")
            elif outcome.status == "timeout":
                return Result("timeout", "time limit reached during branch and bound", timings=timings, stats=stats)
            elif outcome.status == "unsat":
                methods.append(config.bab.input_split_method if mode == "input" else "alpha-crown")
                proofs.append(_bab_proof(mode, outcome))
                continue
            stats["bab_stop"] = outcome.stats.get("reason", outcome.status)
        open_disjuncts.append(i)
    if not open_disjuncts:
        how = "branch and bound" if "domains" in stats else "bound propagation"
        return Result("unsat", f"every disjunct proved by {how}", timings=timings, stats=stats,
                      method=config.bounds.method if config.bounds.method in SDP_METHODS else
                      max(methods, key=["crown", "alpha-crown", "ibp"].index) if methods else "",
                      proof={"version": 1, "disjuncts": proofs})
    stats["open_disjuncts"] = len(open_disjuncts)
    return Result("unknown", "bounds too loose to prove and no counterexample found",
                  timings=timings, stats=stats, method=config.bounds.method)
