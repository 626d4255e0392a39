"""One search across workers (verifier/shards.py, verifier/shards_ray.py, bab.search._pooled),
on both backends (local processes, Ray actors on a local cluster of two CPUs): the same
verdicts as one process, the workers really bound domains, a worker killed mid-search
loses nothing, an answer to an earlier search is dropped, an exception inside a worker
is raised, never a verdict, and the proof of a sharded search makes a certificate the
checker accepts."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from bab.search import SearchOutcome
from models import GraphEvaluator
from relaxations import DeadlineExceeded
from tests.builders import known_answer_min, known_answer_net, known_answer_spec
import vnnlib
from verifier import Config, verify
from verifier.certificates.writer import write_certificate
from verifier.checker.verdict import check_files
from verifier.config import with_overrides
from verifier.progress import Progress
from verifier.result import Result
from verifier.searches import Beside, SearchRecipe, activation_search, input_search, recipe_brancher
from verifier.ray_connect import ray_available
from verifier.shards import LocalPool, Pool
from verifier.verify import bab_proof


class _ReadyFirst:
    """A pool whose setup waits until every worker has built the search's brancher, so
    that even a short search hands its workers batches (the search's own setup would
    otherwise race it: the rounds run here until a worker is ready)."""

    def __init__(self, pool) -> None:
        self.pool = pool

    def __getattr__(self, name):
        return getattr(self.pool, name)

    def setup(self, recipe) -> None:
        self.pool.setup(recipe)
        assert self.pool.wait_ready(60), "the workers did not start"


def _search(model, mode: str, threshold: float, config: Config, pool) -> SearchOutcome:
    """The search of `verify`'s branch-and-bound phase, its workers ready from the start."""
    disjunct = known_answer_spec(threshold).disjuncts[0]
    ev = GraphEvaluator(model.graph, dtype=torch.float32)
    search = input_search if mode == "input" else activation_search
    return search(model, ev, disjunct, config, time.monotonic() + 60, Progress(), None,
                  Beside(pool=_ReadyFirst(pool)))


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of two CPUs for the module's Ray cases (pools then use it and
    leave it running)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


class _Kept:
    """One of the module's kept pools as a test sees it: `counts` and `stats()` from the
    test's start (the pool served earlier tests), and `close` that leaves it running;
    `make_pool` closes it after the test when a worker was lost (the next test gets a
    fresh one)."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.since = dict(pool.counts)

    def __getattr__(self, name):
        return getattr(self.pool, name)

    @property
    def counts(self) -> dict:
        return {k: v if k == "workers" else v - self.since[k] for k, v in self.pool.counts.items()}

    def stats(self, since=None) -> dict:
        return self.pool.stats({k: v + (since or {}).get(k, 0) for k, v in self.since.items()})

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def local_pools():
    """The module's kept local pools, by worker count: workers spawned per test would
    import torch again each time (seconds), and a kept pool is what `verify(workers=)`
    serves anyway; every search's setup starts it afresh (`Pool.setup`)."""
    kept: dict = {}
    yield kept
    for pool in kept.values():
        pool.close()


@pytest.fixture(scope="module")
def ray_pools(ray_cluster):
    """The module's kept Ray pools (as `local_pools`), closed before the cluster."""
    kept: dict = {}
    yield kept
    for pool in kept.values():
        pool.close()


def _close_all(kept: dict) -> None:
    while kept:
        kept.popitem()[1].close()


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.skipif(
    not ray_available(), reason="the optional ray package is not installed (pip install nncert[ray])"))])
def make_pool(request, net):
    """A function (model, workers) -> pool on the backend of the case: the module's kept
    pool of `net`'s model and that many workers (`_Kept`), started on first use. Every
    test asks for two workers, so one pool serves them all (the kill test, last of its
    users in the file, ends it). The tests of stale answers and errors once ran on one
    worker: the coordinator drops or raises each answer by its search number, whatever
    the number of workers, and with two both workers' answers to the earlier setup must
    be dropped."""
    if request.param == "local":
        kept, start = request.getfixturevalue("local_pools"), LocalPool
    else:
        from verifier.shards_ray import RayShardPool as start

        kept = request.getfixturevalue("ray_pools")

    def make(model, workers: int):
        assert model is net[0], "the kept pools hold the module's net"
        if workers not in kept:
            if request.param == "ray":
                _close_all(kept)   # the cluster's two CPUs: one pool's actors at a time
            kept[workers] = start(model, workers)
        return _Kept(kept[workers])

    yield make
    for workers, pool in list(kept.items()):
        if pool.stats()["live"] < workers:   # a worker was lost (killed): no longer kept
            kept.pop(workers).close()


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    model = known_answer_net(tmp_path_factory.mktemp("shards"), 0)
    return model, known_answer_min(model)


@pytest.mark.parametrize("mode", ["input", "activation"])
def test_workers_bound_the_rounds_and_the_verdicts_are_one_process_s(net, make_pool, mode: str) -> None:
    model, m = net
    spread = 0.05 * (1 + abs(m))
    # Small batches: many rounds, so both workers take some.
    cfg = with_overrides(Config(timeout=60), [f"bab.mode={mode}", "attack.enabled=false", "bab.batch_size=4"])
    pool = make_pool(model, 2)
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


@pytest.mark.parametrize("make_pool, mode", [("local", "input"), pytest.param("ray", "activation", marks=[
    pytest.mark.skipif(not ray_available(), reason="the optional ray package is not installed (pip install nncert[ray])")
])], indirect=["make_pool"])
def test_a_sharded_search_s_certificate_is_accepted(net, tmp_path, make_pool, mode: str) -> None:
    """The proof of a search whose rounds ran on workers (the leaves come back from them
    and are recorded here) makes a certificate that the independent checker accepts;
    each split kind on one backend (the protocol is the same on both)."""
    model, m = net
    spec = known_answer_spec(m - 0.05 * (1 + abs(m)))
    path = tmp_path / "below.vnnlib"
    vnnlib.write_vnnlib(path, spec)
    spec = vnnlib.load(path, model.n_inputs, model.n_outputs)
    cfg = with_overrides(Config(timeout=60), [f"bab.mode={mode}", "attack.enabled=false", "bab.batch_size=4",
                                              "proof=true"])
    pool = make_pool(model, 2)
    try:
        outcome = _search(model, mode, m - 0.05 * (1 + abs(m)), cfg, pool)
        assert outcome.status == "unsat" and pool.counts["batches"] >= 1, (outcome.stats, pool.stats())
    finally:
        pool.close()
    result = Result("unsat", "", method=f"bab-{mode}",
                    proof={"version": 1, "disjuncts": [bab_proof(mode, outcome)]})
    cert = tmp_path / f"{mode}.json"
    assert write_certificate(cert, model, path, spec, result) == "written"
    assert check_files(cert, model.path, path).accepted, mode


def test_workers_kept_across_calls_serve_each_and_stay_open(net, tmp_path, local_pools) -> None:
    """A pool handed to `verify` is used, not closed: the second call's search runs on the
    same workers (booted once), each call's stats count its own batches only, and a pool
    started on another model is refused."""
    model, m = net
    spread = 0.05 * (1 + abs(m))
    cfg = with_overrides(Config(timeout=60), ["bab.mode=input", "attack.enabled=false", "bab.batch_size=2"])
    if 2 not in local_pools:
        local_pools[2] = LocalPool(model, 2)
    pool = _Kept(local_pools[2])   # the module's kept pool, booted once for this test too
    try:
        pool.setup(SearchRecipe("input", known_answer_spec(m).disjuncts[0], cfg, time.monotonic() + 60))
        assert pool.wait_ready(60), "the workers did not start"
        runs = [verify(model, known_answer_spec(m - spread), cfg, workers=pool) for _ in range(2)]
        assert [r.verdict for r in runs] == ["unsat", "unsat"]
        batches = [r.stats["workers"]["batches"] for r in runs]
        assert min(batches) >= 1 and sum(batches) == pool.counts["batches"], (batches, pool.stats())
        assert pool.stats()["live"] == 2
        other = known_answer_net(tmp_path, 1)
        with pytest.raises(ValueError, match="another model"):
            verify(other, known_answer_spec(0.0), cfg, workers=pool)
    finally:
        pool.close()


def test_an_answer_to_an_earlier_search_is_dropped(net, make_pool) -> None:
    """A search that ends with a batch out (sat, a stop, the other split kind next) leaves
    its answer in the pipe; the next search on the same pool must not take it in. The
    stale batch here is the whole region: were its children absorbed, the next search's
    recorded leaves would cover the region twice."""
    model, m = net
    cfg = with_overrides(Config(timeout=60), ["bab.mode=input", "attack.enabled=false", "bab.batch_size=4",
                                              "proof=true"])
    disjunct = known_answer_spec(m - 0.05 * (1 + abs(m))).disjuncts[0]
    pool = make_pool(model, 2)
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


def test_an_earlier_search_s_error_does_not_end_the_next_one(net, make_pool) -> None:
    """On a kept pool, a worker may still answer the call before this one, often with that
    call's DeadlineExceeded: the next search drops it (the earlier search has ended, and
    no verdict of it waited for that batch) instead of ending as a timeout."""
    model, m = net
    cfg = with_overrides(Config(timeout=60), ["bab.mode=input", "attack.enabled=false", "bab.batch_size=4"])
    disjunct = known_answer_spec(m - 0.05 * (1 + abs(m))).disjuncts[0]
    pool = make_pool(model, 2)
    try:
        pool.setup(SearchRecipe("input", disjunct, cfg, time.monotonic() - 1.0))   # answers DeadlineExceeded
        outcome = _search(model, "input", m - 0.05 * (1 + abs(m)), cfg, pool)
        assert outcome.status == "unsat" and pool.counts["answered"] >= 1, (outcome.stats, pool.stats())
    finally:
        pool.close()


def test_an_exception_in_a_worker_is_raised_not_a_verdict(net, make_pool) -> None:
    model, m = net
    cfg = with_overrides(Config(timeout=60), ["bab.mode=input", "attack.enabled=false", "bab.batch_size=4"])
    pool = make_pool(model, 2)
    try:
        disjunct = known_answer_spec(m - 0.05 * (1 + abs(m))).disjuncts[0]
        pool.setup(SearchRecipe("input", disjunct, cfg, time.monotonic() - 1.0))   # a deadline already past
        with pytest.raises(DeadlineExceeded):
            pool.wait_ready(60)
    finally:
        pool.close()


class _KillsFirst:
    """A pool whose first worker is killed right after it takes its first batch."""

    def __init__(self, pool) -> None:
        self.pool, self.killed = pool, False

    def __getattr__(self, name):
        return getattr(self.pool, name)

    def submit(self, batch, round_: int) -> None:
        self.pool.submit(batch, round_)
        if not self.killed:
            self.killed = True
            self.pool.kill(0)


def test_a_worker_killed_mid_search_loses_nothing(net, make_pool) -> None:
    """The first batch is the whole region (the root's one open domain) and its worker is
    killed: the proved leaves (recorded, so boxes are not clipped) must still tile the
    whole region [-1, 1]^2. A coordinator that dropped the batch would end at once with
    no leaf and the same unsat."""
    model, m = net
    cfg = with_overrides(Config(timeout=60), ["bab.mode=input", "attack.enabled=false", "bab.batch_size=4",
                                              "proof=true"])
    pool = make_pool(model, 2)
    try:
        outcome = _search(model, "input", m - 0.05 * (1 + abs(m)), cfg, _KillsFirst(pool))
        assert outcome.status == "unsat", outcome.stats
        assert pool.counts["lost"] == 1 and pool.stats()["live"] == 1, pool.stats()
    finally:
        pool.close()
    lo, hi = np.concatenate(outcome.proof.lowers), np.concatenate(outcome.proof.uppers)
    assert np.prod(hi - lo, axis=1).sum() == pytest.approx(4.0, rel=1e-9)


@pytest.mark.parametrize("backend", ["local", pytest.param("ray", marks=pytest.mark.skipif(
    not ray_available(), reason="the optional ray package is not installed (pip install nncert[ray])"))])
def test_verify_with_workers_gives_the_verdicts_and_says_what_they_did(net, backend: str, request) -> None:
    if backend == "ray":   # verify starts two actors of its own: the kept ones give their CPUs back
        _close_all(request.getfixturevalue("ray_pools"))
    model, m = net
    spread = 0.05 * (1 + abs(m))
    cfg = with_overrides(Config(timeout=60), ["bab.mode=activation", "attack.enabled=false", "bab.workers=2",
                                              f"bab.backend={backend}"])
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


@pytest.mark.parametrize("flags, words", [
    (["--backend", "ray"], "pip install 'nncert[ray]'"),
    (["--address", "127.0.0.1:6379"], "needs bab.backend ray"),
    (["--backend", "ray", "--address", "127.0.0.1:1"], "no Ray cluster answers at 127.0.0.1:1"),
])
def test_workers_that_cannot_be_had_are_bad_input(net, tmp_path, monkeypatch, capsys, flags, words) -> None:
    """Ray missing (pretended here), an address without the Ray backend, a cluster that
    does not answer: one line and exit 2, before any verdict."""
    from verifier import shards_ray
    from verifier.cli import main

    if "--address" not in flags:
        monkeypatch.setattr(shards_ray, "ray_available", lambda: False)
    model, m = net
    path = tmp_path / "p.vnnlib"
    vnnlib.write_vnnlib(path, known_answer_spec(m - 1.0))
    code = main(["verify", str(model.path), str(path), "--workers", "2", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and len(err.splitlines()) == 1, err


class _EndsByAWorkersDeadline(Pool):
    """Workers that never say they are ready (messages go nowhere), so that the search runs
    its rounds here; the second look for answers raises DeadlineExceeded, as a worker's
    answer does when a sharded search runs out of time."""

    def __init__(self, model) -> None:
        super().__init__(model, 2)
        self.looks = 0

    def _send(self, i: int, message: bytes) -> bool:
        return True

    def _receive(self, timeout: float) -> list:
        self.looks += 1
        if self.looks == 2:
            raise DeadlineExceeded("a worker's bound pass saw the deadline")
        return []


def test_a_sharded_search_ended_by_an_exception_says_where_its_time_went(net) -> None:
    """The coordinator's loop time and the rounds it ran itself are in the stats of a
    search that ends by a worker's DeadlineExceeded (they read 0 when only a returned
    outcome carried them)."""
    model, m = net
    cfg = with_overrides(Config(timeout=60), ["bab.mode=input", "attack.enabled=false", "bab.batch_size=4",
                                              "device=cpu"])
    result = verify(model, known_answer_spec(m - 0.05 * (1 + abs(m))), cfg, workers=_EndsByAWorkersDeadline(model))
    assert result.verdict == "timeout", result.reason
    w = result.stats["workers"]
    assert w["loop_s"] >= w["rounds_here_s"] > 0, w


@pytest.mark.skipif(not ray_available(), reason="the optional ray package is not installed (pip install nncert[ray])")
def test_an_address_where_something_else_listens_is_bad_input(net, tmp_path, capsys) -> None:
    """A port that accepts connections but is no Ray cluster (an HTTP server here) is
    refused at once, not left to ray.init, which would retry until the run's time is up."""
    import http.server
    import threading

    from verifier.cli import main

    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:   # the server's own lines would go to stderr
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    model, m = net
    path = tmp_path / "p.vnnlib"
    vnnlib.write_vnnlib(path, known_answer_spec(m - 1.0))
    try:
        code = main(["verify", str(model.path), str(path), "--workers", "2", "--backend", "ray", "--address",
                     f"127.0.0.1:{server.server_address[1]}"])
    finally:
        server.shutdown()
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not a Ray cluster" in err and len(err.splitlines()) == 1, err
