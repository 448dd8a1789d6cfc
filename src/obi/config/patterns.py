"""Compiled selector patterns: OBI's globs (gobwas/glob syntax) and legacy regexes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field


class PatternError(ValueError):
    """A glob or regex that cannot be compiled; the message says why."""


@dataclass(frozen=True, slots=True)
class Glob:
    """A glob matched against a whole string, as OBI matches executable paths and names.

    Syntax of gobwas/glob without separators (OBI's): ``*`` and ``**`` match any
    run of characters including ``/``, ``?`` one character, ``[abc]``, ``[a-z]``,
    ``[!abc]`` a class, ``{a,b}`` alternatives (nestable), ``\\`` escapes.
    """

    pattern: str
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(_glob_to_regex(self.pattern), re.DOTALL))

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


def _glob_to_regex(pattern: str) -> str:
    """Translate a glob to a regex, raising PatternError on malformed input."""
    out: list[str] = []
    depth = 0  # nesting of {...}
    i = 0
    n = len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            if i + 1 >= n:
                raise PatternError(f"bad glob {_quote(pattern)}: trailing backslash")
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if char == "*":
            while i < n and pattern[i] == "*":
                i += 1
            out.append(".*")
            continue
        if char == "?":
            out.append(".")
        elif char == "[":
            i = _translate_class(pattern, i, out)
            continue
        elif char == "{":
            depth += 1
            out.append("(?:")
        elif char == "}" and depth > 0:
            depth -= 1
            out.append(")")
        elif char == "," and depth > 0:
            out.append("|")
        else:
            out.append(re.escape(char))
        i += 1
    if depth:
        raise PatternError(f"bad glob {_quote(pattern)}: unbalanced '{{'")
    return "".join(out)


def _translate_class(pattern: str, start: int, out: list[str]) -> int:
    """Translate the character class opening at ``start``; return the index after it."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] == "!"
    if negate:
        i += 1
    body: list[str] = []
    while i < len(pattern) and pattern[i] != "]":
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            body.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if char == "-" and body and i + 1 < len(pattern) and pattern[i + 1] != "]":
            low = pattern[i - 1]
            high = pattern[i + 1]
            if high < low:
                raise PatternError(f"bad glob {_quote(pattern)}: bad range '{low}-{high}'")
            body.append("-")
            i += 1
            continue
        body.append(re.escape(char))
        i += 1
    if i >= len(pattern):
        raise PatternError(f"bad glob {_quote(pattern)}: unbalanced '['")
    if not body:
        raise PatternError(f"bad glob {_quote(pattern)}: empty character class")
    out.append("[" + ("^" if negate else "") + "".join(body) + "]")
    return i + 1
