"""MySQL and MariaDB's client/server protocol: the commands of an exchange, their outcome,
and their spans.

Every message is a packet: a 3-byte little-endian payload length, a sequence number (0 at
each command's start), the payload. The server speaks first (its greeting, which no
request asked for); the client's handshake response names the user and, optionally, the
database (db.namespace; COM_INIT_DB and `USE` change it later). A command packet starts
with its command byte: COM_QUERY (the SQL), COM_STMT_PREPARE (SQL; the server's answer
gives the statement id), COM_STMT_EXECUTE (a statement id), ... The answer's first packet
says how it went: OK (0x00), ERR (0xFF, the error code and SQLSTATE), or a result set.

Each connection keeps its database and the texts of the statements it prepared (bounded).
`parse` raises ParseError, and nothing else, for bytes that are not this protocol.
"""

from __future__ import annotations

from typing import NamedTuple

from obi.protocols.base import (
    NO_RESPONSE_ERRORS,
    ROLE_SERVER,
    Connection,
    ConnectionStates,
    Exchange,
    IdGenerator,
    SpanStats,
    endpoints,
    span_ids,
)
from obi.protocols.errors import ParseError
from obi.protocols.pipelined import CLOSED
from obi.protocols.sql import sql_facts
from obi.traces.model import DbSpan

__all__ = ["MySql", "MySqlPacket", "looks_like_mysql", "parse_packets"]

COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_PING = 0x0E
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
# The commands clients send today (COM_FIELD_LIST, COM_STATISTICS, COM_CHANGE_USER, ...,
# COM_SET_OPTION, COM_STMT_FETCH, COM_RESET_CONNECTION among them).
COMMANDS = frozenset({COM_QUIT, COM_INIT_DB, COM_QUERY, 0x04, 0x09, COM_PING, 0x11, COM_STMT_PREPARE,
                      COM_STMT_EXECUTE, 0x18, COM_STMT_CLOSE, COM_STMT_RESET, 0x1B, 0x1C, 0x1F})
_NO_ANSWER = frozenset({COM_QUIT, COM_STMT_CLOSE, 0x18})  # COM_STMT_SEND_LONG_DATA
CLIENT_CONNECT_WITH_DB = 0x08
CLIENT_PROTOCOL_41 = 0x200
CLIENT_SSL = 0x800
CLIENT_PLUGIN_AUTH_LENENC = 0x200000
MAX_PACKET = (1 << 24) - 1
STATEMENTS_PER_CONNECTION = 256
TEXT_LIMIT = 4096


class MySqlPacket(NamedTuple):
    seq: int
    payload: bytes  # as captured (cut short when not complete)
    complete: bool


def parse_packets(data: bytes) -> list[MySqlPacket]:
    """The packets of a capture, in order; the last may be cut short."""
    packets: list[MySqlPacket] = []
    at, size = 0, len(data)
    while at < size:
        if at + 4 > size:
            packets.append(MySqlPacket(-1, b"", False))
            break
        length = data[at] | data[at + 1] << 8 | data[at + 2] << 16
        end = at + 4 + length
        packets.append(MySqlPacket(data[at + 3], data[at + 4:end], end <= size))
        at = end
    return packets


def looks_like_mysql(request: bytes, request_len: int) -> bool:
    """A command packet (sequence 0, a known command byte) or a handshake response (sequence 1,
    protocol 4.1), whose length fits in what the client sent (`request_len`) and, when all of
    it was captured, whose packets end where it ends."""
    if len(request) < 5:
        return False
    length = request[0] | request[1] << 8 | request[2] << 16
    if length == 0 or 4 + length > request_len:
        return False
    if request_len <= len(request):
        at = 0
        while at + 4 <= len(request):
            at += 4 + (request[at] | request[at + 1] << 8 | request[at + 2] << 16)
        if at != len(request):
            return False
    seq = request[3]
    if seq == 0:
        command = request[4]
        if command not in COMMANDS:
            return False
        if command in (COM_QUERY, COM_STMT_PREPARE, COM_INIT_DB):
            text = request[5:5 + min(length - 1, 64)]
            return not text or all(b >= 0x20 or b in b"\t\r\n" for b in text)
        return True
    if seq == 1 and length >= 32 and len(request) >= 36:
        flags = int.from_bytes(request[4:8], "little")
        return bool(flags & CLIENT_PROTOCOL_41) and not any(request[13:36])
    return False


def _handshake_database(payload: bytes) -> str | None:
    """The database a HandshakeResponse41 names (None: none, or not readable)."""
    if len(payload) < 32:
        return None
    flags = int.from_bytes(payload[:4], "little")
    if not flags & CLIENT_CONNECT_WITH_DB:
        return None
    at = payload.find(b"\0", 32)  # the user name
    if at < 0 or at + 1 >= len(payload):
        return None
    at += 1
    if flags & CLIENT_PLUGIN_AUTH_LENENC:
        size, at = _lenenc(payload, at)
    else:
        size, at = payload[at], at + 1
    at += size
    end = payload.find(b"\0", at)
    if end < 0:
        return None
    return payload[at:end].decode("utf-8", "replace")


def _lenenc(data: bytes, at: int) -> tuple[int, int]:
    first = data[at] if at < len(data) else 0
    if first < 0xFB:
        return first, at + 1
    width = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if width is None:
        raise ParseError("mysql length-encoded integer")
    return int.from_bytes(data[at + 1:at + 1 + width], "little"), at + 1 + width


def _text(payload: bytes, complete: bool) -> str:
    """A statement's text from its packet; cut short, up to its last whole word."""
    text = payload[1:1 + TEXT_LIMIT].decode("utf-8", "replace")
    if complete and len(payload) <= TEXT_LIMIT:
        return text
    end = max(text.rfind(c) for c in " \t\r\n(),;")
    return text[:max(end, 0)]


class _Answer(NamedTuple):
    error: str  # the error code ("1146"), "" when none
    value: int  # COM_STMT_PREPARE's OK: the statement id; else 0


def _answer(packets: list[MySqlPacket]) -> _Answer | None:
    """How a command went, from its answer's first packet (None: none captured)."""
    if not packets or not packets[0].payload:
        return None
    payload = packets[0].payload
    if payload[0] == 0xFF:
        code = int.from_bytes(payload[1:3], "little") if len(payload) >= 3 else 0
        return _Answer(str(code) if code else "ERROR", 0)
    if payload[0] == 0x00 and len(payload) >= 5:
        return _Answer("", int.from_bytes(payload[1:5], "little"))
    return _Answer("", 0)


class MySqlConnection:
    """A connection's database and the statements it prepared, by id."""

    __slots__ = ("database", "statements")

    def __init__(self) -> None:
        self.database: str | None = None
        self.statements: dict[int, str] = {}


MySqlFacts = tuple[list[MySqlPacket], list[MySqlPacket]]


class MySql:
    """MySQL/MariaDB client spans and server spans (an instrumented mariadbd or mysqld), one
    per query or prepared statement executed, named OBI's way (`SELECT users`)."""

    name = "mysql"

    def __init__(self, ids: IdGenerator | None = None, stats: SpanStats | None = None,
                 query_text: bool = False) -> None:
        self._getrandbits = (ids or IdGenerator()).getrandbits
        self.stats = stats or SpanStats()
        self.query_text = query_text
        self.connections: ConnectionStates[MySqlConnection] = ConnectionStates(MySqlConnection, self.stats)

    def detect(self, exchange: Exchange) -> bool:
        return looks_like_mysql(exchange.request, exchange.request_len)

    def parse(self, exchange: Exchange) -> MySqlFacts:
        request = parse_packets(exchange.request)
        if not request or request[0].seq not in (0, 1):
            raise ParseError("no mysql command")
        return request, parse_packets(exchange.response)

    def spans(self, facts: MySqlFacts, exchange: Exchange, connection: Connection) -> list[DbSpan]:
        request, response = facts
        _, raw_request, raw_response, request_len, response_len = exchange[:5]
        end_reason = exchange.end_reason
        state = self.connections.get(connection)
        spans: list[DbSpan] = []
        if request[0].seq == 1:  # the handshake response
            state.database = _handshake_database(request[0].payload) or ""
            return spans
        if request_len > len(raw_request):
            self.stats.requests_truncated += 1
        # Commands in order (a client may send COM_STMT_CLOSE, which has no answer, ahead of
        # its next command); the answer is the first that expects one's.
        answer = _answer(response)
        answered = False
        for packet in request:
            if packet.seq != 0 or not packet.payload:
                continue  # the rest of a command longer than one packet
            command = packet.payload[0]
            if command in _NO_ANSWER:
                if command == COM_STMT_CLOSE and len(packet.payload) >= 5:
                    state.statements.pop(int.from_bytes(packet.payload[1:5], "little"), None)
                continue
            mine, answered = (answer if not answered else None), True
            span = self._command(packet, mine, state, exchange, connection,
                                 response_len <= len(raw_response) and end_reason in NO_RESPONSE_ERRORS)
            if span is not None:
                spans.append(span)
        if end_reason in CLOSED:
            self.connections.forget(connection)
        return spans

    def _command(self, packet: MySqlPacket, answer: _Answer | None, state: MySqlConnection,
                 exchange: Exchange, connection: Connection, unanswered: bool) -> DbSpan | None:
        """The span of one command (None: a command that is not a statement, or a statement
        prepared: its executions are the spans). `USE db` names the database it chooses, as
        Redis's SELECT does."""
        command, payload = packet.payload[0], packet.payload
        ok = answer is not None and not answer.error
        if command == COM_INIT_DB:
            if ok:
                state.database = payload[1:].decode("utf-8", "replace")
            return None
        if command == COM_QUERY:
            text = _text(payload, packet.complete)
        elif command == COM_STMT_PREPARE:  # a span only when refused: its executions are the spans
            if answer is None or not answer.error:
                if answer is not None:
                    if len(state.statements) >= STATEMENTS_PER_CONNECTION:
                        state.statements.clear()
                    state.statements[answer.value] = _text(payload, packet.complete)
                return None
            text = _text(payload, packet.complete)
        elif command == COM_STMT_EXECUTE and len(payload) >= 5:
            text = state.statements.get(int.from_bytes(payload[1:5], "little"), "")
        else:
            return None
        status = answer.error if answer is not None else ""
        error = status
        if answer is None and unanswered:
            error = NO_RESPONSE_ERRORS[exchange.end_reason]
            self.stats.unanswered += 1
        operation, table = sql_facts(text) if text else ("", "")
        if operation == "USE" and ok:
            words = text.split()
            state.database = words[1].strip("`;") if len(words) > 1 else state.database
        service, start_ns, end_ns, *_ = connection
        kind, server, server_port, client, client_port = endpoints(exchange.role, connection)
        server_role = exchange.role == ROLE_SERVER
        trace_id, span_id, parent_id = span_ids(exchange.ids, 0, server_role, self._getrandbits)
        return DbSpan(
            service, kind, start_ns, end_ns, trace_id, span_id, parent_id, True, 0,
            "mysql", operation, table, state.database or "", server, server_port, client, client_port,
            status, error, text if self.query_text else None,
        )  # fmt: skip
