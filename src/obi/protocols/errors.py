"""The one exception protocol parsers raise: anything else escaping a parser is a bug."""

from __future__ import annotations


class ParseError(ValueError):
    """Captured bytes are not (a prefix of) a valid message of the expected protocol."""
