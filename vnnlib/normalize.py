"""From the AST to a ``Spec``: linear atoms, disjunctive normal form, grouping.

Arithmetic is exact. VNN-LIB literals are decimals, i.e. rationals, so a compound term
such as ``(<= (+ X_0 0.1) 0.3)`` is reduced with ``fractions.Fraction`` and rounded to
float64 once, at the end: it means exactly what ``(<= X_0 0.2)`` means. The plain
forms ``(op var number)`` and ``(op var var)`` take a float fast path that gives the
same result (``float()`` of a decimal string is correctly rounded), because they are
almost every atom in a large file.

DNF terms are tuples of *segments* (tuples of atoms). A segment is shared by every
term that contains it, so a file with 100k box bounds and an ``or`` over 9 output
rows gives 9 terms that all point at one bound segment instead of 9 copies; the box of
a segment is reduced once and cached.

Input atoms on one variable are box bounds (the tightest wins); atoms on several
inputs become rows of ``A x <= b``. Strictness of input atoms is dropped: the region is
the closure, a superset, which can only make ``unsat`` harder to prove.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from vnnlib.errors import VnnlibError, line_col, plain
from vnnlib.nodes import (
    Add, And, BoolConst, Compare, Div, Formula, Mul, Neg, Num, Or, Script, Sub, Term, Var,
)
from vnnlib.spec import Disjunct, InputRegion, OutputConstraints, Spec
from vnnlib.tokenizer import TokenStream

__all__ = ["MAX_DNF_TERMS", "normalize"]

MAX_DNF_TERMS = 100_000
_MAX_REGION_VALUES = 20_000_000  # bounds kept over all distinct regions (160 MB each side)
_SHARE_SEGMENT_AT = 64
_MAX_EXACT_BITS = 8192  # smaller segments are copied into their parent, not shared
_ONE = Fraction(1)
_PLUS = (1.0,)
_MINUS = (-1.0,)
_new = tuple.__new__  # builds a NamedTuple at twice the speed of its constructor
_ZERO = Fraction(0)


class _Atom(NamedTuple):
    """``sum(coef[k] * var[idx[k]]) <= d`` (``<`` if strict) over one kind of variable.

    Single-variable atoms always have ``coef == (+-1.0,)``, so ``d`` is the bound.
    """

    kind: str
    idx: tuple[int, ...]
    coef: tuple[float, ...]
    d: float
    strict: bool
    pos: int


_Segment = tuple[_Atom, ...]
_Term = tuple[_Segment, ...]


class _SegmentBox(NamedTuple):
    """The box bounds of one segment, reduced per variable; other atoms as lists."""

    lo_idx: np.ndarray
    lo_val: np.ndarray
    hi_idx: np.ndarray
    hi_val: np.ndarray
    input_rows: list[_Atom]
    output_rows: list[_Atom]


def normalize(script: Script, stream: TokenStream, n_inputs: int | None = None,
              n_outputs: int | None = None) -> Spec:
    """Check declarations and counts, expand to DNF, and group terms by input region."""
    return _Normalizer(script, stream).run(n_inputs, n_outputs)


def _reduce(idx: list[int], val: list[float], ufunc: np.ufunc) -> tuple[np.ndarray, np.ndarray]:
    """Combine repeated indices with ``ufunc`` (max for lower, min for upper bounds)."""
    if not idx:
        return np.empty(0, dtype=np.intp), np.empty(0)
    idx_a = np.asarray(idx, dtype=np.intp)
    val_a = np.asarray(val, dtype=np.float64)
    order = np.argsort(idx_a, kind="stable")
    idx_a, val_a = idx_a[order], val_a[order]
    starts = np.flatnonzero(np.concatenate(([True], idx_a[1:] != idx_a[:-1])))
    return idx_a[starts], ufunc.reduceat(val_a, starts)


class _Normalizer:
    def __init__(self, script: Script, stream: TokenStream) -> None:
        self.script = script
        self.stream = stream
        self.fractions: dict[str, Fraction] = {}
        self.boxes: dict[int, _SegmentBox] = {}
        self.n_in = 0
        self.n_out = 0
        self.declare_pos = {(d.var.kind, d.var.index): d.pos for d in script.declarations}

    def error(self, pos: int, message: str) -> VnnlibError:
        return self.stream.error(pos, message)

    def where(self, pos: int) -> str:
        line, col = line_col(self.stream.text, self.stream.offset(pos))
        return f"{line}:{col}"

    # ------------------------------------------------------------ declarations
    def run(self, n_inputs: int | None, n_outputs: int | None) -> Spec:
        self.n_in = self.count("X", "input", n_inputs)
        self.n_out = self.count("Y", "output", n_outputs)
        assertions = self.script.assertions
        first_pos = assertions[0].pos if assertions else 0
        terms = self.conjunction(list(assertions))
        if not terms:
            raise self.error(first_pos,
                             "the assertions can never hold (every term of their "
                             "disjunctive normal form has a false constant comparison)")
        return self.group(terms)

    def count(self, kind: str, role: str, expected: int | None) -> int:
        indices = sorted(i for (k, i) in self.declare_pos if k == kind)
        last_pos = max((p for (k, _), p in self.declare_pos.items() if k == kind), default=0)
        if not indices:
            raise self.error(0, f"no {role} variables declared: expected "
                                f"(declare-const {kind}_0 Real) and so on")
        n = len(indices)
        if indices[-1] != n - 1:
            present = set(indices)
            missing = next(i for i in range(n) if i not in present)
            raise self.error(self.declare_pos[(kind, indices[-1])],
                             f"{role} variables must be declared as {kind}_0..{kind}_{{n-1}}: "
                             f"{kind}_{indices[-1]} is declared but {kind}_{missing} is not")
        if expected is not None and expected != n:
            raise self.error(last_pos, f"the file declares {n} {role} variables "
                                       f"({kind}_0..{kind}_{n - 1}) but {expected} were "
                                       f"expected (the model's {role} size)")
        return n

    # ------------------------------------------------------------ atoms
    def fraction(self, num: Num) -> Fraction:
        value = self.fractions.get(num.text)
        if value is None:
            value = self.fractions[num.text] = Fraction(num.text)
        return value

    def atoms(self, cmp: Compare) -> list[_Atom] | None:
        """The atoms of one comparison: ``[]`` if it is always true, ``None`` if false."""
        op, pos = cmp.op, cmp.pos
        high, low = (cmp.lhs, cmp.rhs) if op in ("<=", "<", "=") else (cmp.rhs, cmp.lhs)
        strict = op == "<" or op == ">"
        th, tl = type(high), type(low)
        # fast paths: the row is high - low <= 0
        if th is Var and tl is Num:
            atom = _new(_Atom, (high.kind, (high.index,), _PLUS, low.value, strict, pos))
            if op == "=":
                return [atom, _new(_Atom, (high.kind, (high.index,), _MINUS, -low.value,
                                           False, pos))]
            return [atom]
        if th is Num and tl is Var:
            atom = _new(_Atom, (low.kind, (low.index,), _MINUS, -high.value, strict, pos))
            if op == "=":
                return [atom, _new(_Atom, (low.kind, (low.index,), _PLUS, high.value,
                                           False, pos))]
            return [atom]
        if th is Var and tl is Var and high.index != low.index and high.kind == low.kind:
            # indices in increasing order, as `row_atom` writes them: the same row must
            # have the same key however it was written, or `group` keeps it twice
            if high.index < low.index:
                idx, coef, neg = (high.index, low.index), (1.0, -1.0), (-1.0, 1.0)
            else:
                idx, coef, neg = (low.index, high.index), (-1.0, 1.0), (1.0, -1.0)
            atom = _new(_Atom, (high.kind, idx, coef, 0.0, strict, pos))
            if op == "=":
                return [atom, _new(_Atom, (high.kind, idx, neg, 0.0, False, pos))]
            return [atom]
        coefs, const = self.linear(high)
        low_coefs, low_const = self.linear(low)
        for var, c in low_coefs.items():
            coefs[var] = coefs.get(var, _ZERO) - c
        d = low_const - const  # row: sum coefs * v <= d
        coefs = {v: c for v, c in coefs.items() if c != 0}
        if not coefs:
            holds = (d > 0 if strict else d >= 0) if op != "=" else d == 0
            return [] if holds else None
        kinds = {v.kind for v in coefs}
        if len(kinds) > 1:
            raise self.error(pos, "a constraint mixes input (X_) and output (Y_) variables: "
                                  "expected either only inputs or only outputs")
        kind = kinds.pop()
        rows = [(coefs, d, strict)]
        if op == "=":
            rows.append(({v: -c for v, c in coefs.items()}, -d, False))
        return [self.row_atom(kind, row, row_d, row_strict, pos)
                for row, row_d, row_strict in rows]

    def row_atom(self, kind: str, coefs: dict[Var, Fraction], d: Fraction, strict: bool,
                 pos: int) -> _Atom:
        items = sorted(coefs.items(), key=lambda item: item[0].index)
        if len(items) == 1:
            var, c = items[0]  # divide by |c| exactly, so the bound is rounded only once
            return _Atom(kind, (var.index,), (1.0 if c > 0 else -1.0,),
                         self.to_float(d / abs(c), pos), strict, pos)
        return _Atom(kind, tuple(v.index for v, _ in items),
                     tuple(self.to_float(c, pos) for _, c in items),
                     self.to_float(d, pos), strict, pos)

    def to_float(self, value: Fraction, pos: int) -> float:
        try:
            result = float(value)
        except OverflowError:
            result = math.inf
        if not math.isfinite(result):
            raise self.error(pos, "a constant in this constraint is outside the float64 range")
        return result

    def small(self, value: Fraction, pos: int) -> Fraction:
        """Refuse constants whose exact value needs thousands of digits.

        Without this, a product of many tiny literals would make exact arithmetic
        take minutes, which is a hang as far as a user can tell.
        """
        if (value.numerator.bit_length() > _MAX_EXACT_BITS
                or value.denominator.bit_length() > _MAX_EXACT_BITS):
            raise self.error(pos, "a constant in this term needs more than "
                                  f"{_MAX_EXACT_BITS} bits to evaluate exactly")
        return value

    def linear(self, term: Term) -> tuple[dict[Var, Fraction], Fraction]:
        """``term`` as ``(coefficients, constant)``; exact, and refuses non-linear terms."""
        kind = type(term)
        if kind is Num:
            return {}, self.fraction(term)
        if kind is Var:
            return {term: _ONE}, _ZERO
        if kind is Neg:
            coefs, const = self.linear(term.arg)
            return {v: -c for v, c in coefs.items()}, -const
        if kind is Add or kind is Sub:
            coefs, const = self.linear(term.args[0])
            sign = 1 if kind is Add else -1
            for arg in term.args[1:]:
                arg_coefs, arg_const = self.linear(arg)
                for var, c in arg_coefs.items():
                    coefs[var] = self.small(coefs.get(var, _ZERO) + sign * c, term.pos)
                const = self.small(const + sign * arg_const, term.pos)
            return coefs, const
        if kind is Mul:
            scale = _ONE
            linear_part: tuple[dict[Var, Fraction], Fraction] | None = None
            for arg in term.args:
                coefs, const = self.linear(arg)
                if any(c != 0 for c in coefs.values()):
                    if linear_part is not None:
                        raise self.error(term.pos, "non-linear term: a product of two terms "
                                                   "that both contain variables; expected a "
                                                   "constant factor times a linear term")
                    linear_part = (coefs, const)
                else:
                    scale = self.small(scale * const, term.pos)
            if linear_part is None:
                return {}, scale
            coefs, const = linear_part
            return ({v: self.small(scale * c, term.pos) for v, c in coefs.items()},
                    self.small(scale * const, term.pos))
        if kind is Div:
            coefs, const = self.linear(term.args[0])
            divisor = _ONE
            for arg in term.args[1:]:
                arg_coefs, arg_const = self.linear(arg)
                if any(c != 0 for c in arg_coefs.values()):
                    raise self.error(term.pos, "non-linear term: division by a term that "
                                               "contains a variable")
                if arg_const == 0:
                    raise self.error(term.pos, "division by zero")
                divisor = self.small(divisor * arg_const, term.pos)
            return ({v: self.small(c / divisor, term.pos) for v, c in coefs.items()},
                    self.small(const / divisor, term.pos))
        raise AssertionError(f"unknown term node {kind.__name__}")

    # ------------------------------------------------------------ DNF
    def dnf(self, formula: Formula) -> list[_Term]:
        kind = type(formula)
        if kind is Compare:
            atoms = self.atoms(formula)
            return [] if atoms is None else [(tuple(atoms),) if atoms else ()]
        if kind is BoolConst:
            return [()] if formula.value else []
        if kind is And:
            return self.conjunction(list(formula.args))
        if kind is Or:
            terms: list[_Term] = []
            for arg in formula.args:
                terms.extend(self.dnf(arg))
                if len(terms) > MAX_DNF_TERMS:
                    raise self.too_many(formula.pos)
            return terms
        raise AssertionError(f"unknown formula node {kind.__name__}")

    def too_many(self, pos: int) -> VnnlibError:
        return self.error(pos, f"the assertions expand to more than {MAX_DNF_TERMS} terms "
                               f"in disjunctive normal form, which is not supported")

    def conjunction(self, formulas: list[Formula]) -> list[_Term]:
        """DNF of an AND, keeping the order of atoms and sharing big segments."""
        parts: list[list[_Term]] = []  # each part: the alternatives for that stretch
        segments: list[_Segment] = []
        flat: list[_Atom] = []
        false = False
        count = 1  # number of terms of the product so far

        def close_flat() -> None:
            if flat:
                segments.append(tuple(flat))
                flat.clear()

        for formula in formulas:
            if type(formula) is Compare:
                atoms = self.atoms(formula)
                if atoms is None:
                    false = True
                else:
                    flat.extend(atoms)
                continue
            terms = self.dnf(formula)
            if not terms:
                false = True
            elif len(terms) == 1:
                for segment in terms[0]:
                    if len(segment) < _SHARE_SEGMENT_AT:
                        flat.extend(segment)
                    else:
                        close_flat()
                        segments.append(segment)
            else:
                count *= len(terms)
                if count > MAX_DNF_TERMS:
                    raise self.too_many(formula.pos)
                close_flat()
                if segments:
                    parts.append([tuple(segments)])
                    segments = []
                parts.append(terms)
        close_flat()
        if segments:
            parts.append([tuple(segments)])
        if false:
            return []
        result: list[_Term] = [()]
        for part in parts:
            if len(part) == 1:
                only = part[0]
                result = [r + only for r in result]
            else:
                result = [r + t for r in result for t in part]
        return result

    # ------------------------------------------------------------ regions
    def segment_box(self, segment: _Segment) -> _SegmentBox:
        box = self.boxes.get(id(segment))
        if box is not None:
            return box
        lo_i: list[int] = []
        lo_v: list[float] = []
        hi_i: list[int] = []
        hi_v: list[float] = []
        input_rows: list[_Atom] = []
        output_rows: list[_Atom] = []
        for atom in segment:
            if atom.kind == "X":
                if len(atom.idx) == 1:
                    if atom.coef[0] > 0:
                        hi_i.append(atom.idx[0])
                        hi_v.append(atom.d)
                    else:
                        lo_i.append(atom.idx[0])
                        lo_v.append(-atom.d)
                else:
                    input_rows.append(atom)
            else:
                output_rows.append(atom)
        box = _SegmentBox(*_reduce(lo_i, lo_v, np.maximum), *_reduce(hi_i, hi_v, np.minimum),
                          input_rows, output_rows)
        self.boxes[id(segment)] = box
        return box

    def group(self, terms: list[_Term]) -> Spec:
        groups: dict[bytes, tuple[InputRegion, list[OutputConstraints], set[bytes]]] = {}
        empty: list[tuple[_Term, np.ndarray, np.ndarray]] = []
        for term in terms:
            lower = np.full(self.n_in, -np.inf)
            upper = np.full(self.n_in, np.inf)
            input_rows: dict[tuple, None] = {}
            output_rows: dict[tuple, None] = {}
            for segment in term:
                box = self.segment_box(segment)
                if box.lo_idx.size:
                    lower[box.lo_idx] = np.maximum(lower[box.lo_idx], box.lo_val)
                if box.hi_idx.size:
                    upper[box.hi_idx] = np.minimum(upper[box.hi_idx], box.hi_val)
                for atom in box.input_rows:
                    input_rows.setdefault((atom.idx, atom.coef, atom.d), None)
                for atom in box.output_rows:
                    output_rows.setdefault((atom.idx, atom.coef, atom.d, atom.strict), None)
            self.check_bounded(lower, upper)
            if np.any(lower > upper):
                empty.append((term, lower, upper))
                continue
            lower += 0.0  # -0.0 -> 0.0, so that equal regions have equal bytes
            upper += 0.0
            A, b = self.dense_rows(list(input_rows), self.n_in)
            key = lower.tobytes() + upper.tobytes()
            if A is not None:
                key += b"A" + b"".join(sorted(row.tobytes() + np.float64(bi).tobytes()
                                              for row, bi in zip(A, b)))
            conj = self.output_constraints(list(output_rows))
            conj_key = conj.C.tobytes() + conj.d.tobytes() + conj.strict.tobytes()
            if key not in groups:
                if (len(groups) + 1) * self.n_in > _MAX_REGION_VALUES:
                    raise self.error(term[0][0].pos if term and term[0] else 0,
                                     f"the assertions describe more than "
                                     f"{_MAX_REGION_VALUES // self.n_in} distinct input "
                                     f"regions of {self.n_in} inputs, which is not supported")
                groups[key] = (InputRegion(lower, upper, A, b), [], set())
            _, conjs, seen = groups[key]
            if conj_key not in seen:
                seen.add(conj_key)
                conjs.append(conj)
        if not groups:
            raise self.empty_region(*empty[0])
        disjuncts = tuple(Disjunct(region, self.absorb(conjs)) for region, conjs, _ in groups.values())
        return Spec(self.n_in, self.n_out, disjuncts, self.stream.path)

    @staticmethod
    def absorb(conjs: list[OutputConstraints]) -> tuple[OutputConstraints, ...]:
        """An empty conjunction always holds and makes its siblings redundant."""
        for conj in conjs:
            if conj.C.shape[0] == 0:
                return (conj,)
        return tuple(conjs)

    def check_bounded(self, lower: np.ndarray, upper: np.ndarray) -> None:
        for values, side, example in ((lower, "lower", ">="), (upper, "upper", "<=")):
            unbounded = np.flatnonzero(np.isinf(values))
            if unbounded.size:
                i = int(unbounded[0])
                raise self.error(self.declare_pos[("X", i)],
                                 f"input variable X_{i} has no {side} bound: expected an "
                                 f"assertion such as ({example} X_{i} <number>)"
                                 + (f" ({unbounded.size} inputs lack one)"
                                    if unbounded.size > 1 else ""))

    def empty_region(self, term: _Term, lower: np.ndarray, upper: np.ndarray) -> VnnlibError:
        i = int(np.flatnonzero(lower > upper)[0])
        lo_pos = hi_pos = 0
        for segment in term:
            for atom in segment:
                if atom.kind == "X" and atom.idx == (i,):
                    if atom.coef[0] > 0 and atom.d == upper[i]:
                        hi_pos = atom.pos
                    elif atom.coef[0] < 0 and -atom.d == lower[i]:
                        lo_pos = atom.pos
        return self.error(hi_pos, f"empty input region: X_{i} has lower bound {plain(lower[i])} "
                                  f"(set at {self.where(lo_pos)}) above its upper bound "
                                  f"{plain(upper[i])} (set here)")

    @staticmethod
    def dense_rows(rows: list[tuple], width: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if not rows:
            return None, None
        A = np.zeros((len(rows), width))
        b = np.empty(len(rows))
        for r, (idx, coef, d, *_) in enumerate(rows):
            A[r, list(idx)] = coef
            b[r] = d
        return A + 0.0, b + 0.0

    def output_constraints(self, rows: list[tuple]) -> OutputConstraints:
        A, b = self.dense_rows(rows, self.n_out)
        if A is None:
            return OutputConstraints(np.zeros((0, self.n_out)), np.zeros(0), np.zeros(0, bool))
        return OutputConstraints(A, b, np.array([row[3] for row in rows], dtype=bool))
