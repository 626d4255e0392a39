"""The one branch-and-bound loop (bab/search.py) with a toy brancher: limits, memory, side tasks."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from bab.domains import Batch, DomainStore
from bab.problem import Problem
from bab.search import Bounded, Confirm, SearchLimits, StopWhen, search

T = torch.Tensor


@dataclass(frozen=True)
class _Toy(Batch):
    depth: T
    lb: T
    score: T


def _toy(depth: list[int]) -> _Toy:
    d = torch.tensor(depth, dtype=torch.float32)
    return _Toy(d, -(3 - d).unsqueeze(1), -(3 - d))


@dataclass
class _Brancher:
    """A full binary tree: a domain at depth `leaf_depth` is proved; `oom_above` makes
    bounding more than that many children raise an out-of-memory error (or `error`)."""

    problem: object = None
    leaf_depth: int = 3
    oom_above: int = 10 ** 9
    error: Exception | None = None
    seen: int = 0

    def root(self) -> Bounded:
        return Bounded(_toy([0]), torch.tensor([False]))

    def select(self, batch):
        return batch, 0

    def split(self, batch, round_):
        return torch.cat([batch.depth, batch.depth]) + 1

    def bound(self, depth, round_):
        if len(depth) > self.oom_above:
            raise self.error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.seen += len(depth)
        b = _toy(depth.tolist())
        return Bounded(b, depth >= self.leaf_depth, points=torch.zeros(len(depth), 1), objective=depth + 1)

    def stats(self):
        return {}


def _limits(batch: int = 64, **kw) -> SearchLimits:
    return SearchLimits(deadline=time.monotonic() + 60, batch_size=batch, max_domains=10 ** 6, **kw)


def test_the_loop_proves_a_tree_and_counts_every_domain() -> None:
    out = search(_Brancher(leaf_depth=4), _limits())
    assert out.status == "unsat"
    assert out.domains_bounded == 1 + 2 + 4 + 8 + 16 and out.leaves == 16


def test_out_of_memory_halves_the_batch_and_loses_no_domain() -> None:
    b = _Brancher(leaf_depth=6, oom_above=6)    # at most 3 parents per round fit
    out = search(b, _limits(batch=64))
    assert out.status == "unsat"
    assert b.seen == 2 + 4 + 8 + 16 + 32 + 64 and out.leaves == 64


def test_out_of_memory_with_one_domain_is_unknown_never_a_verdict() -> None:
    out = search(_Brancher(leaf_depth=6, oom_above=1), _limits(batch=8))
    assert out.status == "unknown" and out.stats["reason"] == "out of memory"


def test_other_errors_are_not_swallowed() -> None:
    with pytest.raises(ValueError, match="a bug"):
        search(_Brancher(oom_above=0, error=ValueError("a bug")), _limits())


def test_the_deadline_and_the_domain_budget_stop_the_search() -> None:
    past = SearchLimits(deadline=time.monotonic() - 1, batch_size=4, max_domains=10)
    assert search(_Brancher(), past).status == "timeout"
    small = SearchLimits(deadline=time.monotonic() + 60, batch_size=1, max_domains=2)
    out = search(_Brancher(leaf_depth=10), small)
    assert out.status == "unknown" and out.stats["reason"] == "domain limit reached"


def test_confirm_ends_the_search_only_on_a_replayed_point() -> None:
    calls = []

    def confirm(x: np.ndarray) -> bool:
        calls.append(x)
        return len(calls) == 2

    b = _Brancher(leaf_depth=5)
    b_obj = b.bound
    b.bound = lambda d, r: Bounded(b_obj(d, r).domains, d >= 5, torch.zeros(len(d), 1), 1 - d)  # type: ignore
    out = search(b, _limits(), [Confirm(confirm, limit=1)])
    assert out.status == "sat" and len(calls) == 2     # one candidate per round: the second round's held


def test_store_pops_worst_first_or_newest_first() -> None:
    store = DomainStore(_toy([2, 0, 1, 3]))
    assert store.pop(2).depth.tolist() == [0, 1]       # lowest score (furthest from proved)
    store.push(_toy([0]))
    deep = DomainStore(_toy([2, 0, 1, 3]), depth_first=True)
    deep.push(_toy([5]))
    assert deep.pop(2).depth.tolist() == [3, 5] and len(deep) == 3


def test_problem_is_frozen() -> None:
    assert Problem.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_short_memory_switches_the_store_to_depth_first() -> None:
    out = search(_Brancher(leaf_depth=5), _limits(batch=2, bytes_per_domain=2 ** 60))
    assert out.status == "unsat" and out.leaves == 32
    assert out.stats["depth_first_from_round"] == 0
    assert "depth_first_from_round" not in search(_Brancher(leaf_depth=5), _limits(batch=2)).stats


def test_stop_when_ends_the_search_unknown_once_another_procedure_decides() -> None:
    """The MILP beside a search decides: the search ends `unknown` (never a verdict of its
    own) at the next round, with its counts kept."""
    calls = []

    def decided() -> bool:
        calls.append(1)
        return len(calls) >= 3          # decided during the third check (the second round)

    out = search(_Brancher(leaf_depth=12), _limits(batch=2), [StopWhen(decided)])
    assert out.status == "unknown" and out.stats["reason"].startswith("stopped")
    assert out.domains_bounded == 1 + 2 + 4 and out.rounds == 2   # the root, then 1 -> 2 and 2 -> 4
    never = search(_Brancher(leaf_depth=3), _limits(), [StopWhen(lambda: False)])
    assert never.status == "unsat"
