"""Spans of pipelining request/reply protocols (Redis, Memcached): one span per command.

A client of these protocols may write several commands before it reads their replies,
which come back in order; a command may ask for no reply (Memcached's noreply). The kernel
ends an exchange when the requester sends again, so a reply may arrive in the next
exchange: each connection remembers how many replies it is owed, and they are skipped
there rather than paired with the wrong command. What the capture cut off is counted,
never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from obi.ebpf._libbpf import lib
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
from obi.traces.model import DbSpan

__all__ = ["CLOSED", "CommandConnection", "PipelinedCommands"]

CLOSED = frozenset({lib.OBI_END_CLOSE, lib.OBI_END_EXIT})


class Command(Protocol):
    @property
    def name(self) -> str: ...  # "" when the capture ends inside it

    @property
    def complete(self) -> bool: ...  # False: the bytes end inside this command

    @property
    def expects_reply(self) -> bool: ...

    @property
    def text(self) -> str: ...  # db.query.text ("" unless parsed for it)


class Reply(Protocol):
    @property
    def error(self) -> str | None: ...  # the error's code, None for a reply that is not an error


class CommandConnection:
    """What a protocol remembers of a connection: replies owed to an earlier exchange's last
    commands (subclasses add their own, e.g. Redis's database)."""

    __slots__ = ("caller", "owed")

    def __init__(self) -> None:
        self.owed = 0
        self.caller = Caller()


S = TypeVar("S", bound="CommandConnection")


class PipelinedCommands(Generic[S]):
    """Spans of one protocol's exchanges; facts are (commands, replies), both in order."""

    name = ""
    system = ""  # db.system.name

    def __init__(self, make_state: type[S], ids: IdGenerator | None = None, stats: SpanStats | None = None,
                 query_text: bool = False) -> None:
        self._getrandbits = (ids or IdGenerator()).getrandbits
        self.stats = stats or SpanStats()
        self.query_text = query_text
        self.connections: ConnectionStates[S] = ConnectionStates(make_state, self.stats)

    def namespace(self, command: Command, reply: Reply | None, state: S, midway: bool) -> str:
        """db.namespace of a command (and what its reply changes of the connection)."""
        return ""

    def spans(self, facts: tuple[Sequence[Command], Sequence[Reply]], exchange: Exchange,
              connection: Connection) -> list[DbSpan]:
        commands, replies = facts
        role, request, response, request_len, response_len, *_, end_reason, _, kernel_ids, midway = exchange
        service, start_ns, end_ns, *_ = connection
        stats, getrandbits, system = self.stats, self._getrandbits, self.system
        state = self.connections.get(connection)
        if state.owed:  # the first replies answer an earlier exchange's last commands
            replies = replies[state.owed:]
            state.owed = 0
        request_whole = request_len <= len(request)
        response_whole = response_len <= len(response)
        if not request_whole:
            stats.requests_truncated += 1
        server_role = role == ROLE_SERVER
        kind, server, server_port, client, client_port = endpoints(role, connection)
        first = state.caller.first(kernel_ids) if server_role and kernel_ids else 0
        spans: list[DbSpan] = []
        answered = 0  # replies used
        for command in commands:
            if not command.complete and request_whole:  # its rest opens the next exchange
                stats.split_requests += 1
                continue
            reply = None
            status = error = ""
            if command.expects_reply:
                if answered < len(replies):
                    reply = replies[answered]
                    answered += 1
                    if reply.error is not None:
                        status = error = reply.error
                elif response_whole:
                    if end_reason in NO_RESPONSE_ERRORS:
                        error = NO_RESPONSE_ERRORS[end_reason]
                        stats.unanswered += 1
                    else:  # the exchange ended before the reply came: it opens the next one
                        state.owed += 1
            namespace = self.namespace(command, reply, state, midway)
            trace_id, span_id, parent_id = span_ids(kernel_ids, len(spans), server_role, getrandbits, first)
            spans.append(DbSpan(
                service, kind, start_ns, end_ns, trace_id, span_id, parent_id, True, 0,
                system, command.name, "", namespace, server, server_port, client, client_port,
                status, error, command.text if self.query_text else None,
            ))  # fmt: skip
        if server_role and kernel_ids:
            state.caller.answered = first + len(spans)
        if end_reason in CLOSED:
            self.connections.forget(connection)
        return spans
