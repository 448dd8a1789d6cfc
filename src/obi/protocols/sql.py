"""What a SQL statement's text says of it, OBI's way: the operation (its first keyword,
upper case) and the table it works on, for span names such as `SELECT users`.

A light scanner, not a SQL parser: comments and string literals are skipped, the first
keyword is the operation, and the table is the name after the keyword each operation puts
it behind (FROM, INTO, UPDATE, TABLE...). What it cannot tell stays empty, never guessed.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SqlFacts", "sql_facts"]

# The word that comes before the table, by operation (first match at the statement's top level).
_TABLE_AFTER = {
    "SELECT": ("FROM",),
    "DELETE": ("FROM",),
    "INSERT": ("INTO",),
    "REPLACE": ("INTO",),
    "UPDATE": ("UPDATE",),
    "COPY": ("COPY",),
    "CREATE": ("TABLE", "VIEW"),
    "DROP": ("TABLE", "VIEW"),
    "ALTER": ("TABLE",),
    "TRUNCATE": ("TRUNCATE", "TABLE"),
}
_SKIP_BEFORE_NAME = frozenset({"ONLY", "IF", "NOT", "EXISTS", "TABLE", "LOW_PRIORITY", "IGNORE", "DELAYED",
                               "HIGH_PRIORITY", "QUICK", "CONCURRENTLY", "UNIQUE"})
_MAX_SCAN = 4096  # characters of a statement looked at
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$.\"`")


class SqlFacts(NamedTuple):
    operation: str  # "SELECT", or "" when the text does not start with a keyword
    table: str  # "users", "public.users", or ""


def _words(text: str) -> list[tuple[str, int]]:
    """Top-level words (and the nesting depth each is at), comments and literals skipped."""
    words: list[tuple[str, int]] = []
    i, n, depth = 0, min(len(text), _MAX_SCAN), 0
    while i < n:
        c = text[i]
        if c in " \t\r\n;,=":
            i += 1
        elif c == "-" and text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
        elif c == "/" and text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif c == "'":
            end = i + 1
            while True:
                end = text.find("'", end)
                if end < 0 or not text.startswith("''", end):
                    break
                end += 2
            i = n if end < 0 else end + 1
        elif c == "(":
            depth += 1
            i += 1
        elif c == ")":
            depth = max(0, depth - 1)
            i += 1
        elif c in _NAME_CHARS:
            start = i
            if c in "\"`":  # a quoted name, dots and all
                close = text.find(c, i + 1)
                i = n if close < 0 else close + 1
                while i < n and text[i] in _NAME_CHARS:
                    i += 1
            else:
                while i < n and text[i] in _NAME_CHARS:
                    i += 1
            words.append((text[start:i], depth))
        else:
            i += 1
    return words


def sql_facts(text: str) -> SqlFacts:
    """The operation and table of a statement's text (see the module docstring)."""
    words = _words(text)
    if not words or not words[0][0].isalpha():
        return SqlFacts("", "")
    operation = words[0][0].upper()
    if operation == "WITH":  # the statement the common table expressions serve
        operation = next((w.upper() for w, depth in words[1:] if depth == 0 and w.upper() in _TABLE_AFTER
                          and w.upper() not in ("COPY", "CREATE", "DROP", "ALTER", "TRUNCATE")), "WITH")
    after = _TABLE_AFTER.get(operation)
    if after is None:
        return SqlFacts(operation, "")
    if operation != words[0][0].upper():  # WITH ...: from the operation's own keyword on
        start = next(i for i, (w, depth) in enumerate(words) if depth == 0 and w.upper() == operation)
    else:
        start = 0
    for i in range(start, len(words)):
        word, depth = words[i]
        if depth or word.upper() not in after:
            continue
        for name, name_depth in words[i + 1:]:
            if name_depth:
                break
            if name.upper() in _SKIP_BEFORE_NAME:
                continue
            return SqlFacts(operation, name.replace('"', "").replace("`", ""))
        break
    return SqlFacts(operation, "")
