"""A VNN-LIB 2.0 query lowered into the engine's ``Spec`` (``vnnlib.query`` parses it).

The engine's input vector ``x`` is every declared input in declaration order (inputs
that every term makes equal share one entry, so their equality costs no search), its
output vector ``y`` every hidden tensor and output, then the products of variables, then
a copy of ``x`` when a row mixes inputs with the rest (`layout`): the layout of
``models.product``'s side-by-side model. Each term becomes a disjunct: its single-input
rows a box, its rows over several inputs the region's ``A x <= b``, the rest output
constraints (`to_spec`). Terms share most rows (a box common to every disjunct), so each
distinct row is classified once and every pass over rows visits the distinct ones.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from vnnlib.errors import UnsupportedQuery
from vnnlib.spec import Disjunct, InputRegion, OutputConstraints, Spec

if TYPE_CHECKING:   # annotations only: vnnlib.query imports this module
    from vnnlib.query import Query, Row

__all__ = ["layout", "to_spec"]


@dataclass(frozen=True)
class _Layout:
    """Where each entry of the extended ``z`` (z, then the query's products) goes: the
    engine's input vector ``x`` is every declared input in declaration order, its output
    vector ``y`` every hidden tensor and output, then every product of variables, then,
    when some row mixes inputs with the rest (``echo``), a copy of ``x``: such a row is
    then a row over ``y`` alone (``models.product`` builds the matching model; the copy
    is moved, not computed, so its bounds are the input's own). -1 marks an entry that
    is not in the vector."""

    x_of: np.ndarray
    y_of: np.ndarray
    n_x: int
    n_y: int
    echo: bool

    def y_index(self, z_index: np.ndarray) -> np.ndarray:
        """Positions in ``y`` of entries of ``z`` (inputs through their echo)."""
        inputs = self.x_of[z_index]
        return np.where(inputs >= 0, self.n_y - self.n_x + inputs, self.y_of[z_index])


def _distinct_rows(query: Query) -> dict[int, Row]:
    """The query's rows by id, each once: terms share most rows (a box common to every
    disjunct), so passes over the rows visit these instead of every term's."""
    rows = _DISTINCT.get(query)
    if rows is None:
        rows = {}
        for term in query.terms:
            rows.update(zip(map(id, term), term))
        _DISTINCT[query] = rows
    return rows


_DISTINCT: "weakref.WeakKeyDictionary[Query, dict[int, Row]]" = weakref.WeakKeyDictionary()
_LAYOUTS: "weakref.WeakKeyDictionary[Query, _Layout]" = weakref.WeakKeyDictionary()


def _mixes(query: Query, x_of: np.ndarray) -> bool:
    return any(0 < int(np.count_nonzero(x_of[row.index] >= 0)) < row.index.size
               for row in _distinct_rows(query).values() if row.index.size > 1)


def _equal_inputs(query: Query, is_input: np.ndarray) -> dict[int, int]:
    """Input entries every term makes equal (``(== X[0] X2[0])``: rows ``a - b <= 0``
    and ``b - a <= 0``), each mapped to the first entry of its class."""
    pairs = {}   # id(row) -> (p, n) for the rows z_p - z_n <= 0 over inputs
    for key, r in _distinct_rows(query).items():
        if r.index.size == 2 and not r.strict and r.bound == 0.0 and is_input[r.index].all() \
                and sorted(r.coeffs.tolist()) == [-1.0, 1.0]:
            pairs[key] = (int(r.index[0]), int(r.index[1])) if r.coeffs[0] > 0 else (int(r.index[1]), int(r.index[0]))
    common: set | None = None
    for term in query.terms:
        directed = {pairs[key] for key in filter(pairs.__contains__, map(id, term))}
        both = {(min(p, n), max(p, n)) for p, n in directed if (n, p) in directed}
        common = both if common is None else common & both
    parent: dict[int, int] = {}

    def root(a: int) -> int:
        while parent.get(a, a) != a:
            a = parent[a]
        return a

    for a, b in sorted(common or ()):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {a: root(a) for a in parent}


def layout(query: Query) -> _Layout:
    """The split of ``z`` into the engine's input and output vectors; inputs that every
    term makes equal share one entry of ``x`` (so their equality costs no search).
    Computed once per query."""
    where = _LAYOUTS.get(query)
    if where is None:
        where = _LAYOUTS[query] = _layout(query)
    return where


def _layout(query: Query) -> _Layout:
    extended = query.size + len(query.products)
    x_of = np.full(extended, -1, dtype=np.int64)
    y_of = np.full(extended, -1, dtype=np.int64)
    is_input = np.zeros(extended, dtype=bool)
    for tensor in query.tensors:
        is_input[tensor.offset:tensor.offset + tensor.size] = tensor.kind == "input"
    same = _equal_inputs(query, is_input)
    n_x = n_y = 0
    for tensor in query.tensors:
        start, stop = tensor.offset, tensor.offset + tensor.size
        if tensor.kind != "input":
            y_of[start:stop], n_y = np.arange(n_y, n_y + tensor.size), n_y + tensor.size
        elif not any(start <= k < stop for k in same):   # no entry merged: in order, a block
            x_of[start:stop], n_x = np.arange(n_x, n_x + tensor.size), n_x + tensor.size
        else:
            for k in range(start, stop):
                if same.get(k, k) != k:
                    x_of[k] = x_of[same[k]]   # its class's first entry comes earlier in z
                else:
                    x_of[k], n_x = n_x, n_x + 1
    for k in range(len(query.products)):   # products of variables: computed into y (models.product)
        y_of[query.size + k], n_y = n_y, n_y + 1
    echo = _mixes(query, x_of)
    return _Layout(x_of, y_of, n_x, n_y + (n_x if echo else 0), echo)


def to_spec(query: Query, stand_ins: bool) -> tuple[Spec, list[str]]:
    """The Spec and the input elements that got stand-ins (``Query.to_spec``); the query's
    bound lines, if any, seed every term's box."""
    path = query.path
    where = layout(query)
    box = query.lines.box(where.n_x, where.x_of) if query.lines is not None else None
    table = _RowTable(query, where, box)
    regions: dict[bytes, tuple[InputRegion, list[OutputConstraints]]] = {}
    unbounded: dict[int, None] = {}
    for term in query.terms:
        region, outputs = table.split(term, unbounded, stand_ins)
        if region is None:
            continue
        key = b"".join(a.tobytes() for a in (region.lower, region.upper) + (
            (region.A, region.b) if region.A is not None else ()))
        regions.setdefault(key, (region, []))[1].append(outputs)
    inputs = np.flatnonzero(where.x_of >= 0)
    names = [_element(query, int(inputs[i])) for i in unbounded]
    if names and not stand_ins:
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        raise UnsupportedQuery(f"input {names[0]}{more} has no lower or upper bound: nncert needs a bounded box "
                               "on every input", path, None, None)
    disjuncts = tuple(Disjunct(region, tuple(outs)) for region, outs in regions.values())
    return Spec(n_inputs=where.n_x, n_outputs=where.n_y, disjuncts=disjuncts, path=path), names


def _element(query: Query, flat: int) -> str:
    """The name of entry ``flat`` of ``z``, as a query writes it (``X[0,3]``)."""
    tensor = next(t for t in query.tensors if t.offset <= flat < t.offset + t.size)
    position, index = flat - tensor.offset, []
    for dim in reversed(tensor.shape):
        index.append(position % dim)
        position //= dim
    return f"{tensor.name}[{','.join(str(i) for i in reversed(index))}]"


def _classify(row: Row, where: _Layout) -> tuple:
    """What a row is to the Spec: ("box", x index, coefficient, bound) for one input;
    ("rows", coefficients over x, bound) for several inputs; ("true",) / ("false",) when
    merged inputs cancel it; ("out", y indices, coefficients, bound, strict) otherwise."""
    if row.index.size == 1:
        x = int(where.x_of[row.index[0]])
        if x >= 0:
            return ("box", x, float(row.coeffs[0]), row.bound)
        return ("out", where.y_index(row.index), row.coeffs, row.bound, row.strict)
    xs = where.x_of[row.index]
    if (xs >= 0).all():
        merged, exact_zero = _merged(row, xs, where.n_x)
        nonzero = np.flatnonzero(~exact_zero)
        if nonzero.size == 0:  # an equality between merged inputs, or terms that cancel
            bound = row.exact[1] if row.exact is not None else Fraction(row.bound)
            return ("true",) if (0 < bound if row.strict else 0 <= bound) else ("false",)
        if nonzero.size == 1:
            return ("box", int(nonzero[0]), float(merged[nonzero[0]]), row.bound)
        return ("rows", merged, row.bound)
    # on outputs and hidden nodes, or mixed (then inputs through their echo in y)
    ys = where.y_index(row.index)
    if np.unique(ys).size == ys.size:
        return ("out", ys, row.coeffs, row.bound, row.strict)
    merged, exact_zero = _merged(row, ys, where.n_y)   # merged inputs met again in the echo
    keep = np.flatnonzero(~exact_zero)
    return ("out", keep, merged[keep], row.bound, row.strict)


def _merged(row: Row, positions: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The row's coefficients summed by position (entries of z that share one), [size],
    and where that sum is exactly zero. Shared positions are summed in rationals and
    rounded once: a float sum of terms that cancel (1e20 x + y - 1e20 x, x merged) can be
    off by the size of the terms, not of the result, and lost a coefficient or made a
    row false that is not."""
    merged = np.zeros(size)
    if np.unique(positions).size == positions.size:
        merged[positions] = row.coeffs
        return merged, merged == 0
    coeffs = row.exact[0] if row.exact is not None else [Fraction(float(c)) for c in row.coeffs]
    sums: dict[int, Fraction] = {}
    for at, c in zip(positions.tolist(), coeffs):
        sums[at] = sums.get(at, Fraction(0)) + c
    exact_zero = np.ones(size, dtype=bool)
    for at, total in sums.items():
        merged[at] = float(total)
        exact_zero[at] = total == 0
    return merged, exact_zero


_BOX, _ROWS, _OUT, _TRUE, _FALSE = range(5)
_TAGS = {"box": _BOX, "rows": _ROWS, "out": _OUT, "true": _TRUE, "false": _FALSE}


class _RowTable:
    """Every distinct row of a query classified once (`_classify`), as arrays: terms
    share most of their rows (a box common to every disjunct), so a term is split into
    its box, input rows and output rows by indexing these arrays instead of visiting
    each row again."""

    def __init__(self, query: Query, where: _Layout, box: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        rows = _distinct_rows(query)
        self.where = where
        self.box = box
        self.position = {key: k for k, key in enumerate(rows)}
        self.kinds = [_classify(row, where) for row in rows.values()]
        self.tag = np.array([_TAGS[kind[0]] for kind in self.kinds], dtype=np.int8)
        # A box row c x_i <= b bounds x_i from above (c > 0) or below (c < 0) by b / c
        # (`_box_value`); other rows get x 0 and value 0, never read.
        box = [kind if kind[0] == "box" else ("box", 0, 1.0, 0.0) for kind in self.kinds]
        self.x = np.array([b[1] for b in box], dtype=np.int64)
        self.upper_side = np.array([b[2] > 0 for b in box], dtype=bool)
        self.value = np.array([_box_value(b[3], b[2]) for b in box], dtype=np.float64)

    def split(self, term: tuple[Row, ...], unbounded: dict[int, None], stand_ins: bool
              ) -> tuple[InputRegion | None, OutputConstraints]:
        where = self.where
        ks = np.fromiter(map(self.position.__getitem__, map(id, term)), dtype=np.int64, count=len(term))
        tags = self.tag[ks]
        empty = OutputConstraints(np.zeros((0, where.n_y)), np.zeros(0), np.zeros(0, bool))
        if (tags == _FALSE).any():
            return None, empty
        boxes = ks[tags == _BOX]
        up = self.upper_side[boxes]
        if self.box is None:
            lower, upper = np.full(where.n_x, -np.inf), np.full(where.n_x, np.inf)
        else:
            lower, upper = self.box[0].copy(), self.box[1].copy()
        np.minimum.at(upper, self.x[boxes[up]], self.value[boxes[up]])
        np.maximum.at(lower, self.x[boxes[~up]], self.value[boxes[~up]])
        if np.any(lower > upper):
            return None, empty
        missing = ~np.isfinite(lower) | ~np.isfinite(upper)
        unbounded.update(dict.fromkeys(np.flatnonzero(missing).tolist()))
        if stand_ins and missing.any():
            lo_ok, hi_ok = np.isfinite(lower), np.isfinite(upper)
            lower, upper = (np.where(lo_ok, lower, np.where(hi_ok, upper - 1.0, -1.0)),
                            np.where(hi_ok, upper, np.where(lo_ok, lower + 1.0, 1.0)))
        in_rows = [self.kinds[k][1:] for k in ks[tags == _ROWS].tolist()]
        outs = [self.kinds[k][1:] for k in ks[tags == _OUT].tolist()]
        A = b = None
        if in_rows:
            A = np.array([coeffs for coeffs, _ in in_rows])
            b = np.array([bound for _, bound in in_rows])
        region = InputRegion(lower, upper, A, b)
        C = np.zeros((max(len(outs), 1), where.n_y))   # no output row: any output violates (0 . y <= 0)
        for k, (index, coeffs, _, _) in enumerate(outs):
            np.add.at(C[k], index, coeffs)
        d = np.array([o[2] for o in outs] or [0.0])
        strict = np.array([o[3] for o in outs] or [False], dtype=bool)
        return region, OutputConstraints(C, d, strict)


def _box_value(bound: float, c: float) -> float:
    """The end of x_i that ``c x_i <= bound`` gives: ``bound`` for c = 1, ``-bound`` for
    c = -1 (exact), else ``_quotient``."""
    if c == 1.0:
        return bound
    if c == -1.0:
        return -bound
    return _quotient(bound, c)


def _quotient(bound: float, coeff: float) -> float:
    """``bound / coeff``, widened by one ulp toward the loose side when inexact.

    ``c x <= b`` is ``x <= b/c`` for ``c > 0`` (loose side: up) and ``x >= b/c`` for
    ``c < 0`` (loose side: down).
    """
    value = bound / coeff
    if math.isfinite(value) and Fraction(bound) / Fraction(coeff) != Fraction(value):
        value = math.nextafter(value, math.inf if coeff > 0 else -math.inf)
    return value
