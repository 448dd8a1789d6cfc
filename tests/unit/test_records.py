"""RecordProcessor and the HTTP module on literal kernel records built from the CFFI declarations."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import pytest

from obi.ebpf._libbpf import ffi, lib
from obi.protocols import ProtocolRegistry
from obi.protocols.base import IdGenerator, SpanStats
from obi.protocols.gohttp import GoHttpSpans
from obi.protocols.http import Http1
from obi.traces import records as records_module
from obi.traces.model import SPAN_KIND_CLIENT, SPAN_KIND_SERVER, HttpSpan, ServiceIdentity
from obi.traces.records import RecordProcessor, format_address
from obi.traces.routes import RouteMatcher

REQUEST = (b"POST /user/42?debug=1 HTTP/1.1\r\nHost: shop.local:8080\r\nContent-Length: 5\r\n"
           b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\nhello")
RESPONSE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 7\r\n\r\nsorry\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def framed(record: bytes) -> bytes:
    return struct.pack("=I", len(record)) + record


def exchange(pid: int, req: bytes, resp: bytes, *, role: int = lib.OBI_ROLE_SERVER,
             family: int = socket.AF_INET, req_len: int | None = None, resp_len: int | None = None,
             end_reason: int = lib.OBI_END_FRAMED, flags: int = lib.OBI_FLAG_HTTP,
             header_len: int = 0, content_length: int = 0, ids: bytes = b"") -> bytes:
    ev = ffi.new("struct obi_exchange *")
    ev.kind = lib.OBI_RECORD_EXCHANGE
    ev.role = role
    ev.end_reason = end_reason
    ev.flags = flags
    ev.family = family
    ev.pid = pid
    ev.local_port = 8080 if role == lib.OBI_ROLE_SERVER else 40000
    ev.peer_port = 40000 if role == lib.OBI_ROLE_SERVER else 8080
    ev.start_ns = 1_000
    ev.resp_start_ns = 2_000 if resp else 0
    ev.end_ns = 2_500
    if family == socket.AF_INET:
        ffi.memmove(ev.local_addr, socket.inet_aton("10.1.2.3"), 4)
        ffi.memmove(ev.peer_addr, socket.inet_aton("10.9.8.7"), 4)
    else:
        ffi.memmove(ev.local_addr, socket.inet_pton(socket.AF_INET6, "::1"), 16)
        ffi.memmove(ev.peer_addr, socket.inet_pton(socket.AF_INET6, "::ffff:192.0.2.1"), 16)
    ev.req_len = len(req) if req_len is None else req_len
    ev.resp_len = len(resp) if resp_len is None else resp_len
    ev.req_captured = len(req)
    ev.resp_captured = len(resp)
    ev.resp_header_len = header_len
    ev.resp_content_length = content_length
    if ids:  # the kernel's span ids, after the captured bytes
        ev.flags |= lib.OBI_FLAG_IDS | (lib.OBI_FLAG_PARENT if any(ids[24:]) else 0)
    return framed(bytes(ffi.buffer(ev)) + req + resp + ids)


def process_event(event: int, pid: int, parent: int = 0, path: bytes = b"") -> bytes:
    ev = ffi.new("struct obi_process *")
    ev.kind = lib.OBI_RECORD_PROCESS
    ev.event = event
    ev.pid = pid
    ev.parent = parent
    ev.path_len = len(path)
    return framed(bytes(ffi.buffer(ev)) + path)


class Processes:
    """What the registry would be: identities, and the process events it is told of."""

    def __init__(self, known: int = 7) -> None:
        self.identities = {known: ServiceIdentity(pid=known, exe_path="/srv/shop", service_name="shop")}
        self.events: list[tuple[int, int, int, str]] = []

    def on_process(self, event: int, pid: int, parent: int, path: str) -> None:
        self.events.append((event, pid, parent, path))
        if event == lib.OBI_PROCESS_FORK and parent in self.identities:
            self.identities[pid] = ServiceIdentity(pid=pid, exe_path="/srv/shop", service_name="shop")


def processor(processes: Processes | None = None, **http: object) -> tuple[RecordProcessor, SpanStats]:
    processes = processes or Processes()
    stats = SpanStats()
    module = Http1(RouteMatcher(["/user/{id}"], unmatched="unset", ignored_patterns=["/health"]),
                   IdGenerator(), stats, **http)  # type: ignore[arg-type]
    return RecordProcessor(ProtocolRegistry([module]), processes.identities.get,
                           processes.on_process), stats


def test_a_server_exchange_becomes_one_exact_span() -> None:
    records, _ = processor()
    before = time.time_ns() - time.monotonic_ns()
    (span,) = records.process(exchange(7, REQUEST, RESPONSE))
    after = time.time_ns() - time.monotonic_ns()
    assert isinstance(span, HttpSpan) and span.kind == SPAN_KIND_SERVER
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


def test_a_client_exchange_becomes_one_exact_client_span() -> None:
    records, _ = processor()
    request = b"GET /user/7?x=1 HTTP/1.1\r\nHost: users.svc:8080\r\nUser-Agent: t\r\n\r\n"
    response = b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found"
    (span,) = records.process(exchange(7, request, response, role=lib.OBI_ROLE_CLIENT))
    assert isinstance(span, HttpSpan) and span.kind == SPAN_KIND_CLIENT
    assert span.name == "GET /user/{id}"  # a client span has a route only where a pattern matches
    assert span.attributes() == {
        "http.request.method": "GET",
        "http.response.status_code": 404,
        "http.route": "/user/{id}",
        "url.scheme": "http",
        "server.address": "users.svc",
        "server.port": 8080,
        "url.full": "http://users.svc:8080/user/7",
        "http.request.body.size": 0,
        "http.response.body.size": 9,
    }
    assert span.is_error  # 4xx: OBI's client rule
    assert span.parent_span_id == b""


def test_tls_plaintext_exchanges_are_https_spans() -> None:
    records, _ = processor()
    request = b"GET /user/7 HTTP/1.1\r\nHost: users.svc:8443\r\n\r\n"
    (client,) = records.process(exchange(7, request, OK, role=lib.OBI_ROLE_CLIENT,
                                         flags=lib.OBI_FLAG_HTTP | lib.OBI_FLAG_TLS))
    assert isinstance(client, HttpSpan)
    assert client.attributes()["url.scheme"] == "https"
    assert client.attributes()["url.full"] == "https://users.svc:8443/user/7"
    (server,) = records.process(exchange(7, REQUEST, RESPONSE, flags=lib.OBI_FLAG_HTTP | lib.OBI_FLAG_TLS))
    assert isinstance(server, HttpSpan) and server.scheme == "https"
    (plain,) = records.process(exchange(7, REQUEST, RESPONSE))
    assert isinstance(plain, HttpSpan) and plain.scheme == "http"


def test_a_client_request_carrying_traceparent_is_that_span() -> None:
    records, _ = processor()
    request = (b"GET /other HTTP/1.1\r\nHost: b\r\n"
               b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00\r\n\r\n")
    (span,) = records.process(exchange(7, request, OK, role=lib.OBI_ROLE_CLIENT))
    assert span.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"
    assert span.span_id.hex() == "b7ad6b7169203331"
    assert span.parent_span_id == b"" and not span.sampled
    assert isinstance(span, HttpSpan) and span.route is None and span.name == "GET"
    assert span.url_full == "http://b/other"


TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
CALLER_SPAN = bytes.fromhex("b7ad6b7169203331")


def test_a_proxy_forwarding_the_traceparent_it_was_served_is_a_call_of_that_request() -> None:
    """nginx forwards the traceparent of the request it serves: the kernel made the call a
    child of that request (and wrote its own span over the forwarded parent id on the wire),
    so its ids win over the captured header, which is the caller's."""
    records, _ = processor()
    request = (b"GET /up HTTP/1.1\r\nHost: b\r\n"
               b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n")
    kernel = TRACE + bytes.fromhex("1111111111111111") + bytes.fromhex("2222222222222222")
    (span,) = records.process(exchange(7, request, OK, role=lib.OBI_ROLE_CLIENT, ids=kernel))
    assert (span.trace_id, span.span_id, span.parent_span_id) == (TRACE, kernel[16:24], kernel[24:])
    assert span.sampled


def test_a_client_span_without_a_parent_takes_the_kernels_ids_unless_the_application_wrote_its_own() -> None:
    records, _ = processor()
    kernel = bytes(range(16)) + bytes(range(16, 24)) + bytes(8)
    (span,) = records.process(exchange(7, b"GET /a HTTP/1.1\r\nHost: b\r\n\r\n", OK,
                                       role=lib.OBI_ROLE_CLIENT, ids=kernel))
    assert (span.trace_id, span.span_id, span.parent_span_id) == (kernel[:16], kernel[16:24], b"")
    own = (b"GET /b HTTP/1.1\r\nHost: b\r\n"
           b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n")
    (span,) = records.process(exchange(7, own, OK, role=lib.OBI_ROLE_CLIENT, ids=kernel))
    assert (span.trace_id, span.span_id, span.parent_span_id) == (TRACE, CALLER_SPAN, b"")


def test_a_server_span_linked_to_its_caller_by_the_kernel() -> None:
    records, _ = processor()
    kernel = TRACE + bytes.fromhex("3333333333333333") + CALLER_SPAN
    (span,) = records.process(exchange(7, REQUEST, RESPONSE, ids=kernel))
    assert (span.trace_id, span.span_id, span.parent_span_id) == (TRACE, kernel[16:24], CALLER_SPAN)


def test_pipelined_requests_give_one_span_each() -> None:
    records, _ = processor()
    requests = b"".join(b"GET /p/%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(3))
    responses = b"".join(b"HTTP/1.1 %d OK\r\nContent-Length: 2\r\n\r\nok" % (200 + i) for i in range(3))
    spans = records.process(exchange(7, requests, responses))
    assert [(s.path, s.status_code) for s in spans if isinstance(s, HttpSpan)] == [
        ("/p/0", 200), ("/p/1", 201), ("/p/2", 202)]


def test_interim_responses_are_skipped() -> None:
    records, _ = processor()
    request = b"POST /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc"
    responses = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    (span,) = records.process(exchange(7, request, responses))
    assert isinstance(span, HttpSpan) and span.status_code == 201


def test_the_kernel_framing_gives_body_sizes_beyond_the_capture() -> None:
    records, _ = processor()
    head = b"HTTP/1.1 200 OK\r\nSet-Cookie: " + b"x" * 600
    (span,) = records.process(exchange(7, b"GET / HTTP/1.1\r\n\r\n", head, resp_len=5000,
                                       flags=lib.OBI_FLAG_HTTP | lib.OBI_FLAG_LENGTH_KNOWN,
                                       header_len=1200, content_length=3800))
    assert isinstance(span, HttpSpan) and span.response_body_size == 3800
    (chunked,) = records.process(exchange(7, b"GET / HTTP/1.1\r\n\r\n", head, resp_len=5000, header_len=1200))
    assert isinstance(chunked, HttpSpan) and chunked.response_body_size == 3800


def test_request_headers_longer_than_the_capture_are_counted() -> None:
    records, stats = processor()
    request = b"GET /big HTTP/1.1\r\nCookie: " + b"c" * 300
    (span,) = records.process(exchange(7, request, OK, req_len=9000))
    assert isinstance(span, HttpSpan) and span.path == "/big"
    assert stats.headers_truncated == 1


def test_unanswered_requests_are_spans_with_an_error_type() -> None:
    records, stats = processor(request_timeout_ns=2_000_000_000)
    closed, exited, timed_out = records.process(
        exchange(7, b"GET /a HTTP/1.1\r\n\r\n", b"", end_reason=lib.OBI_END_CLOSE)
        + exchange(7, b"GET /b HTTP/1.1\r\n\r\n", b"", end_reason=lib.OBI_END_EXIT)
        + exchange(7, b"GET /c HTTP/1.1\r\n\r\n", b"", end_reason=lib.OBI_END_TIMEOUT))
    assert isinstance(closed, HttpSpan) and isinstance(exited, HttpSpan) and isinstance(timed_out, HttpSpan)
    assert (closed.status_code, closed.error_type, closed.is_error) == (0, "connection_closed", True)
    assert (exited.status_code, exited.error_type) == (0, "process_exited")
    assert (timed_out.status_code, timed_out.error_type) == (408, "")  # OBI's timeout status
    assert timed_out.end_ns - timed_out.start_ns == 2_000_000_000
    assert stats.unanswered == 3


def test_failures_are_counted_not_raised() -> None:
    records, stats = processor()
    batch = b"".join([
        exchange(7, b"GET /ok HTTP/1.1\r\n\r\n", OK),
        exchange(8, b"GET /ok HTTP/1.1\r\n\r\n", OK),  # unknown process
        exchange(7, b"GET /ok HTTP/1.1\r\n\r\n", b"\x00garbage"),  # bad response
        exchange(7, b"GET /health HTTP/1.1\r\n\r\n", OK),  # ignored route
        exchange(7, b"\x00\x01binary", b"\x02reply", flags=0),  # a protocol nobody knows
    ])
    spans = records.process(batch)
    assert [s.path for s in spans if isinstance(s, HttpSpan)] == ["/ok"]
    (span,) = spans
    assert isinstance(span, HttpSpan) and span.route is None and span.name == "GET"
    assert span.server_address == "10.1.2.3"  # no Host header: the local address
    assert span.parent_span_id == b"" and len(span.trace_id) == 16
    counted = records.stats
    assert (counted.exchanges, counted.spans, counted.unknown_process, counted.parse_errors,
            counted.unknown_protocol, counted.unknown_protocol_by_pid) == (5, 1, 1, 1, 1, {7: 1})
    assert stats.ignored_route == 1


def test_a_fork_record_announces_the_child_before_its_exchanges() -> None:
    processes = Processes()
    records, _ = processor(processes)
    batch = (process_event(lib.OBI_PROCESS_FORK, 9, parent=7)
             + exchange(9, b"GET /child HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\n")
             + process_event(lib.OBI_PROCESS_EXEC, 9, path=b"/usr/bin/curl"))
    (span,) = records.process(batch)
    assert span.service.pid == 9
    assert processes.events == [(lib.OBI_PROCESS_FORK, 9, 7, ""),
                                (lib.OBI_PROCESS_EXEC, 9, 0, "/usr/bin/curl")]


def test_ipv6_and_mapped_addresses() -> None:
    records, _ = processor()
    (span,) = records.process(exchange(7, b"GET / HTTP/1.0\r\nHost: [::1]:8080\r\n\r\n",
                                       b"HTTP/1.0 200 OK\r\n\r\n", family=socket.AF_INET6))
    assert isinstance(span, HttpSpan)
    assert span.server_address == "::1"
    assert span.client_address == "192.0.2.1"
    assert span.protocol_version == "1.0"
    assert format_address(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "2001:db8::5")) == "2001:db8::5"


def test_root_span_ids_are_fresh_and_cleared_caches_stay_correct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(records_module, "ADDRESS_CACHE_LIMIT", 1)
    records, _ = processor()
    hosts = ["a.local:80", "b.local", "[::1]:8080", "c.local:1"]
    batch = b"".join(
        exchange(7, f"GET /{i} HTTP/1.1\r\nHost: {hosts[i % 4]}\r\n\r\n".encode(), OK,
                 family=socket.AF_INET6 if i % 3 else socket.AF_INET)
        for i in range(12)
    )
    spans = [s for s in records.process(batch) + records.process(batch) if isinstance(s, HttpSpan)]
    assert [s.server_address for s in spans] == ["a.local", "b.local", "::1", "c.local"] * 6
    clients = ["10.9.8.7" if i % 3 == 0 else "192.0.2.1" for i in range(12)]
    assert [s.client_address for s in spans] == clients * 2
    assert all(len(s.trace_id) == 16 and len(s.span_id) == 8 and s.parent_span_id == b"" for s in spans)
    assert len({s.trace_id for s in spans}) == len({s.span_id for s in spans}) == 24


def go_record(role: int, *, method: bytes = b"GET", path: bytes = b"/posts/7", host: bytes = b"",
              scheme: bytes = b"", status: int = 200, flags: int = 0, proto_major: int = 1,
              req_len: int = 0, resp_len: int = 5, pid: int = 7) -> tuple[bytes, Any]:
    ev = ffi.new("struct obi_go_http *")
    ev.kind = lib.OBI_RECORD_GO_HTTP
    ev.role = role
    ev.flags = flags
    ev.proto_major = proto_major
    ev.pid = pid
    ev.status = status
    ev.family = socket.AF_INET
    ev.local_port = 8443
    ev.peer_port = 51000
    ffi.memmove(ev.local_addr, socket.inet_aton("10.1.2.3"), 4)
    ffi.memmove(ev.peer_addr, socket.inet_aton("10.9.8.7"), 4)
    for name, value in (("method", method), ("path", path), ("host", host), ("scheme", scheme)):
        ffi.memmove(getattr(ev, name), value, len(value))
        setattr(ev, f"{name}_len", len(value))
    ev.start_ns = 1_000
    ev.end_ns = 3_000
    ev.req_len = req_len
    ev.resp_len = resp_len
    ffi.memmove(ev.trace_id, bytes(range(1, 17)), 16)
    ffi.memmove(ev.span_id, bytes(range(21, 29)), 8)
    ffi.memmove(ev.parent_span_id, bytes(range(31, 39)), 8)
    return framed(bytes(ffi.buffer(ev))), ev


def test_a_go_server_record_is_an_http_span_with_the_kernels_ids() -> None:
    processes = Processes()
    records = RecordProcessor(ProtocolRegistry([]), processes.identities.get, processes.on_process,
                              GoHttpSpans(RouteMatcher(["/posts/{id}"], unmatched="unset")))
    record, _ = go_record(lib.OBI_ROLE_SERVER, host=b"blog.local:8443", proto_major=2,
                          flags=lib.OBI_GO_FLAG_TLS | lib.OBI_GO_FLAG_ADDR, status=404, req_len=-1)
    (span,) = records.process(record)
    assert isinstance(span, HttpSpan) and span.kind == SPAN_KIND_SERVER
    assert span.name == "GET /posts/{id}"
    assert span.attributes() == {
        "http.request.method": "GET", "http.response.status_code": 404, "http.route": "/posts/{id}",
        "url.scheme": "https", "server.address": "blog.local", "server.port": 8443,
        "client.address": "10.9.8.7", "network.protocol.version": "2", "url.path": "/posts/7",
        "http.request.body.size": 0, "http.response.body.size": 5}
    assert (span.trace_id, span.span_id) == (bytes(range(1, 17)), bytes(range(21, 29)))
    assert span.parent_span_id == b""
    assert span.end_ns - span.start_ns == 2_000


def test_a_go_client_record_is_a_client_span_child_of_the_request_served() -> None:
    processes = Processes()
    records = RecordProcessor(ProtocolRegistry([]), processes.identities.get, processes.on_process,
                              GoHttpSpans(RouteMatcher([], unmatched="unset")))
    record, _ = go_record(lib.OBI_ROLE_CLIENT, host=b"backend:9000", scheme=b"http", path=b"/plain",
                          flags=lib.OBI_GO_FLAG_PARENT, resp_len=3)
    (span,) = records.process(record)
    assert isinstance(span, HttpSpan) and span.kind == SPAN_KIND_CLIENT
    assert span.attributes()["url.full"] == "http://backend:9000/plain"
    assert (span.server_address, span.server_port) == ("backend", 9000)
    assert span.parent_span_id == bytes(range(31, 39)) and span.trace_id == bytes(range(1, 17))
    failed, _ = go_record(lib.OBI_ROLE_CLIENT, host=b"down", scheme=b"https", status=0, resp_len=-1)
    (span,) = records.process(failed)
    assert isinstance(span, HttpSpan) and span.status_code == 0 and span.is_error
    assert (span.server_address, span.server_port, span.parent_span_id) == ("down", 443, b"")


def test_http_exchanges_of_go_processes_are_left_to_the_go_probes() -> None:
    processes = Processes()
    go_pids = {7}
    records = RecordProcessor(ProtocolRegistry([Http1(RouteMatcher([], unmatched="unset"))]),
                              processes.identities.get, processes.on_process,
                              GoHttpSpans(RouteMatcher([], unmatched="unset")), go_pids)
    record, _ = go_record(lib.OBI_ROLE_SERVER)
    assert len(records.process(exchange(7, REQUEST, RESPONSE) + record)) == 1
    assert (records.stats.go_duplicates, records.stats.go_requests) == (1, 1)
    go_pids.clear()
    assert len(records.process(exchange(7, REQUEST, RESPONSE))) == 1
