"""Kernel HTTP events -> HttpSpan: decode a batch, parse, name, decorate."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from obi.ebpf.ring import struct_layout
from obi.protocols.errors import ParseError
from obi.protocols.http import parse_request, parse_response, parse_traceparent
from obi.traces.model import HttpSpan, ServiceIdentity
from obi.traces.routes import RouteMatcher

_AF_INET = 2
_AF_INET6 = 10
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
ADDRESS_CACHE_LIMIT = 4096
HOST_CACHE_LIMIT = 4096


def format_address(family: int, raw: bytes) -> str:
    """Printable IP address; IPv4-mapped IPv6 addresses print as IPv4."""
    if family == _AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if raw[:12] == _V4_MAPPED:
        return socket.inet_ntop(socket.AF_INET, raw[12:16])
    return socket.inet_ntop(socket.AF_INET6, raw)


def host_name(host: str) -> str:
    """The host part of a Host header value (`h`, `h:80`, `[::1]:80`)."""
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    return host.split(":", 1)[0] if host.count(":") == 1 else host


@dataclass
class SpanBuilderStats:
    """What the builder could not turn into spans (all counted, none silent)."""

    events: int = 0
    spans: int = 0
    parse_errors: int = 0
    unknown_process: int = 0
    ignored_route: int = 0


class HttpSpanBuilder:
    """Turns batches of `struct obi_http_event` records into HttpSpans.

    The record layout comes from the CFFI declaration of bpf/http.h; the
    request and response buffers are sliced to the bytes actually captured.
    """

    def __init__(self, identity_for: Callable[[int], ServiceIdentity | None], routes: RouteMatcher) -> None:
        from obi.ebpf._libbpf import ffi  # the compiled module; imported when a builder is made

        self._identity_for = identity_for
        self._routes = routes
        self._layout, names = struct_layout("struct obi_http_event", frozenset({"req_buf", "resp_buf"}))
        self._fields = {name: i for i, name in enumerate(names)}
        self.record_size = self._layout.size
        self._req_off = ffi.offsetof("struct obi_http_event", "req_buf")
        self._resp_off = ffi.offsetof("struct obi_http_event", "resp_buf")
        self._addresses: dict[tuple[int, bytes], str] = {}
        self._host_names: dict[str, str] = {}
        self._rand = random.Random()
        self.stats = SpanBuilderStats()

    def _address(self, family: int, raw: bytes) -> str:
        key = (family, raw)
        text = self._addresses.get(key)
        if text is None:
            if len(self._addresses) > ADDRESS_CACHE_LIMIT:
                self._addresses.clear()
            text = self._addresses[key] = format_address(family, raw)
        return text

    def _host_name(self, host: str) -> str:
        name = self._host_names.get(host)
        if name is None:
            if len(self._host_names) > HOST_CACHE_LIMIT:
                self._host_names.clear()
            name = self._host_names[host] = host_name(host)
        return name

    def build(self, batch: bytes) -> list[HttpSpan]:
        """Spans for every record in the batch (in order); failures are counted."""
        f = self._fields
        i_family, i_pid, i_lport, i_pport = f["family"], f["pid"], f["local_port"], f["peer_port"]
        i_start, i_end, i_laddr, i_paddr = f["start_ns"], f["end_ns"], f["local_addr"], f["peer_addr"]
        i_reqlen, i_resplen, i_reqcap, i_respcap = f["req_len"], f["resp_len"], f["req_captured"], f[
            "resp_captured"]
        size, req_off, resp_off = self.record_size, self._req_off, self._resp_off
        epoch_offset = time.time_ns() - time.monotonic_ns()
        routes, getrandbits, identity_for = self._routes, self._rand.getrandbits, self._identity_for
        has_ignored = routes.has_ignored
        addresses, host_names = self._addresses, self._host_names
        spans: list[HttpSpan] = []
        append = spans.append
        events = unknown_process = parse_errors = ignored_route = 0
        # Records of one batch mostly come from a few processes: remember the last one.
        last_pid: int | None = None
        identity: ServiceIdentity | None = None
        record_base = -size
        try:
            for rec in self._layout.iter_unpack(batch):
                events += 1
                record_base += size
                pid = rec[i_pid]
                if pid != last_pid:
                    last_pid, identity = pid, identity_for(pid)
                if identity is None:
                    unknown_process += 1
                    continue
                req_start = record_base + req_off
                resp_start = record_base + resp_off
                try:
                    req = parse_request(batch[req_start: req_start + rec[i_reqcap]], rec[i_reqlen])
                    resp = parse_response(batch[resp_start: resp_start + rec[i_respcap]], rec[i_resplen])
                except ParseError:
                    parse_errors += 1
                    continue
                path = req.path
                if has_ignored and routes.is_ignored(path):
                    ignored_route += 1
                    continue
                if req.traceparent and (parent := parse_traceparent(req.traceparent)) is not None:
                    trace_id, parent_id, sampled = parent.trace_id, parent.parent_span_id, parent.sampled
                    span_id = getrandbits(64).to_bytes(8, "big")
                else:
                    ids = getrandbits(192).to_bytes(24, "big")
                    trace_id, span_id, parent_id, sampled = ids[:16], ids[16:], b"", True
                family = rec[i_family]
                local_address = addresses.get((family, rec[i_laddr])) or self._address(family, rec[i_laddr])
                client_address = addresses.get((family, rec[i_paddr])) or self._address(family, rec[i_paddr])
                host = req.host
                server_address = (host_names.get(host) or self._host_name(host)) if host else local_address
                # Positional: a third of the cost of 19 keywords; the order is HttpSpan's fields.
                append(HttpSpan(
                    identity,  # service
                    rec[i_start] + epoch_offset,  # start_ns
                    rec[i_end] + epoch_offset,  # end_ns
                    req.method,  # method
                    path,  # path
                    routes.route_for(path),  # route
                    resp.status_code,  # status_code
                    req.body_size,  # request_body_size
                    resp.body_size,  # response_body_size
                    "http",  # scheme
                    req.version,  # protocol_version
                    server_address,  # server_address
                    rec[i_lport],  # server_port
                    client_address,  # client_address
                    rec[i_pport],  # client_port
                    trace_id,  # trace_id
                    span_id,  # span_id
                    parent_id,  # parent_span_id
                    sampled,  # sampled
                ))
        finally:
            stats = self.stats
            stats.events += events
            stats.unknown_process += unknown_process
            stats.parse_errors += parse_errors
            stats.ignored_route += ignored_route
            stats.spans += len(spans)
        return spans
