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
        self._rand = random.Random()
        self.stats = SpanBuilderStats()

    def _address(self, family: int, raw: bytes) -> str:
        key = (family, raw)
        text = self._addresses.get(key)
        if text is None:
            if len(self._addresses) > 4096:
                self._addresses.clear()
            text = self._addresses[key] = format_address(family, raw)
        return text

    def build(self, batch: bytes) -> list[HttpSpan]:
        """Spans for every record in the batch (in order); failures are counted."""
        f = self._fields
        i_family, i_pid, i_lport, i_pport = f["family"], f["pid"], f["local_port"], f["peer_port"]
        i_start, i_end, i_laddr, i_paddr = f["start_ns"], f["end_ns"], f["local_addr"], f["peer_addr"]
        i_reqlen, i_resplen, i_reqcap, i_respcap = f["req_len"], f["resp_len"], f["req_captured"], f[
            "resp_captured"]
        size, req_off, resp_off = self.record_size, self._req_off, self._resp_off
        epoch_offset = time.time_ns() - time.monotonic_ns()
        routes, rand = self._routes, self._rand
        spans: list[HttpSpan] = []
        stats = self.stats
        base = 0
        for rec in self._layout.iter_unpack(batch):
            stats.events += 1
            record_base = base
            base += size
            identity = self._identity_for(rec[i_pid])
            if identity is None:
                stats.unknown_process += 1
                continue
            req_bytes = batch[record_base + req_off: record_base + req_off + rec[i_reqcap]]
            resp_bytes = batch[record_base + resp_off: record_base + resp_off + rec[i_respcap]]
            try:
                req = parse_request(req_bytes, rec[i_reqlen])
                resp = parse_response(resp_bytes, rec[i_resplen])
            except ParseError:
                stats.parse_errors += 1
                continue
            if routes.is_ignored(req.path):
                stats.ignored_route += 1
                continue
            parent = parse_traceparent(req.traceparent) if req.traceparent else None
            if parent is not None:
                trace_id, parent_id, sampled = parent.trace_id, parent.parent_span_id, parent.sampled
            else:
                trace_id, parent_id, sampled = rand.getrandbits(128).to_bytes(16, "big"), b"", True
            family = rec[i_family]
            local_address = self._address(family, rec[i_laddr])
            server_address = host_name(req.host) if req.host else local_address
            spans.append(HttpSpan(
                service=identity,
                start_ns=rec[i_start] + epoch_offset,
                end_ns=rec[i_end] + epoch_offset,
                method=req.method,
                path=req.path,
                route=routes.route_for(req.path),
                status_code=resp.status_code,
                request_body_size=req.body_size,
                response_body_size=resp.body_size,
                scheme="http",
                protocol_version=req.version,
                server_address=server_address,
                server_port=rec[i_lport],
                client_address=self._address(family, rec[i_paddr]),
                client_port=rec[i_pport],
                trace_id=trace_id,
                span_id=rand.getrandbits(64).to_bytes(8, "big"),
                parent_span_id=parent_id,
                sampled=sampled,
            ))
        stats.spans += len(spans)
        return spans
