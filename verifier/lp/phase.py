"""The LP/MILP phase of `verify()` for ReLU networks: refine, then try the exact MILP, then hand over.

Runs between bound propagation and activation-split branch and bound (`lp.*` keys):

1. LP refinement (`lp.refine`) in `lp.refine_share` of the time left: the unstable
   neurons' intervals tightened by LPs (verifier/lp/refine.py); they reach the search
   as `Problem.known`, so every domain starts from them.
2. The exact MILP (`lp.milp`) when at most `lp.milp_max_unstable` neurons are still
   unstable on an MLP; besides, and alone on a CNN, when at most `lp.milp_max_deep` lie
   past the first layer and those in ReLUs fed by the input through affine ops alone
   count `lp.milp_first_weight` each (exact intervals, tight big-M constants): per
   conjunction, a proof (the disjunct is unsat when every conjunction is) or a
   candidate counterexample that the caller replays. `parallel` (the
   default) runs it in a thread beside the search until either decides, so that an
   instance the search settles in a second does not wait for a MILP, and one that
   only the MILP settles (a needle) still gets the whole budget; `before` runs it
   first, in `lp.milp_share` of the time left. With `lp.milp_refine` (and refinement
   off before the search) the thread first refines the intervals as step 1 would, for
   the MILP alone: its big-M constants come from them, and the search does not wait.
   Not where the MILP runs by the first-layer rule: LPs cannot tighten those exact
   intervals, and the deeper ones they tightened did not speed the MILP.

Certificates: refined intervals are not yet written into the activation-split
certificate, so with `proof` on (--certificate) refinement is skipped and the search
runs as before; a MILP proof is recorded as a claim that rests on HiGHS, which the
certificate states instead of a checkable proof. So with `proof` on, a MILP proof does not
end the search beside it (`MilpRunner.found_counterexample` does: a replay checks it); it
answers only when the search ends without a proof of its own (verifier/verify.py).
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable, Optional

import numpy as np
import torch

from models import GraphEvaluator
from relaxations import Given, IntervalBounds, compute_bounds
from vnnlib import Disjunct
from verifier.api import bound_options, outward_box
from verifier.config import Config, resolve_device
from verifier.model import Model
from relaxations.sdp.network import NotReluMlp
from verifier.lp.refine import Intervals, MilpNetwork, SpecMilp, mlp_layers, refine_bounds, relu_input_depths

__all__ = ["LpOutcome", "ConjunctionRows", "lp_phase"]


@dataclasses.dataclass(frozen=True)
class ConjunctionRows:
    """A disjunct's rows stacked (`spec_rows`): C [S, n_out], d [S], each row's
    conjunction, and n_conj, how many there are; the MILP solves one conjunction at a time."""

    C: np.ndarray
    d: np.ndarray
    owner: np.ndarray
    n_conj: int


@dataclasses.dataclass
class LpOutcome:
    """What the phase found: a proof, candidate points, and intervals for the search."""

    proved: bool = False
    known: dict = dataclasses.field(default_factory=dict)       # name -> IntervalBounds [1, *shape]
    candidates: list = dataclasses.field(default_factory=list)  # input points (float64, flat)
    proof: Optional[dict] = None
    stats: dict = dataclasses.field(default_factory=dict)
    runner: Optional["MilpRunner"] = None   # the MILP running beside the search (lp.milp parallel)


def _to_known(model: Model, intervals: Intervals, dtype: torch.dtype, device: str) -> dict:
    """float64 intervals as IntervalBounds of the pass's dtype, rounded outward."""
    out = {}
    for name, (lo, hi) in intervals.items():
        shape = model.graph.shapes.get(name) or (len(lo),)
        tlo, thi = outward_box(lo, hi, dtype, device)
        out[name] = IntervalBounds(tlo.reshape(1, *shape), thi.reshape(1, *shape))
    return out


def lp_phase(model: Model, ev: GraphEvaluator, disjunct: Disjunct, rows: ConjunctionRows, config: Config,
             deadline: float, start: Optional[np.ndarray] = None, known: Optional[dict] = None) -> LpOutcome:
    """Refine and try the exact MILP on one disjunct of a ReLU MLP (see the module docstring).

    `known`: intervals already proved over the region (optimised intermediate bounds),
    the starting point. `LpOutcome.known` holds every ReLU input's interval after
    refinement (CROWN over the refined ones), for the search."""
    out = LpOutcome()
    cfg = config.lp
    names = mlp_layers(model.graph)
    if names is None or (not cfg.refine and cfg.milp == "off"):
        return out
    dev = resolve_device(config.device)
    dt = ev.dtype
    lo_t, hi_t = outward_box(disjunct.region.lower, disjunct.region.upper, dt, dev)
    shape = model.graph.input_shape
    box = IntervalBounds(lo_t.reshape(1, *shape), hi_t.reshape(1, *shape))
    Ct = torch.tensor(rows.C, dtype=dt, device=dev)
    box_lo = lo_t.double().cpu().numpy().ravel()
    box_hi = hi_t.double().cpu().numpy().ravel()
    opts = dataclasses.replace(bound_options(config.bounds, "crown"), deadline=deadline)

    def table_of(known: dict) -> Intervals:
        res = compute_bounds(model.graph, box, Ct, opts, want_upper=False, ev=ev, given=Given(known=known or None))
        return {n: (res.table[n].lower[0].double().cpu().numpy().ravel(),
                    res.table[n].upper[0].double().cpu().numpy().ravel()) for n in res.table.keys()}

    given = dict(known or {})
    if not cfg.refine and known and all(n in known for n in names) and _too_many_unstable(
            model, names, {n: (known[n].lower.double().cpu().numpy().ravel(),
                               known[n].upper.double().cpu().numpy().ravel()) for n in names}, cfg):
        return out   # a CNN the search handles: no CROWN pass for a MILP that would not run
    intervals = table_of(given)

    def refined(ivals: Intervals, stop: Optional[Callable[[], bool]] = None
                ) -> tuple[Intervals, Optional[dict], dict]:
        """LP refinement in `lp.refine_share` of the time left (or until `stop()`): the
        table, the intervals that change (None when none does) and the statistics."""
        until = time.monotonic() + cfg.refine_share * max(0.0, deadline - time.monotonic())
        ref = refine_bounds(model.graph, box_lo, box_hi, ivals, until,
                            rebound=lambda iv: table_of({**given, **_to_known(model, iv, dt, dev)}), stop=stop)
        stats = {"lps": ref.lps, "tightened": ref.tightened, "stabilised": ref.stabilised,
                 "unstable_before": ref.unstable_before, "unstable_after": ref.unstable_after,
                 "layers": ref.layers, "complete": ref.complete, "time_s": round(ref.time_s, 3)}
        if not ref.intervals:
            return ivals, None, stats
        better = {**given, **_to_known(model, ref.intervals, dt, dev)}
        return table_of(better), better, stats

    if cfg.refine and not config.proof:
        try:
            intervals, better, out.stats["refine"] = refined(intervals)
        except NotReluMlp as exc:   # a map too large to write after all: the search goes on without
            better, out.stats["refine"] = None, {"skipped": str(exc)}
        if better is not None:
            given = better
            out.known = _to_known(model, {n: intervals[n] for n in names}, dt, dev)
    if cfg.milp == "off" or _too_many_unstable(model, names, intervals, cfg):
        return out
    unstable = sum(_unstable(names, intervals).values())
    args = (MilpNetwork(model.graph, box_lo, box_hi, intervals), rows, start, unstable)
    if cfg.milp == "parallel":
        # The thread refines first when the search has not: the MILP's big-M constants come
        # from the intervals, and the search does not wait for the LPs.
        # Not where the MILP came in by the first-layer rule: most of its unstable neurons are
        # in the first layer, whose intervals LPs cannot tighten (they are exact already); on
        # the hidden needles and verivital the LPs took 8-16 s and the MILP was no faster.
        refine_first = cfg.milp_refine and not cfg.refine and not config.proof \
            and not _first_layer_rule(model, names, intervals, cfg)
        pre = (lambda stop: refined(intervals, stop)) if refine_first else None
        out.runner = MilpRunner(*args, deadline=deadline, refine=pre)
        return out
    runner = MilpRunner(*args, deadline=time.monotonic() + cfg.milp_share * max(0.0, deadline - time.monotonic()),
                        background=False)
    runner.outcome(out)
    return out


def _unstable(names: list[str], intervals: Intervals) -> dict[str, int]:
    """Unstable neurons per ReLU input."""
    return {n: int(((intervals[n][0] < 0) & (intervals[n][1] > 0)).sum()) for n in names}


def _first_layer_rule(model: Model, names: list[str], intervals: Intervals, cfg) -> bool:
    """Whether the MILP, if it runs, runs by the first-layer rule of `_too_many_unstable`
    (a graph with a convolution, or more than `milp_max_unstable` unstable neurons)."""
    conv = any(n.op in ("Conv", "ConvTranspose") for n in model.graph.nodes)
    return conv or sum(_unstable(names, intervals).values()) > cfg.milp_max_unstable


def _too_many_unstable(model: Model, names: list[str], intervals: Intervals, cfg) -> bool:
    """Whether the MILP is out of reach or not worth its thread.

    An MLP keeps the rule measured since the MILP came (at most `milp_max_unstable`
    unstable neurons). Besides, and on any graph with a convolution only, the MILP runs
    where at most `milp_max_deep` unstable neurons lie past the first layer and the count
    stays under `milp_max_unstable` with each first-layer neuron (a ReLU fed by the input
    through affine ops alone: its interval exact, its binary's big-M tight) counting
    `milp_first_weight`: one hidden layer of thousands is solved in seconds, where a few
    hundred deeper ones are not, and a MILP thread beside oval21's search (119 and more
    past the first layer) cost it three of fourteen instances at 30 s."""
    if not _first_layer_rule(model, names, intervals, cfg):
        return False
    counts = _unstable(names, intervals)
    depth = relu_input_depths(model.graph)
    first = sum(c for n, c in counts.items() if depth[n] == 0)
    deep = sum(counts.values()) - first
    return deep > cfg.milp_max_deep or deep + cfg.milp_first_weight * first > cfg.milp_max_unstable


class _Handles(list):
    """The HiGHS models of a runner: a model added after `cancel()` is cancelled at once
    (the thread may still be writing it when the search finishes)."""

    cancelled = False

    def append(self, model) -> None:
        super().append(model)
        if self.cancelled:
            model.cancel()

    def cancel(self) -> None:
        self.cancelled = True
        for model in self:
            model.cancel()


class MilpRunner:
    """The exact MILP of each conjunction in turn, until one is not proved or `deadline`.

    In the background (a thread beside the search: HiGHS releases the GIL while it
    solves) or at once. `decided()` says whether it has an answer for the disjunct
    (every conjunction proved, or a candidate counterexample); `outcome(out)` writes it
    into an LpOutcome; `stop()` cancels it. An exception in the thread is re-raised by
    `outcome`, never turned into a verdict.
    """

    def __init__(self, net: MilpNetwork, rows: ConjunctionRows, start: Optional[np.ndarray], unstable: int,
                 deadline: float, background: bool = True, refine: Optional[Callable] = None) -> None:
        """`refine`, when given, runs first in the thread: (stop) -> (intervals, changed or
        None, statistics), where `stop()` says the runner was stopped (the refinement ends
        then, as the MILP does); the MILP is built over the intervals it returns."""
        self._net, self._rows, self._start, self._deadline = net, rows, start, deadline
        self._refine = refine
        self.refine_stats: Optional[dict] = None
        self.unstable = unstable
        self.results: list = []
        self.error: Optional[BaseException] = None
        self.skipped: Optional[str] = None
        self._handles = _Handles()
        self._cancelled = False
        self._done = threading.Event()
        self._thread = None
        if background:
            # Not a daemon: the interpreter waits for it at exit (it ends at its next check once
            # stopped); a daemon thread killed inside HiGHS aborts the process.
            self._thread = threading.Thread(target=self._run, name="nncert-milp", daemon=False)
            self._thread.start()
        else:
            self._run()

    def _run(self) -> None:
        net, rows, start, deadline = self._net, self._rows, self._start, self._deadline
        try:
            if self._refine is not None and not self._cancelled:
                intervals, _, self.refine_stats = self._refine(lambda: self._cancelled)
                net = dataclasses.replace(net, intervals=intervals)
            if self._cancelled:
                return
            milp = SpecMilp(net, rows.C, rows.d, rows.owner, handle=self._handles)
            for k in range(rows.n_conj):
                if self._cancelled or time.monotonic() > deadline:
                    break
                res = milp.solve(k, deadline, start=start)
                self.results.append(res)
                if res.status != "proved":
                    break
        except NotReluMlp as exc:   # a map too large to write after all: no MILP, never a verdict
            self.skipped = str(exc)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by outcome()
            self.error = exc
        finally:
            self._done.set()

    def decided(self) -> bool:
        """Finished with an answer: every conjunction proved, or a counterexample candidate."""
        if not self._done.is_set() or self.error is not None:
            return self._done.is_set()
        return bool(self.results) and (self.results[-1].status == "counterexample"
                                       or (len(self.results) == self._rows.n_conj
                                           and all(r.status == "proved" for r in self.results)))

    def found_counterexample(self) -> bool:
        """Finished with a candidate counterexample (a `decided()` that a replay can check)."""
        return self._done.is_set() and self.error is None and bool(self.results) \
            and self.results[-1].status == "counterexample"

    def wait(self, deadline: float) -> None:
        """Block until the MILP finishes or `deadline` (time.monotonic())."""
        self._done.wait(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Cancel the solve (it ends at its next check; a model still being written is cancelled
        when it is added) and wait briefly for the thread."""
        self._cancelled = True
        self._handles.cancel()
        if self._thread is not None:
            self._thread.join(timeout=0.2)  # a thread still writing its model ends at its solve

    def record(self, stats: dict) -> None:
        """Write what the MILP has done so far into `stats` (also while it still runs, for a
        run that times out: `finished` says which)."""
        stats["milp"] = {"unstable": self.unstable, "mode": "parallel" if self._thread is not None else "before",
                         "finished": self._done.is_set(),
                         "conjunctions": [{"status": r.status, "bound": r.bound, "time_s": round(r.time_s, 3),
                                           "highs": r.nodes_status} for r in list(self.results)]}
        if self.refine_stats is not None:
            stats["milp"]["refine"] = self.refine_stats
        if self.skipped is not None:
            stats["milp"]["skipped"] = self.skipped

    def outcome(self, out: LpOutcome) -> None:
        """Write what the MILP found into `out` (proof, candidates, stats)."""
        if self.error is not None:
            raise self.error
        self.record(out.stats)
        for r in self.results:
            if r.point is not None and r.status == "counterexample":
                out.candidates.append(r.point)
        if self.decided() and all(r.status == "proved" for r in self.results):
            out.proved = True
            out.proof = {"kind": "milp", "method": "milp", "claims": np.asarray([r.bound for r in self.results]),
                         "certificate": "not checkable: this disjunct rests on an exact MILP solved by HiGHS, "
                                        "whose bound has no witness that the checker can verify"}
