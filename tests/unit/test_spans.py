"""HttpSpanBuilder on literal kernel records built from the CFFI declaration."""

from __future__ import annotations

import dataclasses
import socket
import time

import pytest

from obi.ebpf._libbpf import ffi
from obi.traces import spans as spans_module
from obi.traces.model import HttpSpan, ServiceIdentity
from obi.traces.routes import RouteMatcher
from obi.traces.spans import HttpSpanBuilder, format_address, host_name

REQUEST = (b"POST /user/42?debug=1 HTTP/1.1\r\nHost: shop.local:8080\r\nContent-Length: 5\r\n"
           b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\nhello")
RESPONSE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 7\r\n\r\nsorry\r\n"


def record(pid: int, req: bytes, resp: bytes, family: int = socket.AF_INET) -> bytes:
    ev = ffi.new("struct obi_http_event *")
    ev.kind = 1
    ev.state = 2
    ev.family = family
    ev.pid = pid
    ev.local_port = 8080
    ev.peer_port = 40000
    ev.start_ns = 1_000
    ev.end_ns = 2_500
    if family == socket.AF_INET:
        ffi.memmove(ev.local_addr, socket.inet_aton("10.1.2.3"), 4)
        ffi.memmove(ev.peer_addr, socket.inet_aton("10.9.8.7"), 4)
    else:
        ffi.memmove(ev.local_addr, socket.inet_pton(socket.AF_INET6, "::1"), 16)
        ffi.memmove(ev.peer_addr, socket.inet_pton(socket.AF_INET6, "::ffff:192.0.2.1"), 16)
    ev.req_len = len(req)
    ev.resp_len = len(resp)
    ev.req_captured = len(req)
    ev.resp_captured = len(resp)
    ffi.memmove(ev.req_buf, req, len(req))
    ffi.memmove(ev.resp_buf, resp, len(resp))
    return bytes(ffi.buffer(ev))


def builder(known_pid: int = 7) -> HttpSpanBuilder:
    identity = ServiceIdentity(pid=known_pid, exe_path="/srv/shop", service_name="shop")
    return HttpSpanBuilder(lambda pid: identity if pid == known_pid else None,
                           RouteMatcher(["/user/{id}"], unmatched="unset", ignored_patterns=["/health"]))


def test_one_record_becomes_one_exact_span() -> None:
    b = builder()
    before = time.time_ns() - time.monotonic_ns()
    (span,) = b.build(record(7, REQUEST, RESPONSE))
    after = time.time_ns() - time.monotonic_ns()
    assert span.service.service_name == "shop"
    assert span.name == "POST /user/{id}"
    assert (span.method, span.path, span.route, span.status_code) == ("POST", "/user/42", "/user/{id}", 503)
    assert (span.request_body_size, span.response_body_size) == (5, 7)
    assert (span.server_address, span.server_port) == ("shop.local", 8080)
    assert (span.client_address, span.client_port) == ("10.9.8.7", 40000)
    assert span.protocol_version == "1.1" and span.scheme == "http"
    assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert span.parent_span_id.hex() == "b7ad6b7169203331"
    assert span.sampled and span.is_error
    assert len(span.span_id) == 8 and span.span_id != span.parent_span_id
    assert before - 1_000_000 <= span.start_ns - 1_000 <= after + 1_000_000
    assert span.end_ns - span.start_ns == 1_500


def test_failures_are_counted_not_raised() -> None:
    b = builder()
    batch = b"".join([
        record(7, b"GET /ok HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"),
        record(8, b"GET /ok HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"),   # unknown process
        record(7, b"GET /ok HTTP/1.1\r\n\r\n", b"\x00garbage"),                # bad response
        record(7, b"GET /health HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"),  # ignored route
    ])
    spans = b.build(batch)
    assert [s.path for s in spans] == ["/ok"]
    assert spans[0].route is None and spans[0].name == "GET"
    assert spans[0].server_address == "10.1.2.3"  # no Host header: the local address
    assert spans[0].parent_span_id == b"" and len(spans[0].trace_id) == 16
    stats = b.stats
    assert (stats.events, stats.spans, stats.unknown_process, stats.parse_errors, stats.ignored_route) == (
        4, 1, 1, 1, 1)


def test_ipv6_and_mapped_addresses() -> None:
    (span,) = builder().build(record(7, b"GET / HTTP/1.0\r\nHost: [::1]:8080\r\n\r\n",
                                     b"HTTP/1.0 200 OK\r\n\r\n", socket.AF_INET6))
    assert span.server_address == "::1"
    assert span.client_address == "192.0.2.1"
    assert span.protocol_version == "1.0"
    assert format_address(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "2001:db8::5")) == "2001:db8::5"
    assert host_name("example.com") == "example.com"
    assert host_name("example.com:80") == "example.com"
    assert host_name("[2001:db8::1]:443") == "2001:db8::1"


def test_builder_passes_fields_in_httpspan_order() -> None:
    # HttpSpanBuilder.build creates spans positionally (much cheaper than keywords).
    assert [f.name for f in dataclasses.fields(HttpSpan)][:19] == [
        "service", "start_ns", "end_ns", "method", "path", "route", "status_code",
        "request_body_size", "response_body_size", "scheme", "protocol_version",
        "server_address", "server_port", "client_address", "client_port",
        "trace_id", "span_id", "parent_span_id", "sampled",
    ]  # fmt: skip


def test_root_span_ids_are_fresh_and_cleared_caches_stay_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spans_module, "ADDRESS_CACHE_LIMIT", 1)
    monkeypatch.setattr(spans_module, "HOST_CACHE_LIMIT", 1)
    b = builder()
    hosts = ["a.local:80", "b.local", "[::1]:8080", "c.local:1"]
    batch = b"".join(
        record(7, f"GET /{i} HTTP/1.1\r\nHost: {hosts[i % 4]}\r\n\r\n".encode(), b"HTTP/1.1 200 OK\r\n\r\n",
               socket.AF_INET6 if i % 3 else socket.AF_INET)
        for i in range(12)
    )
    spans = b.build(batch) + b.build(batch)
    assert [s.server_address for s in spans] == ["a.local", "b.local", "::1", "c.local"] * 6
    clients = ["10.9.8.7" if i % 3 == 0 else "192.0.2.1" for i in range(12)]
    assert [s.client_address for s in spans] == clients * 2
    assert all(len(s.trace_id) == 16 and len(s.span_id) == 8 and s.parent_span_id == b"" for s in spans)
    assert len({s.trace_id for s in spans}) == len({s.span_id for s in spans}) == 24
