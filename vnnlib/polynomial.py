"""Polynomial arithmetic expressions (VNN-LIB 2.0's POLY theory) as sums of monomials.

The standard's parser linearises linear expressions itself (``to_linear_expr``) and
refuses a product of variables; this module expands such an expression from the AST
into ``{monomial: coefficient}`` plus a constant, a monomial being the sorted tuple of
the flat positions (in ``z``, see ``vnnlib.query``) of its factors, repeated for powers.
Coefficients are combined in float64, as the parser's own linearisation does.
"""
from __future__ import annotations

from typing import Callable

__all__ = ["Polynomial", "expand", "MAX_MONOMIALS"]

MAX_MONOMIALS = 10_000   # an expansion beyond this is refused rather than built
Polynomial = dict[tuple[int, ...], float]   # () is the constant term


def _add(a: Polynomial, b: Polynomial, sign: float = 1.0) -> Polynomial:
    out = dict(a)
    for mono, c in b.items():
        out[mono] = out.get(mono, 0.0) + sign * c
    return {m: c for m, c in out.items() if c != 0.0 or m == ()}


def _mul(a: Polynomial, b: Polynomial) -> Polynomial:
    out: Polynomial = {}
    for ma, ca in a.items():
        for mb, cb in b.items():
            mono = tuple(sorted(ma + mb))
            out[mono] = out.get(mono, 0.0) + ca * cb
    if len(out) > MAX_MONOMIALS:
        raise ValueError(f"the expansion has more than {MAX_MONOMIALS} monomials")
    return {m: c for m, c in out.items() if c != 0.0}


def expand(node: object, position: Callable[[object], int]) -> Polynomial:
    """The polynomial of an arithmetic AST node; ``position(var)`` places a variable in ``z``."""
    kind = type(node).__name__
    if kind == "Var":
        return {(position(node),): 1.0}
    if kind in ("Float", "Int", "IntExpr"):
        return {(): float(node.value)}
    if kind == "Literal":
        return {(): float(node.lexeme)}
    if kind == "Negate":
        return {m: -c for m, c in expand(node.expr, position).items()}
    if kind == "Plus":
        out: Polynomial = {(): 0.0}
        for arg in node.args:
            out = _add(out, expand(arg, position))
        return out
    if kind == "Minus":
        out = expand(node.head, position)
        for arg in node.rest:
            out = _add(out, expand(arg, position), -1.0)
        return out
    if kind == "Multiply":
        out = {(): 1.0}
        for arg in node.args:
            out = _mul(out, expand(arg, position))
        return out
    raise ValueError(f"arithmetic expression {kind} ('{str(node).strip()}')")
