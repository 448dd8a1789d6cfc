"""The ``routes`` section: URL path -> low-cardinality ``http.route``, and ignored paths.

Patterns are OBI's: ``/user/{id}`` and ``/user/:id`` match one path segment
(a placeholder may have a literal prefix or suffix in its segment, like
``/@:user`` or ``/{name}:predict``), and a last segment ``*`` matches the
prefix itself and anything below it. Patterns compile into a segment trie; at
each segment a literal wins over placeholders (tried in definition order),
which win over a ``*``, backtracking when a branch leads nowhere. Results are
cached per path, so a repeated path costs one dict lookup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

__all__ = [
    "DEFAULT_UNMATCHED",
    "DEFAULT_WILDCARD_CHAR",
    "UNMATCHED_MODES",
    "WILDCARD_ROUTE",
    "RouteMatcher",
    "RouteUnmatched",
    "heuristic_route",
]

RouteUnmatched = Literal["unset", "path", "wildcard", "heuristic"]
UNMATCHED_MODES: tuple[RouteUnmatched, ...] = get_args(RouteUnmatched)
DEFAULT_UNMATCHED: RouteUnmatched = "heuristic"  # OBI's default when `unmatched` is omitted
DEFAULT_WILDCARD_CHAR = "*"
WILDCARD_ROUTE = "/**"
CACHE_LIMIT = 10_000

_REST = "*"
# OBI keeps at most this many '/'-separated pieces of a path in heuristic mode.
_HEURISTIC_MAX_PIECES = 10
_WORD_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
_VOWELS = "aeiouyAEIOUY"
_LETTER_SHAPE = str.maketrans({c: ("a" if c in _VOWELS else "b") for c in _WORD_CHARS if c.isalpha()})
_SHORT_WORD = 4  # parts shorter than this always pass as words ("v", "api", "d")
_MAX_VOWELLESS = 4  # "grpc" is a word, "fdklsd" is not
_CONSONANT_RUN = "b" * 6  # "strengths" (5) is a word, "xkcdqzt" is not
_MIN_VOWEL_SHARE = 0.1
_MAX_UPPER_SHARE = 0.3  # "getUserById" is a word, "CfMkAGbE" is not

_MISS = object()


@dataclass(slots=True, eq=False)
class _Node:
    """One path position in the pattern trie."""

    literals: dict[str, _Node] = field(default_factory=dict)
    # (prefix, suffix) of placeholder segments, in definition order.
    placeholders: list[tuple[str, str, _Node]] = field(default_factory=list)
    route: str | None = None  # pattern ending exactly here
    rest_route: str | None = None  # pattern ending here with "/*"


def _tokens(path: str) -> list[str]:
    """Path segments without the empty ones made by a leading or trailing '/'."""
    tokens = path.split("/")
    if tokens and not tokens[0]:
        del tokens[0]
    if tokens and not tokens[-1]:
        del tokens[-1]
    return tokens


def _placeholder(pattern: str, token: str) -> tuple[str, str] | None:
    """The literal (prefix, suffix) around a segment's placeholder; None for a literal."""
    brace = token.find("{")
    colon = token.find(":")
    if brace >= 0 and (colon < 0 or brace < colon):
        close = token.rfind("}")
        if close < brace + 2:
            raise ValueError(f"route pattern {pattern!r}: '{{' needs a name and a closing '}}'")
        prefix, suffix = token[:brace], token[close + 1 :]
    elif colon >= 0:
        end = colon + 1
        while end < len(token) and (token[end].isalnum() or token[end] == "_"):
            end += 1
        if end == colon + 1:
            raise ValueError(f"route pattern {pattern!r}: ':' must be followed by a name")
        prefix, suffix = token[:colon], token[end:]
    else:
        if "}" in token:
            raise ValueError(f"route pattern {pattern!r}: '}}' without '{{'")
        if _REST in token:
            raise ValueError(f"route pattern {pattern!r}: '*' must be a whole last segment")
        return None
    literal = prefix + suffix
    if "{" in literal or "}" in literal or _REST in literal:
        raise ValueError(f"route pattern {pattern!r}: one placeholder per segment")
    return prefix, suffix


def _compile(patterns: list[str]) -> _Node:
    """The trie of ``patterns``; for two equivalent patterns the first one wins."""
    root = _Node()
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.startswith("/"):
            raise ValueError(f"route pattern {pattern!r} must be a path starting with '/'")
        node = root
        tokens = _tokens(pattern)
        rest = bool(tokens) and tokens[-1] == _REST
        if rest:
            del tokens[-1]
        for token in tokens:
            placeholder = _placeholder(pattern, token)
            if placeholder is None:
                node = node.literals.setdefault(token, _Node())
                continue
            for prefix, suffix, child in node.placeholders:
                if (prefix, suffix) == placeholder:
                    node = child
                    break
            else:
                child = _Node()
                node.placeholders.append((*placeholder, child))
                node = child
        if rest:
            node.rest_route = node.rest_route or pattern
        else:
            node.route = node.route or pattern
    return root


def _find(node: _Node, tokens: list[str], index: int) -> str | None:
    if index == len(tokens):
        return node.route or node.rest_route
    token = tokens[index]
    child = node.literals.get(token)
    if child is not None:
        found = _find(child, tokens, index + 1)
        if found is not None:
            return found
    for prefix, suffix, child in node.placeholders:
        if len(token) > len(prefix) + len(suffix) and token.startswith(prefix) and token.endswith(suffix):
            found = _find(child, tokens, index + 1)
            if found is not None:
                return found
    return node.rest_route


def _looks_like_word(part: str) -> bool:
    """Whether letters look like a word rather than a random id.

    Stands in for OBI's trained gibberish classifier with simple rules: enough
    vowels, no long consonant runs, no random-looking mix of cases.
    """
    if len(part) < _SHORT_WORD:
        return True
    if not (part.islower() or part.isupper()):
        upper = sum(1 for c in part if c.isupper())
        if upper > 1 and upper > _MAX_UPPER_SHARE * len(part):
            return False
    shape = part.translate(_LETTER_SHAPE)  # vowels -> "a", other letters -> "b"
    if _CONSONANT_RUN in shape:
        return False
    vowels = shape.count("a")
    if vowels == 0:
        return len(part) <= _MAX_VOWELLESS
    return vowels >= _MIN_VOWEL_SHARE * len(part)


def _heuristic_segment(segment: str, wildcard_char: str) -> str:
    """OBI's rule for one segment: ids (digits, symbols, gibberish) become the wildcard.

    Letters, '-' and '_' are word characters; one other character is tolerated
    in second position ("v1", "k8s-nodes").
    """
    if not segment:
        return segment
    if segment.strip(_WORD_CHARS) and (segment[0] not in _WORD_CHARS or segment[2:].strip(_WORD_CHARS)):
        return wildcard_char
    for part in segment.replace("-", " ").replace("_", " ").split():
        letters = part if part.isalpha() else "".join(c for c in part if c.isalpha())
        if not _looks_like_word(letters):
            return wildcard_char
    return segment


def heuristic_route(path: str, wildcard_char: str = DEFAULT_WILDCARD_CHAR) -> str:
    """A low-cardinality route derived from the path alone (OBI's ``heuristic`` mode)."""
    pieces = path.split("/", _HEURISTIC_MAX_PIECES)[:_HEURISTIC_MAX_PIECES]
    return "/".join([_heuristic_segment(piece, wildcard_char) for piece in pieces])


class RouteMatcher:
    """Maps request paths to the configured route patterns and tells ignored paths.

    ``unmatched`` says what a path matching no pattern gets: ``unset`` (None),
    ``path`` (the path), ``wildcard`` ("/**", also for "") or ``heuristic``.
    Raises ValueError for a bad pattern, mode or wildcard character.
    """

    def __init__(
        self,
        patterns: Sequence[str],
        unmatched: str = DEFAULT_UNMATCHED,
        ignored_patterns: Sequence[str] = (),
        wildcard_char: str = DEFAULT_WILDCARD_CHAR,
    ) -> None:
        mode = unmatched.strip().lower() or "wildcard"
        if mode not in UNMATCHED_MODES:
            raise ValueError(
                f"unknown routes unmatched mode {unmatched!r}: expected one of {', '.join(UNMATCHED_MODES)}"
            )
        if len(wildcard_char) != 1:
            raise ValueError(f"routes wildcard_char must be a single character, got {wildcard_char!r}")
        self.unmatched = mode
        self.wildcard_char = wildcard_char
        self._patterns = _compile(list(patterns))
        self._ignored = _compile(list(ignored_patterns))
        self._has_ignored = bool(ignored_patterns)
        self._routes: dict[str, str | None] = {}
        self._patterns_only: dict[str, str | None] = {}
        self._ignored_paths: dict[str, bool] = {}
        self._words: set[str] = set()  # segments the heuristic kept: few, and repeated

    def route_for(self, path: str) -> str | None:
        """The matching pattern as written, or the unmatched mode's route."""
        cached = self._routes.get(path, _MISS)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        route = self.pattern_for(path)
        if route is None:
            route = self._unmatched_route(path)
        if len(self._routes) >= CACHE_LIMIT:
            self._routes.clear()
        self._routes[path] = route
        return route

    def pattern_for(self, path: str) -> str | None:
        """The matching pattern as written, or None (no unmatched mode: for client spans)."""
        cached = self._patterns_only.get(path, _MISS)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        route = _find(self._patterns, _tokens(path), 0)
        if len(self._patterns_only) >= CACHE_LIMIT:
            self._patterns_only.clear()
        self._patterns_only[path] = route
        return route

    @property
    def has_ignored(self) -> bool:
        """Whether any ignored pattern is configured (else ``is_ignored`` is always False)."""
        return self._has_ignored

    def is_ignored(self, path: str) -> bool:
        """Whether the path matches one of the ignored patterns."""
        if not self._has_ignored:
            return False
        ignored = self._ignored_paths.get(path)
        if ignored is None:
            ignored = _find(self._ignored, _tokens(path), 0) is not None
            if len(self._ignored_paths) >= CACHE_LIMIT:
                self._ignored_paths.clear()
            self._ignored_paths[path] = ignored
        return ignored

    def _unmatched_route(self, path: str) -> str | None:
        if self.unmatched == "heuristic":
            return self._heuristic_route(path)
        if self.unmatched == "path":
            return path
        if self.unmatched == "wildcard":
            return WILDCARD_ROUTE
        return None

    def _heuristic_route(self, path: str) -> str:
        """``heuristic_route`` remembering word segments, so only ids cost a classification."""
        words = self._words
        pieces = path.split("/", _HEURISTIC_MAX_PIECES)[:_HEURISTIC_MAX_PIECES]
        for index, piece in enumerate(pieces):
            if piece in words:
                continue
            segment = _heuristic_segment(piece, self.wildcard_char)
            if segment == piece:
                if len(words) >= CACHE_LIMIT:
                    words.clear()
                words.add(piece)
            else:
                pieces[index] = segment
        return "/".join(pieces)
