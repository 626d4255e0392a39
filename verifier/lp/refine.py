"""LP refinement of a ReLU network's intermediate bounds, and the exact MILP on a spec (HiGHS).

Before branch and bound on an MLP, `refine_bounds` tightens the interval of every
unstable neuron by two LPs (min and max of its pre-activation over the triangle
relaxation of the earlier layers), layer by layer: layer k's LPs are written from
layer k-1's refined intervals, and after each layer a CROWN pass (`rebound`) carries
the gain to the later layers' intervals so that fewer neurons need an LP. Each
refined end is HiGHS's LP optimum turned into a rigorous bound by weak duality on its
duals (`relaxations.lp.dual_lower_bound`), then widened by the engine's float32
margin, so it is as sound as a CROWN bound of the same tensor. This is alpha,beta-CROWN's
`bab-refine` with an open-source solver.

`SpecMilp` writes every unstable neuron with a binary and minimises, per
conjunction of the spec, t >= C_i y - d_i: a minimum above 0 proves the conjunction
has no counterexample, a point below 0 is one (replayed in onnxruntime by the
caller). The network is written once for all conjunctions, and HiGHS is told that
only values below a small cutoff matter, so a proof does not wait for the optimum.
That proof rests on HiGHS's branch and bound and its tolerances, not on a checkable
witness: its claim carries a margin and its certificate says so.

The graph need not be an MLP: any graph of affine ops and ReLUs is written with
columns at the input, the ReLUs and the output only (`GraphLp`), the affine chains
between them read as sparse matrices (`models.affine.segment_map`), so a CNN's
convolutions cost their kernels' nonzeros, not a dense map per node.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

import torch

from models import Graph, GraphEvaluator
from models.affine import MAX_MAP_ENTRIES, MAX_PROBE, NotAffine, segment_map
from relaxations.lp import Block, relu_block, sparse_affine_block, unknown_as_infinite
from relaxations.sdp.network import NotReluMlp
from verifier.solvers.highs import HighsModel

__all__ = ["GraphLp", "Refinement", "MilpResult", "MilpNetwork", "SpecMilp", "refine_bounds", "exact_milp", "mlp_layers",
           "lp_supported", "relu_input_depths", "FLOAT32_REL", "FLOAT32_ABS", "MILP_MARGIN"]

Intervals = dict[str, tuple[np.ndarray, np.ndarray]]
# The engine's float32 margin (relaxations.bounds.Precision's default): a refined bound is
# exact for the real-valued network, and the float32 one deviates by up to about this.
FLOAT32_REL, FLOAT32_ABS = 1e-5, 1e-6
# A MILP minimum must exceed 0 by this (times 1 + the rows' scale) to prove a conjunction:
# HiGHS's feasibility (1e-7) and integrality (1e-6) tolerances let it accept points that
# violate a big-M row by about that much.
MILP_MARGIN = 1e-5


# Ops that are affine in their variable inputs (with constant weights): each becomes
# equality rows read off by evaluating it at 0 and at the unit vectors. Mul, Div and
# MatMul qualify only with one variable input; `_affine_map` checks affinity anyway.
AFFINE_OPS = frozenset({"Gemm", "MatMul", "Conv", "ConvTranspose", "Add", "Sub", "Mul", "Div", "Neg",
                        "BatchNormalization", "AveragePool", "Pad", "Transpose", "Gather", "Slice"})
ONE_VARIABLE_OPS = frozenset({"Gemm", "MatMul", "Conv", "ConvTranspose", "Mul", "Div", "BatchNormalization"})
MOVES = frozenset({"Flatten", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Concat"})  # columns regrouped
MAX_COLUMNS = 200_000


def _regroups(node, have: set) -> bool:
    """A regrouping op whose inputs all have LP columns: its output is those columns rearranged."""
    return node.op in MOVES and all(x in have for x in node.inputs if x)


def _segment(graph: Graph, target: str, have: set) -> tuple[list, list[str]]:
    """The affine nodes that compute `target` from tensors with LP columns (`have`), in
    topological order, and those tensors (sorted by name): one `segment_map` apart."""
    producer = {n.outputs[0]: n for n in graph.nodes}
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    nodes, sources, seen, stack = {}, set(), set(), [target]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in have:
            sources.add(t)
            continue
        node = producer[t]
        nodes[node.name] = node
        stack.extend(x for x in node.inputs if x and x not in graph.constants)
    return sorted(nodes.values(), key=lambda n: order[n.name]), sorted(sources)


def lp_supported(graph: Graph) -> Optional[str]:
    """None when the graph is affine ops and ReLUs only (the LP/MILP can encode it), else why not.

    The LP has columns for the input, every ReLU's input and output and the graph's
    output (`GraphLp`); each chain of affine nodes between them is one matrix read by
    `segment_map`, refused here when reading it would take too long (a chain with a
    Gemm or MatMul counts as dense)."""
    if not any(n.op == "Relu" for n in graph.nodes):
        return "no ReLU"
    consts = set(graph.constants)
    for n in graph.nodes:
        if n.op != "Relu" and n.op not in AFFINE_OPS and n.op not in MOVES:
            return f"node '{n.name}' ({n.op}) is neither affine nor a ReLU"
        # Products of two variable tensors (CROWN relaxes them by McCormick lines) have no
        # exact LP rows here; `segment_map` would refuse them too, this says why up front.
        if n.op in ONE_VARIABLE_OPS and sum(1 for x in n.inputs if x and x not in consts) > 1:
            return f"node '{n.name}' ({n.op}) is not affine: several of its inputs vary"
        if len(n.outputs) != 1:
            return f"node '{n.name}' ({n.op}) has several outputs"
    size = lambda t: int(np.prod(graph.shapes.get(t) or (1,)))  # noqa: E731
    have = {graph.input_name}
    columns = size(graph.input_name)

    def read(target: str) -> Optional[str]:
        nonlocal columns
        if target in have:
            return None
        nodes, sources = _segment(graph, target, have)
        pairs = sum(size(x) for x in sources) * size(target)
        dense = any(n.op in ("Gemm", "MatMul") for n in nodes)
        if pairs > (MAX_MAP_ENTRIES if dense else MAX_PROBE):
            return f"node '{nodes[-1].name}' ({nodes[-1].op}) ends an affine map too large to write"
        have.add(target)
        columns += size(target)
        return None

    for n in graph.nodes:
        if n.op == "Relu":
            why = read(n.inputs[0])
            if why is not None:
                return why
            have.add(n.outputs[0])
            columns += 2 * size(n.outputs[0])    # h and at most one binary per neuron
        elif _regroups(n, have):
            have.add(n.outputs[0])
    why = read(graph.output_name)
    if why is not None:
        return why
    if columns > MAX_COLUMNS:
        return "too large for an LP"
    return None


def relu_input_depths(graph: Graph) -> dict[str, int]:
    """For each ReLU's input, how many ReLUs lie on the longest path to it from the network's input."""
    depth = {graph.input_name: 0}
    for n in graph.nodes:
        var = [x for x in n.inputs if x and x in depth]
        for o in n.outputs:
            depth[o] = max((depth[x] for x in var), default=0) + (n.op == "Relu")
    return {n.inputs[0]: depth[n.inputs[0]] for n in graph.nodes if n.op == "Relu"}


def mlp_layers(graph: Graph) -> Optional[list[str]]:
    """The ReLU inputs (pre-activations) in topological order, or None when the LP cannot encode the graph."""
    if lp_supported(graph) is not None:
        return None
    return [n.inputs[0] for n in graph.nodes if n.op == "Relu"]


class GraphLp:
    """The LP (or MILP) of a graph of affine ops and ReLUs over a box, grown node by node.

    Every tensor with LP columns is a vector of them (flattened in C order): the input,
    each ReLU's input and output, and the graph's output (`columns`). Regrouping ops
    (Reshape, Concat, ...) over such tensors only rearrange columns; a chain of affine
    nodes waits until a ReLU or the output needs its result, which then gets columns
    tied to the chain's sources by equality rows, the chain read as one sparse matrix
    (`models.affine.segment_map`); ReLUs get the triangle (or big-M) rows over their
    input's interval. Intermediate affine tensors thus get no columns and no interval
    rows of their own: those intervals are implied by the relaxation they came from.
    """

    def __init__(self, graph: Graph, lower: np.ndarray, upper: np.ndarray, threads: int = 1) -> None:
        self.graph = graph
        self.ev = GraphEvaluator(graph, dtype=torch.float64)
        self.model = HighsModel(threads)
        n = len(lower)
        self.model.add(Block(0, np.asarray(lower, np.float64), np.asarray(upper, np.float64), np.zeros(n, bool),
                             *([np.zeros(0, np.int64)] * 2), *([np.zeros(0)] * 3)))
        self.cols: dict[str, np.ndarray] = {graph.input_name: np.arange(n)}
        self.depth: dict[str, int] = {graph.input_name: 0}   # ReLUs on the longest path from the input
        self.binaries: dict[str, np.ndarray] = {}            # ReLU input -> (neuron index, binary column)
        self._added: set[str] = set()                        # tensors computed by the nodes added so far

    def add_node(self, node, intervals: Intervals, exact: bool = False) -> None:
        """Encode `node`; `intervals` holds its input's interval for a ReLU (the big-M
        constants and the triangle's)."""
        out = node.outputs[0]
        var = [x for x in node.inputs if x and x not in self.graph.constants]
        self.depth[out] = max(self.depth[x] for x in var) + (node.op == "Relu")
        self._added.add(out)
        if node.op == "Relu":
            z = self.columns(node.inputs[0], intervals)
            lo, hi = intervals[node.inputs[0]]
            unstable = (lo < 0) & (hi > 0) & np.isfinite(lo) & np.isfinite(hi)   # what relu_block makes exact
            block, h = relu_block(self.model.n_cols, z, lo, hi, unstable if exact else None)
            self.model.add(block)
            self.cols[out] = h
            if exact:
                idx = np.nonzero(unstable)[0]
                self.binaries[node.inputs[0]] = np.stack([idx, h[-1] + 1 + np.arange(len(idx))])
        elif _regroups(node, set(self.cols)):
            self.cols[out] = np.concatenate([self.cols[x] for x in var]) if node.op == "Concat" \
                else self.cols[var[0]]

    def columns(self, name: str, intervals: Intervals) -> np.ndarray:
        """The LP columns of tensor `name` (computed by the nodes added so far), written now
        if it has none yet: equality rows to the tensors with columns that it depends on
        through affine nodes only, its columns bounded by `intervals` where given."""
        if name in self.cols:
            return self.cols[name]
        if name not in self._added:
            raise KeyError(f"'{name}' is not computed by the nodes added so far")
        nodes, sources = _segment(self.graph, name, set(self.cols))
        try:
            rows, cols, vals, b = segment_map(self.ev, nodes, sources, name)
        except NotAffine as exc:
            raise NotReluMlp(str(exc)) from None
        n_out = len(b)
        lo, hi = intervals.get(name, (np.full(n_out, -np.inf), np.full(n_out, np.inf)))
        block, z = sparse_affine_block(self.model.n_cols, np.concatenate([self.cols[x] for x in sources]), n_out,
                                       rows, cols, vals, b, lo, hi)
        self.model.add(block)
        self.cols[name] = z
        return z

    def start(self, x: np.ndarray) -> np.ndarray:
        """The full column vector of the input point x (float64 forward), a MILP's first incumbent."""
        v = np.zeros(self.model.n_cols)
        values = self.ev.forward_all(torch.tensor(np.asarray(x, np.float64)).reshape(1, *self.graph.input_shape))
        for name, cols in self.cols.items():
            v[cols] = values[name].reshape(-1).double().numpy()
        for name, (idx, a) in self.binaries.items():
            v[a] = (values[name].reshape(-1).double().numpy()[idx] > 0).astype(np.float64)
        return v


@dataclass
class Refinement:
    """What LP refinement proved: tighter intervals per pre-activation tensor, and its costs."""

    intervals: Intervals = field(default_factory=dict)   # name -> (lower, upper), float64, margin included
    lps: int = 0
    tightened: int = 0           # neuron ends moved
    stabilised: int = 0          # unstable neurons proved stable
    unstable_before: int = 0
    unstable_after: int = 0
    layers: int = 0              # layers fully refined
    time_s: float = 0.0
    complete: bool = True        # False: the budget ran out before the last layer


def refine_bounds(graph: Graph, lower: np.ndarray, upper: np.ndarray, intervals: Intervals, deadline: float,
                  rebound: Optional[Callable[[Intervals], Intervals]] = None, threads: int = 1,
                  stop: Optional[Callable[[], bool]] = None) -> Refinement:
    """Tighten the unstable ReLU inputs' intervals by LPs, in topological order, until `deadline`.

    `intervals`: sound intervals (name -> (lower, upper), flat float64) of every tensor
    over the box [lower, upper] (the flattened input), e.g. CROWN's table.
    `rebound(refined)` recomputes the intervals of all tensors given the refined ones
    (a CROWN pass with `known=`); it is called after each ReLU input is refined. A ReLU
    input with no ReLU before it is an affine function of the input, whose interval is
    already exact up to rounding, and is skipped. Raises NotReluMlp for graphs the LP
    cannot encode (`lp_supported`). `stop()` true ends it early as the deadline does (the
    MILP's thread refines beside the search and must end with the run).
    """
    t0 = time.monotonic()
    why = lp_supported(graph)
    if why is not None:
        raise NotReluMlp(f"LP refinement: {why}")
    out = Refinement()
    cur = {k: tuple(a.ravel() for a in unknown_as_infinite(*v)) for k, v in intervals.items()}
    names = [n.inputs[0] for n in graph.nodes if n.op == "Relu"]
    out.unstable_before = int(sum(((cur[n][0] < 0) & (cur[n][1] > 0)).sum() for n in names))
    lp = GraphLp(graph, np.asarray(lower, np.float64).ravel(), np.asarray(upper, np.float64).ravel(), threads)
    for node in graph.nodes:
        if node.op == "Relu" and out.complete and lp.depth[node.inputs[0]] >= 1:
            name = node.inputs[0]
            lo, hi = (a.copy() for a in cur[name])
            margin = FLOAT32_REL * np.maximum(np.abs(lo), np.abs(hi)) + FLOAT32_ABS
            cols = lp.columns(name, cur)
            for j in np.nonzero((lo < 0) & (hi > 0))[0]:
                if time.monotonic() > deadline or (stop is not None and stop()):
                    out.complete = False
                    break
                for sign in (1.0, -1.0):
                    res = lp.model.lower(cols[j:j + 1], np.array([sign]),
                                         time_limit=max(1e-3, deadline - time.monotonic()))
                    out.lps += 1
                    if np.isfinite(res.bound) and sign > 0 and res.bound - margin[j] > lo[j]:
                        lo[j] = res.bound - margin[j]
                        out.tightened += 1
                    elif np.isfinite(res.bound) and sign < 0 and -res.bound + margin[j] < hi[j]:
                        hi[j] = -res.bound + margin[j]
                        out.tightened += 1
                    if lo[j] >= 0:
                        break  # stable active: its maximum needs no LP
                out.stabilised += int(lo[j] >= 0 or hi[j] <= 0)
            lp.model.tighten(cols, lo, hi)
            cur[name] = (lo, hi)
            out.intervals[name] = (lo, hi)
            out.layers += int(out.complete)
            if rebound is not None and out.complete:
                for n2, (flo, fhi) in rebound(dict(out.intervals)).items():
                    if n2 in cur:
                        flo, fhi = np.asarray(flo, np.float64).ravel(), np.asarray(fhi, np.float64).ravel()
                        cur[n2] = (np.fmax(cur[n2][0], flo), np.fmin(cur[n2][1], fhi))   # a NaN end adds nothing
        if not out.complete:
            break
        lp.add_node(node, cur)
    out.unstable_after = int(sum(((cur[n][0] < 0) & (cur[n][1] > 0)).sum() for n in names))
    out.time_s = time.monotonic() - t0
    return out


@dataclass(frozen=True)
class MilpResult:
    """The exact MILP's answer for one conjunction."""

    status: str                   # "proved", "counterexample", "unknown"
    bound: float                  # a lower bound of min_x max_i (C_i y - d_i): HiGHS's, or its cutoff when proved
    point: Optional[np.ndarray]   # the input of the best solution (a candidate counterexample)
    time_s: float
    nodes_status: str             # HiGHS's own status word


@dataclass(frozen=True)
class MilpNetwork:
    """What the exact MILP encodes: the graph over the input box [lower, upper] with
    sound intervals of every tensor (the ReLU inputs' are the big-M constants). One
    encoding serves every conjunction of a disjunct."""

    graph: Graph
    lower: np.ndarray
    upper: np.ndarray
    intervals: Intervals


class SpecMilp:
    """The exact MILP of a disjunct, written once and solved per conjunction.

    Every unstable neuron gets a binary; each conjunction k gets a column t_k with rows
    C_i y - t_k <= d_i for its rows i, so that min t_k is min over the box of
    max_i (C_i y - d_i). Solving conjunction k minimises t_k alone (the other t columns
    are free above their rows and constrain nothing), so the network is written once
    however many conjunctions the spec has (a robustness property: nine).
    """

    def __init__(self, net: MilpNetwork, C: np.ndarray, d: np.ndarray, owner: np.ndarray, threads: int = 1,
                 handle: Optional[list] = None) -> None:
        graph, lower, upper, intervals = net.graph, net.lower, net.upper, net.intervals
        why = lp_supported(graph)
        if why is not None:
            raise NotReluMlp(f"exact MILP: {why}")
        iv = {k: tuple(a.ravel() for a in unknown_as_infinite(*v)) for k, v in intervals.items()}
        self.graph = graph
        self.lp = lp = GraphLp(graph, np.asarray(lower, np.float64).ravel(), np.asarray(upper, np.float64).ravel(),
                               threads)
        if handle is not None:
            handle.append(lp.model)
        for node in graph.nodes:
            lp.add_node(node, iv, exact=True)
        C = np.atleast_2d(np.asarray(C, np.float64))
        d = np.asarray(d, np.float64).ravel()
        owner = np.asarray(owner).ravel()
        y = self.y = lp.columns(graph.output_name, iv)
        y_lo, y_hi = iv[graph.output_name]
        r_lo = np.minimum(C, 0) @ y_hi + np.maximum(C, 0) @ y_lo - d     # rows r_i = C_i y - d_i
        r_hi = np.maximum(C, 0) @ y_hi + np.minimum(C, 0) @ y_lo - d
        self.conj = [int(k) for k in np.unique(owner)]
        first = lp.model.n_cols
        self.t = {k: first + j for j, k in enumerate(self.conj)}
        m = len(d)
        t_of_row = np.array([self.t[int(k)] for k in owner])
        rows = np.concatenate([np.repeat(np.arange(m), len(y)), np.arange(m)])
        cols = np.concatenate([np.tile(y, m), t_of_row])
        vals = np.concatenate([C.ravel(), -np.ones(m)])
        keep = vals != 0
        t_lo = np.array([float(np.max(r_lo[owner == k])) for k in self.conj])
        t_hi = np.array([float(np.max(r_hi[owner == k])) for k in self.conj])
        # C_i y - t_k <= d_i
        lp.model.add(Block(first, t_lo, t_hi, np.zeros(len(self.conj), bool), rows[keep], cols[keep], vals[keep],
                           np.full(m, -np.inf), d))
        self.C, self.d, self.owner = C, d, owner
        self._start_key: Optional[bytes] = None   # the input point `_start` was written for
        self._start: Optional[np.ndarray] = None
        self.scale = {k: float(np.max(np.abs(np.concatenate([r_lo[owner == k], r_hi[owner == k]]))))
                      for k in self.conj}

    def solve(self, k: int, deadline: float, start: Optional[np.ndarray] = None) -> MilpResult:
        """min t_k: "proved" when it exceeds MILP_MARGIN * (1 + scale), "counterexample" when
        HiGHS's best point has a value <= 0 (the caller replays it: HiGHS's point may sit
        a tolerance off), else "unknown". `start`: an input point to try first."""
        t0 = time.monotonic()
        lp = self.lp
        first = None
        if start is not None:
            first = self._start_columns(np.asarray(start, np.float64).ravel())
        margin = MILP_MARGIN * (1.0 + self.scale[k])
        res = lp.model.milp(np.array([self.t[k]]), np.array([1.0]), time_limit=max(1e-3, deadline - time.monotonic()),
                            start=first, stop_below=0.0, cutoff=2.0 * margin)
        point = None if res.point is None else res.point[lp.cols[self.graph.input_name]]
        if res.bound > margin:
            status = "proved"
        elif res.point is not None and res.value <= 0:
            status = "counterexample"
        else:
            status = "unknown"
        return MilpResult(status, res.bound, point, time.monotonic() - t0, res.status)


    def _start_columns(self, x: np.ndarray) -> np.ndarray:
        """The full column vector of input point x, every t_k set to its conjunction's value:
        one float64 forward per point, kept for the next conjunction (a runner passes the
        same point to each). A copy, since HiGHS is handed it."""
        key = x.tobytes()
        if self._start_key != key:
            first = self.lp.start(x)
            for j in self.conj:
                sel = self.owner == j
                first[self.t[j]] = float(np.max(self.C[sel] @ first[self.y] - self.d[sel]))
            self._start_key, self._start = key, first
        return self._start.copy()


def exact_milp(net: MilpNetwork, C: np.ndarray, d: np.ndarray, deadline: float, start: Optional[np.ndarray] = None,
               threads: int = 1, handle: Optional[list] = None) -> MilpResult:
    """min over the box of max_i (C_i y - d_i) (one conjunction's rows) by a MILP (`SpecMilp`)."""
    t0 = time.monotonic()
    milp = SpecMilp(net, C, d, np.zeros(len(np.atleast_1d(d)), np.int64), threads, handle)
    res = milp.solve(0, deadline, start)
    return MilpResult(res.status, res.bound, res.point, time.monotonic() - t0, res.nodes_status)
