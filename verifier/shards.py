"""One instance's branch and bound across workers (issue 21, item 2): the protocol, and
its local backend.

This process is the coordinator: it keeps the domain store, runs the side tasks
(replaying counterexamples in onnxruntime, recording proved leaves, progress) and
hands the worst domains, a batch at a time, to whichever worker is idle
(`bab.search._pooled`). Each worker holds a `SearchWorker`: the model, read once at
start, and per search the same brancher built from a `SearchRecipe`
(`verifier/searches.py`); a round there is `bab.search.worker_round`, and its reply (the
bounded children, their proved marks, counterexample candidates and leaf data) comes
back pickled. `Pool` keeps the coordinator's side of that protocol over any transport;
`LocalPool` runs the workers as spawned processes on this machine, and
`verifier.shards_ray.RayShardPool` as Ray actors (`bab.backend`).

Soundness does not rest on the workers' agreement: every domain a worker bounds is a
child of one this process handed out, the store only ever holds what came back, and a
verdict is reached by the same loop as in one process. A worker that dies gives its
batch back to the store; an exception inside a worker is raised here as it would be
raised in one process (DeadlineExceeded included, which `verify` turns into a timeout),
except one that answers an earlier search of a kept pool, which is dropped with the rest
of that search's answers (no verdict of that search waited for it).

Messages are pickled to bytes by the standard pickler: torch's own reductions for
multiprocessing would pass tensors through shared-memory file descriptors, which a
killed worker can leave behind, and bytes travel the same way through a pipe and
through Ray's object store.
"""
from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import pickle
import signal
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Optional

import torch

from bab.domains import Batch
from bab.memory import BatchSizer
from bab.search import RoundReply, worker_round
from verifier import heap
from verifier.config import BabConfig, ConfigError
from verifier.model import Model, model_from_proto
from verifier.searches import SearchRecipe, recipe_brancher

__all__ = ["Pool", "LocalPool", "SearchWorker", "local_pool", "search_pool", "starts_ray_cluster",
           "worker_process_model"]


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it pickles, else a RuntimeError with its traceback."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:   # noqa: BLE001 - any failure to pickle: send the text instead
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return RuntimeError(f"in a search worker: {text}")


def worker_process_model(onnx_bytes: bytes, label: str) -> Model:
    """What every worker process (a local one or a Ray actor's) does first: the heap and
    thread settings of `nncert verify` (verifier/heap.py), then the model from its bytes."""
    # lazy: onnx (with ml_dtypes, over a second) is for workers only, and this module is on
    # every search's import path, a torch module's (verify_module) included
    import onnx

    heap.keep_freed()
    torch.set_num_threads(1)
    return model_from_proto(onnx.load_from_string(onnx_bytes), label, check=False, data=onnx_bytes)


def _serve(conn: Connection, model_file: str, label: str) -> None:
    """A worker: read the model (from a file the coordinator wrote: bytes passed as an
    argument would hold the coordinator's `start()` until this process had imported
    torch), then answer setup and round messages until the coordinator's end of the pipe
    closes or the coordinator terminates this process. SIGINT is ignored (from the first
    instruction when the coordinator started this process from its main thread:
    `_start_ignoring_sigint`): a Ctrl-C in the terminal reaches the whole process group,
    and the coordinator answers it by closing the pool; a worker would only die with a
    traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(model_file, "rb") as f:
        worker = SearchWorker(worker_process_model(f.read(), label))
    try:
        while True:
            conn.send_bytes(worker.handle(conn.recv_bytes()))
    except (EOFError, OSError):   # the coordinator is gone (it ended the run): nothing to tell
        return


class SearchWorker:
    """What a worker (a local process or a Ray actor) holds between messages: the model
    and the brancher of the current search. Messages and answers are pickled tuples:

    - ("setup", search, recipe, wall_deadline) -> ("ready", search, None): build the
      brancher of `recipe` and run its root (unstable neurons, layout). The deadline
      travels on the wall clock (time.time()) and is re-based on this process's
      monotonic clock when the message is read: another node's monotonic clock starts
      elsewhere, and seconds left would start counting only when a busy or booting
      worker got to the message. This assumes the nodes' wall clocks agree (NTP): one
      running ahead by more than the time left ends the search as a timeout early.
    - ("round", search, round, batch) -> ("done", search, (reply, seconds)): one round
      (`bab.search.worker_round`) and the seconds it took here, from which the
      coordinator tells bounding from communication.

    There is no stop message: the coordinator terminates its workers (`close`).

    A failure is answered ("error", search, exception) to be raised in the coordinator,
    never turned into a verdict; `search` is echoed so that an answer to an earlier
    search can be dropped there."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.brancher: Any = None

    def handle(self, message: bytes) -> bytes:
        search = None
        try:
            kind, *rest = pickle.loads(message)
            search = rest[0]
            if kind == "setup":
                recipe, wall = rest[1], rest[2]
                recipe = dataclasses.replace(recipe, deadline=time.monotonic() + (wall - time.time()))
                self.brancher = recipe_brancher(self.model, recipe)
                self.brancher.root()
                return _dumps(("ready", search, None))
            if kind != "round":
                raise RuntimeError(f"a search worker got an unknown message {kind!r}")
            round_, batch = rest[1], rest[2]
            if self.brancher is None:
                raise RuntimeError("a search worker got a round before its setup")
            t = time.monotonic()
            # The coordinator sizes the batches; this worker halves one only on out-of-memory.
            reply = worker_round(self.brancher, batch, round_, BatchSizer(size=max(1, len(batch))))
            return _dumps(("done", search, (reply, time.monotonic() - t)))
        except BaseException as exc:  # noqa: B902 - every failure goes back to be raised there
            return _dumps(("error", search, _portable(exc)))


def setup_message(search: int, recipe: SearchRecipe) -> bytes:
    """The setup message of `recipe`, its deadline sent on the wall clock."""
    return _dumps(("setup", search, recipe, time.time() + (recipe.deadline - time.monotonic())))


class Traffic:
    """What a pool's messages cost, for `stats()` (BENCHMARKS.md's communication figures):
    bytes each way, the coordinator's pickling time, per batch the wall time from
    hand-out to reply against the seconds the worker spent bounding it (over the
    `answered` batches: one whose search ended first is counted out, never in), the
    seconds from each setup to each worker's readiness (summed over workers), and the
    coordinator's seconds in its search loops and, of those, in rounds it ran itself
    (`loop_s`, `rounds_here_s`: `Pool.add_loop_time`)."""

    def __init__(self, workers: int) -> None:
        self.counts = {"workers": workers, "batches": 0, "domains": 0, "answered": 0, "lost": 0, "wait_s": 0.0,
                       "bytes_out": 0, "bytes_in": 0, "pickle_s": 0.0, "trip_s": 0.0, "worker_s": 0.0,
                       "ready_s": 0.0, "loop_s": 0.0, "rounds_here_s": 0.0}
        self._sent: dict[int, float] = {}

    def sent(self, i: int, message: bytes, domains: int, pickle_s: float) -> None:
        c = self.counts
        c["batches"] += 1
        c["domains"] += domains
        c["bytes_out"] += len(message)
        c["pickle_s"] += pickle_s
        self._sent[i] = time.monotonic()

    def received(self, i: int, message: bytes, worker_s: float, pickle_s: float) -> None:
        c = self.counts
        c["answered"] += 1
        c["bytes_in"] += len(message)
        c["pickle_s"] += pickle_s
        c["worker_s"] += worker_s
        start = self._sent.pop(i, None)
        if start is not None:
            c["trip_s"] += time.monotonic() - start

    def forget(self) -> None:
        """A new search: batches out now belong to no search, and their answers are dropped."""
        self._sent.clear()

    def stats(self, live: int, since: Optional[dict] = None) -> dict:
        since = since or {}
        out = {k: v if k == "workers" else v - since.get(k, 0) for k, v in self.counts.items()}
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()} | {"live": live}


def _dumps(message: Any) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


class Pool:
    """The RoundPool protocol (bab.search) over some transport: which worker holds which
    batch, which have built the current search's brancher, which are lost, and which
    answers belong to an earlier search. A backend says how a message reaches worker i
    (`_send`) and how answers come back (`_receive`); `LocalPool` uses pipes to spawned
    processes, `verifier.shards_ray.RayShardPool` Ray actors."""

    def __init__(self, model: Model, workers: int) -> None:
        self._busy: dict[int, Batch] = {}            # worker index -> the batch it holds
        self._live: set[int] = set(range(workers))
        self._ready: set[int] = set()                # workers whose brancher for this search is built
        self._lost_batches: list[Batch] = []         # batches a failed send could not hand out
        # Which setup is current: a search that ended with batches out (sat, a stop, the
        # other split kind next) leaves answers on the way that belong to no search now.
        self._search = 0
        self._setup_at = 0.0
        self.traffic = Traffic(workers)
        self.counts = self.traffic.counts
        self.digest = hashlib.sha256(model.onnx_bytes).digest()   # `holds`

    def holds(self, model: Model) -> bool:
        """Whether the workers were started with this model (a kept pool may be handed to
        `verify` again, on its own model only)."""
        return self.digest == hashlib.sha256(model.onnx_bytes).digest()

    def _send(self, i: int, message: bytes) -> bool:
        """Hand `message` to worker i; False when it is gone."""
        raise NotImplementedError

    def _receive(self, timeout: float) -> list[tuple[int, Optional[bytes]]]:
        """Answers that arrived within `timeout` seconds, as (worker, message); a message
        of None says that worker is gone."""
        raise NotImplementedError

    def setup(self, recipe: SearchRecipe) -> None:
        """Every live worker builds the brancher of `recipe`; each says when it is ready
        (`collect` hears it), and until then gets no batch: the loop bounds them itself."""
        self._busy.clear()
        self._ready.clear()
        self._lost_batches.clear()
        self._search += 1
        self.traffic.forget()
        self._setup_at = time.monotonic()
        message = setup_message(self._search, recipe)
        for i in sorted(self._live):
            if not self._send(i, message):
                self._lose(i)

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every live worker has built the brancher of the last setup (True),
        or `timeout` seconds (False; also when no worker is left); replies other than
        readiness are not expected here."""
        end = time.monotonic() + timeout
        while self._ready != self._live and time.monotonic() < end:
            replies, lost = self.collect(min(0.1, max(0.0, end - time.monotonic())))
            if replies or lost:
                raise RuntimeError("wait_ready: a round was out while waiting for readiness")
        return bool(self._live) and self._ready == self._live

    def idle(self) -> int:
        return len(self._ready - set(self._busy))

    def submit(self, batch: Batch, round_: int) -> None:
        i = next(i for i in sorted(self._ready) if i not in self._busy)
        t = time.monotonic()
        message = _dumps(("round", self._search, round_, batch))
        pickle_s = time.monotonic() - t
        if not self._send(i, message):
            self._lose(i)
            self.counts["lost"] += 1
            self._lost_batches.append(batch)
            return
        self._busy[i] = batch
        self.traffic.sent(i, message, len(batch), pickle_s)

    def collect(self, timeout: float) -> tuple[list[RoundReply], list[Batch]]:
        lost, self._lost_batches = self._lost_batches, []
        replies: list[RoundReply] = []
        if not self._live:
            return replies, lost
        t = time.monotonic()
        answers = self._receive(timeout)
        self.counts["wait_s"] += time.monotonic() - t
        for i, message in answers:
            if i not in self._live:
                continue         # a lost worker's other answers
            if message is None:
                if i in self._busy:
                    lost.append(self._busy.pop(i))
                    self.counts["lost"] += 1
                self._lose(i)
                continue
            reply = self._take(i, message)
            if reply is not None:
                replies.append(reply)
        return replies, lost

    def _take(self, i: int, message: bytes) -> Optional[RoundReply]:
        """One answer from worker i: its reply to a round of this search, or None."""
        t = time.monotonic()
        kind, search, payload = pickle.loads(message)
        if search is not None and search != self._search:
            # An answer to an earlier search, which has ended: dropped (the worker was freed
            # at setup), an error too. That search's verdict did not wait for it: a search
            # ends unsat only with no batch out, and its sat, timeout or stop claims nothing
            # about the batches still out; on a kept pool such an error is often the earlier
            # call's DeadlineExceeded, which must not end this call.
            return None
        if kind == "error":
            raise payload    # this search's (DeadlineExceeded: the deadline is shared) or unplaceable
        if kind == "ready":
            self._ready.add(i)
            self.counts["ready_s"] += time.monotonic() - self._setup_at
            return None
        self._busy.pop(i, None)
        reply, worker_s = payload
        self.traffic.received(i, message, worker_s, time.monotonic() - t)
        return reply

    def add_loop_time(self, loop_s: float, here_s: float) -> None:
        """A search's seconds in the coordinator's loop and in rounds run there (`bab.search._pooled`)."""
        self.counts["loop_s"] += loop_s
        self.counts["rounds_here_s"] += here_s

    def _lose(self, i: int) -> None:
        self._live.discard(i)
        self._ready.discard(i)
        self._busy.pop(i, None)

    def stats(self, since: Optional[dict] = None) -> dict:
        """The counters (`Traffic`), less those in `since` (an earlier `dict(pool.counts)`)."""
        return self.traffic.stats(len(self._live), since)


class LocalPool(Pool):
    """`workers` spawned processes on this machine, one pipe each. A constructor that
    fails partway (no process or pipe left to start one) stops the workers it started
    and closes their pipes before the error goes on."""

    def __init__(self, model: Model, workers: int) -> None:
        super().__init__(model, workers)
        ctx = multiprocessing.get_context("spawn")   # a clean interpreter: no forked torch state
        self._conns: list[Connection] = []
        self._procs: list = []
        self._file = tempfile.NamedTemporaryFile(prefix="nncert-model-", suffix=".onnx")
        try:
            self._file.write(model.onnx_bytes)
            self._file.flush()
            for i in range(workers):
                ours, theirs = ctx.Pipe()
                self._conns.append(ours)
                proc = ctx.Process(target=_serve, args=(theirs, self._file.name, str(model.path)), daemon=True,
                                   name=f"nncert-search-worker-{i}")
                try:
                    _start_ignoring_sigint(proc)
                finally:
                    theirs.close()
                self._procs.append(proc)
        except BaseException:
            self.close()
            raise

    def _send(self, i: int, message: bytes) -> bool:
        try:
            self._conns[i].send_bytes(message)
        except (OSError, ValueError):
            return False
        return True

    def _receive(self, timeout: float) -> list[tuple[int, Optional[bytes]]]:
        conns = {self._conns[i]: i for i in self._live}
        answers: list[tuple[int, Optional[bytes]]] = []
        for conn in wait(list(conns), timeout):
            try:
                answers.append((conns[conn], conn.recv_bytes()))
            except (EOFError, OSError):
                answers.append((conns[conn], None))
        return answers

    def kill(self, i: int) -> None:
        """Kill worker i at once (what a lost machine looks like; tests use it)."""
        self._procs[i].kill()

    def close(self) -> None:
        """Stop every worker at once: one may be in the middle of a round nobody will read,
        and the run's time promise (verifier/guard.py) leaves no room to wait for it. Each
        gets SIGTERM; one still there `STOP_GRACE_S` later (its code catches, ignores or
        blocks SIGTERM) is killed, so that no worker outlives its pool."""
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        _join(self._procs, STOP_GRACE_S)
        for proc in self._procs:
            if proc.is_alive():
                proc.kill()
        _join(self._procs, STOP_GRACE_S)
        for conn in self._conns:
            conn.close()
        self._live.clear()
        self._file.close()   # deletes it


def _start_ignoring_sigint(proc: multiprocessing.process.BaseProcess) -> None:
    """Start a worker with SIGINT ignored from its first instruction, which covers the
    seconds it spends importing torch before `_serve` runs: an ignored signal stays
    ignored across exec, and Python then leaves it so. Only the main thread may set a
    handler; started from another, the worker ignores SIGINT once `_serve` starts. A
    Ctrl-C within the milliseconds of `start()` is ignored by this process too."""
    before = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or before is None:
        proc.start()
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        proc.start()
    finally:
        signal.signal(signal.SIGINT, before)


# Seconds `LocalPool.close` waits for its workers to end after SIGTERM, and again after SIGKILL.
STOP_GRACE_S = 1.0


def _join(procs: list, seconds: float) -> None:
    """Wait for `procs` to end, `seconds` at most in all (not each: a pool of many stuck
    workers would otherwise hold the run that long per worker)."""
    end = time.monotonic() + seconds
    for proc in procs:
        proc.join(timeout=max(0.0, end - time.monotonic()))


def local_pool(model: Model, workers: int) -> LocalPool:
    """`workers` local processes for `model`'s searches (see the module docstring).

    Raises ConfigError inside a daemonic process, which may not start processes of its
    own (`nncert bench --isolate worker` runs each instance in one)."""
    if multiprocessing.current_process().daemon:
        raise ConfigError("config key 'bab.workers': this run is inside a daemonic worker process (nncert bench "
                          "--isolate worker), which may not start the search's workers; run it with --isolate "
                          "process, or without bab.workers")
    return LocalPool(model, workers)


def starts_ray_cluster(bab: BabConfig) -> bool:
    """Whether `search_pool(model, bab)` starts a local Ray cluster (the Ray backend with
    no address) in a process not yet connected to Ray: one that ends by `os._exit` must
    then stop it itself (`verifier.ray_connect.shutdown_local`)."""
    return bab.backend == "ray" and bab.workers >= 2 and not bab.address


def search_pool(model: Model, bab: BabConfig) -> Optional[Pool]:
    """The workers `bab` asks for (none below two), on its backend. ConfigError when they
    cannot be had: an address without the Ray backend, Ray not installed, a cluster
    that does not answer, a daemonic process that may not start local workers."""
    if bab.address and bab.backend != "ray":
        raise ConfigError(f"config key 'bab.address': a Ray cluster address ({bab.address!r}) needs bab.backend ray "
                          "(--backend ray)")
    if bab.workers < 2:
        return None
    if bab.backend == "ray":
        from verifier.shards_ray import ray_pool   # Ray is optional: imported only when asked for

        return ray_pool(model, bab.workers, bab.address or None)
    return local_pool(model, bab.workers)
