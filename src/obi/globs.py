"""OBI's glob syntax (gobwas/glob without separators) translated to Python regexes.

Shared by the configuration (which validates user globs) and discovery (which
matches executable paths), so both read a glob the same way.
"""

from __future__ import annotations

import re


class GlobError(ValueError):
    """A glob that cannot be compiled; the message says why."""


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a glob to a regex whose ``match`` (or ``fullmatch``) tests the whole string.

    ``*`` and ``**`` match any run of characters including ``/``, ``?`` one
    character, ``[abc]``, ``[a-z]``, ``[!abc]`` a class, ``{a,b}`` alternatives
    (nestable), ``\\`` escapes. Raises GlobError on malformed input.
    """
    out: list[str] = []
    depth = 0  # nesting of {...}
    i = 0
    n = len(pattern)
    while i < n:
        char = pattern[i]
        if char == "\\":
            if i + 1 >= n:
                raise GlobError(f"bad glob {_quote(pattern)}: trailing backslash")
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
        raise GlobError(f"bad glob {_quote(pattern)}: unbalanced '{{'")
    return re.compile("".join(out) + r"\Z", re.DOTALL)


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
                raise GlobError(f"bad glob {_quote(pattern)}: bad range '{low}-{high}'")
            body.append("-")
            i += 1
            continue
        body.append(re.escape(char))
        i += 1
    if i >= len(pattern):
        raise GlobError(f"bad glob {_quote(pattern)}: unbalanced '['")
    if not body:
        raise GlobError(f"bad glob {_quote(pattern)}: empty character class")
    out.append("[" + ("^" if negate else "") + "".join(body) + "]")
    return i + 1


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
