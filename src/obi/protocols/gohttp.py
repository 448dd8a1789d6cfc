"""Go net/http requests, as the Go uprobes saw them: spans without parsing bytes.

The kernel reads a Go program's own structures (http.Request, url.URL, the
status its handler wrote) and sends one record per request, server or client
(struct obi_go_http). The span is the same HttpSpan an HTTP/1 exchange gives,
with OBI's names and attributes, for HTTP/1.1 and HTTP/2 alike. A client call
made while a request is served (in its goroutine, or one it started) carries
that request's trace id and span id as its parent.
"""

from __future__ import annotations

from collections.abc import Callable

from obi.ebpf._libbpf import lib
from obi.ebpf.ring import struct_layout
from obi.protocols.base import SpanStats
from obi.protocols.http import host_name
from obi.traces.model import (
    EXCLUDE_METRICS,
    EXCLUDE_TRACES,
    SPAN_KIND_CLIENT,
    SPAN_KIND_SERVER,
    HttpSpan,
    ServiceIdentity,
)
from obi.traces.routes import RouteMatcher

GO_HTTP_LAYOUT, GO_HTTP_FIELDS = struct_layout("struct obi_go_http", frozenset({"kind", "pad", "pad1"}))
GO_HTTP_SIZE = GO_HTTP_LAYOUT.size
_FLAG_TLS: int = lib.OBI_GO_FLAG_TLS
_FLAG_PARENT: int = lib.OBI_GO_FLAG_PARENT
_FLAG_ADDR: int = lib.OBI_GO_FLAG_ADDR
_EXCLUDE_BY_MODE = {"all": EXCLUDE_TRACES | EXCLUDE_METRICS, "traces": EXCLUDE_TRACES,
                    "metrics": EXCLUDE_METRICS}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _text(raw: bytes, length: int) -> str:
    return raw[:length].decode("utf-8", "replace")


def split_host_port(host: str, scheme: str) -> tuple[str, int]:
    """("name", port) of a URL's host[:port], the scheme's port when there is none."""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
        return name.strip("[]"), int(port)
    return host.strip("[]"), _DEFAULT_PORTS.get(scheme, 0)


class GoHttpSpans:
    """struct obi_go_http -> HttpSpan (routes and ignored routes as for HTTP/1)."""

    def __init__(self, routes: RouteMatcher, stats: SpanStats | None = None,
                 ignore_mode: str = "all") -> None:
        self._routes = routes
        self.stats = stats or SpanStats()
        self._ignored_exclude = _EXCLUDE_BY_MODE[ignore_mode]

    def span(self, record: bytes | memoryview, offset: int, service: ServiceIdentity, epoch_offset: int,
             address: Callable[[int, bytes], str]) -> HttpSpan | None:
        """The span of the record at `offset`; None when its route is ignored for everything.
        `address(family, raw16) -> str` prints addresses (the caller's cache)."""
        (role, flags, proto_major, _, status, family, local_port, peer_port, method_len, scheme_len,
         host_len, path_len, start_ns, end_ns, req_len, resp_len, _, trace_id, span_id, parent_span_id,
         local_raw, peer_raw, method_raw, scheme_raw, host_raw, path_raw) = GO_HTTP_LAYOUT.unpack_from(
            record, offset)  # fmt: skip
        method = _text(method_raw, method_len)
        path = _text(path_raw, path_len) or "/"
        host = _text(host_raw, host_len)
        routes = self._routes
        exclude = 0
        if routes.has_ignored and routes.is_ignored(path):
            exclude = self._ignored_exclude
            self.stats.ignored_route += 1
            if exclude == EXCLUDE_TRACES | EXCLUDE_METRICS:
                return None
        scheme = "https" if flags & _FLAG_TLS else "http"
        parent = parent_span_id if flags & _FLAG_PARENT else b""
        start, end = start_ns + epoch_offset, end_ns + epoch_offset
        request_size, response_size = max(req_len, 0), max(resp_len, 0)
        if role == lib.OBI_ROLE_SERVER:
            local = address(family, local_raw) if flags & _FLAG_ADDR else ""
            peer = address(family, peer_raw) if flags & _FLAG_ADDR else ""
            server_address = host_name(host) if host else local
            if not flags & _FLAG_ADDR:
                local_port = split_host_port(host, scheme)[1] if host else 0
                peer_port = 0
            version = "2" if proto_major == 2 else "1.1"
            return HttpSpan(
                service, SPAN_KIND_SERVER, start, end, trace_id, span_id, parent, True, exclude,
                method, path, routes.route_for(path), status, request_size, response_size, scheme, version,
                server_address, local_port, peer, peer_port, "", "",
            )  # fmt: skip
        url_scheme = _text(scheme_raw, scheme_len) or scheme
        name, port = split_host_port(host, url_scheme)
        return HttpSpan(
            service, SPAN_KIND_CLIENT, start, end, trace_id, span_id, parent, True, exclude,
            method, path, routes.pattern_for(path), status, request_size, response_size, scheme, "1.1",
            name, port, "", 0, f"{url_scheme}://{host}{path}", "",
        )  # fmt: skip
