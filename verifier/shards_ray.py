"""One instance's branch and bound on Ray actors (`nncert verify --workers N --backend
ray [--address ADDR]`, issue 21, item 2).

The protocol is the local backend's (verifier/shards.py): this process keeps the domain
store and the side tasks; each worker is a Ray actor holding a `SearchWorker`, which
reads the model once (the ONNX bytes go into Ray's object store once, whichever node
the actor lands on) and answers the same pickled setup and round messages. So rounds,
readiness, stale answers and errors behave as they do on local processes; what Ray adds
is placement: the actors may run on other machines of a cluster.

An actor that dies (its process killed, its node lost) is not restarted: its batch goes
back into the store, as with a local worker, and the search goes on with the others (or
in this process when none is left). Each actor takes one CPU of the cluster and bounds
on one torch thread. Every node must be able to import nncert (the same install, or a
Ray runtime environment); a local cluster started here inherits this process's
environment.
"""
from __future__ import annotations

import os
import time
from typing import Any, Optional

from verifier.config import ConfigError
from verifier.model import Model
from verifier.ray_connect import INSTALL_HINT, ClusterUnreachable, OtherCluster, connect, ray_available, unreachable
from verifier.shards import Pool, SearchWorker, worker_process_model

__all__ = ["RayShardPool", "ray_pool"]


class _Actor:
    """A Ray actor around a SearchWorker (created by `RayShardPool` through `ray.remote`)."""

    def __init__(self, onnx_bytes: bytes, label: str) -> None:
        self._worker = SearchWorker(worker_process_model(onnx_bytes, label))   # the actor's process is its own

    def handle(self, message: bytes) -> bytes:
        return self._worker.handle(message)


class RayShardPool(Pool):
    """`workers` Ray actors, one CPU each, on the cluster this process is connected to
    (`verifier.ray_connect.connect`: an address, the connection it already has, or a
    local cluster of this machine's CPUs started here, which outlives the pool: see
    `close`). A constructor that fails partway kills the actors it created before the
    error goes on."""

    def __init__(self, model: Model, workers: int, address: Optional[str] = None) -> None:
        import ray  # lazy: ray is an optional extra (pip install nncert[ray]), imported only for a Ray pool

        super().__init__(model, workers)
        self._ray = ray
        self._actors: list = []
        self._pending: dict[Any, int] = {}           # answer reference -> worker
        # A local cluster started here outlives the pool: sized for this machine, so that
        # a later pool of the process with more workers still gets its CPUs.
        connect(address, max(workers, os.cpu_count() or 1))
        actor = ray.remote(num_cpus=1, max_restarts=0)(_Actor)
        try:
            onnx_ref = ray.put(model.onnx_bytes)
            for _ in range(workers):
                self._actors.append(actor.remote(onnx_ref, str(model.path)))
        except BaseException:
            self.close()   # the actors created so far; a local cluster stays, as after any pool
            raise

    def _send(self, i: int, message: bytes) -> bool:
        # Ray queues the call; an actor that is gone shows when its answer is awaited.
        self._pending[self._actors[i].handle.remote(message)] = i
        return True

    def _receive(self, timeout: float) -> list[tuple[int, Optional[bytes]]]:
        ray = self._ray
        refs = list(self._pending)
        if not refs:
            time.sleep(min(timeout, 0.01))
            return []
        first, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if not first:
            return []
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)   # every other answer already in
        answers: list[tuple[int, Optional[bytes]]] = []
        for ref in done:
            i = self._pending.pop(ref)
            try:
                answers.append((i, ray.get(ref)))
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.ObjectLostError):
                answers.append((i, None))   # the actor or its node is gone
        return answers

    def kill(self, i: int) -> None:
        """Kill actor i at once (what a lost machine looks like; tests use it)."""
        self._ray.kill(self._actors[i], no_restart=True)

    def close(self) -> None:
        """Kill every actor at once (one may be in a round nobody will read). A local
        cluster this pool started stays up for the next pool of this process (starting one
        takes seconds, and `ray.shutdown()` more than a second). Ray's exit handler stops it
        when the process exits; `nncert verify`, which ends by `os._exit` (no handler
        runs), stops it itself just before, within its time promise
        (`verifier.ray_connect.shutdown_local`)."""
        for a in self._actors:
            try:
                self._ray.kill(a, no_restart=True)
            except Exception:  # noqa: BLE001 - an actor already gone: nothing to stop
                pass
        self._pending.clear()
        self._live.clear()


def ray_pool(model: Model, workers: int, address: Optional[str]) -> RayShardPool:
    """Ray actors for `model`'s searches; ConfigError (exit 2) when Ray is not installed,
    the address does not answer as a Ray cluster, `auto` finds none, or this process is
    on another cluster already. Any other failure (a ConnectionError of `ray.put` or of
    the actors' creation included) is raised as it is: an internal error, not bad input."""
    if not ray_available():
        raise ConfigError(f"config key 'bab.backend': ray needs the ray package ({INSTALL_HINT})")
    why = unreachable(address) if address is not None else ""
    if why:
        raise ConfigError(f"config key 'bab.address': {why}")
    try:
        return RayShardPool(model, workers, address)
    except OtherCluster as exc:   # connect: this process is connected to another cluster
        raise ConfigError(f"config key 'bab.address': {exc}") from None
    except ClusterUnreachable as exc:   # connect: no cluster there (`auto` with none running)
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"config key 'bab.address': {why}") from None
