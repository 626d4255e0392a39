"""The one exception type of the package, and offset-to-location conversion.

Every problem with a VNN-LIB or results file is reported as a ``VnnlibError`` that
carries ``path:line:col`` so that a user can jump to the spot in an editor. Line and
column are computed from a character offset only when an error is raised: counting
newlines for every token would cost more than the whole parse of a large file.
"""

from __future__ import annotations

__all__ = ["VnnlibError", "line_col"]


class VnnlibError(Exception):
    """A malformed or unsupported VNN-LIB (or results) file.

    ``line`` and ``col`` are 1-based; ``col`` counts characters, not bytes.
    """

    def __init__(self, message: str, path: str | None = None, line: int = 1, col: int = 1) -> None:
        self.message = message
        self.path = path if path is not None else "<string>"
        self.line = line
        self.col = col
        super().__init__(f"{self.path}:{line}:{col}: {message}")

    @classmethod
    def at_offset(cls, message: str, path: str | None, text: str, offset: int) -> VnnlibError:
        """Build the error for a character offset into ``text`` (the whole file)."""
        line, col = line_col(text, offset)
        return cls(message, path, line, col)


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of ``offset`` in ``text``; C-speed, used only on errors."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col
