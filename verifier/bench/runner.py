"""Run a list of instances in parallel slots, one outcome per instance, whatever happens.

Threads only schedule; every instance runs in a child process (fresh or worker), so a
crash, a hang or an allocation storm in one instance is contained by the OS and turned
into a row. With `Slots.ray` each thread hands its instance to a Ray task that does
the same on a cluster's node (`ray_backend`). The results CSV is rewritten after each
instance, so a run that is stopped (Ctrl-C, SIGTERM, a lost session) leaves every finished row on disk.
"""
from __future__ import annotations

import queue
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, TextIO

from verifier.bench.process import ChildTracker, RunSettings, run_in_process
from verifier.bench.ray_backend import RayPool, run_instance
from verifier.bench.records import Instance, Outcome, expected_for, judge, write_outcomes
from verifier.bench.worker import WorkerSlot, default_mem_limit_mb
from verifier.config_checks import instance_of

__all__ = ["BenchRun", "RayOptions", "Slots", "run_bench", "ISOLATION_MODES"]

ISOLATION_MODES = ("process", "worker")


@dataclass(frozen=True)
class RayOptions:
    """The Ray backend of a run: the cluster's address (None: a local cluster started for
    the run) and what each task runs (None: `ray_backend.run_instance`; tests pass one that
    loses its worker)."""

    address: Optional[str] = None
    task: Optional[Callable] = None


@dataclass(frozen=True)
class Slots:
    """Where a run's instances run: ``jobs`` of them at once, each in a fresh process or a
    long-lived worker (``isolate``), here or as Ray tasks (``ray``). One value, because
    the three decide together what a timing means (comparable within one isolation mode
    and one job count) and what starts before the first instance (workers, a cluster).
    Checked here, so a bad mode or count fails before anything starts."""

    isolate: str = "process"
    jobs: int = 1
    ray: Optional[RayOptions] = None

    def __post_init__(self) -> None:
        if self.isolate not in ISOLATION_MODES:
            raise ValueError(f"isolate must be one of {', '.join(ISOLATION_MODES)}, got {self.isolate!r}")
        if self.jobs < 1:
            raise ValueError(f"jobs must be at least 1, got {self.jobs}")


@dataclass
class BenchRun:
    """What ``run_bench`` returns: outcomes in instance order, and whether it was cut short."""

    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False

    @property
    def wrong(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.wrong]


def _progress_line(done: int, total: int, outcome: Outcome, counts: dict[str, int]) -> str:
    inst = outcome.instance
    tail = f"  WRONG (expected {outcome.expected})" if outcome.wrong else ""
    err = f"  [{outcome.error[:100]}]" if outcome.error and outcome.verdict == "error" else ""
    running = " ".join(f"{k} {v}" for k, v in counts.items())
    return (f"[{done:>{len(str(total))}}/{total}] {outcome.verdict:<7} {outcome.time_s:8.2f} s  "
            f"{inst.onnx} {inst.vnnlib}  | {running}{tail}{err}")


def run_bench(instances: Sequence[Instance], slots: Slots = Slots(), settings: RunSettings = RunSettings(),
              expected: Optional[dict] = None, out: Optional[str | Path] = None, quiet: bool = False,
              stream: Optional[TextIO] = None, on_outcome: Optional[Callable[[Outcome], None]] = None
              ) -> BenchRun:
    """Run every instance; return outcomes in the instances' order.

    ``slots``: how many at once, isolated how, on which backend. ``expected``: the table
    of ``records.read_expected``; it fills ``expected`` and ``correct``. ``out``:
    rewritten after each instance. A KeyboardInterrupt stops the run, kills the children
    and returns what finished with ``interrupted`` set. With ``slots.ray`` each instance
    is a Ray task (`ray_backend.RayPool`) on the cluster at ``slots.ray.address``, or on
    a local one of ``slots.jobs`` CPUs started for the run; ``jobs`` tasks are in flight
    at once.
    """
    stream = sys.stdout if stream is None else stream  # resolved per call: pytest swaps sys.stdout
    slots = instance_of("slots", slots, Slots, "isolate, jobs, ray")
    isolate, jobs, ray = slots.isolate, slots.jobs, slots.ray
    tracker = ChildTracker()
    pool = None
    if ray is not None:
        pool = RayPool(jobs, settings, isolate, ray.address, ray.task or run_instance)
    idle: queue.Queue[WorkerSlot] = queue.Queue()
    all_slots: list[WorkerSlot] = []
    if isolate == "worker" and pool is None:
        limit = settings.mem_limit_mb or default_mem_limit_mb(jobs)
        for _ in range(jobs):
            slot = WorkerSlot(settings, tracker, limit)
            all_slots.append(slot)
            idle.put(slot)

    def execute(instance: Instance) -> Outcome:
        try:
            if pool is not None:
                return pool.run(instance)
            if isolate == "process":
                return run_in_process(instance, settings, tracker)
            slot = idle.get()
            try:
                return slot.run(instance)
            finally:
                idle.put(slot)
        except Exception as exc:  # a bug in the runner itself: still one row, not a dead suite
            return Outcome(instance, "error", 0.0, error=f"bench runner: {type(exc).__name__}: {exc}")

    run = BenchRun()
    finished: dict[int, Outcome] = {}
    counts = {v: 0 for v in ("sat", "unsat", "unknown", "timeout", "error")}
    executor = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="nncert-bench")
    pending: set[Future] = set()
    try:
        pending = {executor.submit(execute, inst) for inst in instances}
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                outcome = future.result()
                if expected is not None:
                    outcome.expected = expected_for(expected, outcome.instance)
                    outcome.correct = judge(outcome.verdict, outcome.expected)
                finished[outcome.instance.index] = outcome
                counts[outcome.verdict] = counts.get(outcome.verdict, 0) + 1
                if not quiet:
                    print(_progress_line(len(finished), len(instances), outcome, counts), file=stream, flush=True)
                if outcome.wrong:
                    inst = outcome.instance
                    print(f"WRONG: {inst.onnx} {inst.vnnlib}: verdict {outcome.verdict}, expected "
                          f"{outcome.expected}", file=sys.stderr, flush=True)
                if out is not None:
                    write_outcomes(out, [finished[k] for k in sorted(finished)])
                if on_outcome is not None:
                    on_outcome(outcome)
    except KeyboardInterrupt:
        run.interrupted = True
        for future in pending:
            future.cancel()
        tracker.kill_all()
        if pool is not None:
            pool.cancel_all()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        for slot in all_slots:
            slot.close()
        if pool is not None:
            pool.close()
    run.outcomes = [finished[k] for k in sorted(finished)]
    return run
