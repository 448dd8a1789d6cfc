"""Compiled selector patterns: OBI's globs (gobwas/glob syntax) and legacy regexes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from obi.globs import glob_to_regex


class PatternError(ValueError):
    """A regex that cannot be compiled; the message says why (bad globs raise obi.globs.GlobError)."""


@dataclass(frozen=True, slots=True)
class Glob:
    """A glob matched against a whole string, as OBI matches executable paths and names.

    Syntax of gobwas/glob without separators (OBI's): ``*`` and ``**`` match any
    run of characters including ``/``, ``?`` one character, ``[abc]``, ``[a-z]``,
    ``[!abc]`` a class, ``{a,b}`` alternatives (nestable), ``\\`` escapes.
    Translated by obi.globs, which discovery shares.
    """

    pattern: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", glob_to_regex(self.pattern))

    def matches(self, text: str) -> bool:
        return self._regex.fullmatch(text) is not None

    def __str__(self) -> str:
        return self.pattern


@dataclass(frozen=True, slots=True)
class PathRegex:
    """A regular expression searched anywhere in a string (OBI's deprecated ``executable_path``)."""

    pattern: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            compiled = re.compile(self.pattern)
        except re.error as err:
            raise PatternError(f"bad regular expression {_quote(self.pattern)}: {err}") from None
        object.__setattr__(self, "_regex", compiled)

    def matches(self, text: str) -> bool:
        return self._regex.search(text) is not None

    def __str__(self) -> str:
        return self.pattern


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
