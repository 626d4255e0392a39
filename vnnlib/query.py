"""A VNN-LIB 2.0 query as nncert holds it: declared tensors and a DNF of linear rows.

The standard's parser (``vnnlib.standard``) checks scope and types and gives each
assertion's disjunctive normal form; this module lowers that into plain numpy data.
Every declared tensor (inputs, hidden nodes, outputs of every network, in declaration
order) is flattened row-major into one vector ``z``; a query is satisfied iff some term
holds, and a term is a conjunction of rows ``a . z <= b`` (``<`` where strict), besides
the ``lines`` every term holds (a plain query's box read from the text in one pass,
``vnnlib.plain_box``, kept as arrays); a polynomial assertion's products of variables
(``vnnlib.polynomial``) are extra entries after ``z``. That one form carries several networks, hidden nodes, inputs
coupled with outputs and products, and ``Query.satisfied_by`` checks any assignment
against it in exact arithmetic. ``Query.to_spec`` turns it into a ``Spec`` over the
engine's input vector (every declared input, in declaration order; inputs every term
makes equal share one entry) and output vector (every hidden tensor and output, the
products, and a copy of the inputs when a row mixes them with the rest): the layout of
``models.product``'s side-by-side model (``vnnlib.lowering`` does that part).

Rounding: a row's constant is moved across the comparison in float64; when that is
inexact the bound is widened by one ulp, so the rows contain every point the query
admits (an unsat stays sound); a ``sat`` is confirmed on the written rows by
``satisfied_by``, so widening never makes a false counterexample. Decimal literals
are read as the nearest double, as every VNN-LIB tool does.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

from vnnlib.errors import UnsupportedQuery, VnnlibError
from vnnlib.loader import read_text
from vnnlib.lowering import layout, to_spec as _to_spec
from vnnlib.normalize import MAX_DNF_TERMS
from vnnlib.polynomial import expand
from vnnlib.spec import Spec
from vnnlib.standard import parse_standard, text_version

__all__ = ["Tensor", "Network", "Row", "BoundLines", "Query", "UnsupportedQuery", "load_query", "parse_query", "layout",
           "ELEMENT_TYPES"]

# The standard parser's DType names as a query spells them (the grammar's element types).
ELEMENT_TYPES = {
    "Real": "real", "F16": "float16", "F32": "float32", "F64": "float64", "BF16": "bfloat16",
    "F8E4M3FN": "float8e4m3fn", "F8E5M2": "float8e5m2", "F8E4M3FNUZ": "float8e4m3fnuz",
    "F8E5M2FNUZ": "float8e5m2fnuz", "F4E2M1": "float4e2m1", "I8": "int8", "I16": "int16",
    "I32": "int32", "I64": "int64", "U8": "uint8", "U16": "uint16", "U32": "uint32",
    "U64": "uint64", "C64": "complex64", "C128": "complex128", "Bool": "bool", "String": "string",
}


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
    """``coeffs . z[index] <= bound`` (``<`` if ``strict``); indices distinct, coeffs non-zero.

    `exact` is the row as written, coefficients and bound as fractions, where the float
    row may differ from it (a constant moved across the comparison and widened by an
    ulp, coefficients summed): ``satisfied_by`` reads it. None where the float row is
    the written one (a variable against a number)."""

    index: np.ndarray
    coeffs: np.ndarray
    bound: float
    strict: bool
    exact: tuple[tuple[Fraction, ...], Fraction] | None = None


@dataclass(frozen=True, eq=False)
class BoundLines:
    """Rows ``z[position] <= value`` (``upper``) or ``z[position] >= value``, strict where
    marked, that every term holds: a box's lines read from the text in one pass
    (``vnnlib.plain_box``), kept as arrays rather than thousands of ``Row`` objects."""

    position: np.ndarray
    value: np.ndarray
    upper: np.ndarray
    strict: np.ndarray

    def holds(self, z: np.ndarray) -> bool:
        """Whether ``z`` satisfies every line (float against float: exact)."""
        x = np.asarray(z, dtype=np.float64).reshape(-1)[self.position]
        v, up, strict = self.value, self.upper, self.strict
        return bool(np.all(np.where(up, np.where(strict, x < v, x <= v), np.where(strict, x > v, x >= v))))

    def box(self, size: int, x_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The box the lines give over the engine's input vector (``x_of``: z to x)."""
        at = x_of[self.position]
        if (at < 0).any():
            raise ValueError("bound lines on an entry that is not an input")
        lower, upper = np.full(size, -np.inf), np.full(size, np.inf)
        np.minimum.at(upper, at[self.upper], self.value[self.upper])
        np.maximum.at(lower, at[~self.upper], self.value[~self.upper])
        return lower, upper


@dataclass(frozen=True, eq=False)
class Query:
    """Declarations and the DNF ``terms`` (each a tuple of rows) over the vector ``z``;
    ``lines``, where present, are rows every term also holds."""

    version: tuple[int, int]
    networks: tuple[Network, ...]
    terms: tuple[tuple[Row, ...], ...]
    path: str | None = None
    # Products of variables the assertions use (POLY), each the sorted positions of its
    # factors in z; a row refers to product k as entry ``size + k`` of the extended z.
    products: tuple[tuple[int, ...], ...] = ()
    lines: BoundLines | None = None

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
        if self.lines is not None and not self.lines.holds(z):
            return False
        values = [Fraction(float(v)) for v in np.asarray(z, dtype=np.float64).reshape(-1)]
        values += [math.prod((values[i] for i in mono), start=Fraction(1)) for mono in self.products]
        return any(all(_row_holds(row, values) for row in term) for term in self.terms)

    def to_spec(self, stand_ins: bool = False) -> Spec:
        """The ``Spec`` the engine decides (``vnnlib.lowering``: its input and output vectors).

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
    coeffs, bound = row.exact if row.exact is not None else \
        ([Fraction(float(c)) for c in row.coeffs], Fraction(row.bound))
    lhs = sum((c * values[int(i)] for c, i in zip(coeffs, row.index)), Fraction(0))
    return lhs < bound if row.strict else lhs <= bound


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
            path: str | None) -> tuple[dict[int, Fraction], Fraction]:
    """An arithmetic expression as {position in the extended z: coefficient} and a
    constant, exactly (the sums of the parser's double terms): by the parser's
    linearisation, or for products of variables by expanding the polynomial (each
    monomial of degree 2 or more gets an entry after z)."""
    coeffs: dict[int, Fraction] = {}
    kind = type(expr).__name__
    if kind == "Var":   # the common atoms, without the parser's linearisation round trip
        return {_flat(tensors[expr.name], expr.indices): Fraction(1)}, Fraction(0)
    if kind in ("Float", "Int"):
        return coeffs, Fraction(float(expr.value))
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
                coeffs[mono[0]] = coeffs.get(mono[0], Fraction(0)) + Fraction(float(c))
            elif len(mono) > 1:
                at = size + products.setdefault(mono, len(products))
                coeffs[at] = coeffs.get(at, Fraction(0)) + Fraction(float(c))
        return coeffs, Fraction(float(poly.get((), 0.0)))
    for term in linear.terms:
        var = term.var
        at = _flat(tensors[var.name], list(var.indices))
        coeffs[at] = coeffs.get(at, Fraction(0)) + Fraction(float(term.coeff))
    return coeffs, Fraction(float(linear.constant))


def _rows(comparison: object, tensors: dict[str, Tensor], products: dict[tuple[int, ...], int], size: int,
          path: str | None) -> list[list[Row]]:
    """A comparison as alternatives (``!=`` gives two), each a list of rows."""
    kind = type(comparison).__name__
    lhs, rhs = comparison.lhs, comparison.rhs
    lk, rk = type(lhs).__name__, type(rhs).__name__
    exact = None
    if lk == "Var" and rk in _NUMBERS:       # x op c, the bulk of a box: no dict, no fromiter
        index, values = np.array([_flat(tensors[lhs.name], lhs.indices)]), _PLUS
        lc, rc = 0.0, float(rhs.value)
    elif rk == "Var" and lk in _NUMBERS:     # c op x
        index, values = np.array([_flat(tensors[rhs.name], rhs.indices)]), _MINUS
        lc, rc = float(lhs.value), 0.0
    else:
        left, lc_exact = _linear(lhs, tensors, products, size, path)
        right, rc_exact = _linear(rhs, tensors, products, size, path)
        coeffs = dict(left)
        for k, v in right.items():
            coeffs[k] = coeffs.get(k, Fraction(0)) - v
        coeffs = {k: v for k, v in coeffs.items() if v != 0}
        index = np.fromiter(coeffs.keys(), dtype=np.int64, count=len(coeffs))
        values = np.fromiter((float(v) for v in coeffs.values()), dtype=np.float64, count=len(coeffs))
        lc, rc = float(lc_exact), float(rc_exact)
        exact = (tuple(coeffs.values()), rc_exact - lc_exact)
    # left + lc (op) right + rc  ->  (left - right) (op) rc - lc

    def row(sign: int, strict: bool) -> Row:
        if exact is None:
            if sign > 0:
                return Row(index, values, _difference_up(rc, lc), strict)
            return Row(index, -values, _difference_up(lc, rc), strict)
        coeffs_fr, bound_fr = exact
        if sign > 0:
            return Row(index, values, _difference_up(rc, lc), strict, (coeffs_fr, bound_fr))
        return Row(index, -values, _difference_up(lc, rc), strict, (tuple(-c for c in coeffs_fr), -bound_fr))

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


def check_version(text: str, path: str | None) -> tuple[int, int]:
    """The query's version, 2.x; an error for a text that is not 2.x."""
    version = text_version(text)
    if version is None:
        raise VnnlibError("not a VNN-LIB 2.0 query: it does not start with (vnnlib-version <2.x>)", path)
    if version[0] != 2:
        raise UnsupportedQuery(f"VNN-LIB version {version[0]}.{version[1]}: nncert reads 1.0 and 2.x", path)
    return version


def parse_query(text: str, path: str | None = None, ast: object | None = None) -> Query:
    """Lower a 2.0 query's text (see the module docstring); ``ast``: the standard parser's
    reading of ``text`` where the caller has it already."""
    version = check_version(text, path)
    if ast is None:
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
    """Read and lower a 2.0 query file (gzip allowed): a plain query's box in one pass
    where ``vnnlib.plain_box`` applies, else the whole AST."""
    from vnnlib.plain_box import plain_box_query   # lazy: it imports this module

    text = read_text(path)
    check_version(text, str(path))
    query = plain_box_query(text, str(path))
    return query if query is not None else parse_query(text, str(path))
