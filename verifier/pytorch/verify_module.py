"""Verification of a torch module over l-inf or l2 balls around a batch of points, file-free.

    >>> results = verifier.verify_module(net, x, y, eps=0.05)            # l-inf, inputs in [0, 1]
    >>> l2 = verifier.Perturbation(norm="2", lower=-1.0, upper=1.0)
    >>> results = verifier.verify_module(net, x, y, eps=0.5, perturbation=l2)
    >>> [r.verdict for r in results]                                     # 'unsat' = robust

l-inf goes the ONNX path itself, so its verdicts are that path's: the module is exported
to ONNX in memory (the bytes onnxruntime replays every counterexample on), read by our
importer, and each point's robustness specification (`vnnlib.robustness_spec`) is decided
by `verify` with its attack, bounds and branch and bound; `certificate_dir` writes the
model, each spec and each certificate there, for `nncert check`.

l2 has no VNN-LIB form (a ball is not a box), so it is decided here: an l2 PGD attack on
the module, each candidate replayed in onnxruntime in float32 and kept only inside the
ball and the valid range; then CROWN and alpha-CROWN over the box around the ball with
the ball itself used at the input (`relaxations.BallBox`: the better of the box's and the
ball's minimum of each linear bound) and SDP-CROWN's bias at every ReLU whose input the
ball reaches (`bounds.sdp_crown`); what they leave open goes to branch and bound with the
ball kept in every domain's bound (activation split for ReLU networks, interval splits
for the others), whose candidates are projected into the ball and replayed like the
attack's. With `certificate_dir`, each point's certificate names its ball beside the
spec file's box, and the checker cuts the box by it; root proofs and both searches'
leaves are certified.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

import vnnlib
from bab.activation_split import ReluSearch, activation_split_bab
from bab.general_split import general_split_bab, needs_general_split
from bab.input_split import InputSearch, input_split_bab
from bab.problem import Problem, project_l2
from bab.search import SearchHooks, SearchLimits, SearchOutcome
from models import GraphEvaluator, graph_from_proto
from models.ort_check import check_against_onnxruntime
from relaxations import BallBox, BoundOptions, compute_bounds
from relaxations.bounds import DeadlineExceeded
from verifier.api import ShapeError, bound_options, dtype_of, outward_box
from verifier.certificates.writer import write_certificate
from verifier.config import Config, resolve_device
from verifier.model import Model
from verifier.lp.region import polytope_point
from verifier.pytorch.perturbation import NORMS, Perturbation, checked_perturbation
from verifier.result import Result
from verifier.searches import interval_search
from verifier.verify import bab_proof, search_mode, spec_rows, verify

__all__ = ["verify_module", "module_model", "Perturbation", "NORMS"]


def module_model(module: nn.Module, input_shape: Sequence[int], opset: int = 17) -> Model:
    """`module` (eval mode) exported to ONNX in memory and read back as a `Model`.

    input_shape includes the batch dimension 1. The model's bytes are the export's,
    which onnxruntime replays counterexamples on; the graph is our importer's reading of
    them, checked against onnxruntime like any loaded file.
    """
    import onnx  # local, as in models/onnx_import.py: only this path needs the protobuf reader here

    was_training = module.training
    module.eval()
    buffer = io.BytesIO()
    param = next(iter(module.parameters()), None)
    example = torch.zeros(*input_shape, dtype=torch.float32, device=param.device if param is not None else "cpu")
    try:
        with torch.no_grad():
            module(example)
    except Exception as exc:   # the points' shape, not a bug of ours: say what was given
        module.train(was_training)
        raise ShapeError(f"the module does not accept points shaped {tuple(input_shape[1:])} (as a batch of one: "
                         f"{tuple(input_shape)}): {type(exc).__name__}: {exc}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, example, buffer, input_names=["x"], output_names=["y"],
                              opset_version=opset, dynamo=False)
    finally:
        module.train(was_training)
    data = buffer.getvalue()
    name = f"<torch {type(module).__name__}>"
    graph = graph_from_proto(onnx.load_from_string(data), source=name, sha256=hashlib.sha256(data).hexdigest())
    check_against_onnxruntime(graph, data)
    return Model(graph=graph, path=name, onnx_bytes=data)


def verify_module(module: nn.Module, x: torch.Tensor, y: torch.Tensor | Sequence[int], eps: float,
                  perturbation: Perturbation = Perturbation(), config: Config = Config(),
                  certificate_dir: Optional[str | Path] = None) -> list[Result]:
    """Robustness of `module`'s argmax at each point of `x` [N, *shape] with label `y[i]`:
    no input within `eps` (in `perturbation`'s norm, l-inf or l2, intersected with its
    valid range) makes another class's logit reach the label's. One `Result` per point:
    'unsat' (robust), 'sat' (a counterexample, replayed in onnxruntime), 'unknown' or
    'timeout'; `config.timeout` applies to each point. A point the module misclassifies
    is 'sat' at itself. Over l-inf the valid range may be per feature (`Perturbation`):
    the spec's box is clipped elementwise.
    """
    perturbation = checked_perturbation(perturbation)
    if not (np.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and non-negative, got {eps}")
    x = torch.as_tensor(x, dtype=torch.float32).detach().cpu()
    labels = [int(v) for v in torch.as_tensor(y).reshape(-1).tolist()]
    if len(labels) != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} points and y {len(labels)} labels")
    lower, upper = perturbation.range_for(tuple(x.shape[1:]))
    if bool((x < lower).any() or (x > upper).any()):
        shown = f"[{lower}, {upper}]" if isinstance(lower, float) and isinstance(upper, float) else "(per feature)"
        raise ValueError(f"every point must lie in the valid range {shown}")
    if not (isinstance(lower, float) and isinstance(upper, float)):   # per feature: flat, as each point is below
        lower, upper = (e if isinstance(e, float) else e.reshape(-1) for e in (lower, upper))
        perturbation = dataclasses.replace(perturbation, lower=lower, upper=upper)
    model = module_model(module, (1, *x.shape[1:]))
    K = model.n_outputs
    for label in labels:
        if not 0 <= label < K:
            raise ValueError(f"label {label} is not a class of a model with {K} outputs")
    out_dir = Path(certificate_dir) if certificate_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "model.onnx").write_bytes(model.onnx_bytes)
        config = _with_proof(config)
    results = []
    for i, label in enumerate(labels):
        point = x[i].reshape(-1).double().numpy()
        out = None if out_dir is None else out_dir / f"point_{i}"   # point_i.vnnlib and point_i.json
        decide = _verify_linf if perturbation.norm == "inf" else _verify_l2
        results.append(decide(model, point, label, eps, perturbation, config, out))
    return results


def _with_proof(config: Config) -> Config:
    return dataclasses.replace(config, proof=True)


def _verify_linf(model: Model, point: np.ndarray, label: int, eps: float, perturbation: Perturbation, config: Config,
                 out: Optional[Path]) -> Result:
    """One point over the l-inf ball; with `out` (a path without suffix), its spec
    (`.vnnlib`) and certificate (`.json`) are written there."""
    spec = vnnlib.robustness_spec(point, eps, label, model.n_outputs, perturbation.lower, perturbation.upper)
    if out is None:
        return verify(model, spec, config)
    # The file is what the checker reads: the spec verified is the file's, read back.
    spec_path = out.with_suffix(".vnnlib")
    vnnlib.write_vnnlib(spec_path, spec)
    spec = vnnlib.load(spec_path, model.n_inputs, model.n_outputs)
    result = verify(model, spec, config)
    result.stats["certificate"] = write_certificate(out.with_suffix(".json"), model, spec_path, spec, result)
    return result


def _margins(y: np.ndarray, label: int) -> np.ndarray:
    return y[label] - np.delete(y, label)


def _inside_l2(x: np.ndarray, point: np.ndarray, eps: float, perturbation: Perturbation) -> bool:
    return bool(np.linalg.norm(x.astype(np.float64) - point) <= eps and np.all(x >= perturbation.lower)
                and np.all(x <= perturbation.upper))


def _l2_attack(model: Model, point: np.ndarray, label: int, eps: float, perturbation: Perturbation, config: Config,
               deadline: float) -> Optional[np.ndarray]:
    """Projected gradient descent on the largest other logit minus the label's, inside the
    ball and the range (project onto the ball, then clamp: the clamp cannot leave the ball
    when the centre is in range, it only moves coordinates towards it)."""
    ev = GraphEvaluator(model.graph, dtype=torch.float32)
    shape = (1, *model.graph.input_shape)
    centre = torch.tensor(point, dtype=torch.float32).reshape(shape)
    gen = torch.Generator().manual_seed(config.seed)
    restarts, steps = max(1, config.attack.restarts), max(1, config.attack.steps)
    batch = centre.repeat(restarts, *([1] * (len(shape) - 1)))
    noise = torch.randn(batch.shape, generator=gen)
    norms = noise.reshape(restarts, -1).norm(dim=1).clamp_min(1e-12).reshape(-1, *([1] * (len(shape) - 1)))
    radius = torch.rand(restarts, generator=gen).reshape(norms.shape) * eps
    xs = project_l2(centre + noise / norms * radius, centre, eps, perturbation.lower, perturbation.upper)
    step = 2.5 * eps / steps
    for _ in range(steps):
        if time.monotonic() > deadline:
            break
        xs = xs.detach().requires_grad_(True)
        out = ev(xs).reshape(restarts, -1)
        others = out.clone()
        others[:, label] = -torch.inf
        loss = (others.max(1).values - out[:, label]).sum()
        (grad,) = torch.autograd.grad(loss, xs)
        gnorm = grad.reshape(restarts, -1).norm(dim=1).clamp_min(1e-12).reshape(norms.shape)
        xs = project_l2(xs.detach() + step * grad / gnorm, centre, eps, perturbation.lower, perturbation.upper)
        for cand in xs.reshape(restarts, -1).numpy():
            found = _replay_l2(model, cand, point, label, eps, perturbation)
            if found is not None:
                return found
    return None


def _replay_l2(model: Model, cand: np.ndarray, point: np.ndarray, label: int, eps: float, perturbation: Perturbation
               ) -> Optional[np.ndarray]:
    x32 = np.asarray(cand, dtype=np.float32)
    if not _inside_l2(x32, point, eps, perturbation):
        return None
    out = model.run_onnxruntime(x32)
    if np.all(np.isfinite(out)) and np.min(_margins(out, label)) <= 0:
        return x32
    return None


def _verify_l2(model: Model, point: np.ndarray, label: int, eps: float, perturbation: Perturbation, config: Config,
               out: Optional[Path] = None) -> Result:
    """One point over the l2 ball; with `out` (a path without suffix), also its certificate
    there (`.json`) and its spec (`.vnnlib`): the spec file
    is the box around the ball (each end one rounding outward, so that the box holds the
    ball's part in the range) and the certificate names the ball, which the checker then
    cuts the box by. Root proofs (CROWN, alpha-CROWN) and the leaves of input and
    activation split are certified; SDP-CROWN's bias is off for them (the checker does
    not re-derive it). Interval splits of general nonlinearities are not checkable, over
    a ball or not: their certificate says so."""
    if out is None:
        return _decide_l2(model, point, label, eps, perturbation, config)
    radius = eps + 4 * np.spacing(np.abs(point) + eps)   # x0 -/+ radius in float64 holds x0 -/+ eps
    spec_path = out.with_suffix(".vnnlib")
    box = vnnlib.robustness_spec(point, radius, label, model.n_outputs, perturbation.lower, perturbation.upper)
    vnnlib.write_vnnlib(spec_path, box)
    spec = vnnlib.load(spec_path, model.n_inputs, model.n_outputs)
    proof_config = dataclasses.replace(config, bounds=dataclasses.replace(config.bounds, sdp_crown=False))
    result = _decide_l2(model, point, label, eps, perturbation, proof_config, spec)
    result.stats["certificate"] = write_certificate(out.with_suffix(".json"), model, spec_path, spec, result,
                                                    ball=(point, eps))
    return result


def _decide_l2(model: Model, point: np.ndarray, label: int, eps: float, perturbation: Perturbation, config: Config,
               spec: Optional[vnnlib.Spec] = None) -> Result:
    """The verdict over the l2 ball; with `spec` (the box around it, as written for a
    certificate), the rows and the box are the spec's and a root proof is recorded."""
    start = time.monotonic()
    deadline = start + config.timeout
    timings: dict[str, float] = {}
    found = _replay_l2(model, point.astype(np.float32), point, label, eps, perturbation)
    if found is None and config.attack.enabled:
        found = _l2_attack(model, point, label, eps, perturbation, config, deadline)
    timings["attack"] = time.monotonic() - start
    if found is not None:
        return Result("sat", "counterexample in the l2 ball, replayed in onnxruntime", x=found,
                      y=model.run_onnxruntime(found), timings=timings, method="attack")
    dt = dtype_of(config.bounds.dtype)
    device = resolve_device(config.device)
    K = model.n_outputs
    C = torch.zeros(1, K - 1, K, dtype=dt, device=device)
    others = [j for j in range(K) if j != label]
    C[0, torch.arange(K - 1), label] = 1.0
    C[0, torch.arange(K - 1), others] = -1.0
    box_lo, box_hi = np.maximum(point - eps, perturbation.lower), np.minimum(point + eps, perturbation.upper)
    if spec is not None:   # the spec's rows (y_label - y_j <= 0, one conjunction each) and box
        rows, d_spec = spec_rows(spec.disjuncts[0])[:2]
        C = torch.tensor(rows, dtype=dt, device=device).unsqueeze(0)
        box_lo, box_hi = spec.disjuncts[0].region.lower, spec.disjuncts[0].region.upper
    shape = (1, *model.graph.input_shape)
    c = torch.tensor(point, dtype=dt, device=device).reshape(shape)   # float32 points are exact in dt
    # The box and the radius rounded outward from float64: c - eps in float32 may round
    # inward, and a float32 radius below eps would leave the ball's rim unexamined.
    lo, hi = outward_box(box_lo, box_hi, dt, device)
    _, radius = outward_box([eps], [eps], dt, device)
    region = BallBox(lo.reshape(shape), hi.reshape(shape), c, radius)
    methods = ["crown", "alpha-crown"] if config.bounds.method == "alpha-crown" else [config.bounds.method]
    t = time.monotonic()
    try:
        for method in methods:
            opts: BoundOptions = dataclasses.replace(bound_options(config.bounds, method), deadline=deadline)
            if spec is not None:
                opts = dataclasses.replace(opts, optimise_intermediate=False)   # as verify does for a proof
            res = compute_bounds(model.graph, region, C, opts, want_upper=False)
            lower_b = res.lower
            if bool((lower_b > 0).all()):
                timings["bounds"] = time.monotonic() - t
                proof = None
                if spec is not None:
                    alphas = res.alphas if method == "alpha-crown" else None
                    proof = {"disjuncts": [{"kind": "bounds", "method": method,
                                            "claims": lower_b[0].detach().cpu().double().numpy() - d_spec,
                                            "alphas": None if alphas is None else
                                            {k: v[0].detach().cpu().double().numpy() for k, v in alphas.items()}}]}
                return Result("unsat", f"every margin proved positive on the l2 ball by {method}",
                              timings=timings, method=method, stats={"min_margin": float(lower_b.min())}, proof=proof)
    except DeadlineExceeded:
        timings["bounds"] = time.monotonic() - t
        return Result("timeout", "time limit reached during bound propagation", timings=timings)
    timings["bounds"] = time.monotonic() - t
    stats = {"min_margin": float(lower_b.min())}
    if not config.bab.enabled or config.bab.mode == "none" or config.bounds.method != "alpha-crown":
        return Result("unknown", "bounds over the l2 ball leave a margin open (branch and bound is off: it needs "
                      "bab.enabled and bounds.method alpha-crown)", timings=timings, stats=stats)
    if time.monotonic() > deadline:
        return Result("timeout", "time limit reached after bound propagation", timings=timings, stats=stats)
    t = time.monotonic()
    replay = lambda x: _replay_l2(model, x, point, label, eps, perturbation)  # noqa: E731
    try:
        mode = search_mode(model, config)   # verify's choice: input split for few inputs
        out = _l2_search(model, region, C[0], config, deadline, replay, mode, record_proof=spec is not None)
    except DeadlineExceeded:   # a bound pass past the deadline has no bound: no verdict
        timings["bab"] = time.monotonic() - t
        return Result("timeout", "time limit reached during branch and bound", timings=timings, stats=stats)
    timings["bab"] = time.monotonic() - t
    stats["domains"] = out.domains_bounded
    method = f"bab-{mode}"   # as `verify` names its searches (interval splits count as activation)
    if out.status == "sat" and out.candidate is not None:
        found = replay(out.candidate)
        if found is not None:
            return Result("sat", "counterexample in the l2 ball found by branch and bound, replayed in onnxruntime",
                          x=found, y=model.run_onnxruntime(found), timings=timings, method=method, stats=stats)
    if out.status == "unsat":
        proof = {"disjuncts": [bab_proof(mode, out)]} if spec is not None else None
        return Result("unsat", "every margin proved positive on the l2 ball by branch and bound", timings=timings,
                      method=method, stats=stats, proof=proof)
    if out.status == "timeout":
        return Result("timeout", "time limit reached during branch and bound", timings=timings, stats=stats)
    reason = out.stats.get("reason", out.status)
    return Result("unknown", f"branch and bound over the l2 ball stopped: {reason}", timings=timings, stats=stats)


def _l2_search(model: Model, region: BallBox, C: torch.Tensor, config: Config, deadline: float,
               replay: Callable[[np.ndarray], Optional[np.ndarray]], mode: str, record_proof: bool = False
               ) -> SearchOutcome:
    """Branch and bound over the box around the ball with the ball kept in every bound
    (`bab.problem.Problem.ball`): input split (mode input, `verify.search_mode`), else activation
    split with beta-CROWN for ReLU networks and interval splits for the others, each with
    the settings `verify` gives them. Each
    margin row `C y > 0` is a conjunction of its own (another class reaching the label)."""
    dt, device = region.lower.dtype, region.lower.device
    ev = GraphEvaluator(model.graph, dtype=dt, device=device)
    S = C.shape[0]
    problem = Problem(graph=model.graph, ev=ev, lower=region.lower, upper=region.upper, C=C,
                      d=torch.zeros(S, dtype=dt, device=device), strict=torch.zeros(S, dtype=torch.bool, device=device),
                      owner=torch.arange(S, device=device), n_conj=S, ball=(region.ball_centre, region.ball_radius))
    options = dataclasses.replace(bound_options(config.bounds, "alpha-crown"), deadline=deadline,
                                  alpha_iterations=config.bab.alpha_iterations)
    limits = SearchLimits(deadline, max(1, config.bab.batch_size // 4), config.bab.max_domains)
    hooks = SearchHooks(confirm=lambda x: replay(x) is not None)
    bab = config.bab
    if mode == "input":
        options = dataclasses.replace(options, alpha_iterations=bab.input_split_alpha_iterations)
        how = InputSearch(record_proof=record_proof, clip=bab.clip, clip_generations=bab.clip_generations,
                          clip_intermediate=bab.clip_intermediate, clip_joint=bab.clip_joint)
        limits = SearchLimits(deadline, bab.batch_size, bab.max_domains)
        return input_split_bab(problem, options, limits, hooks, how)
    if needs_general_split(model.graph, ev.constants):
        return general_split_bab(problem, options, limits, hooks, interval_search(config))
    how = ReluSearch(record_proof=record_proof, branching=bab.branching, fsb_candidates=bab.fsb_candidates,
                     warm_start=bab.warm_start,
                     per_conjunction=bab.per_conjunction == "always", open_rows=bab.open_rows,
                     leaf_solve=polytope_point if bab.leaf_lp else None, leaf_unstable=bab.leaf_lp_unstable)
    return activation_split_bab(problem, options, limits, hooks, how)
