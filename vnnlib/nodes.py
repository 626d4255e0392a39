"""The abstract syntax tree that the parser builds and the normaliser consumes.

Nodes are ``NamedTuple``s: immutable like frozen dataclasses but about three times
cheaper to build, which matters when a file has a million assertions. ``pos`` is the
index of the node's opening ``(`` in the token stream, turned into ``line:col`` only
if an error has to be reported. ``Var`` and ``Num`` carry no position: they are
interned (one object per declared variable, one per distinct literal), so that the
common ``(<= X_3 0.5)`` costs a single allocation.
"""

from __future__ import annotations

from typing import NamedTuple, Union

__all__ = [
    "Num", "Var", "Add", "Sub", "Neg", "Mul", "Div", "Term",
    "Compare", "And", "Or", "BoolConst", "Formula",
    "Declaration", "Script",
]


class Num(NamedTuple):
    """A numeric literal; ``text`` keeps the exact decimal for rational arithmetic."""

    value: float
    text: str


class Var(NamedTuple):
    """A declared variable: ``kind`` is ``"X"`` (input) or ``"Y"`` (output)."""

    kind: str
    index: int
    name: str


class Add(NamedTuple):
    args: tuple[Term, ...]
    pos: int


class Sub(NamedTuple):
    """``(- a b c)`` = a - b - c; the unary form is ``Neg``."""

    args: tuple[Term, ...]
    pos: int


class Neg(NamedTuple):
    arg: Term
    pos: int


class Mul(NamedTuple):
    """A product; linear only if at most one factor contains a variable."""

    args: tuple[Term, ...]
    pos: int


class Div(NamedTuple):
    """``(/ a b ...)``; every divisor must be a non-zero constant."""

    args: tuple[Term, ...]
    pos: int


Term = Union[Num, Var, Add, Sub, Neg, Mul, Div]


class Compare(NamedTuple):
    """``(op lhs rhs)`` with ``op`` one of ``<= >= < > =``."""

    op: str
    lhs: Term
    rhs: Term
    pos: int


class And(NamedTuple):
    args: tuple[Formula, ...]
    pos: int


class Or(NamedTuple):
    args: tuple[Formula, ...]
    pos: int


class BoolConst(NamedTuple):
    """``true`` or ``false`` written as a formula."""

    value: bool
    pos: int


Formula = Union[Compare, And, Or, BoolConst]


class Declaration(NamedTuple):
    var: Var
    pos: int


class Script(NamedTuple):
    """A whole file: declarations and the asserted formulas, each in file order."""

    declarations: tuple[Declaration, ...]
    assertions: tuple[Formula, ...]
