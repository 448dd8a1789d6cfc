"""HTTP/1.x request and response facts from the first bytes the kernel captured.

The capture is a prefix of the message, cut anywhere (even inside the request
line), plus the total number of bytes read or written. Parsers use plain bytes
operations (find/split/lower on the whole header block) because they run once
per observed request; every malformed input raises ``ParseError`` and nothing else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from obi.ebpf._libbpf import lib
from obi.protocols.base import NO_RESPONSE_ERRORS, ROLE_SERVER, Connection, Exchange, IdGenerator, SpanStats
from obi.protocols.errors import ParseError
from obi.traces.model import EXCLUDE_METRICS, EXCLUDE_TRACES, SPAN_KIND_CLIENT, SPAN_KIND_SERVER, HttpSpan
from obi.traces.routes import RouteMatcher

__all__ = [
    "Http1",
    "HttpPair",
    "HttpRequestFacts",
    "HttpResponseFacts",
    "ParseError",
    "TraceParent",
    "parse_exchange",
    "parse_request",
    "parse_response",
    "parse_traceparent",
]

METHODS: Final[tuple[str, ...]] = (
    "GET",
    "POST",
    "PUT",
    "DELETE",
    "HEAD",
    "PATCH",
    "OPTIONS",
    "CONNECT",
    "TRACE",
)
_METHOD_BY_TOKEN: Final[dict[bytes, str]] = {m.encode("ascii"): m for m in METHODS}
_VERSION_BY_TOKEN: Final[dict[bytes, str]] = {b"HTTP/1.1": "1.1", b"HTTP/1.0": "1.0"}
# Version assumed when the capture ends before the request line's version.
_TRUNCATED_VERSION: Final = "1.1"
STATUS_CAPTURE: Final[int] = lib.OBI_STATUS_CAPTURE  # bytes of a status-only response capture

_CRLF: Final = b"\r\n"
_HEADERS_END: Final = b"\r\n\r\n"
# Header names as searched in the lower-cased header block, which starts with CRLF.
_HOST: Final = b"\r\nhost:"
_CONTENT_LENGTH: Final = b"\r\ncontent-length:"
_TRANSFER_ENCODING: Final = b"\r\ntransfer-encoding:"
_TRACEPARENT: Final = b"\r\ntraceparent:"
_HOST_LEN: Final = len(_HOST)
_TRACEPARENT_HEADER_LEN: Final = len(_TRACEPARENT)
_OWS: Final = b" \t"
_CONTENT_LENGTH_LEN: Final = len(_CONTENT_LENGTH)
# Status-code tokens of 100..599 (codes outside take the slow path, which names the error).
_STATUS_BY_TOKEN: Final[dict[bytes, int]] = {b"%d" % code: code for code in range(100, 600)}
# "HTTP/1.x NNN" -> (version, status): a whole status line's start in one lookup.
_STATUS_LINE: Final[dict[bytes, tuple[str, int]]] = {
    token + b" " + code_token: (version, code)
    for token, version in _VERSION_BY_TOKEN.items()
    for code_token, code in _STATUS_BY_TOKEN.items()
}
_AFTER_STATUS: Final = (b"", b" ", b"\r")
# tuple.__new__ builds a NamedTuple without its Python-level __new__ (a third of the cost).
_new_tuple: Final = tuple.__new__
# Longest Content-Length accepted: fits in an int64 and stays clear of int() limits.
_MAX_LENGTH_DIGITS: Final = 18
# Statuses that never carry a body (RFC 9110 section 6.4.1).
_BODYLESS_STATUS: Final = frozenset({204, 304})

_LOWER_HEX: Final = "0123456789abcdef"
_TRACEPARENT_LEN: Final = 55
_ZERO_TRACE_ID: Final = "0" * 32
_ZERO_SPAN_ID: Final = "0" * 16


class HttpRequestFacts(NamedTuple):
    """What a request's first bytes say about it (a tuple: cheap to build per request).

    ``body_size`` is Content-Length when present, else the bytes read after the
    header block when its end was captured, else 0. ``header_len`` is the length
    of the header block with its blank line, -1 when its end was not captured;
    ``end`` is where the message ends in the bytes (the next pipelined one
    starts there), -1 when unknown.
    """

    method: str
    target: str
    path: str
    version: str
    host: str | None
    content_length: int | None
    body_size: int
    traceparent: str | None
    header_len: int
    end: int


class HttpResponseFacts(NamedTuple):
    """What a response's first bytes say about it (fields as for requests)."""

    version: str
    status_code: int
    content_length: int | None
    body_size: int
    header_len: int
    end: int


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A valid W3C ``traceparent`` header: the caller's trace and span."""

    trace_id: bytes  # 16 bytes
    parent_span_id: bytes  # 8 bytes
    sampled: bool


def _header_block(data: bytes, line_end: int) -> tuple[bytes, bytes, int]:
    """Header lines after the start line ending at ``line_end`` (a CRLF offset).

    Returns the CRLF-framed lines, the same lower-cased, and the header length
    (-1 when the blank line ending the headers was not captured). A trailing line
    without its CRLF may be cut short, so it is dropped.
    """
    headers_end = data.find(_HEADERS_END, line_end)
    if headers_end >= 0:
        raw = data[line_end : headers_end + 2]
        return raw, raw.lower(), headers_end + 4
    last_line_end = data.rfind(_CRLF)
    if last_line_end < line_end:  # capture cut between the start line's CR and LF
        return b"", b"", -1
    raw = data[line_end : last_line_end + 2]
    return raw, raw.lower(), -1


def _header_value(raw: bytes, lowered: bytes, name: bytes) -> bytes | None:
    """First value of a header (``name`` is ``b"\\r\\n<lowercase name>:"``)."""
    start = lowered.find(name)
    if start < 0:
        return None
    start += len(name)
    return raw[start : raw.find(_CRLF, start)].strip(_OWS)


def _content_length(raw: bytes, lowered: bytes, start: int) -> int | None:
    """Content-Length found at ``start``; None when invalid or overridden by chunked coding."""
    start += _CONTENT_LENGTH_LEN
    value = raw[start : raw.find(_CRLF, start)].strip(_OWS)
    if not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
        return None
    coding = _header_value(raw, lowered, _TRANSFER_ENCODING)
    if coding is not None and b"chunked" in coding.lower():
        return None
    return int(value)


def _body_size(content_length: int | None, header_len: int, total_len: int) -> int:
    if content_length is not None:
        return content_length
    if header_len >= 0:
        return max(0, total_len - header_len)
    return 0


def _is_version_prefix(token: bytes) -> bool:
    """Whether a capture cut inside the version could still be HTTP/1.0 or HTTP/1.1."""
    return any(version.startswith(token) for version in _VERSION_BY_TOKEN)


def _path_of(target: str) -> str:
    """The target's path without query or fragment (absolute-form reduced to its path)."""
    if target[0] != "/":
        scheme = target.find("://")
        if 0 < scheme <= 5 and target[:scheme].lower() in ("http", "https"):
            authority = scheme + 3
            end = len(target)
            for delimiter in "/?#":
                found = target.find(delimiter, authority, end)
                if found >= 0:
                    end = found
            target = target[end:]
    path = target.partition("?")[0].partition("#")[0]
    return path or "/"


RequestLines = dict[bytes, tuple[str, str, str, str]]
REQUEST_LINE_CACHE_LIMIT = 4096


def parse_request(data: bytes, total_len: int, lines: RequestLines | None = None) -> HttpRequestFacts:
    """Facts of the request whose first bytes are ``data`` and size is ``total_len``.

    A capture cut inside the target keeps the captured part; one cut before the
    version assumes HTTP/1.1. Raises ParseError on anything that is not a request.
    ``lines`` remembers (method, target, path, version) of whole request lines
    seen before: the same endpoints come back again and again.
    """
    line_end = data.find(_CRLF)
    if line_end < 0:
        # A capture cut between CR and LF still holds a whole request line.
        line_end = len(data) - 1 if data.endswith(b"\r") else -1
    elif lines is not None:
        line = data[:line_end]
        known = lines.get(line)
        if known is None:
            known = _request_line(line, line_end)
            if len(lines) >= REQUEST_LINE_CACHE_LIMIT:
                lines.clear()
            lines[line] = known
        method, target, path, version = known
        return _request_headers(data, line_end, total_len, method, target, path, version, HttpRequestFacts)
    method, target, path, version = _request_line(data if line_end < 0 else data[:line_end], line_end)
    if line_end < 0:
        return _new_tuple(HttpRequestFacts, (method, target, path, version, None, None, 0, None, -1, -1))
    return _request_headers(data, line_end, total_len, method, target, path, version, HttpRequestFacts)


def _request_line(line: bytes, line_end: int) -> tuple[str, str, str, str]:
    """(method, target, path, version) of a request line (line_end -1: cut short)."""
    parts = line.split(b" ")
    method = _METHOD_BY_TOKEN.get(parts[0])
    if method is None:
        raise ParseError("request line does not start with an HTTP method")
    if len(parts) != 3:
        if len(parts) < 2 or not parts[1]:
            raise ParseError("request line has no target")
        if len(parts) > 3:
            raise ParseError("request line has extra spaces")
        if line_end >= 0:
            raise ParseError("request line has no HTTP version")
        version = _TRUNCATED_VERSION
    else:
        if not parts[1]:
            raise ParseError("request line has no target")
        known_version = _VERSION_BY_TOKEN.get(parts[2])
        if known_version is None:
            if line_end >= 0 or not _is_version_prefix(parts[2]):
                raise ParseError("request line has no HTTP/1.x version")
            known_version = _TRUNCATED_VERSION
        version = known_version
    target = parts[1].decode("utf-8", "replace")
    if not target.isprintable():
        raise ParseError("request target has control characters")
    path = target if target[0] == "/" and "?" not in target and "#" not in target else _path_of(target)
    return method, target, path, version


def _request_headers_py(data: bytes, line_end: int, total_len: int, method: str, target: str, path: str,
                        version: str, facts: type[HttpRequestFacts]) -> HttpRequestFacts:
    """The request's facts once its line is known: what its header block says.

    The definition of what obi._http1.request_headers does in C (the tests hold the two to each
    other), and what runs where that extension was not built. (Once per request: the header
    block helpers are inlined here.)
    """
    headers_end = data.find(_HEADERS_END, line_end)
    if headers_end >= 0:
        raw = data[line_end: headers_end + 2]
        header_len = headers_end + 4
    else:
        last_line_end = data.rfind(_CRLF)
        raw = data[line_end: last_line_end + 2] if last_line_end >= line_end else b""
        header_len = -1
    lowered = raw.lower()
    found = lowered.find(_HOST)
    if found >= 0:
        found += _HOST_LEN
        host: str | None = raw[found: raw.find(_CRLF, found)].strip(_OWS).decode("utf-8", "replace")
    else:
        host = None
    found = lowered.find(_TRACEPARENT)
    if found >= 0:
        found += _TRACEPARENT_HEADER_LEN
        traceparent: str | None = raw[found: raw.find(_CRLF, found)].strip(_OWS).decode("utf-8", "replace")
    else:
        traceparent = None
    start = lowered.find(_CONTENT_LENGTH)
    content_length = None if start < 0 else _content_length(raw, lowered, start)
    if content_length is not None:
        body_size = content_length
        end = -1 if header_len < 0 else header_len + content_length
    elif start >= 0 or _TRANSFER_ENCODING in lowered:
        # chunked, or a Content-Length that is not a number: the bytes after the header block
        body_size = _body_size(None, header_len, total_len)
        end = -1
    else:
        body_size = 0  # a request without Content-Length or transfer coding has no body
        end = header_len
    return _new_tuple(facts, (
        method, target, path, version, host, content_length, body_size, traceparent, header_len, end,
    ))  # fmt: skip


RequestHeaders = Callable[[bytes, int, int, str, str, str, str, type[HttpRequestFacts]], HttpRequestFacts]
_request_headers: RequestHeaders
try:
    from obi._http1 import request_headers as _request_headers
except ImportError:  # a source tree without its C extensions: the same, in Python
    _request_headers = _request_headers_py


def parse_response(data: bytes, total_len: int) -> HttpResponseFacts:
    """Facts of the response whose first bytes are ``data`` and size is ``total_len``.

    The status line must be captured up to its status code. Bodies of 1xx, 204
    and 304 responses count as 0 whatever Content-Length says.
    """
    line = _STATUS_LINE.get(data[:12])
    if line is not None:
        version, status_code = line
    else:  # the slow path names what is wrong
        found = _VERSION_BY_TOKEN.get(data[:8])
        if found is None:
            raise ParseError("status line does not start with HTTP/1.0 or HTTP/1.1")
        version = found
        code = data[9:12]
        if data[8:9] != b" " or len(code) != 3 or not code.isdigit():
            raise ParseError("status line has no 3-digit status code")
        status_code = int(code)
    if data[12:13] not in _AFTER_STATUS:
        raise ParseError("status code is not followed by a space or line end")
    if not 100 <= status_code <= 599:
        raise ParseError("status code outside 100..599")

    line_end = data.find(_CRLF, 12)
    if line_end < 0:
        return _new_tuple(HttpResponseFacts, (version, status_code, None, 0, -1, -1))
    raw, lowered, header_len = _header_block(data, line_end)
    start = lowered.find(_CONTENT_LENGTH)
    content_length = None if start < 0 else _content_length(raw, lowered, start)
    if status_code < 200 or status_code in _BODYLESS_STATUS:
        body_size = 0
        end = header_len
    else:
        body_size = _body_size(content_length, header_len, total_len)
        end = -1 if header_len < 0 or content_length is None else header_len + content_length
    return _new_tuple(HttpResponseFacts, (version, status_code, content_length, body_size, header_len, end))


def _is_lower_hex(value: str) -> bool:
    return not value.strip(_LOWER_HEX)


def parse_traceparent(value: str) -> TraceParent | None:
    """The W3C trace-context ``traceparent`` value, or None when it is invalid.

    Version 00 must be exactly 55 characters; later versions may append
    ``-<more>`` fields, which are ignored (spec: parse what version 00 defines).
    """
    if len(value) < _TRACEPARENT_LEN:
        return None
    version = value[0:2]
    if not _is_lower_hex(version) or version == "ff":
        return None
    if len(value) != _TRACEPARENT_LEN and (version == "00" or value[55] != "-"):
        return None
    if value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    trace_id = value[3:35]
    span_id = value[36:52]
    flags = value[53:55]
    if not (_is_lower_hex(trace_id) and _is_lower_hex(span_id) and _is_lower_hex(flags)):
        return None
    if trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
        return None
    return TraceParent(
        trace_id=bytes.fromhex(trace_id),
        parent_span_id=bytes.fromhex(span_id),
        sampled=bool(int(flags, 16) & 1),
    )


# ---- exchanges and spans -----------------------------------------------------

_MAX_PIPELINED: Final = 64
# Bodyless statuses end at their header block; 101 switches protocols.
_INTERIM_MAX: Final = 199
_SWITCHING_PROTOCOLS: Final = 101
HOST_CACHE_LIMIT = 4096


class HttpPair(NamedTuple):
    """One request of an exchange and its response (None: no response came)."""

    request: HttpRequestFacts
    response: HttpResponseFacts | None


def _more_requests(first: HttpRequestFacts, data: bytes, total_len: int) -> list[HttpRequestFacts]:
    """first and every request pipelined after it in data."""
    requests = [first]
    off, end = 0, first.end
    while end >= 0 and off + end < len(data) and len(requests) < _MAX_PIPELINED:
        off += end
        try:
            facts = parse_request(data[off:], total_len - off)
        except ParseError:
            break
        requests.append(facts)
        end = facts.end
    return requests


def _split_responses(data: bytes, total_len: int) -> list[HttpResponseFacts]:
    """The final responses in data, interim 1xx ones skipped."""
    responses: list[HttpResponseFacts] = []
    off = 0
    while off < len(data) and len(responses) < _MAX_PIPELINED:
        try:
            facts = parse_response(data[off:], total_len - off)
        except ParseError:
            if not responses and off == 0:
                raise
            break
        if facts.status_code > _INTERIM_MAX or facts.status_code == _SWITCHING_PROTOCOLS:
            responses.append(facts)
        if facts.end < 0:
            break
        off += facts.end
    return responses


def _framed_response(data: bytes, header_len: int, content_length: int,
                     head: bool) -> HttpResponseFacts | None:
    """The response from its status line alone, when the kernel framed it (length and headers
    known); None when the status line does not say a final response."""
    line = _STATUS_LINE.get(data[:12])
    if line is None or line[1] < 200 or data[12:13] not in _AFTER_STATUS:
        return None
    version, status = line
    body = 0 if head or status in _BODYLESS_STATUS else content_length
    return _new_tuple(HttpResponseFacts,
                      (version, status, content_length, body, header_len, header_len + body))


def parse_exchange(
    request: bytes, request_len: int, response: bytes, response_len: int,
    kernel_header_len: int = -1, kernel_content_length: int = -1, lines: RequestLines | None = None,
    status_only: bool = False,
) -> list[HttpPair]:
    """Requests and responses of one exchange, paired in order.

    The kernel's framing of the final response (its header length and
    Content-Length, found beyond what was captured) gives the first response
    its body size when the captured bytes do not; with both known, one
    request's response needs no more than its status line. `status_only`: the
    kernel captured no more of the first response than that (STATUS_CAPTURE
    bytes), and whole any response pipelined after it.
    """
    first = parse_request(request, request_len, lines)
    end = first.end
    single = end < 0 or end >= len(request)
    head = first.method == "HEAD"
    if kernel_content_length >= 0 and kernel_header_len > 0 and response:
        framed = _framed_response(response, kernel_header_len, kernel_content_length, head)
        if framed is not None and single:  # the common case: one request, a response the kernel framed
            return [_new_tuple(HttpPair, (first, framed))]
    requests = [first] if single else _more_requests(first, request, request_len)
    if not response:
        return [_new_tuple(HttpPair, (req, None)) for req in requests]
    pipelined = b""
    if status_only:
        response, pipelined = response[:STATUS_CAPTURE], response[STATUS_CAPTURE:]
    responses = _split_responses(response, response_len)
    if responses:
        found = responses[0]
        if head:
            responses[0] = found._replace(body_size=0)
        elif found.content_length is None and found.status_code >= 200 and found.status_code not in (
                _BODYLESS_STATUS):
            header_len = found.header_len if found.header_len >= 0 else kernel_header_len
            if kernel_content_length >= 0:
                responses[0] = found._replace(content_length=kernel_content_length,
                                              body_size=kernel_content_length, header_len=header_len)
            elif found.header_len < 0 and kernel_header_len > 0:
                responses[0] = found._replace(body_size=max(0, response_len - kernel_header_len),
                                              header_len=kernel_header_len)
        if pipelined:
            first_len = kernel_header_len + responses[0].body_size
            with contextlib.suppress(ParseError):  # what follows is not a response: pair what we have
                responses += _split_responses(pipelined, response_len - first_len)
    return [_new_tuple(HttpPair, (req, responses[i] if i < len(responses) else None))
            for i, req in enumerate(requests)]


def host_name(host: str) -> str:
    """The host part of a Host header value (`h`, `h:80`, `[::1]:80`)."""
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    return host.split(":", 1)[0] if host.count(":") == 1 else host


def looks_like_request(data: bytes) -> bool:
    """Whether data starts like an HTTP/1.x request line (a method and a space)."""
    space = data.find(b" ", 0, 8)
    return space > 0 and data[:space] in _METHOD_BY_TOKEN


_END_TIMEOUT: Final[int] = lib.OBI_END_TIMEOUT
_TIMEOUT_STATUS: Final = 408  # OBI reports a request unanswered past ebpf.http_request_timeout with it
IgnoreMode = str  # "all", "traces", "metrics" (routes.ignore_mode)
_EXCLUDE_BY_MODE: Final = {"all": EXCLUDE_TRACES | EXCLUDE_METRICS, "traces": EXCLUDE_TRACES,
                    "metrics": EXCLUDE_METRICS}


class Http1:
    """HTTP/1.x: server spans of what an instrumented process served, client spans of
    what it called, with OBI's names and attributes."""

    name = "http"

    def __init__(self, routes: RouteMatcher, ids: IdGenerator | None = None, stats: SpanStats | None = None,
                 ignore_mode: IgnoreMode = "all", request_timeout_ns: int = 0) -> None:
        self._routes = routes
        self._getrandbits = (ids or IdGenerator()).getrandbits
        self.stats = stats or SpanStats()
        self._ignored_exclude = _EXCLUDE_BY_MODE[ignore_mode]
        self._request_timeout_ns = request_timeout_ns
        self._host_names: dict[str, str] = {}
        self._lines: RequestLines = {}

    def detect(self, exchange: Exchange) -> bool:
        return exchange.kernel_http or looks_like_request(exchange.request)

    def parse(self, exchange: Exchange) -> list[HttpPair]:
        _, request, response, request_len, response_len, header_len, content_length, _, status_only, *_ = (
            exchange)
        return parse_exchange(request, request_len, response, response_len, header_len, content_length,
                              self._lines, status_only)

    def _host(self, host: str) -> str:
        name = self._host_names.get(host)
        if name is None:
            if len(self._host_names) >= HOST_CACHE_LIMIT:
                self._host_names.clear()
            name = self._host_names[host] = host_name(host)
        return name

    def spans(self, facts: Sequence[HttpPair], exchange: Exchange, connection: Connection) -> list[HttpSpan]:
        spans: list[HttpSpan] = []
        role, request, _, request_len, _, _, _, _, _, end_reason, tls, kernel_ids, _ = exchange
        scheme = "https" if tls else "http"
        service, start_ns, conn_end_ns, local_address, local_port, peer_address, peer_port = connection
        server = role == ROLE_SERVER
        routes, getrandbits, stats, host_names = self._routes, self._getrandbits, self.stats, self._host_names
        for req, resp in facts:
            method, _, path, version, host, _, request_size, traceparent, header_len, _ = req
            if header_len < 0 and request_len > len(request):
                stats.headers_truncated += 1
            exclude = 0
            if routes.has_ignored and routes.is_ignored(path):
                exclude = self._ignored_exclude
                stats.ignored_route += 1
                if exclude == EXCLUDE_TRACES | EXCLUDE_METRICS:
                    continue
            end_ns = conn_end_ns
            if resp is None:
                stats.unanswered += 1
                status, response_size = 0, 0
                error = NO_RESPONSE_ERRORS.get(end_reason, "no_response")
                if end_reason == _END_TIMEOUT and self._request_timeout_ns:
                    status, error = _TIMEOUT_STATUS, ""
                    end_ns = start_ns + self._request_timeout_ns
            else:
                status, response_size, error = resp[1], resp[3], ""
            parent = parse_traceparent(traceparent) if traceparent else None
            server_address = (host_names.get(host) or self._host(host)) if host else None
            if kernel_ids:
                # the kernel's: this request made calls, or is a call made for a request served
                trace_id, span_id, parent_id = kernel_ids[:16], kernel_ids[16:24], kernel_ids[24:32]
                kernel_ids = b""  # a pipelined request after it is not the one the calls were for
                if not any(parent_id):
                    parent_id = b""
            else:
                trace_id = b""
            if server:
                if trace_id:
                    sampled = parent.sampled if parent is not None else True
                elif parent is not None:
                    trace_id, parent_id, sampled = parent.trace_id, parent.parent_span_id, parent.sampled
                    span_id = getrandbits(64).to_bytes(8, "big")
                else:
                    fresh = getrandbits(192).to_bytes(24, "big")
                    trace_id, span_id, parent_id, sampled = fresh[:16], fresh[16:], b"", True
                # positional: HttpSpan's field order (a third of the cost of keywords)
                spans.append(HttpSpan(
                    service, SPAN_KIND_SERVER, start_ns, end_ns, trace_id, span_id, parent_id, sampled,
                    exclude, method, path, routes.route_for(path), status, request_size, response_size,
                    scheme,
                    version, server_address or local_address, local_port, peer_address, peer_port, "", error,
                ))  # fmt: skip
            else:
                if parent is not None and not (trace_id and (parent_id or parent.trace_id == trace_id)):
                    # the application wrote this request's context itself: it is the span's own
                    trace_id, span_id, parent_id, sampled = (parent.trace_id, parent.parent_span_id, b"",
                                                             parent.sampled)
                elif trace_id:
                    # the kernel's: a call made for the request served (a proxy forwarding that
                    # request's traceparent included), or the span the traceparent it kept names
                    sampled = parent.sampled if parent is not None else True
                else:
                    fresh = getrandbits(192).to_bytes(24, "big")
                    trace_id, span_id, parent_id, sampled = fresh[:16], fresh[16:], b"", True
                authority = host or f"{peer_address}:{peer_port}"
                spans.append(HttpSpan(
                    service, SPAN_KIND_CLIENT, start_ns, end_ns, trace_id, span_id, parent_id, sampled,
                    exclude, method, path, routes.pattern_for(path), status, request_size, response_size,
                    scheme, version, server_address or peer_address, peer_port, local_address, local_port,
                    f"{scheme}://{authority}{path}", error,
                ))  # fmt: skip
        return spans
