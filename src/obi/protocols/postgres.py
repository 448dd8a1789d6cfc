"""PostgreSQL's frontend/backend protocol (v3): the queries of an exchange, simple and
extended, their outcome, and their spans.

The client speaks in typed messages (a type byte, a 4-byte length counting itself, the
body), after an untyped startup message (or an SSLRequest first). A simple query is one
`Q` message; the extended protocol sends Parse (a statement's text, under a name; "" is
the unnamed one), Bind (a statement into a portal), Execute (a portal) and, at the end of
each cycle, Sync. The server answers each `Q` and each Sync with ReadyForQuery (`Z`): a
cycle. An error (ErrorResponse, its SQLSTATE in field `C`) skips the rest of its cycle.

Prepared statements are reused by name on later exchanges: each connection keeps the texts
it saw parsed (bounded), and the database its startup message named (db.namespace).

`parse` raises ParseError, and nothing else, for bytes that are not this protocol.
"""

from __future__ import annotations

from typing import NamedTuple

from obi.protocols.base import (
    NO_RESPONSE_ERRORS,
    ROLE_SERVER,
    Caller,
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

__all__ = ["PgMessage", "Postgres", "looks_like_postgres", "parse_messages"]

PROTOCOL_V3 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
STARTUP = 0  # PgMessage.kind of the untyped startup message
SSL = 1  # ... of an SSLRequest or GSSENCRequest (its answer is one byte)
CANCEL = 2  # ... of a CancelRequest (no answer)
_FRONTEND = frozenset(b"QPBEDSHCXpdcfF")
_BACKEND = frozenset(b"RSKZTDCEN123nstIGHWdcAVv")
MAX_MESSAGE = 1 << 30
STATEMENTS_PER_CONNECTION = 256  # prepared statement texts kept per connection
TEXT_LIMIT = 4096  # characters of a statement's text kept


class PgMessage(NamedTuple):
    kind: int  # the type byte, or STARTUP / SSL / CANCEL
    body: bytes  # as captured (cut short when not complete)
    complete: bool


def looks_like_postgres(request: bytes) -> bool:
    """A startup message, SSLRequest or CancelRequest, or a frontend message whose length is
    plausible and whose body, when captured, is shaped as its type says."""
    if len(request) < 5:
        return False
    length = int.from_bytes(request[:4], "big")
    if 8 <= length <= 10000 and len(request) >= 8 and int.from_bytes(request[4:8], "big") in (
            PROTOCOL_V3, SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST):
        return True
    kind = request[0]
    length = int.from_bytes(request[1:5], "big")
    if kind not in _FRONTEND or not 4 <= length <= MAX_MESSAGE:
        return False
    body = request[5:1 + length]
    if kind == 0x51:  # Q: the query and its NUL
        return len(body) < length - 4 or (body.endswith(b"\0") and body.count(b"\0") == 1)
    if kind == 0x50:  # P: name NUL, query NUL, parameter types
        return body.count(b"\0") >= 2 or len(body) < length - 4
    if kind == 0x70:  # p: a password, or a SASL message (the authentication's exchanges)
        return length <= 65536 and len(request) <= 1 + length
    return kind in b"BESHDCX" and len(body) <= length - 4


def parse_messages(data: bytes, frontend: bool) -> list[PgMessage]:
    """The messages of a capture, in order; the last may be cut short."""
    messages: list[PgMessage] = []
    at, size = 0, len(data)
    kinds = _FRONTEND if frontend else _BACKEND
    if frontend and size >= 8 and data[0] not in _FRONTEND:
        length = int.from_bytes(data[:4], "big")
        code = int.from_bytes(data[4:8], "big")
        if not 8 <= length <= 10000:
            raise ParseError("postgres startup message length")
        kind = {PROTOCOL_V3: STARTUP, SSL_REQUEST: SSL, GSSENC_REQUEST: SSL, CANCEL_REQUEST: CANCEL}.get(code)
        if kind is None:
            raise ParseError("postgres startup message version")
        messages.append(PgMessage(kind, data[8:length], length <= size))
        at = length
    while at < size:
        kind = data[at]
        if kind not in kinds:
            raise ParseError(f"postgres message type {kind:#x}")
        if at + 5 > size:
            messages.append(PgMessage(kind, b"", False))
            break
        length = int.from_bytes(data[at + 1:at + 5], "big")
        if not 4 <= length <= MAX_MESSAGE:
            raise ParseError("postgres message length")
        end = at + 1 + length
        messages.append(PgMessage(kind, data[at + 5:end], end <= size))
        at = end
    return messages


def _cstring(body: bytes, at: int = 0) -> tuple[str, int]:
    """The NUL-terminated string at `at` (cut short: what there is) and where the next starts."""
    end = body.find(b"\0", at)
    if end < 0:
        return body[at:at + TEXT_LIMIT].decode("utf-8", "replace"), len(body)
    return body[at:min(end, at + TEXT_LIMIT)].decode("utf-8", "replace"), end + 1


def _text(body: bytes, complete: bool) -> str:
    """A statement's text from its message; cut short by the capture, up to its last whole
    word (a word cut in two would name the wrong table)."""
    text = _cstring(body)[0]
    if complete:
        return text
    end = max(text.rfind(c) for c in " \t\r\n(),;")
    return text[:max(end, 0)]


def startup_parameters(body: bytes) -> dict[str, str]:
    """The key/value pairs of a startup message's body (user, database, options, ...)."""
    parts = body.split(b"\0")
    return {parts[i].decode("utf-8", "replace"): parts[i + 1].decode("utf-8", "replace")
            for i in range(0, len(parts) - 1, 2) if parts[i]}


def error_code(body: bytes) -> str:
    """The SQLSTATE of an ErrorResponse's body (fields: a code byte, then a string)."""
    at = 0
    while at < len(body) and body[at]:
        field = body[at]
        value, at = _cstring(body, at + 1)
        if field == 0x43:  # C
            return value
    return "ERROR"


class _Query(NamedTuple):
    text: str
    complete: bool
    parse_only: bool = False  # a cycle that parsed and did not execute: a span only if it failed


class _Outcome(NamedTuple):
    completed: int  # statements that completed before the error (or all)
    error: str  # the SQLSTATE, "" for none


class PgConnection:
    """A connection's database, the statement texts it parsed and the portals it bound, and
    the cycles owed to an earlier exchange."""

    __slots__ = ("caller", "database", "owed", "portals", "statements")

    def __init__(self) -> None:
        self.database: str | None = None
        self.statements: dict[str, str] = {}
        self.portals: dict[str, str] = {}
        self.owed = 0
        self.caller = Caller()

    def remember(self, table: dict[str, str], name: str, value: str) -> None:
        if len(table) >= STATEMENTS_PER_CONNECTION and name not in table:
            table.clear()  # a client that never reuses its names: keep the newest
        table[name] = value


PgFacts = tuple[list[PgMessage], list[PgMessage]]


class Postgres:
    """PostgreSQL client spans and server spans (an instrumented postgres backend), one per
    query executed, named OBI's way (`SELECT users`)."""

    name = "postgresql"

    def __init__(self, ids: IdGenerator | None = None, stats: SpanStats | None = None,
                 query_text: bool = False) -> None:
        self._getrandbits = (ids or IdGenerator()).getrandbits
        self.stats = stats or SpanStats()
        self.query_text = query_text
        self.connections: ConnectionStates[PgConnection] = ConnectionStates(PgConnection, self.stats)

    def detect(self, exchange: Exchange) -> bool:
        return looks_like_postgres(exchange.request)

    def parse(self, exchange: Exchange) -> PgFacts:
        front = parse_messages(exchange.request, True)
        if not front:
            raise ParseError("no postgres message")
        if front[0].kind in (SSL, CANCEL):  # answered by one byte, or not at all
            return front, []
        return front, parse_messages(exchange.response, False)

    def _cycles(self, front: list[PgMessage], state: PgConnection) -> list[list[_Query]]:
        """The request's cycles (each answered by one ReadyForQuery), each with its queries."""
        cycles: list[list[_Query]] = []
        current: list[_Query] | None = None  # an extended-protocol cycle, until its Sync
        parsed = ""  # the last statement parsed in the current cycle
        bound: str | None = None  # the text of a statement bound and not yet executed
        for kind, body, complete in front:
            if kind == 0x51:  # Q
                cycles.append([_Query(_text(body, complete), complete)])
            elif kind == 0x50:  # P
                name, at = _cstring(body)
                parsed = _text(body[at:], complete)
                if complete:
                    state.remember(state.statements, name, parsed)
                current = current if current is not None else []
            elif kind == 0x42:  # B
                portal, at = _cstring(body)
                statement = _cstring(body, at)[0]
                state.remember(state.portals, portal, statement)
                bound = state.statements.get(statement, "")
                current = current if current is not None else []
            elif kind == 0x45:  # E
                executed = state.portals.get(_cstring(body)[0])
                text = state.statements.get(executed, "") if executed is not None else ""
                current = current if current is not None else []
                current.append(_Query(text, complete))
                bound = None
            elif kind == 0x53:  # S
                cycles.append(current if current else ([_Query(parsed, True, True)] if parsed else []))
                current, parsed, bound = None, "", None
            elif kind == STARTUP:  # its answer (authentication) is not a cycle: see _outcomes
                parameters = startup_parameters(body)
                state.database = parameters.get("database") or parameters.get("user") or ""
        if front and not front[-1].complete and bound is not None:
            # the capture ends inside (or after) a Bind, its Execute beyond: what clients send next
            current = current if current is not None else []
            current.append(_Query(bound, True))
        if current:
            cycles.append(current)  # no Sync seen
        return cycles

    @staticmethod
    def _outcomes(back: list[PgMessage]) -> list[_Outcome]:
        """What each answered cycle of the response said. The ReadyForQuery that ends
        authentication (its cycle holds Authentication messages) answers the startup, not a
        query: it is left out."""
        outcomes: list[_Outcome] = []
        completed, error, authentication = 0, "", False
        for kind, body, _ in back:
            if kind == 0x5A:  # Z
                if not authentication:
                    outcomes.append(_Outcome(completed, error))
                completed, error, authentication = 0, "", False
            elif kind == 0x52:  # R
                authentication = True
            elif kind in b"CIs" and not error:  # CommandComplete, EmptyQueryResponse, PortalSuspended
                completed += 1
            elif kind == 0x45 and not error:  # ErrorResponse
                error = error_code(body)
        return outcomes

    def spans(self, facts: PgFacts, exchange: Exchange, connection: Connection) -> list[DbSpan]:
        front, back = facts
        role, request, response, request_len, response_len, *_, end_reason, _, kernel_ids, _ = exchange
        service, start_ns, end_ns, *_ = connection
        stats, getrandbits = self.stats, self._getrandbits
        state = self.connections.get(connection)
        cycles = self._cycles(front, state)
        if request_len > len(request):
            stats.requests_truncated += 1
        outcomes = self._outcomes(back)
        if state.owed and cycles:  # the first answers are an earlier exchange's
            outcomes = outcomes[state.owed:]
            state.owed = 0
        server_role = role == ROLE_SERVER
        kind, server, server_port, client, client_port = endpoints(role, connection)
        namespace = state.database if state.database is not None else ""
        response_whole = response_len <= len(response)
        first = state.caller.first(kernel_ids) if server_role and kernel_ids else 0
        spans: list[DbSpan] = []
        for i, queries in enumerate(cycles):
            outcome = outcomes[i] if i < len(outcomes) else None
            unanswered = ""
            if outcome is None and response_whole:
                if end_reason not in NO_RESPONSE_ERRORS:  # its ReadyForQuery opens the next exchange
                    state.owed += 1
                elif queries and not queries[0].parse_only:
                    unanswered = NO_RESPONSE_ERRORS[end_reason]
                    stats.unanswered += len(queries)
            for n, (text, complete, parse_only) in enumerate(queries):
                if not complete and request_len <= len(request):  # its rest opens the next exchange
                    stats.split_requests += 1
                    continue
                status = outcome.error if outcome is not None and n >= outcome.completed else ""
                if parse_only and not status:
                    continue
                operation, table = sql_facts(text) if text else ("", "")
                trace_id, span_id, parent_id = span_ids(kernel_ids, len(spans), server_role, getrandbits,
                                                        first)
                spans.append(DbSpan(
                    service, kind, start_ns, end_ns, trace_id, span_id, parent_id, True, 0,
                    "postgresql", operation, table, namespace, server, server_port, client, client_port,
                    status, status or unanswered, text if self.query_text else None,
                ))  # fmt: skip
        if server_role and kernel_ids:
            state.caller.answered = first + len(spans)
        if end_reason in CLOSED:
            self.connections.forget(connection)
        return spans
