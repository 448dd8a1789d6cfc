"""The HTTP endpoint Prometheus scrapes, served on the event loop.

A small HTTP/1.1 server: GET (or HEAD) of a known path answers the text
exposition, anything else a short error, and every connection is closed after
its answer. What a scraper can make obi hold is bounded: a request head of at
most 8 KiB read within a few seconds, a bounded number of connections at once
(past it a connection is closed at once), and a body written in pieces, each
sent before the next, so a slow scraper holds one piece, not a copy of the
body. Scrapes that come together share one rendering of the metrics, which gives
the event loop turns as it goes (obi.export.prometheus.render_async).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import structlog

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
MAX_HEAD_BYTES = 8192
HEAD_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 32
PIECE_BYTES = 64 << 10
# Scrapes within this long of a rendering get the same body (concurrent scrapers render once).
SHARED_RENDER_S = 0.5

Render = Callable[[], Awaitable[bytes]]
OTHER_PATHS = "(other)"  # the requests for paths obi does not serve, counted together


@dataclass
class ScrapeStats:
    """Requests answered, by path and status code (obi_prometheus_http_requests_total)."""

    requests: dict[tuple[str, int], int] = field(default_factory=dict)
    refused_connections: int = 0

    def count(self, path: str, status: int) -> None:
        key = (path, status)
        self.requests[key] = self.requests.get(key, 0) + 1


class ScrapeServer:
    """Serves ``routes`` (path -> a function rendering the body) on ``host:port``."""

    def __init__(self, port: int, routes: Mapping[str, Render], host: str = "0.0.0.0",
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.port = port
        self.host = host
        self._routes = dict(routes)
        self._max_connections = max_connections
        self._writers: set[asyncio.StreamWriter] = set()  # the connections open now
        self._server: asyncio.Server | None = None
        self._rendered: dict[str, tuple[float, bytes]] = {}
        self._rendering: dict[str, asyncio.Task[bytes]] = {}  # under way: later scrapes wait for it
        self.stats = ScrapeStats()
        self._log = structlog.get_logger().bind(component="export.prometheus")

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port,
                                                      limit=MAX_HEAD_BYTES, reuse_address=True)
        except OSError as err:
            raise OSError(err.errno, f"cannot listen on port {self.port} for Prometheus scrapes "
                          f"(prometheus_export.port, OTEL_EBPF_PROMETHEUS_PORT): "
                          f"{os.strerror(err.errno) if err.errno else err}") from None
        if self.port == 0:  # tests: the port the kernel chose
            self.port = self._server.sockets[0].getsockname()[1]
        self._log.info("prometheus_endpoint_listening", port=self.port, paths=sorted(self._routes))

    @property
    def paths(self) -> list[str]:
        return sorted(self._routes)

    def open_transports(self) -> list[asyncio.WriteTransport]:
        return [writer.transport for writer in self._writers]

    async def close(self) -> None:
        """Stops listening and closes the connections open now (a scrape under way is cut)."""
        for writer in list(self._writers):
            writer.close()
        for _ in range(100):  # their handlers see the close and end by themselves
            if not self._writers:
                break
            await asyncio.sleep(0.01)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= self._max_connections:
            self.stats.refused_connections += 1
            writer.close()
            return
        self._writers.add(writer)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            await self._send(writer, 431, b"request head too large\n")
            return
        except asyncio.IncompleteReadError:
            return  # closed before a whole head
        request_line = head.split(b"\r\n", 1)[0]
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            await self._send(writer, 400, b"bad request\n")
            return
        method, target = parts[0], parts[1].decode("latin-1")
        path = target.split("?", 1)[0]
        render = self._routes.get(path)
        if render is None:
            self.stats.count(OTHER_PATHS, 404)  # one key: a client's paths must not grow the table
            await self._send(writer, 404, b"not found\n")
            return
        if method not in (b"GET", b"HEAD"):
            self.stats.count(path, 405)
            await self._send(writer, 405, b"method not allowed\n", allow=True)
            return
        try:
            body = await self._body(path, render)
        except Exception as err:  # a rendering bug costs this scrape, never the agent
            self.stats.count(path, 500)
            self._log.error("prometheus_render_failed", path=path, error=repr(err))
            await self._send(writer, 500, b"internal error\n")
            return
        self.stats.count(path, 200)
        await self._send(writer, 200, body, content_type=CONTENT_TYPE, head_only=method == b"HEAD")

    async def _body(self, path: str, render: Render) -> bytes:
        cached = self._rendered.get(path)
        if cached is not None and time.monotonic() - cached[0] < SHARED_RENDER_S:
            return cached[1]
        task = self._rendering.get(path)
        if task is None:
            task = self._rendering[path] = asyncio.ensure_future(render())
            task.add_done_callback(lambda _: self._rendering.pop(path, None))
        body = await asyncio.shield(task)  # a scraper that goes does not cancel the others' rendering
        self._rendered[path] = (time.monotonic(), body)
        return body

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes,
                    content_type: bytes = b"text/plain; charset=utf-8", head_only: bool = False,
                    allow: bool = False) -> None:
        reason = _REASONS[status]
        head = (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n"
                % (status, reason, content_type, len(body)))
        if allow:
            head += b"Allow: GET, HEAD\r\n"
        writer.write(head + b"\r\n")
        if head_only:
            body = b""
        view = memoryview(body)
        for start in range(0, len(view), PIECE_BYTES):
            writer.write(view[start:start + PIECE_BYTES])
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed",
            431: b"Request Header Fields Too Large", 500: b"Internal Server Error"}
