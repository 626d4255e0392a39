"""VNN-COMP result files: the verdict on the first line, then the counterexample.

Values are written with ``repr(float(v))``, the shortest decimal that reads back as the
same float64; a float32 value is exactly representable in float64, so it survives the
round trip bit for bit. That matters because a counterexample is replayed on the
original model and one ulp can decide whether it still violates the property.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence

import numpy as np

from vnnlib.loader import read_text
from vnnlib.tokenizer import TokenStream, tokenize

__all__ = ["VERDICTS", "write_results", "read_results", "format_results", "parse_results"]

VERDICTS = ("sat", "unsat", "unknown", "timeout", "error")
_LEGACY_VERDICTS = {"violated": "sat", "holds": "unsat"}  # VNN-COMP 2021 wording
_NAME_RE = re.compile(r"([XY])_(0|[1-9][0-9]*)")
_VALUE_RE = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|nan)")


def format_results(verdict: str, x: Sequence[float] | np.ndarray | None = None,
                   y: Sequence[float] | np.ndarray | None = None) -> str:
    """The text of a results file; ``x`` and ``y`` are required for, and only for, sat."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    if verdict != "sat":
        if x is not None or y is not None:
            raise ValueError(f"only a sat result carries a counterexample, not {verdict!r}")
        return verdict + "\n"
    if x is None or y is None:
        raise ValueError("a sat result needs the counterexample: both x and y")
    lines = ["sat", "("]
    lines += [f"(X_{i} {float(v)!r})" for i, v in enumerate(np.asarray(x).reshape(-1))]
    lines += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(np.asarray(y).reshape(-1))]
    lines.append(")")
    return "\n".join(lines) + "\n"


def write_results(path: str | os.PathLike[str], verdict: str,
                  x: Sequence[float] | np.ndarray | None = None,
                  y: Sequence[float] | np.ndarray | None = None) -> None:
    """Write a results file atomically: a runner killed mid-write leaves no half file."""
    text = format_results(verdict, x, y)
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(prefix=".results-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
        umask = os.umask(0)  # mkstemp makes 0600 files; give the mode any new file gets
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_results(path: str | os.PathLike[str]) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """``(verdict, x, y)``; ``x``/``y`` are float64 arrays for sat, else ``None``.

    Accepts the counterexample with one entry per line or all on one line, and the
    2021 verdict words ``violated``/``holds``. A sat line with no counterexample gives
    ``(sat, None, None)``.
    """
    name = os.fspath(path)
    return parse_results(read_text(name), name)


def parse_results(text: str, path: str | None = "<string>"
                  ) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """``read_results`` on a string."""
    stream = tokenize(text, path)
    toks = stream.tokens
    if not toks:
        raise stream.error(0, "empty results file: expected a verdict "
                              f"({', '.join(VERDICTS)})")
    verdict = _LEGACY_VERDICTS.get(toks[0], toks[0])
    if verdict not in VERDICTS:
        raise stream.error(0, f"expected a verdict ({', '.join(VERDICTS)}), found {toks[0]!r}")
    if verdict != "sat" or len(toks) == 1:
        if len(toks) > 1:
            raise stream.error(1, f"unexpected {toks[1]!r} after the verdict {verdict!r}")
        return verdict, None, None
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    if toks[1] != "(":
        raise stream.error(1, f"expected '(' to open the counterexample, found {toks[1]!r}")
    i = 2
    while i < len(toks) and toks[i] == "(":
        entry = toks[i + 1:i + 4]
        if len(entry) < 3 or entry[2] != ")":
            raise stream.error(min(i + 3, len(toks)), "expected '(' X_<i>|Y_<j> <value> ')'")
        match = _NAME_RE.fullmatch(entry[0])
        if match is None:
            raise stream.error(i + 1, f"expected a variable X_<i> or Y_<j>, found {entry[0]!r}")
        if _VALUE_RE.fullmatch(entry[1]) is None:
            raise stream.error(i + 2, f"expected a number, found {entry[1]!r}")
        kind, index = match.group(1), int(match.group(2))
        if index in values[kind]:
            raise stream.error(i + 1, f"{entry[0]} is given twice")
        values[kind][index] = float(entry[1])
        i += 4
    if i >= len(toks) or toks[i] != ")":
        raise stream.error(i, "expected ')' to close the counterexample"
                              + ("" if i >= len(toks) else f", found {toks[i]!r}"))
    if i + 1 < len(toks):
        raise stream.error(i + 1, f"unexpected {toks[i + 1]!r} after the counterexample")
    x = _dense(values["X"], "X", stream, 1)
    y = _dense(values["Y"], "Y", stream, 1)
    if x is None:
        raise stream.error(1, "the counterexample has no input values X_<i>")
    return verdict, x, y


def _dense(entries: dict[int, float], kind: str, stream: TokenStream,
           where: int) -> np.ndarray | None:
    if not entries:
        return None
    n = len(entries)
    if max(entries) != n - 1:
        missing = next(k for k in range(n) if k not in entries)
        raise stream.error(where, f"the counterexample lacks {kind}_{missing}")
    return np.array([entries[k] for k in range(n)], dtype=np.float64)
