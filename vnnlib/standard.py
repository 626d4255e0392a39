"""The VNN-LIB standard's own parser (PyPI ``vnnlib``) for 2.0 files, and version sniffing.

Why a private copy under another name: this package is called ``vnnlib`` too (the
project's layout is fixed), so the standard's package cannot sit in site-packages,
where one of the two would hide the other. ``make`` installs it with
``pip install --target <venv>/nncert-vendor/vnnlib-std vnnlib==1.0.2`` and this module
loads it as ``nncert_vnnlib_std``; its own imports are all relative, so it runs under
any name. It is the parser VNN-COMP's scorer uses: a query it rejects, we reject with
its message, and a query it accepts means to us what it means to the scorer.

Only its parser (scope and type checks) and its DNF are used; the rows and the `Spec`
are ours (`query.py`, `lowering.py`). A plain query's box lines, each in a form it
accepts and reads the same way, are read from the text in one pass (`plain_box.py`:
its parse alone took longer than the 1.0 reader on the whole file). Its 2.0-to-1.0
transform (``compat``) is not used: in 1.0.2 it mis-reads a disjunction that mixes input
and output constraints, and it makes strict comparisons non-strict, which changes what a
boundary point answers.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from vnnlib.errors import VnnlibError
from vnnlib.loader import read_text

__all__ = ["STANDARD_VERSION", "VENDOR_ENV", "vendor_dir", "standard_parser", "file_version",
           "text_version", "parse_standard", "network_pairs"]

STANDARD_VERSION = "1.0.2"  # the release VNN-COMP 2026's scorer validates counterexamples with
VENDOR_ENV = "NNCERT_VNNLIB_STD"  # a folder that holds the package, to override the default
_MODULE = "nncert_vnnlib_std"
# `(vnnlib-version <2.0>)`, the first form of a 2.0 file; comments may come before it.
_VERSION = re.compile(r"\(\s*vnnlib-version\s*<\s*(\d+)\.(\d+)\s*>\s*\)")
_COMMENT = re.compile(r";[^\n]*")
_PARSE_ERROR = re.compile(r"line (\d+), column (\d+): (.*)", re.S)


def vendor_dir() -> Path:
    """Where the standard's package is looked for: $NNCERT_VNNLIB_STD, else the venv's."""
    override = os.environ.get(VENDOR_ENV)
    return Path(override) if override else Path(sys.prefix) / "nncert-vendor" / "vnnlib-std"


@lru_cache(maxsize=None)
def standard_parser() -> ModuleType:
    """The standard's package, loaded once per process (a ``VnnlibError`` saying how to
    install it when it is missing)."""
    folder = vendor_dir() / "vnnlib"
    init = folder / "__init__.py"
    if not init.is_file():
        raise VnnlibError(
            "VNN-LIB 2.0 files are read by the standard's parser, which is not installed: run "
            f"`{sys.executable} -m pip install --target {vendor_dir()} vnnlib=={STANDARD_VERSION}` "
            "(`make` does this)", None, None, None)
    spec = importlib.util.spec_from_file_location(_MODULE, init, submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:  # a wheel for another Python or platform
        del sys.modules[_MODULE]
        raise VnnlibError(f"the standard's parser in {folder} does not load here ({exc}): reinstall it "
                          f"with `{sys.executable} -m pip install --target {vendor_dir()} "
                          f"vnnlib=={STANDARD_VERSION}`", None, None, None) from None
    return module


def text_version(text: str) -> tuple[int, int] | None:
    """The ``(major, minor)`` a query declares in its first form, or None (a 1.0 file
    has no such form)."""
    head = _COMMENT.sub("", text[:4096]).lstrip()
    match = _VERSION.match(head)
    return (int(match.group(1)), int(match.group(2))) if match else None


def file_version(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``text_version`` of a file's start (gzip allowed); None when it has no version form."""
    return text_version(read_text(path))


def _error(exc: Exception, path: str, query: str = "") -> VnnlibError:
    """The standard parser's exception as our one-line ``file:line:col: message``.

    It raises either "Parse error: syntax error at line L, column C: 'tok'" or a JSON
    report with errorCode, line, offendingSymbol and hint for each scope or type error;
    the first error is reported (the others usually follow from it). ``query``: the text
    parsed, to turn a syntax error's byte column into ours.
    """
    text = str(exc)
    try:
        report = json.loads(text)
    except ValueError:
        match = _PARSE_ERROR.search(text)
        if match:
            token = match.group(3).strip()
            what = f"syntax error at {token}" if token not in ("''", "") else "syntax error at the end of the file"
            # Its columns count bytes from 0 (1.0.2); ours count characters from 1.
            return VnnlibError(f"{what} (VNN-LIB 2.0, the standard's parser)", path,
                               int(match.group(1)), _column(query, int(match.group(1)), int(match.group(2))))
        return VnnlibError(f"{text.strip()} (VNN-LIB 2.0, the standard's parser)", path, None, None)
    errors = report.get("errors") or [{}]
    first = errors[0]
    message = first.get("message", "invalid query")
    symbol, hint = first.get("offendingSymbol"), first.get("hint")
    detail = f"{message} at '{symbol}'" if symbol else message
    if hint:
        detail += f": {hint}"
    if first.get("errorCode"):
        detail += f" [{first['errorCode']}]"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    line = first.get("line")
    return VnnlibError(detail, path, int(line) if isinstance(line, int) else None,
                       1 if isinstance(line, int) else None)


def _column(query: str, line: int, byte: int) -> int:
    """The 1-based character column of byte ``byte`` (from 0) of line ``line`` (from 1)."""
    lines = query.split("\n")
    if not 0 < line <= len(lines):
        return byte + 1
    return len(lines[line - 1].encode("utf-8")[:byte].decode("utf-8", errors="ignore")) + 1


def parse_standard(text: str, path: str | None = None) -> object:
    """Parse and type-check a 2.0 query with the standard's parser; its AST (a ``Query``)."""
    std = standard_parser()
    try:
        return std.parse_query_string(text)
    except std.VNNLibException as exc:
        raise _error(exc, path or "<string>", text) from None
    except UnicodeDecodeError as exc:
        # A syntax error at a non-ASCII character: the message quotes the character's first
        # byte alone, which is not UTF-8 (1.0.2), so pybind11 cannot decode the message.
        message = exc.object.decode("utf-8", errors="replace") if isinstance(exc.object, bytes) else str(exc)
        match = _PARSE_ERROR.search(message)
        if match and "\ufffd" in match.group(3):
            lines = text.split("\n")
            line, column = int(match.group(1)), int(match.group(2))
            if 0 < line <= len(lines):   # the character itself (the column counts bytes from 0)
                rest = lines[line - 1].encode("utf-8")[column:].decode("utf-8", errors="replace")[:1]
                message = message.replace("\ufffd", rest or "\ufffd", 1)
        raise _error(Exception(message), path or "<string>", text) from None
    except (IndexError, ValueError) as exc:
        # 1.0.2 lets C++'s std::stod/stoll escape on a literal out of range (an overflow, a
        # subnormal, an integer past 64 bits): pybind11 raises IndexError "stod"/"stoll".
        if str(exc) not in ("stod", "stoll", "stoi", "stol", "stoul", "stoull", "stof"):
            raise
        raise _range_error(text, path or "<string>") from None


_LITERAL = re.compile(r"(?<![\w.])-?[0-9]+(?:\.[0-9]+)?(?![\w.])")


def blank_comments(text: str) -> str:
    """``text`` with every comment's characters turned to blanks: offsets, lines and
    columns stay where they were, and nothing in a comment is read as code."""
    return _COMMENT.sub(lambda m: " " * len(m.group()), text)


def _range_error(text: str, path: str) -> VnnlibError:
    """Where the first number out of range is (a decimal that is not a normal double or
    zero, an integer outside 64 bits), as the one-line error the parser did not give."""
    code = blank_comments(text)
    for match in _LITERAL.finditer(code):
        token = match.group()
        if "." in token:
            value = abs(float(token))
            bad = value == math.inf or 0.0 < value < sys.float_info.min
        else:
            bad = not -2**63 <= int(token) < 2**63
        if bad:
            line = code.count("\n", 0, match.start()) + 1
            column = match.start() - code.rfind("\n", 0, match.start())
            return VnnlibError(f"the number {token[:24]}{'...' if len(token) > 24 else ''} is out of range "
                               "(not a normal double, or an integer past 64 bits; VNN-LIB 2.0, the standard's "
                               "parser)", path, line, column)
    return VnnlibError("a number is out of range (VNN-LIB 2.0, the standard's parser)", path, None, None)


def network_pairs(pairs: list[str]) -> dict[str, str]:
    """The standard command line's ``--network NAME=PATH`` values as name -> path; a
    ``ValueError`` (its text a sentence for the user) for a malformed or repeated one."""
    files: dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--network {pair}: expected NAME=PATH")
        if name in files:
            raise ValueError(f"--network {name} is given twice")
        files[name] = path
    return files
