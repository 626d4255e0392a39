"""Intervals tightened backward: what a narrowed later tensor says about the earlier ones.

Forward interval propagation bounds each tensor from its inputs. A split decision
(z >= 0 or z <= 0) narrows a later tensor, and that says something about the earlier
ones too: constraint propagation, as a MIP presolve tightens variable bounds from its
linear rows. For y = L x + b with y in [yl, yu] and x in [xl, xu], each term of a row is
at most what the row's bound leaves once the other terms are at their least,

    L_kj x_j <= yu_k - b_k - sum_{i != j} min(L_ki xl_i, L_ki xu_i)   (and the mirror for yl),

and through y = relu(x), y <= yu with yu >= 0 gives x <= yu, and y >= yl > 0 gives
x >= yl. Walked back to the graph input, this gives each domain of an activation split a
smaller input box, over which every later bound is computed again. The case that needs
it: a neuron summing many nonnegative terms (a distance, a count) split active, which
bounds each term, and through the ReLUs the inputs; a linear bound cannot say that,
since its one line per neuron only cuts the box by a half-space.

Only ReLU and affine nodes pass tightening back (an affine node's rows come from its
vector-Jacobian product, kept once per node, for nodes up to `MAX_MATRIX` elements);
any other node stops it, which is sound: its inputs keep their forward intervals.
Rows whose slack exceeds every term's range cannot tighten anything and are skipped.
The arithmetic is float64 and every new end moves outward by a margin for its sums'
rounding (`_rel`; the rows are made in float64 from the model's constants) before it
is stored back as float32, rounded outward again.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from models import GraphEvaluator
from models.ops import forward_rule
from relaxations.bounds import IntervalBounds
from relaxations.affine_step import affine_rows
from relaxations.crown import BackwardContext
from relaxations.registry import is_affine_node

__all__ = ["tightened_box", "affine_matrix", "MAX_MATRIX"]

T = torch.Tensor
# Elements of an affine node's dense matrix [outputs, variable inputs] that it may hold.
MAX_MATRIX = 1 << 22
# Elements of one chunk of the [domains, rows, inputs] products of dense rows.
_CHUNK = 1 << 21


def _rel(terms: int) -> float:
    """Relative margin of a row's bound: its float64 sum of `terms` terms (gamma_n, with
    room for the rows' own float64 rounding: a weight scaled on the way, a Gemm's alpha,
    a Div, an average's 1/k, is rounded once when the rows are made)."""
    return (terms + 8) * 2.0 ** -53


@dataclass(frozen=True)
class _Rows:
    """An affine node as rows: M [K, J] over its variable inputs flattened and concatenated
    (`parts`: name, numel), b [K]; `single` when every row has one nonzero (column [K],
    coefficient [K]): selections and elementwise affine ops, inverted row by row (M is
    then empty [0, J] for a selection, whose rows come without a matrix)."""

    M: T
    b: T
    parts: list
    single: Optional[tuple[T, T]]


def _selection_rows(ctx: BackwardContext, node, variable: list, K: int, J: int) -> Optional[_Rows]:
    """A selection's rows without a matrix: the op applied to the inputs' flat positions
    says which input element each output element copies (positions below 2^53 are
    exact in float64). None when some output element is not a copy (padding)."""
    args, parts, start = [], [], 0
    for x, v in zip(node.inputs, variable):
        if v:
            n = torch.Size(ctx.graph.shapes[x]).numel()
            args.append(torch.arange(start, start + n, dtype=torch.float64, device=ctx.ev.device)
                        .reshape(ctx.graph.shapes[x]))
            parts.append((x, n))
            start += n
        else:
            args.append(None if not x else ctx.ev.constants[x])
    fn = forward_rule(node).fn
    first = fn(node, args)[0].reshape(-1)
    # Every output must copy an input element: shifting the positions by one must shift
    # it by one (a padded constant would not move, and gets no row at all).
    moved = fn(node, [a + 1 if v else a for a, v in zip(args, variable)])[0].reshape(-1)
    if first.numel() != K or not bool((moved - first == 1).all()):
        return None
    col = first.long()
    one = torch.ones(K, dtype=torch.float64, device=col.device)
    return _Rows(torch.zeros(0, J, dtype=torch.float64, device=col.device), torch.zeros(K, dtype=torch.float64,
                 device=col.device), parts, (col, one))


_FLOAT64 = " float64 evaluator"    # a cache key no node is named: the evaluator the rows are made with

# The affine nodes' rows per evaluator (one per model and dtype in a run), kept while
# it lives: a search asks for the same rows every round.
_ROWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _rows_of(ctx: BackwardContext, node, cache: Optional[dict]) -> Optional[_Rows]:
    if cache is None:
        cache = _ROWS.setdefault(ctx.ev, {})
    if node.name in cache:
        return cache[node.name]
    out = None
    consts = ctx.ev.constants
    variable = [bool(x) and x not in consts for x in node.inputs]
    K = torch.Size(ctx.graph.shapes[node.outputs[0]]).numel() if len(node.outputs) == 1 else 0
    J = sum(torch.Size(ctx.graph.shapes[x]).numel() for x, v in zip(node.inputs, variable) if v)
    distinct = len(set(x for x, v in zip(node.inputs, variable) if v)) == sum(variable)
    if K and J and distinct and "selection" in ctx.rules[node.name].facts:
        out = _selection_rows(ctx, node, variable, K, J)
    elif K and J and K * max(J, K) <= MAX_MATRIX and distinct:
        # Made in float64 from the model's constants: rows made in float32 would carry the
        # rounding of every scaled weight, which the float64 margin does not cover.
        ev64 = cache.get(_FLOAT64)
        if ev64 is None:
            ev64 = ctx.ev if ctx.ev.dtype == torch.float64 else \
                GraphEvaluator(ctx.graph, dtype=torch.float64, device=ctx.ev.device)
            cache[_FLOAT64] = ev64
        eye = torch.eye(K, dtype=torch.float64, device=ctx.ev.device).reshape(1, K, *ctx.graph.shapes[node.outputs[0]])
        A_ins, bias, _ = affine_rows(BackwardContext(ctx.graph, ev64, {}, ctx.rules), node, eye)
        blocks, parts = [], []
        for x, v, a in zip(node.inputs, variable, A_ins):
            if v:
                blocks.append(a.reshape(K, -1).double())
                parts.append((x, blocks[-1].shape[1]))
        M = torch.cat(blocks, 1)
        nz = (M != 0).sum(1)
        single = None
        if bool((nz == 1).all()):
            col = (M != 0).double().argmax(1)
            single = (col, M.gather(1, col.unsqueeze(1)).squeeze(1))
        out = _Rows(M, bias.reshape(K).double(), parts, single)
    cache[node.name] = out
    return out


def affine_matrix(ctx: BackwardContext, node, cache: Optional[dict] = None) -> Optional[_Rows]:
    """An affine node's rows in float64 (`_Rows`: M [outputs, variable inputs] and its
    parts per input, or a selection's copied positions), kept per evaluator; None when
    the node is too large for a dense matrix (`MAX_MATRIX`)."""
    return _rows_of(ctx, node, cache)


def _outward(lo: T, hi: T, dtype: torch.dtype) -> tuple[T, T]:
    """float64 ends stored in `dtype`, each rounded away from the interval's inside."""
    l, h = lo.to(dtype), hi.to(dtype)
    l = torch.where(l.double() > lo, torch.nextafter(l, torch.full_like(l, -torch.inf)), l)
    h = torch.where(h.double() < hi, torch.nextafter(h, torch.full_like(h, torch.inf)), h)
    return l, h


def _invert_single(r: _Rows, yl: T, yu: T, rows: T, rel: float) -> tuple[T, T]:
    """x intervals [N, J] implied by the rows `rows` (mask [K]) with one term each:
    x_j = (y_k - b_k) / c_k, the tightest over the rows that read x_j (+-inf where none does)."""
    col, c = r.single
    col, c, b = col[rows], c[rows], r.b[rows]
    yl, yu = yl[:, rows], yu[:, rows]
    N, J = yl.shape[0], r.M.shape[1]
    a, bnd = (yl - b) / c, (yu - b) / c
    lo_k, hi_k = torch.where(c > 0, a, bnd), torch.where(c > 0, bnd, a)
    mass = rel * (1 + (yl.abs().nan_to_num(0, 0, 0) + yu.abs().nan_to_num(0, 0, 0) + b.abs()) / c.abs())
    lo_k, hi_k = lo_k - mass, hi_k + mass
    idx = col.unsqueeze(0).expand(N, -1)
    lo = torch.full((N, J), -torch.inf, dtype=torch.float64, device=yl.device).scatter_reduce(1, idx, lo_k, "amax")
    hi = torch.full((N, J), torch.inf, dtype=torch.float64, device=yl.device).scatter_reduce(1, idx, hi_k, "amin")
    return lo, hi


def _invert_dense(r: _Rows, yl: T, yu: T, xl: T, xu: T, rows: T, rel: float) -> tuple[T, T]:
    """x intervals [N, J] implied by dense rows (module docstring), over the rows of
    `rows` (mask [K]) whose slack is below some term's range in some domain (the others
    tighten nothing)."""
    M, b = r.M, r.b
    N, J = xl.shape
    lo = torch.full((N, J), -torch.inf, dtype=torch.float64, device=xl.device)
    hi = torch.full((N, J), torch.inf, dtype=torch.float64, device=xl.device)
    # Which rows can tighten anything, in float32 with room (a filter only: the kept rows
    # are then worked out in float64).
    sel = torch.nonzero(rows).flatten()
    M, b, yl, yu = M[sel], b[sel], yl[:, sel], yu[:, sel]
    f32 = [t.float() for t in (M, b, xl, xu, yl, yu)]
    Mf, bf, xlf, xuf, ylf, yuf = f32
    pos, neg = Mf.clamp(min=0), Mf.clamp(max=0)
    up = yuf - bf - (xlf @ pos.T + xuf @ neg.T)         # slack of each side, >= 0 when feasible
    dn = (xuf @ pos.T + xlf @ neg.T) - (ylf - bf)
    reach = Mf.abs().amax(1).unsqueeze(0) * (xuf - xlf).amax(1, keepdim=True)
    keep = (torch.minimum(up, dn) < 1.01 * reach + 1e-6).any(0)
    rows = torch.nonzero(keep).flatten()
    if not len(rows):
        return lo, hi
    M, b = M[rows], b[rows]
    yl, yu = yl[:, rows], yu[:, rows]
    pos, neg = M.clamp(min=0), M.clamp(max=0)
    smin = xl @ pos.T + xu @ neg.T                      # [N, k]: each kept row's least value
    smax = xu @ pos.T + xl @ neg.T
    mag = torch.maximum(xl.abs(), xu.abs()) @ M.abs().T + b.abs() + yl.abs().nan_to_num(0, 0, 0) \
        + yu.abs().nan_to_num(0, 0, 0)
    # Each row's nonzero terms only ([k, P] columns, padded with zero coefficients): a
    # convolution's row reads its receptive field, not the whole input.
    P = max(1, int((M != 0).sum(1).max()))
    vals, cols = M.abs().topk(P, dim=1)
    coef = M.gather(1, cols)
    rows = torch.arange(len(rows), device=xl.device)
    step = max(1, _CHUNK // max(1, N * P))
    for s in range(0, len(rows), step):
        k = rows[s:s + step]
        L, idx = coef[k], cols[k]                                    # [k, P]
        xlg, xug = xl[:, idx], xu[:, idx]                            # [N, k, P]
        tmin = torch.minimum(L * xlg, L * xug)
        tmax = torch.maximum(L * xlg, L * xug)
        # The term's room: the row's bound less the other terms at their extremes.
        t_hi = (yu[:, k] - b[k] - smin[:, k]).unsqueeze(-1) + tmin
        t_lo = (yl[:, k] - b[k] - smax[:, k]).unsqueeze(-1) + tmax
        margin = (rel * mag[:, k]).unsqueeze(-1)
        t_hi, t_lo = t_hi + margin, t_lo - margin
        safe = torch.where(L == 0, torch.ones_like(L), L)
        a, c = t_lo / safe, t_hi / safe
        x_lo = torch.where(L > 0, a, torch.where(L < 0, c, torch.full_like(a, -torch.inf)))
        x_hi = torch.where(L > 0, c, torch.where(L < 0, a, torch.full_like(a, torch.inf)))
        x_lo = x_lo.nan_to_num(nan=-torch.inf).reshape(N, -1)
        x_hi = x_hi.nan_to_num(nan=torch.inf).reshape(N, -1)
        flat = idx.reshape(1, -1).expand(N, -1)
        lo = lo.scatter_reduce(1, flat, x_lo, "amax")
        hi = hi.scatter_reduce(1, flat, x_hi, "amin")
    return lo, hi


class _Ends(dict):
    """One end of the table's intervals as float64 [N, numel], read on first use (a
    search's table may copy each tensor only when it is read)."""

    def __init__(self, table: Mapping[str, IntervalBounds], end: str) -> None:
        super().__init__()
        self.table, self.end = table, end

    def __missing__(self, key: str) -> T:
        v = getattr(self.table[key], self.end)
        out = v.double().reshape(v.shape[0], -1)
        self[key] = out
        return out


def tightened_box(ctx: BackwardContext, table: Mapping[str, IntervalBounds], seeds: Mapping[str, T],
                  cache: Optional[dict] = None) -> tuple[IntervalBounds, T]:
    """The input box [N, *input_shape] that the intervals of `table` imply, walking back
    from the tensors in `seeds` (those narrowed beyond their forward intervals: split
    tensors, each with a bool mask [numel] of the elements narrowed in some domain), and
    [N] the domains whose intervals turned out empty (they hold no input). Only rows of
    narrowed elements are read: an element at its forward interval rarely tightens its
    inputs, and skipping a row only tightens less. `cache` keeps the affine nodes' rows
    between calls (default: per evaluator)."""
    graph = ctx.graph
    lo, hi = _Ends(table, "lower"), _Ends(table, "upper")
    changed = {k: m.reshape(-1) for k, m in seeds.items()}

    def moved(x: str, new_lo: T, new_hi: T) -> None:
        # A NaN end (inf - inf in a row's sum) says nothing: it must not reach the box.
        new_lo, new_hi = new_lo.nan_to_num(nan=-torch.inf), new_hi.nan_to_num(nan=torch.inf)
        m = ((new_lo > lo[x]) | (new_hi < hi[x])).any(0)
        if bool(m.any()):
            lo[x], hi[x] = torch.maximum(lo[x], new_lo), torch.minimum(hi[x], new_hi)
            changed[x] = changed[x] | m if x in changed else m

    for node in reversed(graph.nodes):
        if not any(o in changed for o in node.outputs):
            continue
        rule = ctx.rules[node.name]
        variable = [bool(x) and x not in ctx.ev.constants for x in node.inputs]
        y = node.outputs[0]
        if node.op == "Relu":
            x = node.inputs[0]
            moved(x, torch.where(lo[y] > 0, torch.maximum(lo[x], lo[y]), lo[x]),
                  torch.where(hi[y] >= 0, torch.minimum(hi[x], hi[y]), hi[x]))
            continue
        if not is_affine_node(node, rule, variable):
            continue
        r = _rows_of(ctx, node, cache)
        if r is None:
            continue
        xl = torch.cat([lo[x] for x, _ in r.parts], 1)
        xu = torch.cat([hi[x] for x, _ in r.parts], 1)
        rows = changed.get(y)
        if rows is None:
            continue
        if r.single is not None:
            nl, nh = _invert_single(r, lo[y], hi[y], rows, _rel(1))
        else:
            nl, nh = _invert_dense(r, lo[y], hi[y], xl, xu, rows, _rel(xl.shape[1]))
        start = 0
        for x, n in r.parts:
            moved(x, nl[:, start:start + n], nh[:, start:start + n])
            start += n
    box = table[graph.input_name]
    l64, h64 = lo[graph.input_name], hi[graph.input_name]
    l32, h32 = _outward(l64, h64, box.lower.dtype)
    l32 = torch.maximum(l32.reshape(box.lower.shape), box.lower)
    h32 = torch.minimum(h32.reshape(box.upper.shape), box.upper)
    empty = (l32 > h32).reshape(l32.shape[0], -1).any(1)
    for k in lo:
        empty |= (lo[k] > hi[k]).any(1)   # read ends only: both were read together
    return IntervalBounds(torch.where(empty.reshape(-1, *[1] * (l32.dim() - 1)), box.lower, l32),
                          torch.where(empty.reshape(-1, *[1] * (h32.dim() - 1)), box.upper, h32)), empty
