"""Redis (RESP2 and RESP3): the commands of an exchange and their replies, pure.

A client writes commands as arrays of bulk strings (`*2\\r\\n$3\\r\\nGET\\r\\n$1\\r\\nk\\r\\n`)
or, by hand, inline (`PING\\r\\n`); a pipelining client writes several before it reads
their replies, which come back in order, one value each. The captures are prefixes: what
is cut off is known to be, and a reply past the capture is neither an answer nor an
error, only "not seen".

`parse_commands` and `parse_replies` raise ParseError, and nothing else, for bytes that are
not RESP; nesting is bounded.
"""

from __future__ import annotations

from typing import NamedTuple

from obi.protocols.base import Exchange, IdGenerator, SpanStats
from obi.protocols.errors import ParseError
from obi.protocols.pipelined import CommandConnection, PipelinedCommands

__all__ = [
    "Redis",
    "RedisCommand",
    "RedisReply",
    "looks_like_redis",
    "parse_commands",
    "parse_exchange",
    "parse_replies",
]

MAX_DEPTH = 8  # nested aggregates followed; deeper replies are refused (ParseError)
MAX_LENGTH = 512 * 1024 * 1024  # Redis's own limit on a bulk string (proto-max-bulk-len default)
MAX_ITEMS = 1 << 20  # elements of one aggregate
_CRLF = b"\r\n"
_AGGREGATES = {ord("*"): 1, ord("%"): 2, ord("~"): 1, ord(">"): 1, ord("|"): 2}  # RESP3: map/attr x2
_BLOBS = frozenset(b"$!=")  # bulk string, blob error, verbatim string: a length, then the bytes
_LINES = frozenset(b"+-:,#_(")  # one line: simple string, error, integer, double, boolean, null, big number
_SIMPLE = frozenset(b"+:,#_(")  # those that are not errors
_LONGEST_LINE = 64 * 1024  # a RESP line without its end past this is not RESP
_new_tuple = tuple.__new__


class RedisCommand(NamedTuple):
    name: str  # upper case ("GET"), or "" when the capture ends inside the name
    args: int  # arguments after the name (as the array says, when cut off)
    db: int | None  # SELECT's index
    complete: bool = True  # False: the bytes end inside this command
    text: str = ""  # the command as redis-cli shows it (parse_commands(text=True) only)

    @property
    def expects_reply(self) -> bool:
        return True  # every command gets one (CLIENT REPLY OFF is not followed)


# Commands whose arguments carry credentials: their text keeps the name alone.
SECRET_COMMANDS = frozenset({"AUTH", "HELLO", "MIGRATE"})
TEXT_ARG_LIMIT = 256  # characters of one argument in a command's text


class RedisReply(NamedTuple):
    error: str | None  # an error reply's prefix ("ERR", "WRONGTYPE"), else None


_NO_ERROR = RedisReply(None)


class _Truncated(Exception):
    """The capture ends inside this value (internal: turns into a shorter result)."""


def looks_like_redis(request: bytes) -> bool:
    """A RESP command array: `*` and a digit (inline commands are not claimed on their own)."""
    return len(request) >= 4 and request[0] == 0x2A and 0x31 <= request[1] <= 0x39


def _line(data: bytes, at: int) -> tuple[bytes, int]:
    end = data.find(_CRLF, at)
    if end < 0:
        if len(data) - at > _LONGEST_LINE:
            raise ParseError("RESP line without an end")
        raise _Truncated
    return data[at:end], end + 2


def _int(text: bytes, low: int, high: int) -> int:
    digits = text[1:] if text[:1] == b"-" else text
    if not digits or len(text) > 20 or not digits.isdigit() or not digits.isascii():
        raise ParseError(f"RESP length {text[:20]!r}")
    value = int(text)
    if not low <= value <= high:
        raise ParseError(f"RESP length {value} out of range")
    return value


def _skip(data: bytes, at: int, depth: int = 0) -> int:
    """Where the value at `at` ends; _Truncated when the capture ends inside it."""
    if at >= len(data):
        raise _Truncated
    kind = data[at]
    if kind in _LINES:
        return _line(data, at + 1)[1]
    if kind in _BLOBS:
        text, at = _line(data, at + 1)
        length = _int(text, -1, MAX_LENGTH)
        if length < 0:
            return at  # RESP2 null bulk string
        if at + length + 2 > len(data):
            raise _Truncated
        if data[at + length:at + length + 2] != _CRLF:
            raise ParseError("RESP bulk string without its CRLF")
        return at + length + 2
    per_item = _AGGREGATES.get(kind)
    if per_item is None:
        raise ParseError(f"RESP type byte {kind:#x}")
    if depth >= MAX_DEPTH:
        raise ParseError("RESP nested too deep")
    text, at = _line(data, at + 1)
    count = _int(text, -1, MAX_ITEMS)
    for _ in range(max(count, 0) * per_item):
        at = _skip(data, at, depth + 1)
    if kind == ord("|"):  # an attribute precedes the value it describes
        return _skip(data, at, depth + 1)
    return at


def parse_commands(data: bytes, text: bool = False) -> list[RedisCommand]:
    """The commands of a request capture, in order; the last one may be cut off (then it is
    not `complete`). `text`: give each command's text, its arguments as captured.

    (Once per exchange, for every command of a pipeline: the line and length helpers are
    inlined for arrays of bulk strings, and lengths of up to 8 digits take int() at once.)"""
    commands: list[RedisCommand] = []
    at, size, find = 0, len(data), data.find
    while at < size:
        if data[at] != 0x2A:  # inline: words on one line
            try:
                line, at = _line(data, at)
            except _Truncated:
                words = data[at:].split()
                if not words or not words[0].isalnum():
                    raise ParseError("not a Redis command") from None
                commands.append(RedisCommand("", 0, None, False))  # cut off: what it is, unknown
                break
            words = line.split()
            if not words or not words[0].isalnum():
                raise ParseError("not a Redis command")
            commands.append(_command(words, len(words) - 1, True, text))
            continue
        end = find(_CRLF, at)
        if end < 0:
            if size - at > _LONGEST_LINE:
                raise ParseError("RESP line without an end")
            break
        digits = data[at + 1:end]
        count = int(digits) if digits.isdigit() and len(digits) < 8 else _int(digits, 1, MAX_ITEMS)
        if not 0 < count <= MAX_ITEMS:
            raise ParseError(f"RESP array of {count} items")
        at = end + 2
        keep = count if text else 2  # the name and the first argument, or all for the text
        args: list[bytes] = []
        cut = False  # the capture ends inside this command
        for i in range(count):
            if at >= size:
                cut = True
                break
            if data[at] != 0x24:  # $
                raise ParseError("a Redis command's argument is not a bulk string")
            end = find(_CRLF, at)
            if end < 0:
                if size - at > _LONGEST_LINE:
                    raise ParseError("RESP line without an end")
                cut = True
                break
            digits = data[at + 1:end]
            length = int(digits) if digits.isdigit() and len(digits) < 9 else _int(digits, 0, MAX_LENGTH)
            start = end + 2
            at = start + length + 2
            if i < keep:  # an argument cut by the capture: b"" for the name, its captured part after
                args.append(data[start:start + length] if at - 2 <= size or i else b"")
            if at > size:
                cut = True
                break
            if data[at - 2:at] != _CRLF:
                raise ParseError("a Redis argument without its CRLF")
        commands.append(_command(args, count - 1, not cut, text))
        if cut:
            break
    return commands


_NAMES: dict[bytes, str] = {}  # command names seen, upper-cased (bounded)
_NAMES_LIMIT = 4096


def _command(words: list[bytes], args: int, complete: bool, text: bool) -> RedisCommand:
    name = words[0] if words else b""
    upper = _NAMES.get(name)
    if upper is None:
        if name and not name.replace(b"_", b"").replace(b"-", b"").isalnum():
            raise ParseError("not a Redis command name")
        upper = name.decode("ascii", "replace").upper()
        if len(_NAMES) >= _NAMES_LIMIT:
            _NAMES.clear()
        _NAMES[name] = upper
    db = None
    if upper == "SELECT" and len(words) > 1 and words[1].isdigit() and len(words[1]) < 6:
        db = int(words[1])
    shown = ""
    if text and upper:
        shown = upper if upper in SECRET_COMMANDS else " ".join(
            [upper] + [_shown(word) for word in words[1:]])
    return _new_tuple(RedisCommand, (upper, args, db, complete, shown))


def _shown(word: bytes) -> str:
    value = word[:TEXT_ARG_LIMIT].decode("utf-8", "replace")
    return value if value and " " not in value else repr(value)


def parse_replies(data: bytes) -> list[RedisReply]:
    """The replies of a response capture, in order, as many as it holds whole."""
    replies: list[RedisReply] = []
    at, size = 0, len(data)
    while at < size:
        kind = data[at]
        if kind in _SIMPLE:  # +OK, :1: one line, not an error (the common case, inlined)
            end = data.find(_CRLF, at)
            if end < 0:
                break
            replies.append(_NO_ERROR)
            at = end + 2
            continue
        if kind == ord(">"):  # RESP3 push (pub/sub message): not a reply to a command
            try:
                at = _skip(data, at)
            except _Truncated:
                break
            continue
        try:
            end = _skip(data, at)
        except _Truncated:
            break
        error = None
        if kind == ord("-"):
            error = data[at + 1:end - 2].split(b" ", 1)[0].decode("ascii", "replace") or "ERR"
        elif kind == ord("!"):
            body = data[data.index(_CRLF, at) + 2:end - 2]
            error = body.split(b" ", 1)[0].decode("ascii", "replace") or "ERR"
        replies.append(RedisReply(error))
        at = end
    return replies


def parse_exchange(request: bytes, response: bytes,
                   text: bool = False) -> list[tuple[RedisCommand, RedisReply | None]]:
    """Each command with its reply (None: not in the capture), pipelined commands included."""
    commands = parse_commands(request, text)
    if not commands:
        raise ParseError("no Redis command")
    replies = parse_replies(response)
    return [(c, replies[i] if i < len(replies) else None) for i, c in enumerate(commands)]


# ---- spans -------------------------------------------------------------------

RedisFacts = tuple[list[RedisCommand], list[RedisReply]]


class RedisConnection(CommandConnection):
    """A connection's database, as its last successful SELECT chose (None: not seen)."""

    __slots__ = ("db",)

    def __init__(self) -> None:
        super().__init__()
        self.db: int | None = None


class Redis(PipelinedCommands[RedisConnection]):
    """Redis client spans (an instrumented process called a Redis server) and server spans
    (an instrumented redis-server answered), one per command, with OBI's names and attributes."""

    name = "redis"
    system = "redis"

    def __init__(self, ids: IdGenerator | None = None, stats: SpanStats | None = None,
                 query_text: bool = False) -> None:
        super().__init__(RedisConnection, ids, stats, query_text)

    def detect(self, exchange: Exchange) -> bool:
        return looks_like_redis(exchange.request)

    def parse(self, exchange: Exchange) -> RedisFacts:
        commands = parse_commands(exchange.request, self.query_text)
        if not commands:
            raise ParseError("no Redis command")
        return commands, parse_replies(exchange.response)

    def namespace(self, command: RedisCommand, reply: RedisReply | None,  # type: ignore[override]
                  state: RedisConnection, midway: bool) -> str:
        """The database index: SELECT's target (even refused, as the conventions say), else the
        connection's; 0 for a connection seen from its start that never chose one."""
        if command.db is not None:
            if reply is not None and reply.error is None:
                state.db = command.db
            return str(command.db)
        if state.db is not None:
            return str(state.db)
        return "" if midway else "0"
