"""Memcached's text protocol (classic and meta commands): the commands of an exchange and
their replies, pure, and their spans.

A command is one line (`get k1 k2`, `set k 0 0 5 [noreply]` followed by its data block,
`mg k v`); a reply is one line, or a run of lines closed by `END` (get's `VALUE` blocks,
`stats`), or `VA <size>` and its data (meta get). `noreply` commands get no reply; meta
commands with the `q` flag stay quiet on success only, so which reply is whose is not known
once one is sent: their exchanges' replies are left unpaired (no status, never a wrong one).

`parse_commands` and `parse_replies` raise ParseError, and nothing else, for bytes that are
not this protocol.
"""

from __future__ import annotations

from typing import NamedTuple

from obi.protocols.base import Exchange, IdGenerator, SpanStats
from obi.protocols.errors import ParseError
from obi.protocols.pipelined import CommandConnection, PipelinedCommands

__all__ = ["Memcached", "MemcachedCommand", "MemcachedReply", "looks_like_memcached", "parse_commands",
           "parse_replies"]

_CRLF = b"\r\n"
MAX_LINE = 8 * 1024  # longer lines are not this protocol (memcached's own limit is 2 KiB for keys...)
MAX_DATA = 1 << 30  # a data block's largest size
# Commands followed by a data block, and where its size is among their words.
_STORAGE = {b"set": 4, b"add": 4, b"replace": 4, b"append": 4, b"prepend": 4, b"cas": 4, b"ms": 2}
_META = frozenset({b"mg", b"ms", b"md", b"ma", b"mn", b"me"})
COMMANDS = frozenset({*_STORAGE, *_META, b"get", b"gets", b"gat", b"gats", b"delete", b"incr", b"decr",
                      b"touch", b"flush_all", b"version", b"verbosity", b"stats", b"quit", b"cache_memlimit",
                      b"shutdown", b"lru_crawler", b"slabs", b"watch", b"misbehave"})
# Replies that end with an END line (after VALUE blocks, STAT lines, ...).
_UNTIL_END = frozenset({b"VALUE", b"STAT", b"ITEM", b"CONFIG"})
_ERRORS = frozenset({b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"})
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyz_")


class MemcachedCommand(NamedTuple):
    name: str  # as sent ("get", "set", "mg"), or "" when the capture ends inside it
    keys: int  # keys it names
    expects_reply: bool  # False: noreply (or a quiet meta command: see the module docstring)
    quiet: bool  # a meta command with the q flag
    complete: bool = True  # False: the bytes end inside this command
    text: str = ""  # the command line without its data block (parse_commands(text=True) only)


class MemcachedReply(NamedTuple):
    error: str | None  # "ERROR", "CLIENT_ERROR", "SERVER_ERROR", else None


def looks_like_memcached(request: bytes) -> bool:
    """A known command word, then a space or the line's end."""
    end = 0
    while end < len(request) and end < 16 and request[end] in _WORD:
        end += 1
    return 0 < end < len(request) and request[end] in b" \r" and request[:end] in COMMANDS


def _size(word: bytes) -> int:
    if not word.isdigit() or not word.isascii() or len(word) > 10:
        raise ParseError(f"memcached data size {word[:12]!r}")
    size = int(word)
    if size > MAX_DATA:
        raise ParseError("memcached data block too large")
    return size


def parse_commands(data: bytes, text: bool = False) -> list[MemcachedCommand]:
    """The commands of a request capture, in order; the last one may be cut off."""
    commands: list[MemcachedCommand] = []
    at = 0
    while at < len(data):
        end = data.find(_CRLF, at)
        if end < 0:  # the capture ends inside this command's line
            rest = data[at:]
            if len(rest) > MAX_LINE:
                raise ParseError("memcached command line without an end")
            word = rest.split(b" ", 1)[0].rstrip(b"\r")
            whole = len(word) < len(rest)  # a space or CR followed it
            known = word in COMMANDS if whole else any(c.startswith(word) for c in COMMANDS)
            if not known:
                raise ParseError("not a memcached command")
            commands.append(MemcachedCommand(word.decode() if whole else "", 0, True, False, False))
            break
        if end - at > MAX_LINE:
            raise ParseError("memcached command line too long")
        line = data[at:end]
        words = line.split()
        if not words or words[0] not in COMMANDS:
            raise ParseError("not a memcached command")
        name = words[0]
        at = end + 2
        cut = False
        size_at = _STORAGE.get(name)
        if size_at is not None:
            if len(words) <= size_at:
                raise ParseError(f"memcached {name.decode()} without a data size")
            at += _size(words[size_at]) + 2
            if at > len(data):
                cut = True
            elif data[at - 2:at] != _CRLF:
                raise ParseError("memcached data block without its CRLF")
        meta = name in _META
        flags = words[2:] if meta else ()
        quiet = meta and b"q" in flags
        noreply = not meta and words[-1] == b"noreply"
        if name in (b"get", b"gets"):
            keys = len(words) - 1
        elif name in (b"gat", b"gats"):
            keys = len(words) - 2
        elif name in (b"mn", b"me", b"version", b"stats", b"flush_all", b"verbosity", b"quit"):
            keys = int(name == b"me")
        else:
            keys = 1
        shown = line.decode("utf-8", "replace") if text else ""
        replies = not (noreply or quiet or name == b"quit")
        commands.append(MemcachedCommand(name.decode(), max(keys, 0), replies, quiet, not cut, shown))
        if cut:
            break
    return commands


def _reply_end(data: bytes, at: int) -> tuple[int, str | None] | None:
    """Where the reply at `at` ends and its error; None when the capture ends inside it."""
    end = data.find(_CRLF, at)
    if end < 0:
        if len(data) - at > MAX_LINE:
            raise ParseError("memcached reply line without an end")
        return None
    first = data[at:end].split(b" ", 1)[0]
    if first in _ERRORS:
        return end + 2, first.decode()
    if first in _UNTIL_END:
        while True:
            line = data[at:end]
            if line == b"END":
                return end + 2, None
            if line.startswith(b"VALUE "):
                words = line.split()
                if len(words) < 4:
                    raise ParseError("memcached VALUE line too short")
                at = end + 2 + _size(words[3]) + 2
                if at > len(data):
                    return None
                if data[at - 2:at] != _CRLF:
                    raise ParseError("memcached value without its CRLF")
            else:
                at = end + 2
            end = data.find(_CRLF, at)
            if end < 0:
                return None
    if first == b"VA":  # meta get's value: VA <size> <flags>*, then the data
        words = data[at:end].split()
        if len(words) < 2:
            raise ParseError("memcached VA line without a size")
        stop = end + 2 + _size(words[1]) + 2
        if stop > len(data):
            return None
        if data[stop - 2:stop] != _CRLF:
            raise ParseError("memcached value without its CRLF")
        return stop, None
    if not first or not (first.isalnum() or first.replace(b"_", b"").isalnum()):
        raise ParseError("not a memcached reply")
    return end + 2, None


def parse_replies(data: bytes) -> list[MemcachedReply]:
    """The replies of a response capture, in order, as many as it holds whole."""
    replies: list[MemcachedReply] = []
    at = 0
    while at < len(data):
        found = _reply_end(data, at)
        if found is None:
            break
        at, error = found
        replies.append(MemcachedReply(error))
    return replies


# ---- spans -------------------------------------------------------------------

MemcachedFacts = tuple[list[MemcachedCommand], list[MemcachedReply]]


class Memcached(PipelinedCommands[CommandConnection]):
    """Memcached client spans and server spans (an instrumented memcached), one per command."""

    name = "memcached"
    system = "memcached"

    def __init__(self, ids: IdGenerator | None = None, stats: SpanStats | None = None,
                 query_text: bool = False) -> None:
        super().__init__(CommandConnection, ids, stats, query_text)

    def detect(self, exchange: Exchange) -> bool:
        return looks_like_memcached(exchange.request)

    def parse(self, exchange: Exchange) -> MemcachedFacts:
        commands = parse_commands(exchange.request, self.query_text)
        if not commands:
            raise ParseError("no memcached command")
        replies = parse_replies(exchange.response)
        if any(c.quiet for c in commands):  # which reply is whose is not known
            replies = []
            commands = [c._replace(expects_reply=False) for c in commands]
        return commands, replies
