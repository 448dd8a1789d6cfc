"""What a protocol module implements, and what it is given.

The kernel pairs what each side of a TCP connection sends into exchanges
without knowing the protocol. A protocol module (one per protocol in this
package) turns exchanges into spans in two steps:

- ``detect(exchange)``: a cheap look at the first bytes: is this mine?
- ``parse(exchange)``: a pure function of the bytes and sizes to the
  protocol's facts, in whatever shape its spans need (the requests the
  exchange holds, since a client that pipelines sends several, and their
  answers; a request may have none). Anything it cannot read raises
  ParseError and nothing else.
- ``spans(facts, exchange, connection)``: the spans, named and attributed in
  one place per protocol. What a protocol must remember of a connection
  between exchanges (a Redis SELECT, a prepared statement) it keeps in a
  ConnectionStates, bounded.

Binary protocols, responses that are errors and pipelining clients all fit:
facts are the protocol's own types, and an exchange carries both directions'
first bytes and total sizes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, NamedTuple, Protocol, TypeVar

from obi.ebpf._libbpf import lib
from obi.protocols.errors import ParseError
from obi.traces.model import SPAN_KIND_CLIENT, SPAN_KIND_SERVER, ServiceIdentity, Span

__all__ = [
    "NO_RESPONSE_ERRORS",
    "ROLE_CLIENT",
    "ROLE_SERVER",
    "Caller",
    "Connection",
    "ConnectionStates",
    "Exchange",
    "IdGenerator",
    "ParseError",
    "ProtocolModule",
    "SpanStats",
    "endpoints",
    "nth_span_id",
    "span_ids",
]

ROLE_SERVER: Final[int] = lib.OBI_ROLE_SERVER
ROLE_CLIENT: Final[int] = lib.OBI_ROLE_CLIENT
# error.type of a request that got no response, by why the kernel ended the exchange.
NO_RESPONSE_ERRORS: Final[dict[int, str]] = {
    lib.OBI_END_EXIT: "process_exited",
    lib.OBI_END_CLOSE: "connection_closed",
    lib.OBI_END_TIMEOUT: "timeout",
}


class Exchange(NamedTuple):
    """One request and what came back, as the kernel paired them (a tuple: cheap per event)."""

    role: int  # ROLE_SERVER: the instrumented process answered; ROLE_CLIENT: it asked
    request: bytes  # the first bytes of what the requester sent
    response: bytes  # the first bytes of what came back (b"": nothing did)
    request_len: int  # bytes the requester sent in all
    response_len: int  # bytes that came back in all (the final response, after HTTP 1xx)
    response_header_len: int  # the kernel's HTTP/1.x framing of the response, -1 when unknown
    response_content_length: int  # -1 when unknown
    kernel_http: bool  # the kernel saw an HTTP/1.x request line
    status_only: bool  # the first response is its status line alone (the kernel framed it by
    #                    length); responses pipelined after it follow whole
    end_reason: int  # lib.OBI_END_*
    tls: bool  # the bytes are TLS plaintext (the TLS uprobes), not what the socket carried
    ids: bytes  # b"", or the span's ids from the kernel: trace id (16), span id (8), parent span
    #             id (8, zeros: none); set when the request made calls, or is a call made for one
    midway: bool  # obi found the connection after it began (what it said before is unknown)


class Connection(NamedTuple):
    """Who and where, for the spans of one exchange."""

    service: ServiceIdentity
    start_ns: int  # Unix epoch
    end_ns: int
    local_address: str
    local_port: int
    peer_address: str
    peer_port: int


@dataclass
class SpanStats:
    """What protocol modules could not turn into spans, or only partly (all counted)."""

    headers_truncated: int = 0  # header blocks longer than the capture: traceparent may be lost
    unanswered: int = 0  # requests the connection closed on (or timed out) without an answer
    ignored_route: int = 0  # spans of routes.ignored_patterns, left out
    requests_truncated: int = 0  # requests longer than the capture: pipelined ones after it unseen
    split_requests: int = 0  # a request whose rest came in the next exchange: left out
    connections_forgotten: int = 0  # protocol state of a connection dropped (ConnectionStates full)


_GOLDEN: Final = 0x9E3779B97F4A7C15  # odd: i -> span + i * _GOLDEN never repeats within 2**64 requests


def nth_span_id(span_id: bytes, index: int) -> bytes:
    """The span id of the request at `index` of an exchange whose first request's is `span_id`.

    Both ends of a connection derive it alike, so that a server's span for the n-th pipelined
    command names the client's span for it as its parent without the two ever talking."""
    value = (int.from_bytes(span_id, "big") + index * _GOLDEN) & 0xFFFF_FFFF_FFFF_FFFF
    return (value or 1).to_bytes(8, "big")


def span_ids(kernel_ids: bytes, index: int, server: bool,
             getrandbits: Callable[[int], int], first_call: int = 0) -> tuple[bytes, bytes, bytes]:
    """(trace id, span id, parent span id) of the request at `index` of an exchange.

    With the kernel's ids, the first request takes them and those pipelined after it share
    their trace; their span ids follow from the first's (nth_span_id). A client's requests
    share their parent (the request its process was serving); a server's request at `index`
    has the caller's span for that request as parent: the caller's request at
    `first_call + index` (see Caller). Without the kernel's ids, each request is a trace of
    its own."""
    if kernel_ids:
        trace, span, parent = kernel_ids[:16], kernel_ids[16:24], kernel_ids[24:32]
        if not any(parent):
            parent = b""
        if index:
            span = nth_span_id(span, index)
        if server and parent and (index or first_call):
            parent = nth_span_id(parent, first_call + index)
        return trace, span, parent
    fresh = getrandbits(192).to_bytes(24, "big")
    return fresh[:16], fresh[16:], b""


class Caller:
    """A server connection's caller, for pipelined requests read apart.

    A pipelining client may write its requests one by one before it reads, and the server
    read them apart: each read is an exchange of its own, whose parent the kernel gives as
    the caller's exchange's first span (it leaves the call's ids under every write's first
    byte). The requests of the caller's exchange are numbered across the server's exchanges
    that share that parent: `first` is the caller's request the next exchange begins with."""

    __slots__ = ("answered", "span")

    def __init__(self) -> None:
        self.span = b""
        self.answered = 0

    def first(self, kernel_ids: bytes) -> int:
        """The index, in the caller's exchange, of a server exchange's first request."""
        parent = kernel_ids[24:32]
        if parent != self.span:
            self.span = parent
            self.answered = 0
        return self.answered


def endpoints(role: int, connection: Connection) -> tuple[int, str, int, str, int]:
    """(span kind, server address, server port, client address, client port) of an exchange."""
    if role == ROLE_SERVER:
        return (SPAN_KIND_SERVER, connection.local_address, connection.local_port, connection.peer_address,
                connection.peer_port)
    return (SPAN_KIND_CLIENT, connection.peer_address, connection.peer_port, connection.local_address,
            connection.local_port)


ConnectionKey = tuple[int, int, str, int]  # pid, local port, peer address, peer port
State = TypeVar("State")


class ConnectionStates(Generic[State]):
    """What a protocol remembers of each connection (a Redis SELECT, prepared statements),
    bounded: past `limit` connections the longest unseen is forgotten (counted)."""

    def __init__(self, make: Callable[[], State], stats: SpanStats, limit: int = 65536) -> None:
        self._make = make
        self._limit = limit
        self._states: dict[ConnectionKey, State] = {}
        self._stats = stats

    def __len__(self) -> int:
        return len(self._states)

    def get(self, connection: Connection) -> State:
        key = (connection.service.pid, connection.local_port, connection.peer_address, connection.peer_port)
        states = self._states
        state = states.pop(key, None)  # re-inserted: the dict's order is the order last seen
        if state is None:
            if len(states) >= self._limit:
                del states[next(iter(states))]
                self._stats.connections_forgotten += 1
            state = self._make()
        states[key] = state
        return state

    def forget(self, connection: Connection) -> None:
        self._states.pop((connection.service.pid, connection.local_port, connection.peer_address,
                          connection.peer_port), None)


class ProtocolModule(Protocol):
    """One request/response protocol (see the module docstring)."""

    name: str

    def detect(self, exchange: Exchange) -> bool: ...

    def parse(self, exchange: Exchange) -> Any: ...

    def spans(self, facts: Any, exchange: Exchange, connection: Connection) -> Sequence[Span]: ...


class IdGenerator:
    """Random bits for trace and span ids (draw 192 for a root span's trace and span id).

    Modules take ``getrandbits`` once and call it inline: a method call per span costs."""

    __slots__ = ("getrandbits",)

    def __init__(self, seed: int | None = None) -> None:
        self.getrandbits = random.Random(seed).getrandbits
