"""HTTP/1.x parsing from literal wire bytes, truncation and mutation sweeps."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obi.protocols.errors import ParseError
from obi.protocols.http import (
    METHODS,
    STATUS_CAPTURE,
    HttpRequestFacts,
    HttpResponseFacts,
    TraceParent,
    parse_exchange,
    parse_request,
    parse_response,
    parse_traceparent,
)

CURL_GET = (
    b"GET /api/users/42?expand=orders&page=2 HTTP/1.1\r\n"
    b"Host: localhost:8080\r\n"
    b"User-Agent: curl/7.88.1\r\n"
    b"Accept: */*\r\n"
    b"\r\n"
)
POST_JSON_BODY = b'{"name":"ada","lang":"en"}'
POST_JSON = (
    b"POST /api/users HTTP/1.1\r\n"
    b"Host: api.example.com\r\n"
    b"User-Agent: python-requests/2.31.0\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Accept: */*\r\n"
    b"Connection: keep-alive\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 26\r\n"
    b"\r\n" + POST_JSON_BODY
)
HTTP10_GET = b"GET /index.html HTTP/1.0\r\nUser-Agent: Wget/1.21.3\r\nAccept: */*\r\n\r\n"
TRACED_GET = (
    b"GET /checkout HTTP/1.1\r\n"
    b"host: shop:80\r\n"
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"content-length: 0\r\n"
    b"\r\n"
)
NGINX_200_BODY = b"<!DOCTYPE html>\n<html>\n<head>\n<title>Welcome to nginx!</title>"
NGINX_200 = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Tue, 13 May 2025 09:12:44 GMT\r\n"
    b"Content-Type: text/html\r\n"
    b"Content-Length: 615\r\n"
    b"Last-Modified: Wed, 12 Jun 2024 15:06:01 GMT\r\n"
    b"Connection: keep-alive\r\n"
    b'ETag: "6669b989-267"\r\n'
    b"Accept-Ranges: bytes\r\n"
    b"\r\n" + NGINX_200_BODY
)
PYTHON_HTTP_SERVER_200 = (
    b"HTTP/1.0 200 OK\r\n"
    b"Server: SimpleHTTP/0.6 Python/3.11.2\r\n"
    b"Date: Tue, 13 May 2025 09:12:44 GMT\r\n"
    b"Content-type: text/html; charset=utf-8\r\n"
    b"Content-Length: 1043\r\n"
    b"\r\n"
    b"<!DOCTYPE HTML>\n<html lang="
)
SERVER_ERROR_500 = (
    b"HTTP/1.1 500 Internal Server Error\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 21\r\n"
    b"\r\n"
    b"Internal Server Error"
)
CHUNKED_HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKED_200 = CHUNKED_HEADERS + b'11\r\n{"status":"ok!!"}\r\n0\r\n\r\n'

REQUESTS = [CURL_GET, POST_JSON, HTTP10_GET, TRACED_GET]
RESPONSES = [NGINX_200, PYTHON_HTTP_SERVER_200, SERVER_ERROR_500, CHUNKED_200]


def _header_len(message: bytes) -> int:
    return message.index(b"\r\n\r\n") + 4


def test_curl_get() -> None:
    facts = parse_request(CURL_GET, len(CURL_GET))
    assert facts == HttpRequestFacts(
        method="GET",
        target="/api/users/42?expand=orders&page=2",
        path="/api/users/42",
        version="1.1",
        host="localhost:8080",
        content_length=None,
        body_size=0,
        traceparent=None,
        header_len=len(CURL_GET),
        end=len(CURL_GET),
    )


def test_post_with_body_uses_content_length() -> None:
    facts = parse_request(POST_JSON, len(POST_JSON))
    assert facts.method == "POST"
    assert facts.path == "/api/users"
    assert facts.host == "api.example.com"
    assert facts.content_length == len(POST_JSON_BODY) == 26
    assert facts.body_size == 26


def test_content_length_wins_over_captured_size() -> None:
    # The kernel captured only the headers, but the server read 10 kB in total.
    headers = POST_JSON[: _header_len(POST_JSON)]
    assert parse_request(headers, 10_000).body_size == 26


def test_http_1_0() -> None:
    facts = parse_request(HTTP10_GET, len(HTTP10_GET))
    assert (facts.version, facts.path, facts.host) == ("1.0", "/index.html", None)


def test_request_body_size_without_content_length() -> None:
    # no Content-Length and no transfer coding: no body (RFC 9112 6.3); what follows is the next request
    request = b"PUT /upload HTTP/1.1\r\nHost: h\r\n\r\n"
    assert parse_request(request, len(request) + 500).body_size == 0
    assert parse_request(request, len(request) + 500).end == len(request)
    # chunked: the bytes after the header block
    chunked = b"PUT /upload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert parse_request(chunked, len(chunked) + 500).body_size == 500
    assert parse_request(chunked, 3).body_size == 0  # never negative


def test_chunked_request_ignores_content_length() -> None:
    request = b"POST /ingest HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n"
    facts = parse_request(request, len(request) + 40)
    assert facts.content_length is None
    assert facts.body_size == 40


def test_lowercase_and_mixed_case_header_names() -> None:
    facts = parse_request(TRACED_GET, len(TRACED_GET))
    assert facts.host == "shop:80"
    assert facts.content_length == 0
    shouting = b"GET / HTTP/1.1\r\nHOST:  Example.COM \r\nCONTENT-LENGTH: 7\r\n\r\n"
    facts = parse_request(shouting, 100)
    assert (facts.host, facts.content_length) == ("Example.COM", 7)


def test_header_names_must_match_whole() -> None:
    request = b"GET / HTTP/1.1\r\nX-Host: a\r\nX-Content-Length: 5\r\nX-traceparent: t\r\n\r\n"
    facts = parse_request(request, len(request))
    assert (facts.host, facts.content_length, facts.traceparent) == (None, None, None)


def test_first_of_repeated_headers_wins() -> None:
    request = b"GET / HTTP/1.1\r\nHost: first\r\nHost: second\r\n\r\n"
    assert parse_request(request, len(request)).host == "first"


def test_invalid_content_length_is_ignored() -> None:
    for value in (b"-1", b"12abc", b"+5", b"", b"9" * 40):
        request = b"POST / HTTP/1.1\r\nContent-Length: " + value + b"\r\n\r\n"
        facts = parse_request(request, len(request) + 3)
        assert facts.content_length is None
        assert facts.body_size == 3


def test_traceparent_header() -> None:
    facts = parse_request(TRACED_GET, len(TRACED_GET))
    assert facts.traceparent == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert parse_request(CURL_GET, len(CURL_GET)).traceparent is None


@pytest.mark.parametrize(
    ("target", "path"),
    [
        ("/", "/"),
        ("/search?q=a/b#frag", "/search"),
        ("/a%20b/c;v=1", "/a%20b/c;v=1"),
        ("http://example.com/p/q?x=1", "/p/q"),
        ("HTTPS://example.com:8443/p", "/p"),
        ("http://example.com", "/"),
        ("http://example.com?x=/y", "/"),
        ("*", "*"),
        ("example.com:443", "example.com:443"),
        ("?only=query", "/"),
    ],
)
def test_path_from_target(target: str, path: str) -> None:
    method = "CONNECT" if ":443" in target else "OPTIONS" if target == "*" else "GET"
    request = f"{method} {target} HTTP/1.1\r\n\r\n".encode()
    facts = parse_request(request, len(request))
    assert (facts.target, facts.path) == (target, path)


def test_every_method() -> None:
    for method in ("GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "TRACE"):
        request = f"{method} /x HTTP/1.1\r\n\r\n".encode()
        assert parse_request(request, len(request)).method == method


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n",
        b"get / HTTP/1.1\r\n\r\n",
        b"BREW /pot HTTP/1.1\r\n\r\n",
        b"GET",
        b"GET ",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / HTTP/1.1x\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / XTTP/1",
        b"GET /a\x00b HTTP/1.1\r\n\r\n",
        b"G\xc3\x89T / HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ],
)
def test_malformed_requests(data: bytes) -> None:
    with pytest.raises(ParseError):
        parse_request(data, len(data))


def test_non_ascii_target_is_kept() -> None:
    request = "GET /café HTTP/1.1\r\n\r\n".encode()
    assert parse_request(request, len(request)).path == "/café"


def test_request_truncated_inside_request_line() -> None:
    assert parse_request(b"GET /api/us", 900).path == "/api/us"
    facts = parse_request(b"GET /api/users?x=1 HT", 900)
    assert (facts.path, facts.version, facts.body_size) == ("/api/users", "1.1", 0)
    assert parse_request(b"GET /a HTTP/1.0", 900).version == "1.0"
    assert parse_request(b"GET /a HTTP/1.0\r", 900).version == "1.0"


def test_request_truncated_inside_headers() -> None:
    cut = POST_JSON.index(b"Content-Length") + len(b"Content-Length: 2")
    facts = parse_request(POST_JSON[:cut], 5000)
    # The last header line may be cut short, so it is not trusted.
    assert (facts.content_length, facts.body_size, facts.host) == (None, 0, "api.example.com")


@pytest.mark.parametrize("message", REQUESTS)
def test_request_split_at_every_offset(message: bytes) -> None:
    full = parse_request(message, len(message))
    for cut in range(len(message) + 1):
        try:
            facts = parse_request(message[:cut], len(message))
        except ParseError:
            assert cut <= message.index(b" ") + 1, f"valid prefix of {cut} bytes rejected"
            continue
        assert facts.method == full.method
        assert full.target.startswith(facts.target)
        if cut >= _header_len(message):
            assert facts == full


def test_nginx_response() -> None:
    facts = parse_response(NGINX_200, 615 + _header_len(NGINX_200))
    assert facts == HttpResponseFacts(version="1.1", status_code=200, content_length=615, body_size=615,
                                      header_len=_header_len(NGINX_200), end=_header_len(NGINX_200) + 615)


def test_python_http_server_response() -> None:
    facts = parse_response(PYTHON_HTTP_SERVER_200, 2000)
    assert (facts.version, facts.status_code, facts.content_length) == ("1.0", 200, 1043)


def test_500_response() -> None:
    facts = parse_response(SERVER_ERROR_500, len(SERVER_ERROR_500))
    assert (facts.status_code, facts.body_size) == (500, 21)


def test_chunked_response_counts_bytes_after_headers() -> None:
    facts = parse_response(CHUNKED_200, len(CHUNKED_200))
    assert facts.content_length is None
    assert facts.body_size == len(CHUNKED_200) - len(CHUNKED_HEADERS)


def test_bodyless_statuses() -> None:
    for status in (b"100 Continue", b"204 No Content", b"304 Not Modified"):
        response = b"HTTP/1.1 " + status + b"\r\nContent-Length: 99\r\n\r\n"
        assert parse_response(response, len(response) + 99).body_size == 0


def test_response_status_line_without_reason() -> None:
    assert parse_response(b"HTTP/1.1 404\r\n\r\n", 19).status_code == 404
    assert parse_response(b"HTTP/1.1 404", 19).status_code == 404


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"HTTP/1.1 20",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/1.1 600 High\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"http/1.1 200 OK\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ],
)
def test_malformed_responses(data: bytes) -> None:
    with pytest.raises(ParseError):
        parse_response(data, len(data))


@pytest.mark.parametrize("message", RESPONSES)
def test_response_split_at_every_offset(message: bytes) -> None:
    full = parse_response(message, len(message))
    for cut in range(len(message) + 1):
        try:
            facts = parse_response(message[:cut], len(message))
        except ParseError:
            assert cut < len(b"HTTP/1.1 200"), f"valid prefix of {cut} bytes rejected"
            continue
        assert (facts.version, facts.status_code) == (full.version, full.status_code)
        if cut >= _header_len(message):
            assert facts == full


VALID_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_traceparent_valid() -> None:
    assert parse_traceparent(VALID_TRACEPARENT) == TraceParent(
        trace_id=bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"),
        parent_span_id=bytes.fromhex("00f067aa0ba902b7"),
        sampled=True,
    )
    not_sampled = parse_traceparent(VALID_TRACEPARENT[:-2] + "00")
    assert not_sampled is not None and not not_sampled.sampled
    other_flags = parse_traceparent(VALID_TRACEPARENT[:-2] + "03")
    assert other_flags is not None and other_flags.sampled


def test_traceparent_future_versions_are_lenient() -> None:
    future = "cc" + VALID_TRACEPARENT[2:]
    assert parse_traceparent(future) is not None
    assert parse_traceparent(future + "-what-the-future-holds") is not None
    assert parse_traceparent(future + "x") is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        VALID_TRACEPARENT[:-1],
        VALID_TRACEPARENT + "-extra",
        "ff" + VALID_TRACEPARENT[2:],
        "0g" + VALID_TRACEPARENT[2:],
        VALID_TRACEPARENT.upper(),
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        "00- bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ],
)
def test_traceparent_invalid(value: str) -> None:
    assert parse_traceparent(value) is None


# Hypothesis sweeps: whatever the bytes, a parser returns facts or raises ParseError.

_SWEEP = settings(max_examples=300, deadline=None)


def _check_request(facts: HttpRequestFacts, data: bytes) -> None:
    """What every parsed request must satisfy, whatever the bytes."""
    assert facts.method in METHODS and data.startswith(facts.method.encode() + b" ")
    assert facts.target and facts.path and "?" not in facts.path
    assert facts.version in ("1.0", "1.1")
    assert facts.body_size >= 0
    assert facts.content_length is None or facts.content_length >= 0
    assert facts.header_len == -1 or 0 < facts.header_len <= len(data)
    assert facts.end == -1 or facts.end >= facts.header_len > 0


def _check_response(facts: HttpResponseFacts, data: bytes) -> None:
    assert 100 <= facts.status_code <= 599
    assert data.startswith(b"HTTP/1." + facts.version[-1].encode() + b" %d" % facts.status_code)
    assert facts.body_size >= 0
    assert facts.content_length is None or facts.content_length >= 0
    assert facts.header_len == -1 or 0 < facts.header_len <= len(data)


def _parse_any(data: bytes, total_len: int) -> None:
    with contextlib.suppress(ParseError):
        _check_request(parse_request(data, total_len), data)
    with contextlib.suppress(ParseError):
        _check_response(parse_response(data, total_len), data)
    with contextlib.suppress(ParseError):
        pairs = parse_exchange(data, total_len, data, total_len)
        assert pairs
        for pair in pairs:
            assert pair.request.method in METHODS and pair.request.body_size >= 0
            if pair.response is not None:
                assert 100 <= pair.response.status_code <= 599 and pair.response.body_size >= 0


@_SWEEP
@given(st.sampled_from(REQUESTS + RESPONSES), st.data())
def test_truncated_messages_parse_or_raise_parse_error(message: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(message)))
    _parse_any(message[:cut], data.draw(st.integers(min_value=0, max_value=1 << 40)))


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    message = bytearray(draw(st.sampled_from(REQUESTS + RESPONSES)))
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        position = draw(st.integers(min_value=0, max_value=len(message)))
        action = draw(st.sampled_from(("flip", "insert", "delete")))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 45, 48, 58, 63, 127, 200, 255]) | st.integers(0, 255))
        if action == "insert":
            message.insert(position, byte)
        elif position < len(message):
            if action == "flip":
                message[position] ^= 1 << draw(st.integers(min_value=0, max_value=7))
            else:
                del message[position]
    return bytes(message)


@_SWEEP
@given(_mutated(), st.integers(min_value=0, max_value=1 << 40))
def test_mutated_messages_parse_or_raise_parse_error(data: bytes, total_len: int) -> None:
    _parse_any(data, total_len)


@_SWEEP
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=1 << 40))
def test_arbitrary_bytes_parse_or_raise_parse_error(data: bytes, total_len: int) -> None:
    _parse_any(data, total_len)


@_SWEEP
@given(
    st.sampled_from([b"GET ", b"POST ", b"HTTP/1.1 ", b"HTTP/1.0 2"]),
    st.binary(max_size=200),
)
def test_plausible_prefixes_parse_or_raise_parse_error(prefix: bytes, rest: bytes) -> None:
    _parse_any(prefix + rest, len(prefix) + len(rest))


@_SWEEP
@given(st.text(max_size=80))
def test_traceparent_never_raises(value: str) -> None:
    parse_traceparent(value)
    parse_traceparent(VALID_TRACEPARENT[: len(value) % 56] + value)


# ---- exchanges: what the kernel pairs --------------------------------------------


def test_exchange_of_one_request_and_its_response() -> None:
    (pair,) = parse_exchange(POST_JSON, len(POST_JSON), SERVER_ERROR_500, len(SERVER_ERROR_500))
    assert (pair.request.method, pair.request.path, pair.request.body_size) == ("POST", "/api/users", 26)
    assert pair.response is not None and (pair.response.status_code, pair.response.body_size) == (500, 21)


def test_pipelined_requests_pair_with_their_responses_in_order() -> None:
    requests = CURL_GET + POST_JSON + HTTP10_GET
    responses = NGINX_200[: _header_len(NGINX_200)] + b"x" * 615 + SERVER_ERROR_500
    pairs = parse_exchange(requests, len(requests), responses, len(responses))
    assert [p.request.method for p in pairs] == ["GET", "POST", "GET"]
    assert [p.response.status_code if p.response else None for p in pairs] == [200, 500, None]


def test_interim_responses_are_skipped_and_head_has_no_body() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
    (pair,) = parse_exchange(POST_JSON, len(POST_JSON), interim + SERVER_ERROR_500,
                             len(interim) + len(SERVER_ERROR_500))
    assert pair.response is not None and pair.response.status_code == 500
    head = b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
    chunked_head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    (pair,) = parse_exchange(head, len(head), chunked_head, len(chunked_head), len(chunked_head), -1)
    assert pair.response is not None and pair.response.body_size == 0


def test_kernel_framing_fills_in_what_the_capture_cut() -> None:
    cut = NGINX_200[:40]  # Content-Length was beyond the capture
    (pair,) = parse_exchange(CURL_GET, len(CURL_GET), cut, 1000, 385, 615)
    assert pair.response is not None and (pair.response.content_length, pair.response.body_size) == (615, 615)
    (pair,) = parse_exchange(CURL_GET, len(CURL_GET), cut, 1000, 385, -1)
    assert pair.response is not None and pair.response.body_size == 615  # bytes after the kernel's header end


def test_a_status_only_capture_takes_its_size_from_the_kernel() -> None:
    header_len = _header_len(NGINX_200)
    (pair,) = parse_exchange(CURL_GET, len(CURL_GET), NGINX_200[:STATUS_CAPTURE], header_len + 615,
                             header_len, 615, status_only=True)
    assert pair.response is not None
    assert (pair.response.status_code, pair.response.body_size, pair.response.header_len) == (
        200, 615, header_len)
    head = b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
    (pair,) = parse_exchange(head, len(head), NGINX_200[:STATUS_CAPTURE], header_len, header_len, 615,
                             status_only=True)
    assert pair.response is not None and (pair.response.status_code, pair.response.body_size) == (200, 0)


def test_responses_pipelined_after_a_status_only_one_are_parsed_whole() -> None:
    requests = CURL_GET + POST_JSON + HTTP10_GET
    header_len = _header_len(NGINX_200)
    first = NGINX_200[:header_len] + b"x" * 615
    captured = first[:STATUS_CAPTURE] + SERVER_ERROR_500 + PYTHON_HTTP_SERVER_200
    total = len(first) + len(SERVER_ERROR_500) + len(PYTHON_HTTP_SERVER_200)
    pairs = parse_exchange(requests, len(requests), captured, total, header_len, 615, status_only=True)
    assert [(p.response.status_code, p.response.body_size) if p.response else None for p in pairs] == [
        (200, 615), (500, 21), (200, 1043)]  # the last one's Content-Length, its body cut short
    # what follows the status line is not a response: the first request keeps its answer
    pairs = parse_exchange(requests, len(requests), first[:STATUS_CAPTURE] + b"garbage", total,
                           header_len, 615, status_only=True)
    assert [p.response.status_code if p.response else None for p in pairs] == [200, None, None]


def test_a_request_without_response() -> None:
    (pair,) = parse_exchange(CURL_GET, len(CURL_GET), b"", 0)
    assert pair.response is None


@_SWEEP
@given(st.lists(st.sampled_from(REQUESTS), min_size=1, max_size=5), st.data())
def test_pipelined_sequences_keep_every_request_in_order(requests: list[bytes], data: st.DataObject) -> None:
    joined = b"".join(requests)
    cut = data.draw(st.integers(min_value=len(requests[0]), max_value=len(joined)))
    pairs = parse_exchange(joined[:cut], len(joined), b"", 0)
    whole = sum(1 for i in range(len(requests)) if len(b"".join(requests[: i + 1])) <= cut)
    assert whole <= len(pairs) <= len(requests)
    expected = [parse_request(m, len(m)).method for m in requests[:whole]]
    assert [p.request.method for p in pairs[:whole]] == expected


_FRAMED = [NGINX_200[: _header_len(NGINX_200)] + b"x" * 615, SERVER_ERROR_500]


@_SWEEP
@given(st.lists(st.sampled_from([CURL_GET, HTTP10_GET, TRACED_GET]), min_size=1, max_size=4),
       st.lists(st.sampled_from(_FRAMED), min_size=1, max_size=4), st.data())
def test_status_only_captures_pair_every_response_in_order(
        requests: list[bytes], responses: list[bytes], data: st.DataObject) -> None:
    """The kernel's status-only capture of the first response, then pipelined ones whole
    (cut anywhere by the capture size): each response pairs with its own request."""
    first = responses[0]
    header_len = _header_len(first)
    content_length = len(first) - header_len
    captured = first[:STATUS_CAPTURE] + b"".join(responses[1:])
    captured = captured[: data.draw(st.integers(min_value=STATUS_CAPTURE, max_value=len(captured)))]
    joined = b"".join(requests)
    pairs = parse_exchange(joined, len(joined), captured, sum(map(len, responses)), header_len,
                           content_length, status_only=True)
    assert [p.request.method for p in pairs] == ["GET"] * len(requests)
    answered = [p.response for p in pairs if p.response is not None]
    assert 1 <= len(answered) <= min(len(requests), len(responses))
    assert all(p.response is not None for p in pairs[: len(answered)])  # answers come in order
    for got, sent in zip(answered, responses, strict=False):
        facts = parse_response(sent, len(sent))
        assert got.status_code == facts.status_code and got.body_size >= 0
    assert (answered[0].header_len, answered[0].body_size) == (header_len, content_length)
