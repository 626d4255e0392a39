"""A VNN-LIB 2.0 query as nncert holds it: declared tensors and a DNF of linear rows.

The standard's parser (``vnnlib.standard``) checks scope and types and gives each
assertion's disjunctive normal form; this module lowers that into plain numpy data.
Every declared tensor (inputs, hidden nodes, outputs of every network, in declaration
order) is flattened row-major into one vector ``z``; a query is satisfied iff some term
holds, and a term is a conjunction of rows ``a . z <= b`` (``<`` where strict); a
polynomial assertion's products of variables (``vnnlib.polynomial``) are extra
entries after ``z``. That one form carries several networks, hidden nodes, inputs
coupled with outputs and products, and ``Query.satisfied_by`` checks any assignment
against it in exact arithmetic. ``Query.to_spec`` turns it into a ``Spec`` over the
engine's input vector (every declared input, in declaration order; inputs every term
makes equal share one entry) and output vector (every hidden tensor and output, the
products, and a copy of the inputs when a row mixes them with the rest): the layout of
``models.product``'s side-by-side model.

Rounding: a row's constant is moved across the comparison in float64; when that is
inexact the bound is widened by one ulp, so the rows contain every point the query
admits (an unsat stays sound); a ``sat`` is confirmed on the written rows by
``satisfied_by``, so widening never makes a false counterexample. Decimal literals
are read as the nearest double, as every VNN-LIB tool does.
"""

from __future__ import annotations

import math
import operator
import weakref
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

from vnnlib.errors import VnnlibError
from vnnlib.normalize import MAX_DNF_TERMS
from vnnlib.polynomial import expand
from vnnlib.spec import Disjunct, InputRegion, OutputConstraints, Spec
from vnnlib.standard import parse_standard, text_version

__all__ = ["Tensor", "Network", "Row", "Query", "UnsupportedQuery", "load_query", "parse_query", "layout",
           "ELEMENT_TYPES"]

# The standard parser's DType names as a query spells them (the grammar's element types).
ELEMENT_TYPES = {
    "Real": "real", "F16": "float16", "F32": "float32", "F64": "float64", "BF16": "bfloat16",
    "F8E4M3FN": "float8e4m3fn", "F8E5M2": "float8e5m2", "F8E4M3FNUZ": "float8e4m3fnuz",
    "F8E5M2FNUZ": "float8e5m2fnuz", "F4E2M1": "float4e2m1", "I8": "int8", "I16": "int16",
    "I32": "int32", "I64": "int64", "U8": "uint8", "U16": "uint16", "U32": "uint32",
    "U64": "uint64", "C64": "complex64", "C128": "complex128", "Bool": "bool", "String": "string",
}


class UnsupportedQuery(VnnlibError):
    """A well-formed 2.0 query that uses a construct the engine does not decide yet."""


@dataclass(frozen=True)
class Tensor:
    """One declared variable: its place in ``z`` is ``offset .. offset + size``."""

    name: str
    kind: str                  # "input", "hidden" or "output"
    element_type: str          # as declared: "float32", "real", ...
    shape: tuple[int, ...]
    network: str
    offset: int
    onnx_name: str | None = None   # hidden nodes name an ONNX node output

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Network:
    """A declared network, with its tensors in declaration order."""

    name: str
    equal_to: str | None
    isomorphic_to: str | None
    inputs: tuple[Tensor, ...]
    hidden: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


@dataclass(frozen=True, eq=False)
class Row:
    """``coeffs . z[index] <= bound`` (``<`` if ``strict``); indices distinct, coeffs non-zero."""

    index: np.ndarray
    coeffs: np.ndarray
    bound: float
    strict: bool


@dataclass(frozen=True, eq=False)
class Query:
    """Declarations and the DNF ``terms`` (each a tuple of rows) over the vector ``z``."""

    version: tuple[int, int]
    networks: tuple[Network, ...]
    terms: tuple[tuple[Row, ...], ...]
    path: str | None = None
    # Products of variables the assertions use (POLY), each the sorted positions of its
    # factors in z; a row refers to product k as entry ``size + k`` of the extended z.
    products: tuple[tuple[int, ...], ...] = ()

    @property
    def tensors(self) -> tuple[Tensor, ...]:
        """Every declared tensor in the order the standard prints an assignment."""
        return tuple(t for n in self.networks for t in (*n.inputs, *n.hidden, *n.outputs))

    @property
    def size(self) -> int:
        return sum(t.size for t in self.tensors)

    def satisfied_by(self, z: np.ndarray) -> bool:
        """Whether the assignment ``z`` satisfies the query as written, in exact rational
        arithmetic on its float values (products included)."""
        values = [Fraction(float(v)) for v in np.asarray(z, dtype=np.float64).reshape(-1)]
        values += [math.prod((values[i] for i in mono), start=Fraction(1)) for mono in self.products]
        return any(all(_row_holds(row, values) for row in term) for term in self.terms)

    def to_spec(self, stand_ins: bool = False) -> Spec:
        """The ``Spec`` the engine decides (module docstring: its input and output vectors).

        An input element with no lower or upper bound is an ``UnsupportedQuery``, or with
        ``stand_ins`` gets a stand-in end one unit from its other end (both missing:
        ``[-1, 1]``): a counterexample inside is a counterexample, but an ``unsat`` of
        that Spec says nothing (see ``unbounded_inputs``).
        """
        return _to_spec(self, stand_ins)[0]

    def to_spec_with_stand_ins(self) -> tuple[Spec, list[str]]:
        """``to_spec(stand_ins=True)`` and the input elements that got stand-ins, from one
        lowering (a large query's lowering is the cost of its parse)."""
        return _to_spec(self, True)

    @property
    def plain(self) -> bool:
        """One network, one input, one output, no hidden node and no product: the Spec's
        vectors are that model's own input and output (no side-by-side model needed)."""
        if len(self.networks) != 1 or self.products:
            return False
        net = self.networks[0]
        if net.hidden or len(net.inputs) != 1 or len(net.outputs) != 1:
            return False
        where = layout(self)
        return not where.echo and where.n_x == net.inputs[0].size

    def unbounded_inputs(self) -> list[str]:
        """The input elements (``X[0,3]``) that some term leaves without a lower or upper bound."""
        return self.to_spec_with_stand_ins()[1]


def _row_holds(row: Row, values: list[Fraction]) -> bool:
    lhs = sum((Fraction(float(c)) * values[int(i)] for c, i in zip(row.coeffs, row.index)), Fraction(0))
    return lhs < Fraction(row.bound) if row.strict else lhs <= Fraction(row.bound)


def _where(query_path: str | None, line: int | None = None) -> tuple[str | None, int | None, int | None]:
    return (query_path, line, 1) if line else (query_path, None, None)


def _declared(decl: object, kind: str, network: str, offset: int) -> Tensor:
    dtype = getattr(decl, "dtype")
    onnx_name = getattr(decl, "onnx_name", None) if kind == "hidden" else None
    if onnx_name:
        onnx_name = onnx_name.strip('"')
    return Tensor(name=decl.name, kind=kind, element_type=ELEMENT_TYPES.get(dtype.name, dtype.name.lower()),
                  shape=tuple(int(s) for s in decl.shape), network=network, offset=offset,
                  onnx_name=onnx_name or None)


def _networks(ast: object) -> tuple[tuple[Network, ...], dict[str, Tensor]]:
    networks, by_name, offset = [], {}, 0
    for net in ast.networks:
        groups = []
        for kind, decls in (("input", net.inputs), ("hidden", net.hidden), ("output", net.outputs)):
            group = []
            for decl in decls:
                tensor = _declared(decl, kind, net.name, offset)
                offset += tensor.size
                group.append(tensor)
                by_name[tensor.name] = tensor
            groups.append(tuple(group))
        networks.append(Network(net.name, net.equal_to or None, net.isometric_to or None, *groups))
    return tuple(networks), by_name


def _flat(tensor: Tensor, indices: list[int]) -> int:
    """Row-major position of ``tensor[indices]`` in ``z`` (the parser checked the bounds)."""
    return tensor.offset + sum(map(operator.mul, indices, _strides(tensor.shape)))


@lru_cache(maxsize=None)
def _strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides of a shape, in elements."""
    out, step = [], 1
    for dim in reversed(shape):
        out.append(step)
        step *= dim
    return tuple(reversed(out))


def _difference_up(a: float, b: float) -> float:
    """``a - b``, one ulp up when the float64 subtraction is inexact (never below it)."""
    value = a - b
    if a != 0.0 and b != 0.0 and math.isfinite(value) and Fraction(a) - Fraction(b) != Fraction(value):
        value = math.nextafter(value, math.inf)
    return value


_NUMBERS = ("Float", "Int")
_PLUS, _MINUS = np.array([1.0]), np.array([-1.0])   # shared by every bound row: read-only
_PLUS.setflags(write=False)
_MINUS.setflags(write=False)
_OPS = {"LessEqual": (1, False), "LessThan": (1, True), "GreaterEqual": (-1, False),
        "GreaterThan": (-1, True)}


def _linear(expr: object, tensors: dict[str, Tensor], products: dict[tuple[int, ...], int], size: int,
            path: str | None) -> tuple[dict[int, float], float]:
    """An arithmetic expression as {position in the extended z: coefficient} and a
    constant: by the parser's linearisation, or for products of variables by expanding
    the polynomial (each monomial of degree 2 or more gets an entry after z)."""
    coeffs: dict[int, float] = {}
    kind = type(expr).__name__
    if kind == "Var":   # the common atoms, without the parser's linearisation round trip
        return {_flat(tensors[expr.name], expr.indices): 1.0}, 0.0
    if kind in ("Float", "Int"):
        return coeffs, float(expr.value)
    try:
        linear = expr.to_linear_expr()
    except Exception:  # the parser's VNNLibException for products of variables
        try:
            poly = expand(expr, lambda var: _flat(tensors[var.name], list(var.indices)))
        except ValueError as exc:
            line = next((v.line for v in _vars(expr)), None)
            raise UnsupportedQuery(f"{exc} in '{str(expr).strip()}'", *_where(path, line)) from None
        for mono, c in poly.items():
            if len(mono) == 1:
                coeffs[mono[0]] = coeffs.get(mono[0], 0.0) + c
            elif len(mono) > 1:
                at = size + products.setdefault(mono, len(products))
                coeffs[at] = coeffs.get(at, 0.0) + c
        return coeffs, poly.get((), 0.0)
    for term in linear.terms:
        var = term.var
        at = _flat(tensors[var.name], list(var.indices))
        coeffs[at] = coeffs.get(at, 0.0) + float(term.coeff)
    return coeffs, float(linear.constant)


def _rows(comparison: object, tensors: dict[str, Tensor], products: dict[tuple[int, ...], int], size: int,
          path: str | None) -> list[list[Row]]:
    """A comparison as alternatives (``!=`` gives two), each a list of rows."""
    kind = type(comparison).__name__
    lhs, rhs = comparison.lhs, comparison.rhs
    lk, rk = type(lhs).__name__, type(rhs).__name__
    if lk == "Var" and rk in _NUMBERS:       # x op c, the bulk of a box: no dict, no fromiter
        index, values = np.array([_flat(tensors[lhs.name], lhs.indices)]), _PLUS
        lc, rc = 0.0, float(rhs.value)
    elif rk == "Var" and lk in _NUMBERS:     # c op x
        index, values = np.array([_flat(tensors[rhs.name], rhs.indices)]), _MINUS
        lc, rc = float(lhs.value), 0.0
    else:
        left, lc = _linear(lhs, tensors, products, size, path)
        right, rc = _linear(rhs, tensors, products, size, path)
        coeffs = dict(left)
        for k, v in right.items():
            coeffs[k] = coeffs.get(k, 0.0) - v
        coeffs = {k: v for k, v in coeffs.items() if v != 0.0}
        index = np.fromiter(coeffs.keys(), dtype=np.int64, count=len(coeffs))
        values = np.fromiter(coeffs.values(), dtype=np.float64, count=len(coeffs))
    # left + lc (op) right + rc  ->  (left - right) (op) rc - lc

    def row(sign: int, strict: bool) -> Row:
        if sign > 0:
            return Row(index, values, _difference_up(rc, lc), strict)
        return Row(index, -values, _difference_up(lc, rc), strict)

    if kind in _OPS:
        sign, strict = _OPS[kind]
        return [[row(sign, strict)]]
    if kind == "Equal":
        return [[row(1, False), row(-1, False)]]
    if kind == "NotEqual":
        return [[row(1, True)], [row(-1, True)]]
    raise UnsupportedQuery(f"comparison {kind} in '{str(comparison).strip()}'", *_where(path))


def _bound_row(expr: object, tensors: dict[str, Tensor], indices: dict[int, np.ndarray]) -> Row | None:
    """The row of a lone ``(op variable number)`` or ``(op number variable)`` with op one of
    <=, <, >=, >, as `_rows` writes it (``x <= c``: ``+x <= c``; ``x >= c``: ``-x <= 0 - c``),
    or None for anything else. Most assertions of a box query are these."""
    op = _OPS.get(type(expr).__name__)
    if op is None:
        return None
    lhs, rhs = expr.lhs, expr.rhs
    lk, rk = type(lhs).__name__, type(rhs).__name__
    if lk == "Var" and rk in _NUMBERS:
        var, c, sign = lhs, float(rhs.value), op[0]
    elif rk == "Var" and lk in _NUMBERS:
        var, c, sign = rhs, float(lhs.value), -op[0]
    else:
        return None
    at = _flat(tensors[var.name], var.indices)
    index = indices.get(at)
    if index is None:
        index = indices[at] = np.array([at])
        index.setflags(write=False)
    return Row(index, _PLUS, c, op[1]) if sign > 0 else Row(index, _MINUS, 0.0 - c, op[1])


def _vars(node: object):
    if type(node).__name__ == "Var":
        yield node
    for child in getattr(node, "children", lambda: ())():
        yield from _vars(child)


def _constant_row(row: Row) -> bool | None:
    """The truth of a row with no variable, None when it has variables."""
    if row.index.size:
        return None
    return 0.0 < row.bound if row.strict else 0.0 <= row.bound


def _conjoin(terms: list[list[Row]], alternatives: list[list[Row]], path: str | None) -> list[list[Row]]:
    """The DNF of (OR terms) AND (OR alternatives); one alternative extends the terms in
    place (a query of many top-level asserts would otherwise copy its rows quadratically)."""
    if len(alternatives) == 1:
        for t in terms:
            t.extend(alternatives[0])
        return terms
    out = [t + alt for t in terms for alt in alternatives]
    if len(out) > MAX_DNF_TERMS:
        raise UnsupportedQuery(f"the query's disjunctive normal form has more than {MAX_DNF_TERMS} terms",
                               *_where(path))
    return out


def _simplify(term: list[Row]) -> list[Row] | None:
    """Drop rows that always hold; None when a row never holds (the term is empty)."""
    kept = []
    for row in term:
        truth = _constant_row(row)
        if truth is False:
            return None
        if truth is None:
            kept.append(row)
    return kept


def parse_query(text: str, path: str | None = None) -> Query:
    """Lower a 2.0 query's text (see the module docstring)."""
    version = text_version(text)
    if version is None:
        raise VnnlibError("not a VNN-LIB 2.0 query: it does not start with (vnnlib-version <2.x>)", path)
    if version[0] != 2:
        raise UnsupportedQuery(f"VNN-LIB version {version[0]}.{version[1]}: nncert reads 1.0 and 2.x", path)
    ast = parse_standard(text, path)
    networks, tensors = _networks(ast)
    size = sum(t.size for t in tensors.values())
    products: dict[tuple[int, ...], int] = {}
    terms: list[list[Row]] = [[]]
    indices: dict[int, np.ndarray] = {}   # one read-only index array per entry: a box bounds each twice
    for assertion in ast.assertions:
        bound = _bound_row(assertion.expr, tensors, indices)
        if bound is not None:   # one row, one alternative: every term gets it, no DNF
            for t in terms:
                t.append(bound)
            continue
        alternatives: list[list[Row]] = []
        for conjunction in assertion.expr.to_dnf():
            partial: list[list[Row]] = [[]]
            for comparison in conjunction:
                partial = _conjoin(partial, _rows(comparison, tensors, products, size, path), path)
            alternatives.extend(kept for kept in map(_simplify, partial) if kept is not None)
        terms = _conjoin(terms, alternatives, path)   # no alternative left: no term left
    return Query(version, networks, tuple(tuple(t) for t in terms), path, tuple(products))


def load_query(path: str) -> Query:
    """Read and lower a 2.0 query file (gzip allowed)."""
    from vnnlib.loader import read_text

    return parse_query(read_text(path), str(path))


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
        for k in range(tensor.offset, tensor.offset + tensor.size):
            if tensor.kind != "input":
                y_of[k], n_y = n_y, n_y + 1
            elif same.get(k, k) != k:
                x_of[k] = x_of[same[k]]   # its class's first entry comes earlier in z
            else:
                x_of[k], n_x = n_x, n_x + 1
    for k in range(len(query.products)):   # products of variables: computed into y (models.product)
        y_of[query.size + k], n_y = n_y, n_y + 1
    echo = _mixes(query, x_of)
    return _Layout(x_of, y_of, n_x, n_y + (n_x if echo else 0), echo)


def _to_spec(query: Query, stand_ins: bool) -> tuple[Spec, list[str]]:
    path = query.path
    where = layout(query)
    table = _RowTable(query, where)
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
        merged = np.zeros(where.n_x)
        np.add.at(merged, xs, row.coeffs)
        nonzero = np.flatnonzero(merged)
        if nonzero.size == 0:  # an equality between merged inputs, or terms that cancel
            return ("true",) if (0.0 < row.bound if row.strict else 0.0 <= row.bound) else ("false",)
        if nonzero.size == 1:
            return ("box", int(nonzero[0]), float(merged[nonzero[0]]), row.bound)
        return ("rows", merged, row.bound)
    # on outputs and hidden nodes, or mixed (then inputs through their echo in y)
    return ("out", where.y_index(row.index), row.coeffs, row.bound, row.strict)


_BOX, _ROWS, _OUT, _TRUE, _FALSE = range(5)
_TAGS = {"box": _BOX, "rows": _ROWS, "out": _OUT, "true": _TRUE, "false": _FALSE}


class _RowTable:
    """Every distinct row of a query classified once (`_classify`), as arrays: terms
    share most of their rows (a box common to every disjunct), so a term is split into
    its box, input rows and output rows by indexing these arrays instead of visiting
    each row again."""

    def __init__(self, query: Query, where: _Layout) -> None:
        rows = _distinct_rows(query)
        self.where = where
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
        lower, upper = np.full(where.n_x, -np.inf), np.full(where.n_x, np.inf)
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
