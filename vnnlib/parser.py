"""Recursive-descent parser from VNN-LIB tokens to the AST in ``vnnlib.nodes``.

Grammar (the SMT-LIB subset that VNN-LIB 1.0 uses)::

    script   := command*
    command  := '(' 'declare-const' NAME 'Real' ')'
              | '(' 'assert' formula ')'
              | '(' ('check-sat' | 'get-model' | 'exit') ')'      ; accepted, ignored
    formula  := '(' ('and' | 'or') formula* ')'
              | '(' ('<=' | '>=' | '<' | '>' | '=') term term ')'
              | 'true' | 'false'
    term     := NUMBER | NAME | '(' ('+' | '-' | '*' | '/') term+ ')'

Variables must be declared before use (as in SMT-LIB) and named ``X_<i>`` or
``Y_<j>``. Nesting is limited to ``MAX_DEPTH`` levels so that a hostile file gives a
clean error instead of exhausting the Python stack. The comparison with two plain
atoms is special-cased because it is almost every line of a large file.
"""

from __future__ import annotations

import math
import re
from typing import NoReturn

from vnnlib.errors import line_col
from vnnlib.nodes import (
    Add, And, BoolConst, Compare, Declaration, Div, Formula, Mul, Neg, Num,
    Or, Script, Sub, Term, Var,
)
from vnnlib.tokenizer import TokenStream

__all__ = ["MAX_DEPTH", "parse_tokens"]

MAX_DEPTH = 200
_MAX_LITERAL_CHARS = 400  # keeps exact rational arithmetic on literals cheap

_NAME_RE = re.compile(r"([XY])_(0|[1-9][0-9]*)")
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE]([+-]?[0-9]+))?")
_MAX_EXPONENT = 400  # beyond this a literal is inf or 0 in float64 anyway
_COMPARISONS = frozenset(("<=", ">=", "<", ">", "="))
_ARITHMETIC = {"+": Add, "-": Sub, "*": Mul, "/": Div}
_IGNORED_COMMANDS = frozenset(("check-sat", "get-model", "exit"))
_KEYWORDS = frozenset(("assert", "declare-const", "and", "or", "Real", "true", "false"))
_EOF = ""  # never a real token: the regex matches at least one character
_new = tuple.__new__  # builds a NamedTuple node at twice the speed of its constructor


def parse_tokens(stream: TokenStream) -> Script:
    """Parse a whole token stream; raises ``VnnlibError`` at the first problem."""
    return _Parser(stream).script()


def _describe(tok: str) -> str:
    return "end of input" if tok == _EOF else repr(tok)


class _Parser:
    """One pass over the tokens; ``self.i`` always indexes the next unread token."""

    def __init__(self, stream: TokenStream) -> None:
        self.stream = stream
        # Sentinels let the look-ahead of the fast paths index past the end safely.
        self.toks = stream.tokens + [_EOF] * 8
        self.i = 0
        self.vars: dict[str, Var] = {}
        self.decl_pos: dict[str, int] = {}
        self.nums: dict[str, Num] = {}

    # ----------------------------------------------------------------- errors
    def fail(self, index: int, message: str) -> NoReturn:
        raise self.stream.error(index, message)

    def expect_close(self, open_index: int, what: str) -> None:
        tok = self.toks[self.i]
        if tok == ")":
            self.i += 1
            return
        line, col = line_col(self.stream.text, self.stream.offset(open_index))
        self.fail(self.i, f"expected ')' to close the {what} opened at {line}:{col}, "
                          f"found {_describe(tok)}")

    # ----------------------------------------------------------------- commands
    def script(self) -> Script:
        toks = self.toks
        n = len(self.stream.tokens)
        decls: list[Declaration] = []
        asserts: list[Formula] = []
        add_assert = asserts.append
        var_get, num_get = self.vars.get, self.nums.get
        name_match = _NAME_RE.fullmatch
        i = 0
        while i < n:
            tok = toks[i]
            if tok != "(":
                if tok == ")":
                    self.fail(i, "unexpected ')' with no matching '('")
                self.fail(i, f"expected '(' to start a command, found {tok!r}")
            head = toks[i + 1]
            if head == "assert":
                # Fast path for (assert (op atom atom)), most of every large file.
                op = toks[i + 3]
                if (toks[i + 2] == "(" and op in _COMPARISONS and toks[i + 6] == ")"
                        and toks[i + 7] == ")"):
                    a, b = toks[i + 4], toks[i + 5]
                    if a != "(" and a != ")" and b != "(" and b != ")":
                        lhs = var_get(a) or num_get(a) or self.number(a, i + 4)
                        rhs = var_get(b) or num_get(b) or self.number(b, i + 5)
                        add_assert(_new(Compare, (op, lhs, rhs, i + 2)))
                        i += 8
                        continue
                self.i = i + 2
                add_assert(self.formula(1))
                self.expect_close(i, "assert")
            elif head == "declare-const":
                name = toks[i + 2]
                match = name_match(name) if toks[i + 3] == "Real" and toks[i + 4] == ")" else None
                if match is not None and name not in self.vars:
                    var = _new(Var, (match[1], int(match[2]), name))
                    self.vars[name] = var
                    self.decl_pos[name] = i + 2
                    decls.append(_new(Declaration, (var, i + 2)))
                    i += 5
                    continue
                decls.append(self.declaration(i))
            elif head in _IGNORED_COMMANDS:
                self.i = i + 2
                self.expect_close(i, head)
            else:
                self.fail(i + 1, f"expected a command (declare-const or assert), "
                                 f"found {_describe(head)}")
            i = self.i
        return Script(tuple(decls), tuple(asserts))

    def declaration(self, start: int) -> Declaration:
        toks = self.toks
        name, sort = toks[start + 2], toks[start + 3]
        if name in ("(", ")", _EOF):
            self.fail(start + 2, f"expected a variable name after declare-const, "
                                 f"found {_describe(name)}")
        match = _NAME_RE.fullmatch(name)
        if match is None:
            self.fail(start + 2, f"variable name {name!r} is not supported: expected "
                                 f"X_<i> for an input or Y_<j> for an output")
        if name in self.vars:
            line, col = line_col(self.stream.text, self.stream.offset(self.decl_pos[name]))
            self.fail(start + 2, f"variable {name} is declared twice "
                                 f"(first declaration at {line}:{col})")
        if sort != "Real":
            self.fail(start + 3, f"expected sort 'Real' for {name}, found {_describe(sort)}")
        self.i = start + 4
        self.expect_close(start, "declare-const")
        var = Var(match.group(1), int(match.group(2)), name)
        self.vars[name] = var
        self.decl_pos[name] = start + 2
        return Declaration(var, start + 2)

    # ----------------------------------------------------------------- formulas
    def formula(self, depth: int) -> Formula:
        toks = self.toks
        i = self.i
        tok = toks[i]
        if tok != "(":
            if tok == "true" or tok == "false":
                self.i = i + 1
                return BoolConst(tok == "true", i)
            self.fail(i, f"expected '(' to start a formula, found {_describe(tok)}")
        if depth > MAX_DEPTH:
            self.fail(i, f"formula nested deeper than {MAX_DEPTH} levels")
        op = toks[i + 1]
        if op in _COMPARISONS:
            lhs_tok, rhs_tok = toks[i + 2], toks[i + 3]
            if (toks[i + 4] == ")" and lhs_tok != "(" and rhs_tok != "("
                    and lhs_tok != ")" and rhs_tok != ")"):
                lhs = self.atom(lhs_tok, i + 2)
                rhs = self.atom(rhs_tok, i + 3)
                self.i = i + 5
                return Compare(op, lhs, rhs, i)
            self.i = i + 2
            lhs = self.term(depth + 1)
            rhs = self.term(depth + 1)
            self.expect_close(i, f"'{op}' comparison (it takes exactly two terms)")
            return Compare(op, lhs, rhs, i)
        if op == "and" or op == "or":
            self.i = i + 2
            args: list[Formula] = []
            while toks[self.i] != ")":
                if toks[self.i] == _EOF:
                    self.expect_close(i, f"'{op}'")
                args.append(self.formula(depth + 1))
            self.i += 1
            return (And if op == "and" else Or)(tuple(args), i)
        self.fail(i + 1, f"expected a formula operator (and, or, <=, >=, <, >, =), "
                         f"found {_describe(op)}")

    # ----------------------------------------------------------------- terms
    def term(self, depth: int) -> Term:
        toks = self.toks
        i = self.i
        tok = toks[i]
        if tok != "(":
            if tok == ")":
                self.fail(i, "expected a term (variable, number or '('), found ')'")
            self.i = i + 1
            return self.atom(tok, i)
        if depth > MAX_DEPTH:
            self.fail(i, f"term nested deeper than {MAX_DEPTH} levels")
        op = toks[i + 1]
        node_type = _ARITHMETIC.get(op)
        if node_type is None:
            self.fail(i + 1, f"expected an arithmetic operator (+, -, *, /) after '(', "
                             f"found {_describe(op)}")
        self.i = i + 2
        args: list[Term] = []
        while toks[self.i] != ")":
            if toks[self.i] == _EOF:
                self.expect_close(i, f"'{op}' term")
            args.append(self.term(depth + 1))
        if not args or (op == "/" and len(args) < 2):
            self.fail(self.i, f"expected {'two' if op == '/' else 'at least one'} "
                              f"operand(s) for '{op}', found ')'")
        self.i += 1
        if op == "-" and len(args) == 1:
            return Neg(args[0], i)
        return node_type(tuple(args), i)

    def number(self, tok: str, index: int) -> Var | Num:
        """``atom`` for a token not yet seen, trying the common plain decimal first.

        For ASCII text without ``_`` or an exponent, ``float()`` accepts exactly the
        decimals of ``_NUMBER_RE`` plus ``inf``/``nan`` (refused as non-finite), so the
        regex is needed only for the rarer forms and for errors.
        """
        if (len(tok) <= _MAX_LITERAL_CHARS and tok.isascii() and "_" not in tok
                and "e" not in tok and "E" not in tok):
            try:
                value = float(tok)
            except ValueError:
                return self.atom(tok, index)
            if value - value == 0.0:  # finite
                num = self.nums[tok] = _new(Num, (value, tok))
                return num
        return self.atom(tok, index)

    def atom(self, tok: str, index: int) -> Var | Num:
        var = self.vars.get(tok)
        if var is not None:
            return var
        num = self.nums.get(tok)
        if num is not None:
            return num
        if tok == _EOF:
            self.fail(index, "unexpected end of input: expected a term")
        match = _NUMBER_RE.fullmatch(tok)
        if match is not None:
            if len(tok) > _MAX_LITERAL_CHARS:
                self.fail(index, f"numeric literal longer than {_MAX_LITERAL_CHARS} characters")
            exponent = match.group(1)
            if exponent is not None and abs(int(exponent)) > _MAX_EXPONENT:
                self.fail(index, f"numeric literal {tok} has an exponent beyond "
                                 f"+-{_MAX_EXPONENT}")
            value = float(tok)
            if not math.isfinite(value):
                self.fail(index, f"numeric literal {tok} is outside the float64 range")
            num = self.nums[tok] = _new(Num, (value, tok))
            return num
        if _NAME_RE.fullmatch(tok):
            self.fail(index, f"undeclared variable {tok}: expected a (declare-const {tok} Real) "
                             f"before its first use")
        if tok in _KEYWORDS or tok in _COMPARISONS or tok in _ARITHMETIC:
            self.fail(index, f"expected a term (variable or number), found keyword {tok!r}")
        self.fail(index, f"unknown symbol {tok!r}: expected a declared variable X_<i>/Y_<j> "
                         f"or a number")
