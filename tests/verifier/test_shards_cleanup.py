"""What the sharded search leaves behind and how it fails (issue 21's mends): a cluster
address whose answer arrives in pieces is still recognised; only a cluster that cannot
be reached is bad input, another failure of the pool's setup an internal error; no
worker outlives its pool, not one that ignores SIGTERM, nor one a failed constructor
had started; a Ctrl-C does not kill local workers; `nncert verify` on a local Ray
cluster leaves none of its processes behind."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import vnnlib
from tests.builders import known_answer_min, known_answer_net, known_answer_spec
from verifier import Config, ray_connect
from verifier.config import with_overrides
from verifier.searches import SearchRecipe
from verifier.shards import LocalPool

_NO_RAY = "the optional ray package is not installed (pip install nncert[ray])"
ROOT = Path(__file__).resolve().parents[2]


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


def _left_in_group(pgid: int) -> list[str]:
    """The processes of group `pgid` still running (zombies, which only wait to be reaped,
    left out), as their command lines."""
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            left.append(f"{pid} {cmdline[:160]}")
    return left


@pytest.mark.skipif(not ray_connect.ray_available(), reason=_NO_RAY)
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the processes left from /proc (Linux)")
def test_verify_on_a_local_ray_cluster_leaves_no_process_behind(net, tmp_path) -> None:
    """`nncert verify --workers 2 --backend ray` starts a local cluster and ends by os._exit,
    where Ray's exit handler does not run: the run must stop the cluster itself. The run
    is the leader of a process group of its own, which every process it starts (the
    raylet, the GCS server, their agents, the actors) joins; none may be left once it has
    ended (those being killed get a few seconds to go)."""
    m = known_answer_min(net)
    spec = tmp_path / "below.vnnlib"
    vnnlib.write_vnnlib(spec, known_answer_spec(m - 0.05 * (1 + abs(m))))
    results = tmp_path / "results.txt"
    run = subprocess.Popen([sys.executable, "-m", "verifier.cli", "verify", str(net.path), str(spec), "--workers",
                            "2", "--backend", "ray", "--timeout", "120", "--results-file", str(results), "-q"],
                           cwd=ROOT, start_new_session=True, stderr=subprocess.PIPE, text=True)
    try:
        _, err = run.communicate(timeout=150)
        assert run.returncode == 0 and results.read_text().strip() == "unsat", err
        end = time.monotonic() + 10
        while _left_in_group(run.pid) and time.monotonic() < end:
            time.sleep(0.2)
        assert not _left_in_group(run.pid), "\n".join(_left_in_group(run.pid))
    finally:
        run.kill()
        try:
            os.killpg(run.pid, signal.SIGKILL)   # what a failed run left, so that the next tests do not meet it
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the cluster's processes in /proc (Linux)")
@pytest.mark.parametrize("left, shut_down, words", [(60.0, True, ""), (0.5, False, "killed, not shut down")])
def test_a_local_cluster_is_shut_down_with_time_left_and_killed_without(tmp_path, monkeypatch, left, shut_down,
                                                                          words) -> None:
    """With SHUTDOWN_S left ray.shutdown() runs; with less it is skipped, saying why. Either
    way a process of the cluster that is still there (an agent that hangs; here a child
    running from the ray package's folder) is killed. Ray is a stand-in."""
    package = tmp_path / "ray"
    calls: list = []
    ray = types.SimpleNamespace(__file__=str(package / "__init__.py"), is_initialized=lambda: True,
                                shutdown=lambda: calls.append("shutdown"))
    monkeypatch.setitem(sys.modules, "ray", ray)
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(package)])
    try:
        why = ray_connect.shutdown_local(time.monotonic() + left)
        assert agent.wait(timeout=30) == -signal.SIGKILL
        assert calls == (["shutdown"] if shut_down else []) and words in why and bool(why) != shut_down, why
    finally:
        agent.kill()
