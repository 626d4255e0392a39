"""One search across worker processes (verifier/shards.py, bab.search._pooled): the same
verdicts as one process, the workers really bound domains, a worker killed mid-search
loses nothing, and an exception inside a worker is raised, never a verdict."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from bab.search import SearchOutcome
from models import GraphEvaluator
from relaxations import DeadlineExceeded
from tests.builders import known_answer_min, known_answer_net, known_answer_spec
from verifier import Config, verify
from verifier.config import with_overrides
from verifier.progress import Progress
from verifier.searches import Beside, SearchRecipe, activation_search, input_search, recipe_brancher
from verifier.shards import LocalPool


def _search(model, mode: str, threshold: float, config: Config, pool) -> SearchOutcome:
    """The search of `verify`'s branch-and-bound phase, on a pool whose workers have booted."""
    disjunct = known_answer_spec(threshold).disjuncts[0]
    pool.setup(SearchRecipe(mode, disjunct, config, time.monotonic() + 60))
    assert pool.wait_ready(60), "the workers did not start"
    ev = GraphEvaluator(model.graph, dtype=torch.float32)
    search = input_search if mode == "input" else activation_search
    return search(model, ev, disjunct, config, time.monotonic() + 60, Progress(), None, Beside(pool=pool))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    model = known_answer_net(tmp_path_factory.mktemp("shards"), 0)
    return model, known_answer_min(model)


@pytest.mark.parametrize("mode", ["input", "activation"])
def test_workers_bound_the_rounds_and_the_verdicts_are_one_process_s(net, mode: str) -> None:
    model, m = net
    spread = 0.05 * (1 + abs(m))
    # Small batches: many rounds, so both workers take some.
    cfg = with_overrides(Config(timeout=60), [f"bab.mode={mode}", "attack.enabled=false", "bab.batch_size=4"])
    pool = LocalPool(model, 2)
    try:
        below = _search(model, mode, m - spread, cfg, pool)
        assert below.status == "unsat", below.stats
        assert pool.counts["batches"] >= 2 and pool.counts["lost"] == 0, pool.stats()
        above = _search(model, mode, m + spread, cfg, pool)
        assert above.status == "sat", above.stats
    finally:
        pool.close()
    alone = verify(model, known_answer_spec(m - spread), cfg)
    assert alone.verdict == "unsat"


class _KillsFirst:
    """A pool whose first worker is killed right after it takes its first batch."""

    def __init__(self, pool: LocalPool) -> None:
        self.pool, self.killed = pool, False

    def __getattr__(self, name):
        return getattr(self.pool, name)

    def submit(self, batch, round_: int) -> None:
        self.pool.submit(batch, round_)
        if not self.killed:
            self.killed = True
            self.pool.kill(0)


def test_a_worker_killed_mid_search_loses_nothing(net) -> None:
    """The first batch is the whole region (the root's one open domain) and its worker is
    killed: the proved leaves (recorded, so boxes are not clipped) must still tile the
    whole region [-1, 1]^2. A coordinator that dropped the batch would end at once with
    no leaf and the same unsat."""
    model, m = net
    cfg = with_overrides(Config(timeout=60), ["bab.mode=input", "attack.enabled=false", "bab.batch_size=4",
                                              "proof=true"])
    pool = LocalPool(model, 2)
    try:
        outcome = _search(model, "input", m - 0.05 * (1 + abs(m)), cfg, _KillsFirst(pool))
        assert outcome.status == "unsat", outcome.stats
        assert pool.counts["lost"] == 1 and pool.stats()["live"] == 1, pool.stats()
    finally:
        pool.close()
    lo, hi = np.concatenate(outcome.proof.lowers), np.concatenate(outcome.proof.uppers)
    assert np.prod(hi - lo, axis=1).sum() == pytest.approx(4.0, rel=1e-9)


def test_an_answer_to_an_earlier_search_is_dropped(net) -> None:
    """A search that ends with a batch out (sat, a stop, the other split kind next) leaves
    its answer in the pipe; the next search on the same pool must not take it in. The
    stale batch here is the whole region: were its children absorbed, the next search's
    recorded leaves would cover the region twice."""
    model, m = net
    cfg = with_overrides(Config(timeout=60), ["bab.mode=input", "attack.enabled=false", "bab.batch_size=4",
                                              "proof=true"])
    disjunct = known_answer_spec(m - 0.05 * (1 + abs(m))).disjuncts[0]
    pool = LocalPool(model, 1)
    try:
        first = SearchRecipe("input", disjunct, cfg, time.monotonic() + 60)
        pool.setup(first)
        assert pool.wait_ready(60)
        pool.submit(recipe_brancher(model, first).root().domains, 0)   # never collected by its search
        outcome = _search(model, "input", m - 0.05 * (1 + abs(m)), cfg, pool)
        assert outcome.status == "unsat", outcome.stats
    finally:
        pool.close()
    lo, hi = np.concatenate(outcome.proof.lowers), np.concatenate(outcome.proof.uppers)
    assert np.prod(hi - lo, axis=1).sum() == pytest.approx(4.0, rel=1e-9)


def test_an_exception_in_a_worker_is_raised_not_a_verdict(net) -> None:
    model, m = net
    cfg = with_overrides(Config(timeout=60), ["bab.mode=input", "attack.enabled=false", "bab.batch_size=4"])
    pool = LocalPool(model, 1)
    try:
        disjunct = known_answer_spec(m - 0.05 * (1 + abs(m))).disjuncts[0]
        pool.setup(SearchRecipe("input", disjunct, cfg, time.monotonic() - 1.0))   # a deadline already past
        with pytest.raises(DeadlineExceeded):
            pool.wait_ready(60)
    finally:
        pool.close()


def test_verify_with_workers_gives_the_verdicts_and_says_what_they_did(net) -> None:
    model, m = net
    spread = 0.05 * (1 + abs(m))
    cfg = with_overrides(Config(timeout=60), ["bab.mode=activation", "attack.enabled=false", "bab.workers=2"])
    below = verify(model, known_answer_spec(m - spread), cfg)
    assert below.verdict == "unsat"
    assert below.stats["workers"]["workers"] == 2 and below.stats["workers"]["lost"] == 0
    assert verify(model, known_answer_spec(m + spread), cfg).verdict == "sat"


def _pool_in_daemon(model_path: str, out) -> None:
    from verifier.config import ConfigError
    from verifier.model import load_model
    from verifier.shards import local_pool
    try:
        local_pool(load_model(model_path), 2).close()
        out.put("started")
    except ConfigError as exc:
        out.put(str(exc))


def test_workers_inside_a_daemonic_process_are_a_config_error(net) -> None:
    """`nncert bench --isolate worker` runs instances in daemonic processes, which may not
    have children: the run says so (a ConfigError, exit 2) instead of failing inside."""
    import multiprocessing

    model, _ = net
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_pool_in_daemon, args=(model.path, out), daemon=True)
    proc.start()
    message = out.get(timeout=60)
    proc.join(timeout=10)
    assert "bab.workers" in message and "--isolate process" in message
