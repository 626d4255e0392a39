"""The one exception type of the package, and offset-to-location conversion.

Every problem with a VNN-LIB or results file is reported as a ``VnnlibError`` that
carries ``path:line:col`` so that a user can jump to the spot in an editor (a file that
cannot be read at all says ``path: ...`` with no location). Line and column are
computed from a character offset only when an error is raised: counting newlines for
every token would cost more than the whole parse of a large file.
"""

from __future__ import annotations

import numbers

__all__ = ["VnnlibError", "UnsupportedQuery", "line_col", "plain"]


class VnnlibError(Exception):
    """A malformed or unsupported VNN-LIB (or results) file.

    ``line`` and ``col`` are 1-based; ``col`` counts characters, not bytes. Both are
    ``None`` for a problem with the file as a whole (missing, unreadable, a damaged
    gzip stream): the message is then ``path: message``, with no location to jump to.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = 1,
                 col: int | None = 1) -> None:
        self.message = message
        self.path = path if path is not None else "<string>"
        self.line = line
        self.col = col
        where = self.path if line is None else f"{self.path}:{line}:{col}"
        super().__init__(f"{where}: {message}")

    @classmethod
    def at_offset(cls, message: str, path: str | None, text: str, offset: int) -> VnnlibError:
        """Build the error for a character offset into ``text`` (the whole file)."""
        line, col = line_col(text, offset)
        return cls(message, path, line, col)


def plain(value: object) -> str:
    """A number as a user reads it: ``0.9`` or ``3``, never ``np.float64(0.9)``.

    Floats keep their shortest round-trip form (``repr(float)``), so a message shows the
    exact value from the file; anything that is not a number is left to ``repr``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return repr(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return repr(float(value))


class UnsupportedQuery(VnnlibError):
    """A well-formed 2.0 query that uses a construct the engine does not decide yet."""


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of ``offset`` in ``text``; C-speed, used only on errors."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col
