"""Ring buffer records -> spans: walk a drained batch, hand exchanges to their protocol.

A batch is a run of length-prefixed records (obi_shim.h). Process records go
to the process registry at once, so the exchanges after them in the same
batch already see the process they announce. Exchange records become an
Exchange (the bytes each side sent, the sizes, the kernel's framing) and a
Connection (who, when, where), which the protocol registry's module for the
bytes turns into spans. Nothing here knows a protocol.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from obi.ebpf._libbpf import ffi, lib
from obi.ebpf.records import (
    EXCHANGE_SIZE,
    H2_SIZE,
    PROCESS_LAYOUT,
    PROCESS_SIZE,
    RECORD_EXCHANGE,
    RECORD_PROCESS,
)
from obi.ebpf.ring import struct_layout
from obi.protocols import ProtocolRegistry
from obi.protocols.base import Connection, Exchange
from obi.protocols.errors import ParseError
from obi.protocols.gohttp import GO_HTTP_SIZE, GoHttpSpans
from obi.protocols.http2 import Http2Records
from obi.traces.clock import EpochClock
from obi.traces.model import ServiceIdentity, Span

_AF_INET: Final = 2
_V4_MAPPED: Final = b"\x00" * 10 + b"\xff\xff"
ADDRESS_CACHE_LIMIT = 4096
UNKNOWN_PROTOCOL_PIDS_LIMIT = 4096
_RECORD_LENGTH: Final = struct.Struct("=I").unpack_from
_FLAG_HTTP: Final[int] = lib.OBI_FLAG_HTTP
_FLAG_LENGTH_KNOWN: Final[int] = lib.OBI_FLAG_LENGTH_KNOWN
_FLAG_STATUS_ONLY: Final[int] = lib.OBI_FLAG_STATUS_ONLY
_FLAG_TLS: Final[int] = lib.OBI_FLAG_TLS
_FLAG_IDS: Final[int] = lib.OBI_FLAG_IDS
_FLAG_ROLE_GUESSED: Final[int] = lib.OBI_FLAG_ROLE_GUESSED
_IDS_SIZE: Final[int] = ffi.sizeof("struct obi_ids")
_new_tuple: Final = tuple.__new__
RECORD_GO_HTTP: Final[int] = lib.OBI_RECORD_GO_HTTP
RECORD_H2: Final[int] = lib.OBI_RECORD_H2
_H2_PID_OFFSET: Final[int] = ffi.offsetof("struct obi_h2", "pid")
_PID: Final = struct.Struct("=I").unpack_from
_GO_PID_OFFSET: Final[int] = ffi.offsetof("struct obi_go_http", "pid")
# What the span path reads of an exchange header; the other fields are skipped unread.
_HEADER, _FIELDS = struct_layout("struct obi_exchange", frozenset(
    {"kind", "tid", "fd", "pad", "pad1", "pad2", "resp_start_ns"}))
# An exchange record's length (obi_shim.h) and header in one unpack.
_LENGTH_AND_HEADER: Final = struct.Struct("=I" + _HEADER.format.removeprefix("="))


def format_address(family: int, raw: bytes) -> str:
    """Printable IP address; IPv4-mapped IPv6 addresses print as IPv4."""
    if family == _AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if raw[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, raw[12:16])
    return socket.inet_ntop(socket.AF_INET6, raw)


@dataclass
class RecordStats:
    """What did not become spans, and why (all counted, none silent)."""

    exchanges: int = 0
    spans: int = 0
    parse_errors: int = 0
    unknown_process: int = 0
    unknown_protocol: int = 0
    # unknown-protocol exchanges per process (bounded: the busiest stay)
    unknown_protocol_by_pid: dict[int, int] = field(default_factory=dict)
    process_events: int = 0
    go_requests: int = 0  # Go net/http records (spans from the Go uprobes)
    go_duplicates: int = 0  # HTTP exchanges of processes whose HTTP the Go uprobes report, left out
    h2_records: int = 0  # HTTP/2 frame records


OnProcessEvent = Callable[[int, int, int, str], None]  # event, pid, parent, path


class RecordProcessor:
    """Turns drained batches into spans; process events go to `on_process` in order."""

    def __init__(self, protocols: ProtocolRegistry, identity_for: Callable[[int], ServiceIdentity | None],
                 on_process: OnProcessEvent, go_http: GoHttpSpans | None = None,
                 go_http_pids: set[int] | frozenset[int] = frozenset(),
                 http2: Http2Records | None = None) -> None:
        """`go_http_pids`: processes whose HTTP the Go uprobes report (a live set): the HTTP/1
        exchanges (and HTTP/2 frames) the syscall or TLS capture also sees for them are left out.
        `http2`: the spans of connections the kernel follows as HTTP/2."""
        self._protocols = protocols
        self._go_http = go_http
        self.http2 = http2
        self._go_http_pids = go_http_pids
        self._identity_for = identity_for
        self._on_process = on_process
        self._clock = EpochClock()
        # printable addresses by their 16 raw bytes, one table per family
        self._addresses: dict[int, dict[bytes, str]] = {socket.AF_INET: {}, socket.AF_INET6: {}}
        self.stats = RecordStats()
        assert _FIELDS == ("role", "end_reason", "flags", "pid", "family", "local_port", "peer_port",
                           "req_captured", "resp_captured", "start_ns", "end_ns", "req_len", "resp_len",
                           "resp_content_length", "resp_header_len", "local_addr", "peer_addr"), _FIELDS

    def _address(self, family: int, raw: bytes) -> str:
        table = self._addresses.setdefault(family, {})
        text = table.get(raw)
        if text is None:
            if len(table) >= ADDRESS_CACHE_LIMIT:
                table.clear()
            text = table[raw] = format_address(family, raw)
        return text

    def process(self, batch: bytes) -> list[Span]:
        """Spans for every exchange record in the batch (in order); failures are counted."""
        unpack_exchange, unpack_process = _LENGTH_AND_HEADER.unpack_from, PROCESS_LAYOUT.unpack_from
        identify, identity_for = self._protocols.identify, self._identity_for
        address = self._address
        by_family = self._addresses
        stats = self.stats
        # module globals imported from Python modules are dict lookups in compiled code: locals here
        record_exchange, exchange_size, exchange_type, connection_type = (
            RECORD_EXCHANGE, EXCHANGE_SIZE, Exchange, Connection)
        epoch_offset = self._clock.offset()
        spans: list[Span] = []
        off, end = 0, len(batch)
        last_pid: int | None = None
        identity: ServiceIdentity | None = None
        go_http_pids = self._go_http_pids
        go_pid = False  # last_pid's HTTP comes from the Go uprobes
        exchanges = unknown_process = parse_errors = 0
        # the unpacked header's types: compiled, the arithmetic and flag tests on them are native
        size: int
        role: int
        end_reason: int
        flags: int
        pid: int
        family: int
        local_port: int
        peer_port: int
        req_captured: int
        resp_captured: int
        start_ns: int
        end_ns: int
        req_len: int
        resp_len: int
        content_length: int
        header_len: int
        local_raw: bytes
        peer_raw: bytes
        try:
            while off < end:
                base = off + 4
                kind = batch[base]
                if kind == record_exchange:
                    exchanges += 1
                    (size, role, end_reason, flags, pid, family, local_port, peer_port, req_captured,
                     resp_captured, start_ns, end_ns, req_len, resp_len, content_length, header_len,
                     local_raw, peer_raw) = unpack_exchange(batch, off)
                    off = base + size
                else:
                    (size,) = _RECORD_LENGTH(batch, off)
                    off = base + size
                if kind == RECORD_PROCESS:
                    stats.process_events += 1
                    _, event, path_len, pid, parent, _, _ = unpack_process(batch, base)
                    path_start = base + PROCESS_SIZE
                    path = batch[path_start: path_start + path_len].decode("utf-8", "replace")
                    self._on_process(event, pid, parent, path)
                    last_pid = None  # the process's identity may have changed
                    continue
                if kind == RECORD_GO_HTTP:
                    spans += self._go_record(batch, base, epoch_offset)
                    continue
                if kind == RECORD_H2:
                    spans += self._h2_record(batch, base, epoch_offset)
                    continue
                if kind != record_exchange:
                    continue
                if pid != last_pid:
                    last_pid, identity = pid, identity_for(pid)
                    go_pid = pid in go_http_pids
                if identity is None:
                    unknown_process += 1
                    continue
                if go_pid and flags & _FLAG_HTTP:
                    stats.go_duplicates += 1
                    continue
                req_start = base + exchange_size
                resp_start = req_start + req_captured
                ids_start = resp_start + resp_captured
                exchange = _new_tuple(exchange_type, (
                    role,
                    batch[req_start:resp_start],
                    batch[resp_start: resp_start + resp_captured],
                    req_len,
                    resp_len,
                    header_len or -1,
                    content_length if flags & _FLAG_LENGTH_KNOWN else -1,
                    bool(flags & _FLAG_HTTP),
                    bool(flags & _FLAG_STATUS_ONLY),
                    end_reason,
                    bool(flags & _FLAG_TLS),
                    batch[ids_start: ids_start + _IDS_SIZE] if flags & _FLAG_IDS else b"",
                    bool(flags & _FLAG_ROLE_GUESSED),
                ))  # fmt: skip
                module = identify(exchange)
                if module is None:
                    self._unknown_protocol(pid)
                    continue
                try:
                    facts = module.parse(exchange)
                except ParseError:
                    parse_errors += 1
                    continue
                table = by_family.get(family)
                local = (table and table.get(local_raw)) or address(family, local_raw)
                peer = (table and table.get(peer_raw)) or address(family, peer_raw)
                connection = _new_tuple(connection_type, (
                    identity, start_ns + epoch_offset, end_ns + epoch_offset,
                    local, local_port, peer, peer_port,
                ))  # fmt: skip
                spans += module.spans(facts, exchange, connection)
        finally:
            stats.exchanges += exchanges
            stats.unknown_process += unknown_process
            stats.parse_errors += parse_errors
            stats.spans += len(spans)
        return spans

    def _go_record(self, batch: bytes, base: int, epoch_offset: int) -> list[Span]:
        stats = self.stats
        stats.go_requests += 1
        if self._go_http is None or base + GO_HTTP_SIZE > len(batch):
            return []
        (pid,) = _PID(batch, base + _GO_PID_OFFSET)
        identity = self._identity_for(pid)
        if identity is None:
            stats.unknown_process += 1
            return []
        span = self._go_http.span(batch, base, identity, epoch_offset, self._address)
        return [span] if span is not None else []

    def _h2_record(self, batch: bytes, base: int, epoch_offset: int) -> list[Span]:
        stats = self.stats
        stats.h2_records += 1
        if self.http2 is None or base + H2_SIZE > len(batch):
            return []
        (pid,) = _PID(batch, base + _H2_PID_OFFSET)
        if pid in self._go_http_pids:  # its HTTP/2 comes from the Go uprobes
            stats.go_duplicates += 1
            return []
        identity = self._identity_for(pid) if pid else None
        if identity is None and pid:
            stats.unknown_process += 1
        return self.http2.record(batch, base, epoch_offset, identity, self._address)

    def _unknown_protocol(self, pid: int) -> None:
        stats = self.stats
        stats.unknown_protocol += 1
        by_pid = stats.unknown_protocol_by_pid
        if pid not in by_pid and len(by_pid) >= UNKNOWN_PROTOCOL_PIDS_LIMIT:
            del by_pid[min(by_pid, key=by_pid.__getitem__)]
        by_pid[pid] = by_pid.get(pid, 0) + 1
