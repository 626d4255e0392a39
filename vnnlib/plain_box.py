"""A plain 2.0 query's input box read from its text in one pass: 2.0 parses faster than 1.0.

Why: the largest VNN-LIB files are boxes, thousands of ``(assert (<= X[0,1,2,3] 0.25))``
lines and one output assertion. The standard's parser takes longer on those lines alone
than the 1.0 reader takes on the whole file (17 ms of its 25 ms on oval21's 6,144 lines),
and reading each back off its AST costs six bound calls a line (30 ms more). Here one
regular-expression pass takes those lines out of the text, with their operator, indices
and number, and numpy converts them; the text left over (the declarations and every
other assertion, line numbers kept) goes through the standard's parser and the ordinary
lowering (``vnnlib.query``), and the lines join that ``Query`` as arrays (``Query.lines``:
rows every term holds, in its box when lowered and in ``satisfied_by``). ``vnnlib.load``
and ``vnnlib.query.load_query`` (``nncert verify``) take this path; ``parse_query`` and
the certificate checker lower the whole AST, independently of it.

A line is taken only where the standard would accept it and mean the same, so a query it
rejects is still rejected with its message (by the whole parse, below): the line starts
in the first column; it names the declared input, whose element type takes a decimal
literal (float16/32/64, bfloat16, real), with exactly the declared rank and indices in
range; its number has digits on both sides of the point and converts to a double that
``stod`` would not call out of range (no overflow, no subnormal); it sits at the top
level after the network's declaration (parentheses counted in the text left over,
comments blanked). Anything else is left to the whole parse: ``None`` comes back and the
caller parses and lowers the whole text, as it would without this pass. It also declines
wherever it could read a query otherwise than the whole lowering: more than one network
or tensor, a hidden node, the input named anywhere but in such a line (counted as a
token in the text left over, where only its declaration may remain: a comment that names
it declines too), and any error in the text left over (whose columns may have moved).
tests/vnnlib/test_plain_box.py compares both readings, Spec or error, on random queries.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from vnnlib.errors import VnnlibError
from vnnlib.spec import Spec
from vnnlib.standard import blank_comments

if TYPE_CHECKING:   # annotations only: vnnlib.query imports this module
    from vnnlib.query import Query

__all__ = ["plain_box_query", "plain_box_spec"]

# Element types that take a decimal literal (the standard's type check; integers take
# integer literals, which this pass never reads).
_DECIMAL_TYPES = {"float16", "float32", "float64", "bfloat16", "real"}
_DECLARATION = re.compile(r"\(\s*declare-input\s+([^\s()\[\]]+)\s+(\w+)\s*\[([0-9,\s]*)\]\s*\)")


@lru_cache(maxsize=16)
def _bound_line(name: str, rank: int) -> re.Pattern[str]:
    """``(assert (<= NAME[i,j,...] d.d))`` (or ``>=``, ``<``, ``>``) from the first column
    of a line, blanks spaces, exactly ``rank`` indices; groups: the operator, the indices,
    the number. A line break is never inside a match, so the text left over keeps its
    line numbers; the literal start lets the regex engine skip ahead (a blank before
    ``(assert`` or a tab would cost a third more: such a file is parsed whole)."""
    index = r" *[0-9]+ *" + r", *[0-9]+ *" * (rank - 1)
    return re.compile(rf"^\(assert +\(([<>]=?) +{re.escape(name)} *\[({index})\] +(-?[0-9]+\.[0-9]+) *\) *\)",
                      re.M)


@lru_cache(maxsize=16)
def _token(name: str) -> re.Pattern[str]:
    """``name`` as a whole symbol (between blanks or parentheses, or before ``[``)."""
    return re.compile(rf"(?<![^\s()]){re.escape(name)}(?![^\s()\[])")


def plain_box_spec(text: str, path: str | None) -> Spec | None:
    """``plain_box_query``'s Spec, or None where that pass does not apply."""
    query = plain_box_query(text, path)
    return None if query is None else query.to_spec()


def plain_box_query(text: str, path: str | None) -> Query | None:
    """A plain 2.0 query (one network, one input, one output, no hidden node) whose input
    appears only in lone bound lines, those lines kept as ``Query.lines``; or None where
    this pass does not apply (see the module docstring). ``text`` has passed
    ``vnnlib.query.check_version``."""
    from vnnlib.query import BoundLines, _strides, parse_query   # lazy: vnnlib.query imports this module

    declared = _DECLARATION.search(text)
    if declared is None or declared.group(2) not in _DECIMAL_TYPES:
        return None
    name = declared.group(1)
    shape = tuple(int(s) for s in declared.group(3).replace(",", " ").split())
    if not shape:
        return None
    parts = _bound_line(name, len(shape)).split(text)
    count = (len(parts) - 1) // 4
    if count == 0:
        return None
    pieces = parts[0::4]
    rest = "".join(pieces)
    if len(_token(name).findall(rest)) != 1 or not _top_level(rest, pieces):
        return None
    ops, indices, numbers = parts[1::4], parts[2::4], parts[3::4]
    try:
        at = np.array(",".join(indices).split(","), dtype=np.int64).reshape(count, len(shape))
        values = np.array(numbers, dtype=np.float64)
    except (ValueError, OverflowError):   # an index past int64: out of range
        return None
    if (at >= np.array(shape)).any():
        return None   # out of range: the standard's error, from the whole parse
    magnitude = np.abs(values)
    if not np.isfinite(values).all() or ((magnitude < sys.float_info.min) & (values != 0.0)).any():
        return None   # stod's out-of-range error (overflow or a subnormal), from the whole parse
    try:
        query = parse_query(rest, path)
    except VnnlibError:
        return None   # judged on the whole text (an error's column may have moved here)
    if not query.plain:
        return None
    tensor = query.networks[0].inputs[0]
    if (tensor.name, tensor.shape, tensor.element_type, tensor.offset) != (name, shape, declared.group(2), 0):
        return None
    op = np.array(ops)
    arrays = (at @ np.array(_strides(shape), dtype=np.int64), values, (op == "<=") | (op == "<"),
              (op == "<") | (op == ">"))
    for array in arrays:
        array.setflags(write=False)   # a Query is shared, as a Spec is
    lines = BoundLines(*arrays)
    return dataclasses.replace(query, lines=lines)


def _top_level(rest: str, pieces: list[str]) -> bool:
    """Whether every line taken out sat at the top level after the network's declaration:
    where it was cut from the text left over (the ends of ``pieces`` but the last), the
    parentheses of everything before it balance, and a ``(declare-network`` form has
    closed. Comments are blanked first (their parentheses do not count); a hidden node's
    quoted ONNX name never occurs in a query this pass reads."""
    code = blank_comments(rest).encode("ascii", errors="replace")
    network_end = code.find(b"(declare-network")
    cuts = np.cumsum([len(p) for p in pieces[:-1]])    # offsets in rest where lines were taken
    if network_end < 0 or (cuts < 1).any():
        return False
    chars = np.frombuffer(code, dtype=np.uint8)
    depth = np.cumsum((chars == ord("(")).astype(np.int64) - (chars == ord(")")))
    closed = np.flatnonzero(depth[network_end:] == 0)
    if closed.size == 0:
        return False
    network_end += int(closed[0])
    before = depth[cuts - 1]   # the depth after the character before each cut
    return bool((cuts > network_end).all() and (before == 0).all())
