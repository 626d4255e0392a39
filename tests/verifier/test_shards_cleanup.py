"""What the sharded search leaves behind and how it fails (issue 21's mends): a cluster
address whose answer arrives in pieces is still recognised; only a cluster that cannot
be reached is bad input, another failure of the pool's setup an internal error; no
worker outlives its pool, not one that ignores SIGTERM, nor one a failed constructor
had started; a Ctrl-C does not kill local workers."""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
import types

import pytest

import vnnlib
from tests.builders import known_answer_net, known_answer_spec
from verifier import Config, ray_connect
from verifier.config import with_overrides
from verifier.searches import SearchRecipe
from verifier.shards import LocalPool

_NO_RAY = "the optional ray package is not installed (pip install nncert[ray])"


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return known_answer_net(tmp_path_factory.mktemp("cleanup"), 0)


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "p.vnnlib"
    vnnlib.write_vnnlib(path, known_answer_spec(-100.0))
    return path


class _Dribbling:
    """A socket whose peer's bytes come one per recv (TCP may split a frame anywhere)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __enter__(self) -> "_Dribbling":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def settimeout(self, _t: float) -> None:
        pass

    def sendall(self, _b: bytes) -> None:
        pass

    def recv(self, n: int) -> bytes:
        head, self.data = self.data[:min(n, 1)], self.data[min(n, 1):]
        return head


def test_a_cluster_s_answer_split_across_reads_is_recognised(monkeypatch) -> None:
    """gRPC's SETTINGS frame header (type 4 in its fourth byte) read a byte at a time is
    still a Ray cluster; a peer that closes after three bytes is not."""
    settings = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
    monkeypatch.setattr(ray_connect.socket, "create_connection", lambda *a, **k: _Dribbling(settings))
    assert ray_connect.unreachable("127.0.0.1:6379") == ""
    monkeypatch.setattr(ray_connect.socket, "create_connection", lambda *a, **k: _Dribbling(settings[:3]))
    assert "not a Ray cluster" in ray_connect.unreachable("127.0.0.1:6379")


@pytest.mark.skipif(not ray_connect.ray_available(), reason=_NO_RAY)
@pytest.mark.parametrize("fails, code, words", [
    ("init", 2, "config key 'bab.address': no cluster here"),           # `auto` finds none: bad input
    ("put", 1, "internal error: ConnectionError: object store gone"),   # after connecting: not the input's fault
])
def test_only_a_cluster_not_found_is_bad_input(net, spec_file, monkeypatch, capsys, fails, code, words) -> None:
    """A ConnectionError from ray.init at the given address says the address is wrong
    (exit 2); one from ray.put while the pool is set up is an internal error (exit 1).
    No cluster is started: Ray's calls are replaced."""
    import ray

    from verifier.cli import main

    def refuse(*_a, **_k):
        raise ConnectionError("no cluster here" if fails == "init" else "object store gone")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    if fails == "put":
        monkeypatch.setattr("verifier.shards_ray.connect", lambda *_a: True)
        monkeypatch.setattr(ray, "put", refuse)
    assert main(["verify", str(net.path), str(spec_file), "--workers", "2", "--backend", "ray",
                 "--address", "auto"]) == code
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


def test_closing_a_local_pool_kills_a_worker_that_outlives_sigterm(net) -> None:
    """Workers started while this process ignores SIGTERM inherit that (an ignored signal
    stays ignored across exec, and Python leaves it so), so they outlive the SIGTERM
    `close` sends: `close` must then kill them rather than return with them running."""
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        pool = LocalPool(net, 2)
    finally:
        signal.signal(signal.SIGTERM, old)
    procs = list(pool._procs)
    try:
        pool.close()
        assert not any(p.is_alive() for p in procs), [p.exitcode for p in procs]
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()


def test_a_local_pool_that_fails_to_start_stops_the_workers_it_started(net, monkeypatch) -> None:
    """The second worker's pipe cannot be had (file descriptors run out): the first
    worker, already started, must not be left running, nor its pipe open."""
    ctx = multiprocessing.get_context("spawn")   # the context LocalPool starts its workers from
    real_process, real_pipe = ctx.Process, ctx.Pipe
    started, pipes = [], []

    def process(*args, **kwargs):
        started.append(real_process(*args, **kwargs))
        return started[-1]

    def pipe(*args, **kwargs):
        if pipes:
            raise OSError(24, "Too many open files")
        pipes.append(real_pipe(*args, **kwargs))
        return pipes[-1]

    monkeypatch.setattr(ctx, "Process", process)
    monkeypatch.setattr(ctx, "Pipe", pipe)
    try:
        with pytest.raises(OSError, match="Too many open files"):
            LocalPool(net, 2)
        assert len(started) == 1 and not started[0].is_alive(), started
        assert pipes[0][0].closed and pipes[0][1].closed
    finally:
        for p in started:
            if p.is_alive():
                p.kill()


def test_a_ray_pool_that_fails_to_start_kills_the_actors_it_created(net, monkeypatch) -> None:
    """The second actor cannot be created: the first must be killed before the error goes
    on. Ray is a stand-in here that records what the pool asks of it."""
    from verifier import shards_ray

    class Ray:
        def __init__(self) -> None:
            self.created: list = []
            self.killed: list = []

        def remote(self, **_options):
            def create(*_args):
                if self.created:
                    raise RuntimeError("no CPU left for an actor")
                self.created.append(object())
                return self.created[-1]
            return lambda _cls: types.SimpleNamespace(remote=create)

        def put(self, value):
            return value

        def kill(self, actor, no_restart: bool) -> None:
            self.killed.append(actor)

    ray = Ray()
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setattr(shards_ray, "connect", lambda *_a: False)
    with pytest.raises(RuntimeError, match="no CPU left"):
        shards_ray.RayShardPool(net, 2)
    assert ray.killed == ray.created and len(ray.created) == 1


def test_local_workers_ignore_sigint(net) -> None:
    """A Ctrl-C in the terminal reaches every process of the group, the workers too: one
    sent while a worker boots (imports torch) and one while it waits for messages must
    leave it serving (the coordinator handles the Ctrl-C and closes the pool)."""
    recipe = SearchRecipe("input", known_answer_spec(0.0).disjuncts[0],
                          with_overrides(Config(timeout=60), ["bab.mode=input", "attack.enabled=false"]),
                          time.monotonic() + 60)
    pool = LocalPool(net, 1)
    try:
        worker = pool._procs[0]
        os.kill(worker.pid, signal.SIGINT)
        pool.setup(recipe)
        assert pool.wait_ready(60), worker.exitcode
        os.kill(worker.pid, signal.SIGINT)
        pool.setup(recipe)
        assert pool.wait_ready(60) and worker.is_alive(), worker.exitcode
    finally:
        pool.close()
