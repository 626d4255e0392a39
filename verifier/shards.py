"""One instance's branch and bound across local worker processes (issue 21, item 2).

This process is the coordinator: it keeps the domain store, runs the side tasks
(replaying counterexamples in onnxruntime, recording proved leaves, progress) and
hands the worst domains, a batch at a time, to whichever worker is idle
(`bab.search._pooled`). Each worker is a spawned interpreter that read the model once
at start and, per search, builds the same brancher from a `SearchRecipe`
(`verifier/searches.py`); a round there is `bab.search.worker_round`, and its reply (the
bounded children, their proved marks, counterexample candidates and leaf data) comes
back pickled.

Soundness does not rest on the workers' agreement: every domain a worker bounds is a
child of one this process handed out, the store only ever holds what came back, and a
verdict is reached by the same loop as in one process. A worker that dies gives its
batch back to the store; an exception inside a worker is raised here as it would be
raised in one process (DeadlineExceeded included, which `verify` turns into a timeout).

Messages are pickled to bytes by the standard pickler (`send_bytes`): torch's own
reductions for multiprocessing would pass tensors through shared-memory file
descriptors, which a killed worker can leave behind.
"""
from __future__ import annotations

import multiprocessing
import pickle
import tempfile
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any

import onnx
import torch

from bab.domains import Batch
from bab.memory import BatchSizer
from bab.search import RoundReply, worker_round
from verifier import heap
from verifier.config import ConfigError
from verifier.model import Model, model_from_proto
from verifier.searches import SearchRecipe, recipe_brancher

__all__ = ["LocalPool", "local_pool"]


def _send(conn: Connection, message: Any) -> None:
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _portable(exc: BaseException) -> BaseException:
    """The exception itself when it pickles, else a RuntimeError with its traceback."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:   # noqa: BLE001 - any failure to pickle: send the text instead
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return RuntimeError(f"in a search worker: {text}")


def _serve(conn: Connection, model_file: str, label: str) -> None:
    """A worker: read the model (from a file the coordinator wrote: bytes passed as an
    argument would hold the coordinator's `start()` until this process had imported
    torch), then answer setup and round messages until told to stop or until the
    coordinator's end of the pipe closes."""
    heap.keep_freed()   # as `nncert verify` does for itself (verifier/heap.py)
    torch.set_num_threads(1)
    with open(model_file, "rb") as f:
        onnx_bytes = f.read()
    model = model_from_proto(onnx.load_from_string(onnx_bytes), label, check=False, data=onnx_bytes)
    try:
        _answer(conn, model)
    except (EOFError, OSError):   # the coordinator is gone (it ended the run): nothing to tell
        return


def _answer(conn: Connection, model: Any) -> None:
    """The worker's loop: setup and round messages until "stop"; a failure inside one is
    sent back to be raised there."""
    brancher = None
    while True:
        message = pickle.loads(conn.recv_bytes())
        kind = message[0]
        if kind == "stop":
            return
        search = message[1]    # which setup the message belongs to, echoed in the answer
        try:
            if kind == "setup":
                brancher = recipe_brancher(model, message[2])
                brancher.root()     # what the brancher learns at the root (unstable neurons, layout)
                _send(conn, ("ready", search, None))
            elif kind == "round":
                _, _, round_, batch = message
                if brancher is None:
                    raise RuntimeError("a search worker got a round before its setup")
                # The coordinator sizes the batches; this worker halves one only on out-of-memory.
                reply = worker_round(brancher, batch, round_, BatchSizer(size=max(1, len(batch))))
                _send(conn, ("done", search, reply))
        except BaseException as exc:  # noqa: B902 - every failure goes back to be raised there
            _send(conn, ("error", search, _portable(exc)))


class LocalPool:
    """`workers` spawned processes speaking the RoundPool protocol (bab.search)."""

    def __init__(self, model: Model, workers: int) -> None:
        ctx = multiprocessing.get_context("spawn")   # a clean interpreter: no forked torch state
        self._conns: list[Connection] = []
        self._procs: list = []
        self._busy: dict[int, Batch] = {}            # worker index -> the batch it holds
        self._live: set[int] = set()
        self._ready: set[int] = set()                # workers whose brancher for this search is built
        self._lost_batches: list[Batch] = []         # batches a failed send could not hand out
        # Which setup is current: a search that ended with batches out (sat, a stop, the
        # other split kind next) leaves replies in the pipes that belong to no search now.
        self._search = 0
        self.counts = {"workers": workers, "batches": 0, "lost": 0, "wait_s": 0.0}
        self._file = tempfile.NamedTemporaryFile(prefix="nncert-model-", suffix=".onnx")
        self._file.write(model.onnx_bytes)
        self._file.flush()
        for i in range(workers):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(theirs, self._file.name, str(model.path)), daemon=True,
                               name=f"nncert-search-worker-{i}")
            proc.start()
            theirs.close()
            self._conns.append(ours)
            self._procs.append(proc)
            self._live.add(i)

    def setup(self, recipe: SearchRecipe) -> None:
        """Every live worker builds the brancher of `recipe`; each says when it is ready
        (`collect` hears it), and until then gets no batch: the loop bounds them itself."""
        self._busy.clear()
        self._ready.clear()
        self._lost_batches.clear()
        self._search += 1
        for i in sorted(self._live):
            try:
                _send(self._conns[i], ("setup", self._search, recipe))
            except (OSError, ValueError):
                self._lose(i)

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every live worker has built the brancher of the last setup (True),
        or `timeout` seconds (False); replies other than readiness are not expected here."""
        end = time.monotonic() + timeout
        while self._ready != self._live and time.monotonic() < end:
            replies, lost = self.collect(min(0.1, max(0.0, end - time.monotonic())))
            if replies or lost:
                raise RuntimeError("wait_ready: a round was out while waiting for readiness")
        return self._ready == self._live

    def idle(self) -> int:
        return len(self._ready - set(self._busy))

    def submit(self, batch: Batch, round_: int) -> None:
        i = next(i for i in sorted(self._ready) if i not in self._busy)
        try:
            _send(self._conns[i], ("round", self._search, round_, batch))
        except (OSError, ValueError):
            self._lose(i)
            self.counts["lost"] += 1
            self._lost_batches.append(batch)
            return
        self._busy[i] = batch
        self.counts["batches"] += 1

    def collect(self, timeout: float) -> tuple[list[RoundReply], list[Batch]]:
        lost, self._lost_batches = self._lost_batches, []
        replies: list[RoundReply] = []
        conns = {self._conns[i]: i for i in self._live}
        if not conns:
            return replies, lost
        t = time.monotonic()
        ready = wait(list(conns), timeout)
        self.counts["wait_s"] += time.monotonic() - t
        for conn in ready:
            i = conns[conn]
            try:
                kind, search, payload = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                if i in self._busy:
                    lost.append(self._busy.pop(i))
                    self.counts["lost"] += 1
                self._lose(i)
                continue
            if kind == "error":
                raise payload    # from an earlier search too: a bug is a bug (DeadlineExceeded: the deadline is shared)
            if search != self._search:
                continue         # an answer to an earlier search: dropped (the worker was freed at setup)
            if kind == "ready":
                self._ready.add(i)
                continue
            self._busy.pop(i, None)
            replies.append(payload)
        return replies, lost

    def _lose(self, i: int) -> None:
        self._live.discard(i)
        self._ready.discard(i)
        self._busy.pop(i, None)

    def stats(self) -> dict:
        return {**self.counts, "wait_s": round(self.counts["wait_s"], 3), "live": len(self._live)}

    def kill(self, i: int) -> None:
        """Kill worker i at once (what a lost machine looks like; tests use it)."""
        self._procs[i].kill()

    def close(self) -> None:
        """Stop every worker at once: one may be in the middle of a round nobody will read,
        and the run's time promise (verifier/guard.py) leaves no room to wait for it."""
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(timeout=2.0)
        for conn in self._conns:
            conn.close()
        self._live.clear()
        self._file.close()   # deletes it


def local_pool(model: Model, workers: int) -> LocalPool:
    """`workers` local processes for `model`'s searches (see the module docstring).

    Raises ConfigError inside a daemonic process, which may not start processes of its
    own (`nncert bench --isolate worker` runs each instance in one)."""
    if multiprocessing.current_process().daemon:
        raise ConfigError("config key 'bab.workers': this run is inside a daemonic worker process (nncert bench "
                          "--isolate worker), which may not start the search's workers; run it with --isolate "
                          "process, or without bab.workers")
    return LocalPool(model, workers)
