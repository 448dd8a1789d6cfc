"""What a protocol module implements, and what it is given.

The kernel pairs what each side of a TCP connection sends into exchanges
without knowing the protocol. A protocol module (one per protocol in this
package) turns exchanges into spans in two steps:

- ``detect(exchange)``: a cheap look at the first bytes: is this mine?
- ``parse(exchange)``: a pure function of the bytes and sizes to the
  protocol's facts, one per request the exchange holds (a client that
  pipelines sends several; a request may have no answer). Anything it cannot
  read raises ParseError and nothing else.
- ``spans(facts, exchange, connection)``: the spans, named and attributed in
  one place per protocol.

Binary protocols, responses that are errors and pipelining clients all fit:
facts are the protocol's own types, and an exchange carries both directions'
first bytes and total sizes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from obi.ebpf._libbpf import lib
from obi.protocols.errors import ParseError
from obi.traces.model import ServiceIdentity, Span

__all__ = ["ROLE_CLIENT", "ROLE_SERVER", "Connection", "Exchange", "IdGenerator", "ParseError",
           "ProtocolModule", "SpanStats"]

ROLE_SERVER: int = lib.OBI_ROLE_SERVER
ROLE_CLIENT: int = lib.OBI_ROLE_CLIENT


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


class ProtocolModule(Protocol):
    """One request/response protocol (see the module docstring)."""

    name: str

    def detect(self, exchange: Exchange) -> bool: ...

    def parse(self, exchange: Exchange) -> Sequence[Any]: ...

    def spans(self, facts: Sequence[Any], exchange: Exchange, connection: Connection) -> Sequence[Span]: ...


class IdGenerator:
    """Random bits for trace and span ids (draw 192 for a root span's trace and span id).

    Modules take ``getrandbits`` once and call it inline: a method call per span costs."""

    __slots__ = ("getrandbits",)

    def __init__(self, seed: int | None = None) -> None:
        self.getrandbits = random.Random(seed).getrandbits
