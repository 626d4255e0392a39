"""Split VNN-LIB text into tokens at C speed.

Tokens are plain strings (``(``, ``)`` or an atom such as ``X_3``, ``<=``, ``1e-05``).
Their offsets are not stored: a 30 MB file has millions of tokens and keeping a
position for each would double the cost of tokenising. When the parser needs a
location for an error, ``TokenStream.offset`` re-scans the text up to that token,
which is cheap compared with everything else that happens on an error path.
"""

from __future__ import annotations

import re

from vnnlib.errors import VnnlibError

__all__ = ["TokenStream", "tokenize", "tokenize_regex"]

# A comment runs to the end of the line; anything that is neither whitespace nor a
# parenthesis nor a comment start is one atom, so every character of the input lands
# in some token and the tokenizer itself never fails: bad atoms are the parser's call.
_TOKEN_RE = re.compile(r";[^\n]*|[()]|[^\s();]+")
_COMMENT_RE = re.compile(r";[^\n]*")
_CHUNK_CHARS = 1 << 16


class TokenStream:
    """The token list of one text, plus the means to locate a token for an error."""

    __slots__ = ("text", "path", "tokens")

    def __init__(self, text: str, path: str | None, tokens: list[str]) -> None:
        self.text = text
        self.path = path
        self.tokens = tokens

    def offset(self, index: int) -> int:
        """Character offset of token ``index``; ``len(tokens)`` means end of input.

        Counts tokens a chunk of lines at a time with the fast tokenizer (tokens and
        comments never span a newline), then finds the token inside its chunk with
        the regex, so that an error near the end of a huge file is still reported in
        a fraction of a second.
        """
        if index >= len(self.tokens):
            return len(self.text.rstrip())
        text, start, seen = self.text, 0, 0
        while start < len(text):
            end = text.find("\n", start + _CHUNK_CHARS)
            end = len(text) if end < 0 else end + 1
            count = len(_split(text[start:end]))
            if seen + count > index:
                for match in _TOKEN_RE.finditer(text, start, end):
                    if match.group().startswith(";"):
                        continue
                    if seen == index:
                        return match.start()
                    seen += 1
            seen += count
            start = end
        return len(text)  # unreachable for tokens that came from this text

    def error(self, index: int, message: str) -> VnnlibError:
        """A ``VnnlibError`` located at token ``index``."""
        return VnnlibError.at_offset(message, self.path, self.text, self.offset(index))


def _split(text: str) -> list[str]:
    """Tokens of ``text`` at C speed (see ``tokenize``)."""
    if ";" in text:
        text = _COMMENT_RE.sub("", text)
    return text.replace("(", " ( ").replace(")", " ) ").split()


def tokenize(text: str, path: str | None = None) -> TokenStream:
    """Tokenise ``text``; comments are dropped, parentheses and atoms kept.

    Padding parentheses with spaces and calling ``str.split`` yields exactly the
    non-comment tokens of ``_TOKEN_RE`` (both split on ``str.isspace`` whitespace) at
    several times the speed of ``re.findall``; the regex stays the definition, used to
    locate tokens for error messages, and a test checks that the two agree.
    """
    return TokenStream(text, path, _split(text))


def tokenize_regex(text: str, path: str | None = None) -> TokenStream:
    """The reference tokenizer (slower); ``tokenize`` must agree with it."""
    tokens = [tok for tok in _TOKEN_RE.findall(text) if tok[0] != ";"]
    return TokenStream(text, path, tokens)
