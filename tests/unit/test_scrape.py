"""The scrape endpoint on a real socket: answers, refusals, and what a bad client can hold."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import obi.export.scrape as scrape
from obi.export.scrape import ScrapeServer

BODY = b"# TYPE up gauge\nup 1\n"


@pytest.fixture
async def server() -> AsyncIterator[ScrapeServer]:
    rendered = []

    async def render() -> bytes:
        rendered.append(1)
        await asyncio.sleep(0.05)  # scrapes that come meanwhile wait for this rendering
        return BODY + b"# renders %d\n" % len(rendered)

    s = ScrapeServer(0, {"/metrics": render}, host="127.0.0.1", max_connections=4)
    await s.start()
    yield s
    await s.close()


async def exchange(port: int, request: bytes, wait_s: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), wait_s)
    except ConnectionResetError:  # closed by the server with the request unread
        return b""
    finally:
        writer.close()


def split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *fields = head.decode().split("\r\n")
    return status, {k.lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}, body


@pytest.mark.asyncio
async def test_a_scrape_gets_the_exposition(server: ScrapeServer) -> None:
    status, headers, body = split(await exchange(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["content-length"]) == len(body) and body.startswith(BODY)
    status, _, body = split(await exchange(server.port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"))
    assert status == "HTTP/1.1 200 OK" and body.startswith(BODY)
    status, headers, body = split(await exchange(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n"))
    assert status == "HTTP/1.1 200 OK" and body == b"" and int(headers["content-length"]) > 0
    assert server.stats.requests[("/metrics", 200)] == 3


@pytest.mark.asyncio
async def test_scrapes_that_come_together_share_one_rendering(server: ScrapeServer) -> None:
    answers = await asyncio.gather(*(exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
                                     for _ in range(3)))
    assert {split(a)[2] for a in answers} == {BODY + b"# renders 1\n"}


@pytest.mark.asyncio
@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /other HTTP/1.1\r\n\r\n", "HTTP/1.1 404 Not Found"),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 405 Method Not Allowed"),
    (b"GARBAGE\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    (b"GET /metrics SPDY/3\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n",
     "HTTP/1.1 431 Request Header Fields Too Large"),
])
async def test_bad_requests_get_a_short_answer(server: ScrapeServer, request_bytes: bytes,
                                               status: str) -> None:
    assert split(await exchange(server.port, request_bytes))[0] == status


@pytest.mark.asyncio
async def test_a_client_that_sends_nothing_is_dropped(server: ScrapeServer,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scrape, "HEAD_TIMEOUT_S", 0.2)
    assert await exchange(server.port, b"GET /metr", wait_s=3.0) == b""  # closed, unanswered


@pytest.mark.asyncio
async def test_connections_past_the_limit_are_closed_at_once(server: ScrapeServer) -> None:
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(4)]
    await asyncio.sleep(0.05)
    assert await exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n", wait_s=2.0) == b""
    assert server.stats.refused_connections == 1
    for _, writer in idle:
        writer.close()
    await asyncio.sleep(0.05)
    assert split(await exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.1 200 OK"


@pytest.mark.asyncio
async def test_a_slow_reader_holds_a_piece_of_a_large_body_not_a_copy() -> None:
    big = b"x" * (8 << 20)

    async def render() -> bytes:
        return big

    s = ScrapeServer(0, {"/metrics": render}, host="127.0.0.1")
    await s.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port, limit=1 << 16)
        writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)  # not reading: the server writes until the sockets are full, then waits
        [transport] = s.open_transports()
        assert transport.get_write_buffer_size() <= 2 * scrape.PIECE_BYTES
        received = 0
        while chunk := await asyncio.wait_for(reader.read(1 << 16), 5):
            received += len(chunk)
        assert received > len(big)
        writer.close()
    finally:
        await s.close()


@pytest.mark.asyncio
async def test_unknown_paths_are_counted_together(server: ScrapeServer) -> None:
    for i in range(5):
        answer = await exchange(server.port, b"GET /x%d HTTP/1.1\r\n\r\n" % i)
        assert split(answer)[0] == "HTTP/1.1 404 Not Found"
    assert server.stats.requests == {("(other)", 404): 5}


@pytest.mark.asyncio
async def test_a_rendering_that_fails_is_a_500_and_the_server_goes_on() -> None:
    calls = []

    async def render() -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("bug")
        return BODY

    s = ScrapeServer(0, {"/metrics": render}, host="127.0.0.1")
    await s.start()
    try:
        assert split(await exchange(s.port, b"GET /metrics HTTP/1.1\r\n\r\n"))[0] == \
            "HTTP/1.1 500 Internal Server Error"
        assert split(await exchange(s.port, b"GET /metrics HTTP/1.1\r\n\r\n"))[2] == BODY
        assert s.stats.requests == {("/metrics", 500): 1, ("/metrics", 200): 1}
    finally:
        await s.close()
