"""The one branch-and-bound loop, shared by every kind of branching.

A search is a `Brancher` (what a domain is, how a batch of domains is split and how
the children are bounded: input bisection in bab/input_split.py, ReLU splits in
bab/activation_split.py) run by `search`, with side tasks called at fixed points of
every round:

    pop the worst domains  ->  brancher.split  ->  brancher.bound (out-of-memory: halve, retry)
        ->  side tasks on the bounded children, in order (confirm a counterexample,
            record proved leaves, report progress); a task may end the search
        ->  push the children not proved

The loop owns the limits (deadline, domain budget, memory) and the store; it never
decides a verdict from an exception: running out of memory even for one domain ends
the search `unknown` ("out of memory"), anything else propagates.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import torch

from bab.domains import Batch, DomainStore
from bab.memory import BatchSizer, OutOfMemory, free_memory_bytes, run_with_retry
from bab.problem import Problem, rows_status

__all__ = ["SearchHooks", "SearchOutcome", "Bounded", "Brancher", "SideTask", "SearchLimits", "search", "Confirm",
           "RecordProof", "ReportProgress", "StopWhen", "domain_bytes", "run", "RoundPool", "RoundReply",
           "worker_round"]

T = torch.Tensor

# The store switches to depth-first once its domains take more than this share of the
# free memory: best-first keeps the whole frontier, depth-first about depth x batch.
MEMORY_SHARE = 0.25


@dataclass
class SearchOutcome:
    status: str                      # "unsat", "sat", "timeout", "unknown"
    candidate: Optional[np.ndarray] = None
    domains_bounded: int = 0
    rounds: int = 0
    leaves: int = 0                  # proved domains
    proof: Any = None
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Bounded:
    """One round's bounded children, as the loop and its side tasks read them.

    `domains` carry their row bounds `lb` and scores; `proved` [n] marks those done;
    `points` [M, *input_shape] with `objective` [M] are counterexample candidates the
    brancher found (bound minimisers, attack points); `leaf_data` is what a proof
    recorder of this brancher's kind needs (alphas, betas, unstable masks).
    """

    domains: Batch
    proved: T
    points: Optional[T] = None
    objective: Optional[T] = None
    leaf_data: dict = field(default_factory=dict)


class Brancher(Protocol):
    """One kind of branching. `split` and `bound` must change no state of the search
    until they return (an out-of-memory retry calls them again on fewer domains)."""

    problem: Problem

    def root(self) -> Bounded: ...

    def select(self, batch: Batch) -> tuple[Batch, int]:
        """The domains that can be split, and how many were set aside (nothing left to split)."""
        ...

    def split(self, batch: Batch, round_: int) -> Optional[Any]:
        """Children of the batch (None: every child was closed without a bound)."""
        ...

    def bound(self, children: Any, round_: int) -> Bounded: ...

    def stats(self) -> dict: ...


class SideTask(Protocol):
    """Called once per bounded batch (the root's too); a SearchOutcome ends the search."""

    def __call__(self, bounded: Bounded, state: "SearchState") -> Optional[SearchOutcome]: ...


@dataclass(frozen=True)
class SearchLimits:
    deadline: float                  # time.monotonic() value
    batch_size: int = 64             # domains popped per round (before memory halves it)
    max_domains: int = 200_000       # open domains beyond which the search gives up (unknown)
    max_batch_size: Optional[int] = None   # growth cap while memory allows (None: batch_size)
    bytes_per_domain: int = 0        # estimate for sizing the first batch from free memory


@dataclass(frozen=True)
class SearchHooks:
    """How a search talks to its caller, each optional: `confirm` replays a candidate
    (True: a real counterexample, and the search ends sat), `progress` hears the counters
    after each round, `stop()` is asked once per round (True ends it, unknown)."""

    confirm: Optional[Callable[[np.ndarray], bool]] = None
    progress: Optional[Callable[[dict], None]] = None
    stop: Optional[Callable[[], bool]] = None


@dataclass
class SearchState:
    """Counters the side tasks may read."""

    problem: Problem
    store: DomainStore
    bounded: int = 0
    rounds: int = 0
    leaves: int = 0
    aside: int = 0                   # unproved domains with nothing left to split
    depth_first_from: Optional[int] = None   # the round memory ran short, if it did
    here_s: float = 0.0              # a pooled search's rounds run in this process (no worker ready)


@dataclass(frozen=True)
class RoundReply:
    """What a worker sends back for one batch: `bounded` (None: every child closed before
    bounding) and `left`, the domains it did not get to (its memory halved the batch);
    or, when even the smallest batch ran out of memory, `oom` with the reason (`left` then
    holds the whole batch)."""

    bounded: Optional[Bounded]
    left: Any
    oom: Optional[str] = None


class RoundPool(Protocol):
    """Workers that run rounds of one search on batches the loop hands them (issue 21's
    coordinator protocol; verifier/shards.py has the local-process backend). Each worker
    holds a brancher built like the loop's own, so a round there is `worker_round`
    here. A worker that is lost gives back its batch (`collect`'s lost list); an
    exception inside a worker is raised by `collect` (one answering an earlier search is
    dropped with that search's other answers), never turned into a verdict."""

    def idle(self) -> int:
        """How many workers have no batch."""
        ...

    def submit(self, batch: Batch, round_: int) -> None:
        """Hand `batch` to an idle worker."""
        ...

    def collect(self, timeout: float) -> tuple[list[RoundReply], list[Batch]]:
        """Replies that arrived within `timeout` seconds, and the batches of workers lost."""
        ...

    def add_loop_time(self, loop_s: float, here_s: float) -> None:
        """A search's seconds in the coordinator's loop and, of those, in rounds it ran
        itself (no worker ready), told on every exit: a return or an exception."""
        ...


def worker_round(brancher: Brancher, batch: Batch, round_: int, sizer: BatchSizer) -> RoundReply:
    """One round on a worker: split and bound `batch` as the loop would (halving on
    out-of-memory), answered as a RoundReply."""
    try:
        bounded, left = run_with_retry(lambda b: _round(brancher, b, round_), batch, sizer)
    except OutOfMemory as exc:
        return RoundReply(None, batch, exc.reason)
    return RoundReply(bounded, left)


def search(brancher: Brancher, limits: SearchLimits, tasks: Sequence[SideTask] = (),
           pool: Optional[RoundPool] = None) -> SearchOutcome:
    """Run branch and bound until every domain is proved, a task ends it, or a limit is hit.
    With a `pool` the rounds run on its workers, several batches at once, while this
    process keeps the store and runs the side tasks (`_pooled`)."""
    p = brancher.problem
    root = brancher.root()
    state = SearchState(p, DomainStore(root.domains.take(~root.proved)), bounded=len(root.domains))
    state.leaves = int(root.proved.sum())
    for task in tasks:
        done = task(root, state)
        if done is not None:
            return done
    if not len(state.store):
        return _outcome(brancher, state, "unsat")
    device = root.proved.device
    sizer = BatchSizer(size=limits.batch_size, max_size=max(limits.batch_size, limits.max_batch_size or 0))
    sizer.initial(limits.bytes_per_domain, device)
    if pool is not None:
        return _pooled(brancher, limits, tasks, state, sizer, pool, device)
    while len(state.store):
        stop = _limits(brancher, limits, state, device)
        if stop is not None:
            return stop
        batch, aside = brancher.select(state.store.pop(sizer.size))
        state.aside += aside
        if not len(batch):
            continue
        done = _absorb(brancher, worker_round(brancher, batch, state.rounds, sizer), state, tasks)
        if done is not None:
            return done
    return _finish(brancher, limits, state)


def _limits(brancher: Brancher, limits: SearchLimits, state: SearchState, device: torch.device
            ) -> Optional[SearchOutcome]:
    """Checked before each round: past the deadline a timeout, too many open domains
    unknown; and when the open domains crowd memory the store turns depth-first."""
    if time.monotonic() > limits.deadline:
        return _outcome(brancher, state, "timeout", domains_left=len(state.store) + state.aside)
    if not state.store.depth_first and state.rounds % 16 == 0 and _memory_short(state.store, limits, device):
        state.store.depth_first = True  # finish subtrees before the frontier grows further
        state.depth_first_from = state.rounds
    if len(state.store) > limits.max_domains:
        return _outcome(brancher, state, "unknown", reason="domain limit reached", domains_left=len(state.store))
    return None


def _absorb(brancher: Brancher, reply: RoundReply, state: SearchState, tasks: Sequence[SideTask]
            ) -> Optional[SearchOutcome]:
    """One round's reply into the search: the domains it did not reach back into the store,
    its bounded children through the side tasks (a task may end the search), the open
    ones into the store. Out of memory even for one domain ends the search unknown."""
    if reply.oom is not None:
        state.store.push(reply.left)
        return _outcome(brancher, state, "unknown", reason=reply.oom, domains_left=len(state.store))
    if len(reply.left):
        state.store.push(reply.left)
    bounded = reply.bounded
    if bounded is None:   # every child closed before bounding
        return None
    state.bounded += len(bounded.domains)
    state.rounds += 1
    state.leaves += int(bounded.proved.sum())
    for task in tasks:
        done = task(bounded, state)
        if done is not None:
            return done
    state.store.push(bounded.domains.take(~bounded.proved))
    return None


def _pooled(brancher: Brancher, limits: SearchLimits, tasks: Sequence[SideTask], state: SearchState,
            sizer: BatchSizer, pool: RoundPool, device: torch.device) -> SearchOutcome:
    start = time.monotonic()
    try:
        return _pooled_loop(brancher, limits, tasks, state, sizer, pool, device)
    finally:
        # What the coordinator's time went to (BENCHMARKS.md's projection): the loop, the
        # root's bounds excluded, and in it the rounds run here while no worker was ready;
        # told to the pool, which outlives an exception (a worker's DeadlineExceeded, the
        # usual end of a sharded search that times out), where no outcome is returned.
        pool.add_loop_time(time.monotonic() - start, state.here_s)


def _pooled_loop(brancher: Brancher, limits: SearchLimits, tasks: Sequence[SideTask], state: SearchState,
                 sizer: BatchSizer, pool: RoundPool, device: torch.device) -> SearchOutcome:
    """The loop of `search` with its rounds on `pool`'s workers: every idle worker gets the
    store's worst `sizer.size` domains, and each reply goes through the side tasks as a
    round of its own. Several batches are out at once, so a batch is popped before the
    children of the one before it are back: the order differs from one process's, the
    domains bounded are the same kind. While no worker is ready (they start in seconds)
    or when every one is lost, the rounds run here."""
    out = 0
    while len(state.store) or out:
        stop = _limits(brancher, limits, state, device)
        if stop is not None:
            return stop
        while len(state.store) and pool.idle():
            batch, aside = brancher.select(state.store.pop(sizer.size))
            state.aside += aside
            if len(batch):
                pool.submit(batch, state.rounds + out)
                out += 1
        if not out:
            if not len(state.store):
                break
            # No worker ready (still starting, or every one lost): this process runs the round.
            batch, aside = brancher.select(state.store.pop(sizer.size))
            state.aside += aside
            replies, lost = pool.collect(0.0)   # hears which workers became ready
            if len(batch):
                t = time.monotonic()
                replies.append(worker_round(brancher, batch, state.rounds, sizer))
                state.here_s += time.monotonic() - t
        else:
            replies, lost = pool.collect(min(0.25, max(0.0, limits.deadline - time.monotonic())))
            out -= len(replies) + len(lost)
        for batch in lost:
            state.store.push(batch)
        for reply in replies:
            done = _absorb(brancher, reply, state, tasks)
            if done is not None:
                return done
    return _finish(brancher, limits, state)


def _finish(brancher: Brancher, limits: SearchLimits, state: SearchState) -> SearchOutcome:
    """The outcome once the store is empty: unsat, unless domains were set aside."""
    if state.aside and time.monotonic() > limits.deadline:
        # Past the deadline alpha-CROWN may stop before its coefficients are captured, and
        # a domain then has no branching choice without being fully split: a timeout.
        return _outcome(brancher, state, "timeout", domains_left=state.aside)
    if state.aside:
        return _outcome(brancher, state, "unknown", reason=f"{state.aside} fully split domains not proved")
    return _outcome(brancher, state, "unsat")


def _memory_short(store: DomainStore, limits: SearchLimits, device: torch.device) -> bool:
    """Whether the open domains hold more than `MEMORY_SHARE` of what memory is still free
    (checked every 16th round: reading the free memory costs a system call)."""
    if limits.bytes_per_domain <= 0:
        return False
    return len(store) * limits.bytes_per_domain > MEMORY_SHARE * free_memory_bytes(device)


def _round(brancher: Brancher, batch: Batch, round_: int) -> Optional[Bounded]:
    children = brancher.split(batch, round_)
    return None if children is None else brancher.bound(children, round_)


def _outcome(brancher: Brancher, state: SearchState, status: str, **stats: Any) -> SearchOutcome:
    if state.depth_first_from is not None:
        stats["depth_first_from_round"] = state.depth_first_from
    return SearchOutcome(status, domains_bounded=state.bounded, rounds=state.rounds, leaves=state.leaves,
                         stats={**brancher.stats(), **stats})


@dataclass
class Confirm:
    """Replay the best candidates (objective <= 0) in the reference runtime; the first that
    holds ends the search `sat`. At most `limit` per round: replaying costs a model run."""

    confirm: Callable[[np.ndarray], bool]
    limit: int = 8

    def __call__(self, bounded: Bounded, state: SearchState) -> Optional[SearchOutcome]:
        if bounded.points is None or bounded.objective is None:
            return None
        obj = bounded.objective
        hits = torch.nonzero(obj <= 0).flatten()
        if not len(hits):
            return None
        best = hits[torch.argsort(obj[hits])][:self.limit]
        pts = bounded.points[best].detach().reshape(len(best), -1).cpu().numpy()  # one host copy
        for x in pts:
            if self.confirm(x):
                return SearchOutcome("sat", candidate=x, domains_bounded=state.bounded, rounds=state.rounds)
        return None


@dataclass
class RecordProof:
    """Log every proved domain for a certificate (`record(bounded_proved_part)`)."""

    record: Callable[[Bounded], None]

    def __call__(self, bounded: Bounded, state: SearchState) -> Optional[SearchOutcome]:
        if bool(bounded.proved.any()):
            self.record(bounded)
        return None


@dataclass
class ReportProgress:
    """Counters after each round: open domains (set-aside ones included), domains bounded,
    the worst open domain's gap."""

    report: Callable[[dict], None]

    def __call__(self, bounded: Bounded, state: SearchState) -> Optional[SearchOutcome]:
        if state.rounds == 0:
            return None
        open_ = state.store.domains
        n_open = len(open_) + int((~bounded.proved).sum())
        worst = None
        if n_open:
            lbs = [open_.lb, bounded.domains.lb[~bounded.proved]]  # type: ignore[attr-defined]
            worst = float(rows_status(state.problem, torch.cat(lbs))[1].min())
        self.report({"open": n_open + state.aside, "bounded": state.bounded, "best_lower": worst})
        return None


@dataclass
class StopWhen:
    """Ends the search (`unknown`, reason "stopped") once `done()` is true: another
    procedure running beside it (the exact MILP) has decided the problem."""

    done: Callable[[], bool]

    def __call__(self, bounded: Bounded, state: SearchState) -> Optional[SearchOutcome]:
        if not self.done():
            return None
        return SearchOutcome("unknown", domains_bounded=state.bounded, rounds=state.rounds, leaves=state.leaves,
                             stats={"reason": "stopped: decided beside the search"})


def domain_bytes(p: Problem) -> int:
    """What one domain costs beyond the fixed work of a bound pass: its intervals at every
    tensor and a coefficient row per spec row there (the final pass). Intermediate
    passes are chunked to `BoundOptions.max_elements` whatever the batch, so they do not
    grow with it. An estimate for sizing the first batch; an out-of-memory error corrects it.
    """
    total = sum(torch.Size(s).numel() for s in p.graph.shapes.values() if s) + p.lower[0].numel()
    return p.lower.element_size() * total * (2 + 2 * max(1, p.C.shape[0]))


def run(brancher: Brancher, limits: SearchLimits, hooks: SearchHooks = SearchHooks(), log: Any = None,
        record: Optional[Callable[[Any, Bounded], None]] = None, confirm_limit: int = 8,
        pool: Optional[RoundPool] = None) -> SearchOutcome:
    """`search` with the standard side tasks, in their fixed order: confirm candidates
    (at most `confirm_limit` a round), record proved leaves into `log` (by
    `record(log, bounded)`), report progress, stop when `hooks.stop()` says so. An unsat
    outcome carries the log as its proof."""
    tasks: list = []
    if hooks.confirm is not None:
        tasks.append(Confirm(hooks.confirm, confirm_limit))
    if log is not None and record is not None:
        tasks.append(RecordProof(lambda b: record(log, b)))
    if hooks.progress is not None:
        tasks.append(ReportProgress(hooks.progress))
    if hooks.stop is not None:
        tasks.append(StopWhen(hooks.stop))
    outcome = search(brancher, limits, tasks, pool)
    if outcome.status == "unsat":
        outcome.proof = log
    return outcome
