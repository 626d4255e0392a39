"""Suites on Ray: each instance a Ray task, on a running cluster or a local one.

The task does what a local slot does, on whichever node Ray picks: ``process``
isolation runs a fresh ``nncert verify`` with the instance's timeout and the hard kill
past it (`process.run_in_process`); ``worker`` isolation keeps one long-lived worker
per Ray worker process (`worker.WorkerSlot`, with its RSS limit), created on the first
instance that process runs. So timeouts, memory limits and the outcome rows are those
of the local backend, and the runner's results CSV and summaries are unchanged.

A Ray worker that dies under a task (its node lost, the process killed) is retried
once (``max_retries=1``); a second loss is an ``error`` row saying so, never a lost
instance and never a verdict. Ray is optional (``pip install nncert[ray]``): this
module imports it only when a run asks for it.
"""
from __future__ import annotations

import atexit
from dataclasses import dataclass
from typing import Any, Callable, Optional

from verifier.bench.process import ChildTracker, RunSettings, run_in_process
from verifier.bench.records import Instance, Outcome
from verifier.bench.worker import WorkerSlot, default_mem_limit_mb
from verifier.ray_connect import connect

__all__ = ["RayPool", "RETRIES"]

RETRIES = 1                 # a lost Ray worker's task runs once more, then becomes an error row
_SAFETY_S = 120.0           # past timeout + grace + this, the driver stops waiting for a task

# The Ray worker process's own state (one per process, as a worker's imports are).
_SLOT: dict[str, Any] = {}


def run_instance(instance: Instance, settings: RunSettings, isolate: str) -> Outcome:
    """One instance, inside a Ray worker process: a fresh `nncert verify`, or this
    process's long-lived worker (started on first use and kept for the next tasks)."""
    if isolate == "process":
        return run_in_process(instance, settings, ChildTracker())
    slot = _SLOT.get("slot")
    if slot is None or _SLOT.get("settings") != settings:
        if slot is not None:
            slot.close()
        slot = WorkerSlot(settings, ChildTracker(), settings.mem_limit_mb or default_mem_limit_mb(1))
        _SLOT.update(slot=slot, settings=settings)
        atexit.register(slot.close)
    return slot.run(instance)


@dataclass
class RayPool:
    """Runs instances as Ray tasks: `run(instance)` blocks until its outcome (call it
    from several threads to keep that many tasks in flight). `address`: a running
    cluster's (as `ray.init` takes it), or None to start a local cluster of `jobs` CPUs
    for this run, shut down by `close`. When this process is already connected to Ray,
    that connection is used (and left running); an `address` naming another cluster is
    then a ValueError. `task`: what each task runs (the module's
    `run_instance`; tests pass one that loses its worker)."""

    jobs: int
    settings: RunSettings
    isolate: str = "process"
    address: Optional[str] = None
    task: Callable[[Instance, RunSettings, str], Outcome] = run_instance

    def __post_init__(self) -> None:
        import ray  # lazy: ray is an optional extra (pip install nncert[ray]), imported only for a Ray run

        self._ray = ray
        self._started = connect(self.address, self.jobs)
        self._remote = ray.remote(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)(self.task)
        self._refs: set = set()

    def run(self, instance: Instance) -> Outcome:
        ray = self._ray
        ref = self._remote.remote(instance, self.settings, self.isolate)
        self._refs.add(ref)
        try:
            return ray.get(ref, timeout=instance.timeout + self.settings.grace_s + _SAFETY_S)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            return Outcome(instance, "error", 0.0, error="ray: no answer from the task past its timeout and grace")
        except ray.exceptions.RayError as exc:
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            # Only a lost worker or node is retried; an exception inside the task is not.
            lost = not isinstance(exc, ray.exceptions.RayTaskError)
            what = f"the task failed after {RETRIES} retry" if lost else "the task raised"
            return Outcome(instance, "error", 0.0, error=f"ray: {what} ({type(exc).__name__}: {why[:200]})")
        finally:
            self._refs.discard(ref)

    def cancel_all(self) -> None:
        """Stop every task still running (an interrupted suite)."""
        for ref in list(self._refs):
            self._ray.cancel(ref, force=True)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
