"""obi._http1 (C) says what its Python definition says of every request header block."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from obi import _http1
from obi.protocols import http
from obi.protocols.http import HttpRequestFacts

NAMES = [b"Host", b"host", b"HOST", b"hOsT", b"traceparent", b"TraceParent", b"Content-Length",
         b"content-length", b"CONTENT-LENGTH", b"Transfer-Encoding", b"transfer-encoding", b"X-Host",
         b"Host ", b"Content-Lengths", b"trace", b"", b"Accept"]
VALUES = [b"example.com", b" example.com:8080\t", b"12", b" 0 ", b"-1", b"1" * 18, b"1" * 19, b"+5", b"1 2",
          b"chunked", b"gzip, CHUNKED", b"Chunk", b"chunke", b"00-0af7651916cd43dd8448eb211c80319c-"
          b"b7ad6b7169203331-01", b"caf\xc3\xa9", b"\xff\xfe", b"", b"\t", b"a\rb", b"a\nb", b"\r"]


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    line = draw(st.sampled_from([b"GET / HTTP/1.1", b"POST /x?y=1 HTTP/1.0", b"GET /"]))
    headers = draw(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from([b":", b": ", b":\t", b""]),
                                      st.sampled_from(VALUES)), max_size=8))
    block = b"".join(b"\r\n" + name + colon + value for name, colon, value in headers)
    ending = draw(st.sampled_from([b"\r\n\r\n", b"\r\n", b"", b"\r\n\r", b"\n\r\n"]))
    body = draw(st.binary(max_size=24))
    data = line + block + ending + body
    return data[:draw(st.integers(len(line), len(data)))]  # the capture may be cut anywhere after the line


def both(data: bytes, total_len: int) -> tuple[HttpRequestFacts, HttpRequestFacts]:
    line_end = data.find(b"\r\n")
    line_end = len(data) if line_end < 0 else line_end
    args = (data, line_end, total_len, "GET", "/", "/", "1.1", HttpRequestFacts)
    return _http1.request_headers(*args), http._request_headers_py(*args)


def test_the_http1_path_runs_the_c_extension() -> None:
    assert http._request_headers is _http1.request_headers


@given(header_blocks(), st.integers(0, 200))
@settings(max_examples=3000, deadline=None)
@example(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", 47)
@example(b"GET / HTTP/1.1\r\n\r\n", 18)
@example(b"GET / HTTP/1.1\r\nhost:", 21)
@example(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 80)
def test_header_blocks(data: bytes, extra: int) -> None:
    native, python = both(data, len(data) + extra)
    assert type(native) is HttpRequestFacts
    assert native == python


@given(st.binary(max_size=64), st.binary(max_size=64), st.integers(0, 200))
@settings(max_examples=2000, deadline=None)
def test_any_bytes(before: bytes, after: bytes, total: int) -> None:
    native, python = both(before + b"\r\n" + after, total)
    assert native == python


def test_bad_arguments_raise_and_leak_nothing() -> None:
    for args in [(b"x", 5, 1, "GET", "/", "/", "1.1", HttpRequestFacts),
                 (b"x", -1, 1, "GET", "/", "/", "1.1", HttpRequestFacts),
                 ("x", 0, 1, "GET", "/", "/", "1.1", HttpRequestFacts),
                 (b"x", 0, 1, "GET", "/", "/", "1.1", dict),
                 (b"x", 0, 1)]:
        try:
            _http1.request_headers(*args)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        raise AssertionError(f"accepted {args!r}")
