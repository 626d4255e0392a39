"""Entry points: a VNN-LIB file or string in, a ``Spec`` out.

Reading is byte-based so that a gzip file is recognised by its magic number as well as
its name (benchmark sets ship both ``.vnnlib`` and ``.vnnlib.gz``). Bytes that are not
UTF-8 are replaced rather than fatal: they usually sit in comments, and if they sit in
a symbol the parser reports that symbol with its location.
"""

from __future__ import annotations

import gc
import gzip
import math
import os
import zlib
from collections.abc import Sequence

from vnnlib.errors import VnnlibError
from vnnlib.normalize import normalize
from vnnlib.parser import parse_tokens
from vnnlib.spec import Spec
from vnnlib.tokenizer import tokenize

__all__ = ["load", "parse_text", "read_text"]

_GZIP_MAGIC = b"\x1f\x8b"


def _count(size: int | Sequence[int] | None, role: str) -> int | None:
    """Accept a count or a tensor shape (whose product is the count)."""
    if size is None:
        return None
    if isinstance(size, (int,)) or hasattr(size, "__index__"):
        return int(size)  # type: ignore[arg-type]
    try:
        return math.prod(int(s) for s in size)
    except TypeError:
        raise TypeError(f"n_{role} must be an int or a shape, got {size!r}") from None


def read_text(path: str | os.PathLike[str]) -> str:
    """The decoded text of a (possibly gzip-compressed) file.

    I/O problems are a ``VnnlibError`` without a line and column (``path: no such
    file``): they concern the file as a whole, not a place in it.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise VnnlibError("no such file", name, None, None) from None
    except OSError as exc:
        raise VnnlibError(f"cannot read the file: {exc.strerror or exc}", name, None, None) from None
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise VnnlibError(f"cannot read the file: not a valid gzip file ({exc})", name,
                              None, None) from None
    return data.decode("utf-8", errors="replace")


def parse_text(text: str, path: str | None = "<string>",
               n_inputs: int | Sequence[int] | None = None,
               n_outputs: int | Sequence[int] | None = None) -> Spec:
    """Parse VNN-LIB ``text``; ``path`` is only used in error messages and ``Spec.path``.

    A 2.0 query (``(vnnlib-version <2.x>)`` first) goes through the standard's parser
    (``vnnlib.query``) when it is one network with one input and one output and nothing
    that needs ``nncert verify``'s side-by-side model (hidden nodes, products of
    variables, inputs tied or mixed with outputs); its Spec then means the same.
    """
    counts = _count(n_inputs, "inputs"), _count(n_outputs, "outputs")
    from vnnlib.standard import text_version  # lazy: import cycle (vnnlib.standard imports this module)

    if text_version(text) is not None:
        return _plain_query_spec(text, path, counts)
    # The AST has no reference cycles, so the cyclic collector has nothing to find;
    # left on, it re-scans the growing heap and takes a third of the parse time.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        stream = tokenize(text, path)
        script = parse_tokens(stream)
        return normalize(script, stream, *counts)
    finally:
        if gc_was_enabled:
            gc.enable()


def load(path: str | os.PathLike[str], n_inputs: int | Sequence[int] | None = None,
         n_outputs: int | Sequence[int] | None = None) -> Spec:
    """Load a ``.vnnlib`` or ``.vnnlib.gz`` file.

    ``n_inputs``/``n_outputs`` (a count, or the model's input/output shape) make the
    load fail with a ``VnnlibError`` naming both counts when the file declares another
    number of ``X_``/``Y_`` variables: a spec for the wrong model is an error, not a
    verdict.
    """
    name = os.fspath(path)
    return parse_text(read_text(name), name, n_inputs, n_outputs)


def _plain_query_spec(text: str, path: str | None, counts: tuple[int | None, int | None]) -> Spec:
    from vnnlib.plain_box import plain_box_spec   # lazy: import cycle (vnnlib.query imports this module)
    from vnnlib.query import check_version
    from vnnlib.standard import parse_standard

    check_version(text, path)
    spec = plain_box_spec(text, path)
    if spec is None:
        spec = _whole_query_spec(text, path, parse_standard(text, path))
    for have, want, role in ((spec.n_inputs, counts[0], "inputs"), (spec.n_outputs, counts[1], "outputs")):
        if want is not None and have != want:
            raise VnnlibError(f"the query declares {have} {role}; the model has {want}", path, None, None)
    return spec


def _whole_query_spec(text: str, path: str | None, ast: object) -> Spec:
    from vnnlib.query import UnsupportedQuery, parse_query  # lazy: import cycle (vnnlib.query imports this module)

    query = parse_query(text, path, ast)
    if not query.plain:
        raise UnsupportedQuery("this VNN-LIB 2.0 query needs several networks, inputs or outputs, hidden nodes, "
                               "products or input-output rows: `nncert verify` reads it (this reader takes one "
                               "network with one input and one output)", path, None, None)
    return query.to_spec()
