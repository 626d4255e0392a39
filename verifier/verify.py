"""`verify()`: attack, then bound propagation, then (when available) branch and bound.

Verdict rules: `unsat` only when every conjunction of every disjunct is proved
infeasible by a sound bound; `sat` only after onnxruntime confirms a counterexample;
anything else is `unknown` or `timeout`. Exceptions are not caught here: the caller
(CLI or user code) sees them, so they can never turn into a verdict.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional

import numpy as np
import torch

from bab.general_split import product_nodes, split_nodes
from bab.memory import is_out_of_memory, release_memory
from bab.proof import ConjunctionProofs
from models import GraphEvaluator
from relaxations import DeadlineExceeded, compute_bounds
from relaxations.bounds import rows_proved
from vnnlib import Disjunct, Spec
from verifier.api import dtype_of, region_options
from verifier.attack import attack_disjunct
from verifier.config import SDP_METHODS, AttackConfig, Config, ConfigError, resolve_device
from verifier.progress import QUIET, Progress
from verifier.model import Model
from verifier.replay import confirm
from verifier.lp.phase import ConjunctionRows, lp_phase
from verifier.lp.refine import mlp_layers
from verifier.lp.region import empty_region_proof
from verifier.result import Result
from verifier.shards import Pool, search_pool
from verifier.searches import Beside, activation_search, disjunct_box, input_search, spec_rows

__all__ = ["verify", "SpecMismatch", "spec_rows", "conjunctions_proved", "free_dims", "search_mode", "bab_proof"]


class SpecMismatch(ValueError):
    """The spec does not fit the model (numbers of inputs or outputs)."""


def conjunctions_proved(lower: np.ndarray, d: np.ndarray, strict: np.ndarray, owner: np.ndarray,
                        n_conj: int) -> np.ndarray:
    """[..., K] bool: a conjunction is infeasible when one of its rows is violated everywhere.

    lower: [..., S] sound lower bounds of C @ y. A non-strict row C_i y <= d_i is
    violated everywhere when lower_i > d_i; a strict row when lower_i >= d_i.
    """
    row_ok = rows_proved(lower - d, strict)
    proved = np.zeros(lower.shape[:-1] + (n_conj,), dtype=bool)
    for k in range(n_conj):
        proved[..., k] = row_ok[..., owner == k].any(-1)
    return proved


def _prove_by_bounds(model: Model, ev: GraphEvaluator, disjunct: Disjunct, config: Config,
                     deadline: float, stats: dict, proof: list, known: Optional[dict] = None
                     ) -> tuple[bool, Optional[np.ndarray], str]:
    """Try CROWN, then alpha-CROWN. Returns (proved, minimiser candidates, method).

    On success appends to `proof` what a checker needs to replay the bound: the
    method, the per-row alphas (alpha-CROWN) and the claimed row lower bounds.
    `known` (a dict) receives the ReLU inputs' intervals over the region (optimised when
    `bounds.optimise_intermediate`), for the searches that follow to start from.
    """
    C, d, strict, owner = spec_rows(disjunct)
    K = len(disjunct.outputs)
    if K == 0:
        return False, None, ""
    dt = ev.dtype
    box = disjunct_box(disjunct, model.graph.input_shape, dt, resolve_device(config.device))
    Ct = torch.tensor(C, dtype=dt, device=resolve_device(config.device))
    if config.bounds.method in SDP_METHODS:
        return _prove_by_sdp(model, disjunct, config, deadline, stats, proof)
    methods = ["crown", "alpha-crown"] if config.bounds.method == "alpha-crown" else [config.bounds.method]
    if search_mode(model, config, disjunct) == "input":
        methods = methods[:1]  # splitting the input tightens faster than optimising alpha
    candidates = None
    for method in methods:
        if time.monotonic() > deadline:
            break
        # Optimised intermediate bounds: not with --certificate, whose writer and checker
        # re-derive the intermediate bounds by plain CROWN and could not replay the claims.
        opts = dataclasses.replace(region_options(config.bounds, method, deadline, optimise=not config.proof),
                                   stop_above=torch.as_tensor(d, dtype=ev.dtype, device=box.lower.device))
        res = compute_bounds(model.graph, box, Ct, opts, want_upper=False, ev=ev)
        # The searches start from the root's intervals when they are optimised or when the
        # domains take them instead of CROWN; never for a certificate, whose writer re-derives without them.
        # Kept: the inputs of relaxed elementwise ops and the factors of products (else a
        # domain's IBP would rebuild those from the looser intervals before them).
        if known is not None and method != "ibp" and not config.proof and (
                opts.optimise_intermediate or config.bab.domain_intermediate == "root"):
            kept = [*split_nodes(model.graph, ev.constants).values(),
                    *(z for f in product_nodes(model.graph, ev.constants).values() for z in f)]
            known.update({z: res.table[z] for z in kept if z in res.table})
        lower = res.lower.detach().cpu().numpy()[0]
        stats.setdefault("bounds", []).append({"method": method, "min_gap": float(np.min(lower - d))})
        if conjunctions_proved(lower, d, strict, owner, K).all():
            alphas = res.alphas if method == "alpha-crown" else None
            proof.append({"kind": "bounds", "method": method, "claims": lower - d,
                          "alphas": None if alphas is None else
                          {k: v[0].detach().cpu().double().numpy() for k, v in alphas.items()}})
            return True, None, method
        if res.linear is not None:
            candidates = res.linear.minimizer(box).detach().reshape(C.shape[0], -1).cpu().numpy()
    return False, candidates, methods[-1]


def bab_proof(mode: str, outcome) -> dict:
    """What a certificate needs from a branch-and-bound proof: the leaves and what proved them."""
    if mode == "activation":
        if outcome.stats.get("split") == "general":
            return {"kind": "general-split", "method": "alpha-crown",
                    "certificate": "unsupported (interval splits of general nonlinearities are not checkable yet)"}
        if isinstance(outcome.proof, ConjunctionProofs):
            return {"kind": "conjunctions", "parts": [
                {"conjunctions": [k], "kind": "activation-split", "method": "beta-crown", "leaves": log.leaves()}
                for k, log in outcome.proof.parts]}
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


def free_dims(disjunct: Disjunct) -> int:
    """Input dimensions the region leaves free (upper > lower): what input split must cut.

    A model with 400 inputs of which 2 move is a two-dimensional problem; counting all
    inputs sent such models to activation split, which cannot use that structure.
    """
    return int(np.count_nonzero(np.asarray(disjunct.region.upper) > np.asarray(disjunct.region.lower)))


def search_mode(model: Model, config: Config, disjunct: Optional[Disjunct] = None) -> str:
    """Input split for few free inputs, otherwise activation split (when available).

    Activation split is beta-CROWN: it needs alpha-CROWN's multipliers, so under
    `bounds.method` ibp or crown the search is input split with that method.
    """
    if not config.bab.enabled or config.bounds.method in SDP_METHODS:
        return "none"
    if config.bab.mode != "auto":
        return config.bab.mode
    n = model.n_inputs if disjunct is None else free_dims(disjunct)
    if n <= config.bab.input_split_max_dims or config.bounds.method != "alpha-crown":
        return "input"
    return "activation"


def _prove_by_sdp(model: Model, disjunct: Disjunct, config: Config, deadline: float, stats: dict, proof: list
                  ) -> tuple[bool, Optional[np.ndarray], str]:
    """The SDP relaxation (full or low-rank) as the bounding method, ReLU MLPs only."""
    from verifier.sdp import certify_sdp  # lazy: the SDP front end and its solvers load only for an SDP method

    C, d, strict, owner = spec_rows(disjunct)
    res = certify_sdp(model, disjunct.region.lower, disjunct.region.upper, C, method=config.bounds.method,
                      targets=d, deadline=deadline)
    lower = np.asarray(res.lower_bounds, dtype=np.float64)
    stats.setdefault("bounds", []).append({"method": config.bounds.method, "min_gap": float(np.min(lower - d)),
                                           "time_s": res.time_s, "how": res.reason})
    if conjunctions_proved(lower, d, strict, owner, len(disjunct.outputs)).all():
        proof.append({"kind": "sdp", "method": config.bounds.method, "claims": lower - d,
                      "certificate": res.certificate})
        return True, None, config.bounds.method
    return False, None, config.bounds.method


def _lp(model: Model, ev: GraphEvaluator, disjunct: Disjunct, config: Config, deadline: float,
        candidates: Optional[np.ndarray], known: dict):
    """The LP/MILP phase (verifier/lp/phase.py) on a ReLU MLP; None for other models or when off."""
    if not config.lp.refine and config.lp.milp == "off":
        return None
    if mlp_layers(model.graph) is None:
        return None
    C, d, _, owner = spec_rows(disjunct)
    start = None if candidates is None or not len(candidates) else np.asarray(candidates[0], np.float64)
    return lp_phase(model, ev, disjunct, ConjunctionRows(C, d, owner, len(disjunct.outputs)), config, deadline, start,
                    known)


_BY_MILP = "counterexample found by the exact MILP, confirmed by onnxruntime"


def _milp_counterexample(model: Model, ev: GraphEvaluator, disjunct: Disjunct, config: Config, deadline: float,
                         lp) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """A confirmed counterexample (x, y) when one of the MILP's points, replayed (and
    polished by the attack when HiGHS's point sits a tolerance off), is one."""
    for x in lp.candidates:
        found = confirm(model, disjunct, x)
        if found is None:
            found = attack_disjunct(model, ev, disjunct, config.attack, deadline, config.seed + 11,
                                    np.asarray(x)[None])
        if found is not None:
            return found
    return None


def _sat(found: tuple[np.ndarray, np.ndarray], timings: dict, stats: dict, method: str = "attack",
         how: str = "counterexample confirmed by onnxruntime") -> Result:
    return Result("sat", how, found[0], found[1], timings, stats, method)


def _longer_attack(cfg: AttackConfig) -> AttackConfig:
    """The attack given the time a search left unused: more restarts and steps."""
    return dataclasses.replace(cfg, enabled=True, restarts=max(4 * cfg.restarts, 16), steps=max(2 * cfg.steps, 100),
                               samples=max(4 * cfg.samples, 256))


def _stronger_attack(model: Model, ev: GraphEvaluator, disjunct: Disjunct, config: Config, deadline: float,
                     candidates) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The attack once the bounds have not decided, seeded by their minimisers: the longer
    attack within `attack.stronger_share` of the time left (an attack that found nothing
    in its first, cheap round often finds a counterexample with more starts and steps;
    capped, so that on a big net it does not eat the search's time)."""
    share = config.attack.stronger_share
    if share <= 0 or not config.attack.enabled:
        return attack_disjunct(model, ev, disjunct, config.attack, deadline, config.seed + 7, candidates)
    now = time.monotonic()
    own = min(deadline, now + share * max(deadline - now, 0.0))
    return attack_disjunct(model, ev, disjunct, _longer_attack(config.attack), own, config.seed + 7, candidates)


def verify(model: Model, spec: Spec, config: Config = Config(), start: Optional[float] = None,
           progress: Optional[Progress] = None, deadline: Optional[float] = None,
           workers: Optional[Pool] = None) -> Result:
    """Decide the spec on the model within `config.timeout` seconds (from `start`), or by
    `deadline` (a time.monotonic() value) when that comes first.

    Leaves no trace in the caller's torch: the thread count is restored and the random
    state is forked (the attack's draws come from the run's own seeded generator), so
    two calls with one config give the same answer, and code around them is unaffected.
    `progress` (optional) receives the run's phase and search counters. `workers`
    (optional): a search pool the caller keeps across calls on this model
    (`verifier.shards.search_pool(model, config.bab)`, closed by the caller), so that its
    workers start once; without it `config.bab.workers` starts and stops one per call.
    """
    start = time.monotonic() if start is None else start
    deadline = min(start + config.timeout, float("inf") if deadline is None else deadline)
    if spec.n_inputs != model.n_inputs or spec.n_outputs != model.n_outputs:
        raise SpecMismatch(f"spec has {spec.n_inputs} inputs and {spec.n_outputs} outputs; model "
                           f"'{model.path}' has {model.n_inputs} inputs and {model.n_outputs} outputs")
    if config.bab.mode == "activation" and config.bounds.method != "alpha-crown" and config.bab.enabled:
        raise ConfigError(f"config key 'bab.mode': activation split is beta-CROWN and needs bounds.method "
                          f"alpha-crown, got {config.bounds.method}")
    progress = progress if progress is not None else Progress(verbosity=QUIET)
    threads = torch.get_num_threads()
    device = resolve_device(config.device)  # "auto": CUDA when torch sees one
    devices = [torch.device(device).index if torch.device(device).index is not None
               else torch.cuda.current_device()] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        try:
            torch.manual_seed(config.seed)
            if config.threads > 0:
                torch.set_num_threads(config.threads)
            return _verify(model, spec, config, deadline, progress, workers)
        finally:
            torch.set_num_threads(threads)


def _verify(model: Model, spec: Spec, config: Config, deadline: float, progress: Progress,
            kept: Optional[Pool]) -> Result:
    timings: dict[str, float] = {"attack": 0.0, "bounds": 0.0}
    stats: dict = {"disjuncts": len(spec.disjuncts), "device": resolve_device(config.device)}
    state = {"phase": "attack", "t": time.monotonic()}

    def enter(phase: str) -> None:
        now = time.monotonic()
        key = "bab" if state["phase"].startswith("bab") else state["phase"]
        timings[key] = timings.get(key, 0.0) + now - state["t"]
        if phase != state["phase"]:
            progress.phase(phase)
        state.update(phase=phase, t=now)

    def undecided(verdict: str, reason: str) -> Result:
        enter(state["phase"])
        return Result(verdict, reason, timings=timings, stats=stats, method=_METHOD_OF.get(state["phase"], ""),
                      progress=progress.snapshot())

    def timeout(where: str) -> Result:
        return undecided("timeout", f"time limit reached during {where}")

    runners: list = []   # MILPs running beside a search: none outlives the run
    # The workers of a sharded search start first: they import torch and read the model
    # while this process attacks and bounds, which decides many properties alone.
    if (config.bab.workers > 1 or kept is not None) and resolve_device(config.device).startswith("cuda"):
        raise ConfigError("config key 'bab.workers': the search's workers bound on the CPU, and this run's device "
                          "is CUDA; run with --device cpu, or without bab.workers")
    if kept is not None and not kept.holds(model):
        raise ValueError(f"verify: the workers passed hold another model than '{model.path}'")
    # None below two workers; ConfigError if they cannot be had
    pool = kept if kept is not None else search_pool(model, config.bab)
    before = dict(pool.counts) if pool is not None else {}
    try:
        return _decide(model, spec, config, deadline, _Run(progress, timings, stats, enter, timeout, runners, pool))
    except DeadlineExceeded:
        # A bound pass noticed the deadline: no bound came out of it, so nothing is decided.
        if state["phase"].startswith("bab"):  # the search's count so far is in the progress record
            stats["domains"] = stats.get("domains", 0) + int(progress.snapshot().get("bounded", 0))
        return timeout(_WHERE.get(state["phase"], state["phase"]))
    except Exception as exc:
        # Out of memory outside a search (the search halves its batch and ends unknown on
        # its own): no bound came out of the step, so nothing is decided. Anything else
        # passes through untouched (never a verdict).
        if not is_out_of_memory(exc):
            raise
        release_memory(config.device)
        return undecided("unknown", f"out of memory during {_WHERE.get(state['phase'], state['phase'])}")
    finally:
        for r in runners:
            r.stop()
        if pool is not None:
            stats["workers"] = pool.stats(since=before)
            if kept is None:
                pool.close()


_METHOD_OF = {"attack": "attack", "attack-longer": "attack", "bounds": "", "lp": "milp", "bab-input": "bab-input",
              "bab-activation": "bab-activation"}
_WHERE = {"attack": "the attack", "bounds": "bound propagation", "lp": "the LP phase", "bab-input": "branch and bound",
          "bab-activation": "branch and bound", "attack-longer": "the attack"}


@dataclasses.dataclass(frozen=True)
class _Run:
    """What one run keeps beside its answer, shared by `_verify` and `_decide`: the
    progress record, timings and statistics that every Result carries, the callbacks
    that enter a phase and make a timeout Result, and the MILPs to stop at the end."""

    progress: Progress
    timings: dict
    stats: dict
    enter: Callable[[str], None]
    timeout: Callable[[str], Result]
    runners: list
    pool: Optional[object] = None    # the workers a sharded search runs its rounds on (verifier/shards.py)


def _decide(model: Model, spec: Spec, config: Config, deadline: float, run: _Run) -> Result:
    progress, timings, stats, runners = run.progress, run.timings, run.stats, run.runners
    enter, timeout = run.enter, run.timeout
    ev = GraphEvaluator(model.graph, dtype=dtype_of(config.bounds.dtype), device=resolve_device(config.device))

    def done(result: Result) -> Result:
        enter("done")
        timings.pop("done", None)
        result.progress = progress.snapshot()
        return result

    enter("attack")
    for i, disjunct in enumerate(spec.disjuncts):
        found = attack_disjunct(model, ev, disjunct, config.attack, deadline, seed=config.seed + i)
        if found is not None:
            return done(_sat(found, timings, stats))
        if time.monotonic() > deadline:
            return timeout("the attack")
    methods: list[str] = []
    proofs: list = []
    stops: list[str] = []
    open_disjuncts: list[int] = []
    last = ""

    def take_milp(lp, disjunct: Disjunct) -> Optional[Result]:
        """The MILP's counterexample as a sat Result; or, when it proved the disjunct, its
        proof recorded (then lp.proved) and None."""
        found = _milp_counterexample(model, ev, disjunct, config, deadline, lp)
        if found is not None:
            return _sat(found, timings, stats, "milp", _BY_MILP)
        if lp.proved:
            methods.append("milp")
            proofs.append(lp.proof)
        return None

    for i, disjunct in enumerate(spec.disjuncts):
        enter("bounds")
        empty = empty_region_proof(disjunct.region)
        if empty is not None:  # coupled input rows no point meets: unsat whatever the network does
            methods.append("region")
            proofs.append(empty)
            continue
        known: dict = {}
        proved, candidates, method = _prove_by_bounds(model, ev, disjunct, config, deadline, stats, proofs, known)
        if proved:
            methods.append(method)
            continue
        if candidates is not None:
            enter("attack")
            found = _stronger_attack(model, ev, disjunct, config, deadline, candidates)
            if found is not None:
                return done(_sat(found, timings, stats))
        if time.monotonic() > deadline:
            return timeout("bound propagation")
        tried: list[str] = []
        mode = search_mode(model, config, disjunct)
        lp = runner = None
        if mode == "activation":
            enter("lp")
            lp = _lp(model, ev, disjunct, config, deadline, candidates, known)
            if lp is not None:
                stats.setdefault("lp", []).append(lp.stats)
                runner = lp.runner
                if runner is not None:
                    runners.append(runner)
                sat = take_milp(lp, disjunct)
                if sat is not None:
                    return done(sat)
                if lp.proved:
                    continue
                known = lp.known or known
            if time.monotonic() > deadline:
                return timeout("the LP phase")
        while mode in ("input", "activation") and mode not in tried and not proved:
            tried.append(mode)
            last = f"bab-{mode}"
            enter(last)
            search = input_search if mode == "input" else activation_search
            # With --certificate a MILP proof (a claim resting on HiGHS) does not end a search
            # whose own proof the checker can verify; it answers if the search ends without one.
            stop = None if runner is None else runner.found_counterexample if config.proof else runner.decided
            outcome = search(model, ev, disjunct, config, deadline, progress, known, Beside(stop, run.pool))
            stats["domains"] = stats.get("domains", 0) + outcome.domains_bounded
            for key in ("nogoods", "leaf_lps", "leaf_lp_proved"):
                if key in outcome.stats:
                    stats[key] = outcome.stats[key]
            if runner is not None and outcome.status in ("unknown", "timeout"):
                if outcome.status == "unknown" and not runner.decided():
                    runner.wait(deadline)  # the search gave up with time left: the MILP may still decide
                if runner.decided():
                    runner.outcome(lp)
                    sat = take_milp(lp, disjunct)
                    if sat is not None:
                        return done(sat)
                    if lp.proved:
                        proved = True
                        break
            if outcome.status == "sat":
                found = confirm(model, disjunct, outcome.candidate)
                if found is not None:
                    return done(_sat(found, timings, stats, last,
                                     "counterexample found by branch and bound, confirmed by onnxruntime"))
            elif outcome.status == "timeout":
                if runner is not None and not runner.decided():
                    runner.record(lp.stats)   # what the MILP beside the search got to
                return timeout("branch and bound")
            elif outcome.status == "unsat":
                methods.append(last)
                proofs.append(bab_proof(mode, outcome))
                proved = True
                break
            reason = outcome.stats.get("reason", outcome.status)
            stops.append(f"{mode} split: {reason}")
            stats["bab_stop"] = reason
            if time.monotonic() > deadline:
                return timeout("branch and bound")
            # An unknown with time left is a wasted budget: a longer attack, then the other search.
            enter("attack-longer")
            found = attack_disjunct(model, ev, disjunct, _longer_attack(config.attack), deadline,
                                    config.seed + 101 + len(tried), candidates)
            if found is not None:
                return done(_sat(found, timings, stats))
            if time.monotonic() > deadline:
                return timeout("the attack")
            mode = "activation" if mode == "input" and config.bounds.method == "alpha-crown" else "input"
            if mode not in tried:
                stats.setdefault("fallback", []).append(f"bab-{mode}")
        if not proved:
            open_disjuncts.append(i)
    if not open_disjuncts:
        how = " and ".join(dict.fromkeys(_HOW.get(m, m) for m in methods)) or "bound propagation"
        if config.bounds.method in SDP_METHODS:  # say what each row rests on (SDP dual or CROWN)
            how = "; ".join(b["how"] for b in stats.get("bounds", []) if "how" in b)
        return done(Result("unsat", f"every disjunct proved by {how}", timings=timings, stats=stats,
                           method=max(methods, key=_STRENGTH.index) if methods else "",
                           proof={"version": 1, "disjuncts": proofs}))
    stats["open_disjuncts"] = len(open_disjuncts)
    why = "bounds too loose to prove and no counterexample found"
    if stops:
        why += " (" + "; ".join(stops) + ")"
    return done(Result("unknown", why, timings=timings, stats=stats, method=last or config.bounds.method))


_HOW = {"region": "an empty input region (Farkas certificate, checked exactly)", "ibp": "bound propagation", "crown": "bound propagation", "alpha-crown": "bound propagation",
        "milp": "the exact MILP (HiGHS)", "bab-input": "branch and bound", "bab-activation": "branch and bound"}

# Method names from weakest to strongest: an unsat's `method` is the strongest one used.
_STRENGTH = ["region", "ibp", "crown", "alpha-crown", "sdp-lowrank", "sdp", "milp", "bab-input", "bab-activation"]
