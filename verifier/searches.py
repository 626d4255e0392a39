"""How `verify` sets up the branch-and-bound search of one disjunct, and how a worker of a
sharded search (`verifier/shards.py`) builds the very same brancher from a `SearchRecipe`.

Both sides go through the same functions here, so a worker's rounds bound domains with
the options, limits and switches that this process's search would use.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Protocol

import numpy as np
import torch

from bab import InputBrancher, Problem, activation_split_bab, input_split_bab
from bab.activation_split import ReluSearch, relu_brancher
from bab.general_split import IntervalSearch, general_split_bab, needs_general_split
from bab.input_split import InputSearch
from bab.search import Brancher, RoundPool, SearchHooks, SearchLimits, SearchOutcome
from models import GraphEvaluator
from relaxations import BoundOptions, IntervalBounds
from verifier.api import bound_options, dtype_of, outward_box
from verifier.config import Config, resolve_device
from verifier.lp.region import polytope_point
from verifier.model import Model
from verifier.progress import Progress
from verifier.replay import confirm
from vnnlib import Disjunct

__all__ = ["spec_rows", "search_problem", "capped", "Beside", "activation_search", "input_search", "SearchRecipe",
           "recipe_brancher"]


def spec_rows(disjunct: Disjunct) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All rows stacked: C [S, n_out], d [S], strict [S], and the conjunction of each row."""
    C = np.concatenate([c.C for c in disjunct.outputs]) if disjunct.outputs else np.zeros((0, 0))
    d = np.concatenate([c.d for c in disjunct.outputs]) if disjunct.outputs else np.zeros(0)
    strict = np.concatenate([c.strict for c in disjunct.outputs]) if disjunct.outputs else np.zeros(0, bool)
    owner = np.concatenate([np.full(c.C.shape[0], k) for k, c in enumerate(disjunct.outputs)]) \
        if disjunct.outputs else np.zeros(0, int)
    return C, d, strict, owner


def disjunct_box(disjunct: Disjunct, shape: tuple[int, ...], dtype: torch.dtype, device: str) -> IntervalBounds:
    """The disjunct's input box [1, *shape], rounded outward to `dtype`."""
    lo, hi = outward_box(disjunct.region.lower, disjunct.region.upper, dtype, device)
    return IntervalBounds(lo.reshape(1, *shape), hi.reshape(1, *shape))


def capped(method: str, cap: str) -> str:
    """The weaker of two bounding methods: `bounds.method` caps every search's bounds."""
    order = ["ibp", "crown", "alpha-crown"]
    return order[min(order.index(method), order.index(cap))]


def search_problem(model: Model, ev: GraphEvaluator, disjunct: Disjunct, config: Config,
                   known: Optional[dict] = None) -> Problem:
    """The disjunct as the searches read it: its box and rows as tensors of `ev`'s dtype."""
    C, d, strict, owner = spec_rows(disjunct)
    dt, dev = ev.dtype, resolve_device(config.device)
    box = disjunct_box(disjunct, model.graph.input_shape, dt, dev)
    problem = Problem(
        graph=model.graph, ev=ev, lower=box.lower, upper=box.upper,
        C=torch.tensor(C, dtype=dt, device=dev), d=torch.tensor(d, dtype=dt, device=dev),
        strict=torch.tensor(strict, device=dev), owner=torch.tensor(owner, dtype=torch.long, device=dev),
        n_conj=len(disjunct.outputs), known=known or {})
    region = disjunct.region
    if region.A is not None and region.A.shape[0]:
        problem = dataclasses.replace(problem, region_a=torch.tensor(region.A, dtype=dt, device=dev),
                                      region_c=torch.tensor(-region.b, dtype=dt, device=dev))
    return problem


def _max_batch(config: Config, batch: int) -> int:
    """The cap a search's batch may grow to: on CUDA `bab.batch_growth` times the batch (a
    GPU bounds a bigger batch in about the same time); on CPU the batch itself."""
    return batch * config.bab.batch_growth if resolve_device(config.device).startswith("cuda") else batch


def _activation_parts(config: Config, deadline: float, known: Optional[dict]) -> tuple[BoundOptions, SearchLimits]:
    options = dataclasses.replace(bound_options(config.bounds, "alpha-crown"), deadline=deadline,
                                  alpha_iterations=config.bab.alpha_iterations)
    if config.bab.tighten_input and not config.proof:  # the checker bounds a leaf over the whole box
        options = dataclasses.replace(options, tighten_input=True)
    if config.bab.domain_intermediate == "root" and known and not config.proof:
        options = dataclasses.replace(options, intermediate="ibp")  # the root's intervals, splits by IBP
    batch = max(1, config.bab.batch_size // 4)
    return options, SearchLimits(deadline, batch, config.bab.max_domains, _max_batch(config, batch))


def interval_search(config: Config) -> IntervalSearch:
    """The general split's switches from the config (`verify` and torch modules alike)."""
    bab = config.bab
    return IntervalSearch(open_rows=bab.open_rows, warm_start=bab.general_warm_start,
                          split_products=bab.split_products, prune_proved=bab.prune_proved)


def _relu_search(config: Config) -> ReluSearch:
    return ReluSearch(record_proof=config.proof, branching=config.bab.branching,
                      fsb_candidates=config.bab.fsb_candidates, fsb_rows=config.bab.fsb_rows,
                      relaxed_clip=config.bab.relaxed_clip,
                      warm_start=config.bab.warm_start,
                      per_conjunction=config.bab.per_conjunction == "always" or (
                          config.bab.per_conjunction == "proof" and config.proof),
                      open_rows=config.bab.open_rows, multi_split=config.bab.multi_split,
                      learn=config.bab.learned_cuts, leaf_solve=polytope_point if config.bab.leaf_lp else None,
                      leaf_unstable=config.bab.leaf_lp_unstable, prune_proved=config.bab.prune_proved,
                      narrowing_attack=config.bab.narrowing_attack)


def _input_parts(config: Config, deadline: float) -> tuple[BoundOptions, SearchLimits, InputSearch]:
    method = capped(config.bab.input_split_method, config.bounds.method)
    options = dataclasses.replace(bound_options(config.bounds, method),
                                  alpha_iterations=config.bab.input_split_alpha_iterations, deadline=deadline)
    limits = SearchLimits(deadline, config.bab.batch_size, config.bab.max_domains,
                          _max_batch(config, config.bab.batch_size))
    how = InputSearch(record_proof=config.proof, clip=config.bab.clip, clip_generations=config.bab.clip_generations,
                      clip_intermediate=config.bab.clip_intermediate, clip_joint=config.bab.clip_joint)
    return options, limits, how


@dataclasses.dataclass(frozen=True)
class Beside:
    """What runs beside a search: `stop()` says an exact MILP has decided the disjunct (the
    search then ends), `pool` holds the workers its rounds may run on (`bab.search.RoundPool`)."""

    stop: Optional[Callable[[], bool]] = None
    pool: Optional["SharedPool"] = None


@dataclasses.dataclass(frozen=True)
class SearchRecipe:
    """What a worker needs to build the brancher of one search: the same model (it holds
    its own copy), the disjunct, the config, the deadline and the intervals known before
    the search (`known`, the root's)."""

    mode: str                        # "input" or "activation"
    disjunct: Disjunct
    config: Config
    deadline: float
    known: Optional[dict] = None


class SharedPool(RoundPool, Protocol):
    """A RoundPool that is told, before each search, which brancher its workers build."""

    def setup(self, recipe: SearchRecipe) -> None: ...


def recipe_brancher(model: Model, recipe: SearchRecipe) -> Brancher:
    """The brancher `activation_search` / `input_search` would build for this recipe (on the
    CPU; the attack flag on, as with `verify`'s confirm hook)."""
    config = recipe.config
    ev = GraphEvaluator(model.graph, dtype=dtype_of(config.bounds.dtype), device=resolve_device(config.device))
    problem = search_problem(model, ev, recipe.disjunct, config, recipe.known)
    if recipe.mode == "input":
        options, _, how = _input_parts(config, recipe.deadline)
        return InputBrancher(problem, options, how)
    options, limits = _activation_parts(config, recipe.deadline, recipe.known)
    return relu_brancher(problem, options, limits, _relu_search(config), attack=True)


def activation_search(model: Model, ev: GraphEvaluator, disjunct: Disjunct, config: Config, deadline: float,
                      progress: Progress, known: Optional[dict] = None, beside: Beside = Beside()) -> SearchOutcome:
    """Activation split (beta-CROWN; interval splits where other nonlinearities are) on one disjunct."""
    problem = search_problem(model, ev, disjunct, config, known)
    progress.update(bounded=0)  # this search's count: a timeout inside it adds what it shows
    options, limits = _activation_parts(config, deadline, known)
    hooks = SearchHooks(confirm=lambda x: confirm(model, disjunct, x) is not None,
                        progress=lambda f: progress.update(**f), stop=beside.stop)
    if needs_general_split(model.graph, ev.constants):  # sigmoid, tanh, GELU, ...: interval splits
        return general_split_bab(problem, options, limits, hooks, interval_search(config))
    how = _relu_search(config)
    pool = beside.pool if not (how.per_conjunction and problem.n_conj > 1) else None
    if pool is not None:
        pool.setup(SearchRecipe("activation", disjunct, config, deadline, known))
    return activation_split_bab(problem, options, limits, hooks, how, pool=pool)


def input_search(model: Model, ev: GraphEvaluator, disjunct: Disjunct, config: Config, deadline: float,
                 progress: Progress, known: Optional[dict] = None, beside: Beside = Beside()) -> SearchOutcome:
    """Input split on one disjunct (no `stop`: the MILP beside a search runs with activation split only)."""
    problem = search_problem(model, ev, disjunct, config, known)
    progress.update(bounded=0)  # this search's count: a timeout inside it adds what it shows
    options, limits, how = _input_parts(config, deadline)
    hooks = SearchHooks(confirm=lambda x: confirm(model, disjunct, x) is not None,
                        progress=lambda f: progress.update(**f))
    if beside.pool is not None:
        beside.pool.setup(SearchRecipe("input", disjunct, config, deadline, known))
    return input_split_bab(problem, options, limits, hooks, how, pool=beside.pool)
