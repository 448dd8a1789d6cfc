"""HTTP/2 connections (RFC 9113) as streams: frames in, in order per direction; finished
streams out, each with what its header blocks said (gRPC's trailers included).

A connection interleaves its streams' frames; each direction has its own HPACK context
(obi.protocols.hpack_context). A stream opens with the client's HEADERS and is over when
the server's side ends (END_STREAM on its last DATA or trailing HEADERS) or either side
resets it. A frame whose payload was not captured whole is still counted for the stream's
state; a header block that was not captured whole is missed: the HPACK context of its
direction forgets what it held (UNKNOWN headers after it, never wrong ones), and the stream
it belonged to reports only what is known.

Pure: no I/O, no clock; any bytes give streams or ParseError, nothing else. The kernel walks
an HTTP/2 connection frame by frame (struct obi_h2 in bpf/capture.h); Http2Records turns its
records into spans.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from obi.ebpf._libbpf import lib
from obi.ebpf.records import H2_LAYOUT, H2_SIZE
from obi.protocols.base import ROLE_SERVER, Connection, IdGenerator
from obi.protocols.errors import ParseError
from obi.protocols.hpack_context import UNKNOWN, HpackContext
from obi.protocols.http import host_name, parse_traceparent
from obi.traces.model import SPAN_KIND_CLIENT, SPAN_KIND_SERVER, HttpSpan, RpcSpan, ServiceIdentity, Span
from obi.traces.routes import RouteMatcher

__all__ = ["CLIENT_TO_SERVER", "GRPC_STATUS_NAMES", "PREFACE", "SERVER_TO_CLIENT", "H2Connection", "H2Frame",
           "H2Stream", "Http2Records", "Http2Spans", "split_frames"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CLIENT_TO_SERVER = 0
SERVER_TO_CLIENT = 1
# Frame types.
DATA, HEADERS, RST_STREAM, PUSH_PROMISE, CONTINUATION = 0x0, 0x1, 0x3, 0x5, 0x9
CHUNK_HEADER = 11  # the kernel's chunk: captured payload length (2), frame header (9)
MORE: int = lib.OBI_H2_MORE
PAYLOAD_MAX: int = lib.OBI_H2_PAYLOAD_MAX
DATA_PREFIX: int = lib.OBI_H2_DATA_PREFIX
# the payload bytes the kernel captures of a frame, by type (none of the others)
_KEPT_PAYLOADS = {HEADERS: PAYLOAD_MAX, CONTINUATION: PAYLOAD_MAX, PUSH_PROMISE: PAYLOAD_MAX,
                  RST_STREAM: PAYLOAD_MAX, DATA: DATA_PREFIX}
_CLOSED: int = lib.OBI_H2_CLOSED
_START: int = lib.OBI_H2_START
_LOST: int = lib.OBI_H2_LOST
_TLS: int = lib.OBI_H2_TLS
_PARENT: int = lib.OBI_H2_PARENT
_PARENT_SIZE: int = lib.OBI_H2_PARENT_SIZE
_ROLE_SERVER = ROLE_SERVER
END_STREAM = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
FRAME_HEADER = 9
MAX_FRAME = (1 << 24) - 1
MAX_STREAMS = 1024  # open streams followed per connection; more are counted and left out
MAX_HEADER_BLOCK = 64 * 1024
# gRPC status codes by number (grpc/doc/statuscodes.md): rpc.response.status_code is the name.
GRPC_STATUS_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                     "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                     "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                     "UNAUTHENTICATED")
# Request and response headers kept (the rest are decoded, for the HPACK context, and dropped).
_KEPT = frozenset({b":method", b":path", b":authority", b":scheme", b":status", b"content-type",
                   b"traceparent", b"grpc-status", b"content-length"})


class H2Frame(NamedTuple):
    kind: int
    flags: int
    stream_id: int
    payload: bytes  # as captured
    length: int  # the payload's length on the wire

    @property
    def complete(self) -> bool:
        return len(self.payload) == self.length


def split_frames(data: bytes) -> tuple[list[H2Frame], int]:
    """The whole frames at the start of `data`, and where the first incomplete one starts."""
    frames: list[H2Frame] = []
    at, size = 0, len(data)
    while at + FRAME_HEADER <= size:
        length = int.from_bytes(data[at:at + 3], "big")
        end = at + FRAME_HEADER + length
        if end > size:
            break
        stream_id = int.from_bytes(data[at + 5:at + 9], "big") & 0x7FFFFFFF
        frames.append(H2Frame(data[at + 3], data[at + 4], stream_id, data[at + FRAME_HEADER:end], length))
        at = end
    return frames, at


@dataclass(slots=True)
class H2Stream:
    """One request and its response on a connection."""

    stream_id: int
    start_ns: int  # the client's first HEADERS
    end_ns: int = 0  # the stream's end (0: not over)
    request: dict[bytes, bytes] = field(default_factory=dict)  # kept request headers, UNKNOWN values as such
    response: dict[bytes, bytes] = field(default_factory=dict)  # response headers and trailers
    request_known: bool = True  # every request header block was decoded
    response_known: bool = True
    request_body: int = 0  # DATA payload bytes each way
    response_body: int = 0
    reset: int = -1  # RST_STREAM's error code, -1: none
    client_done: bool = False
    server_done: bool = False
    framed: bool = False  # a request DATA frame held exactly one gRPC length-prefixed message
    parent: bytes = b""  # a client's: trace id and span id of the request its thread served
    is_grpc: bool = False  # decided when it ends (H2Connection): a gRPC call

    @property
    def grpc(self) -> bool:
        """The stream says it is a gRPC call: its content-type, either way, or a gRPC status."""
        return (self.request.get(b"content-type", b"").startswith(b"application/grpc")
                or self.response.get(b"content-type", b"").startswith(b"application/grpc")
                or self.grpc_status is not None)

    @property
    def known(self) -> bool:
        """Every header of the stream, both ways, was decoded."""
        return self.request_known and self.response_known

    @property
    def grpc_status(self) -> str | None:
        """The gRPC status name from the trailers (None: no trailers seen, or not readable)."""
        raw = self.response.get(b"grpc-status")
        if raw is None or raw is UNKNOWN or not raw.isdigit():
            return None
        code = int(raw)
        return GRPC_STATUS_NAMES[code] if code < len(GRPC_STATUS_NAMES) else str(code)


class _Block(NamedTuple):
    """A header block being gathered across CONTINUATION frames."""

    stream_id: int
    fragments: list[bytes]
    end_stream: bool
    whole: bool  # every fragment was captured whole
    promise: bool = False  # a PUSH_PROMISE's: it feeds the HPACK context, and nothing else


@dataclass
class H2Stats:
    streams: int = 0
    streams_dropped: int = 0  # more open at once than MAX_STREAMS
    header_blocks_missed: int = 0  # not captured whole, or not HPACK: the context forgot its entries
    streams_partly_known: int = 0  # ended with headers obi could not decode (UNKNOWN): reported without them
    frames_refused: int = 0  # frames that break the protocol (a CONTINUATION out of place, ...)


class H2Connection:
    """One connection's streams, from its frames in order (see the module docstring)."""

    def __init__(self, midway: bool = False, stats: H2Stats | None = None) -> None:
        """`midway`: obi did not see the connection's first frames."""
        self.contexts = (HpackContext(complete=not midway), HpackContext(complete=not midway))
        self.streams: dict[int, H2Stream] = {}
        self._blocks: list[_Block | None] = [None, None]
        self._pending: list[H2Frame | None] = [None, None]  # a frame whose payload may go on
        self._pending_ns = [0, 0]  # when its header came
        self._parent = b""  # of the streams the frames being fed open (struct obi_h2's PARENT)
        self.stats = stats or H2Stats()
        self.grpc = False  # a stream of the connection was gRPC: a gRPC channel

    def feed(self, direction: int, time_ns: int, frames: list[H2Frame]) -> list[H2Stream]:
        """The frames one side sent at `time_ns`; the streams they finished."""
        done: list[H2Stream] = []
        for frame in frames:
            stream = self._frame(direction, time_ns, frame)
            if stream is not None and (stream.server_done or stream.reset >= 0):
                stream.end_ns = time_ns
                del self.streams[stream.stream_id]
                done.append(stream)
                self._ended(stream)
        return done

    def _ended(self, stream: H2Stream) -> None:
        """A stream is a gRPC call when its headers say so; when they cannot (its content-type
        was indexed before obi joined the connection), when its data was gRPC messages or the
        connection carried gRPC calls before (and its answer, if known, is a 200 as gRPC's are)."""
        stream.is_grpc = stream.grpc or (
            (stream.framed or self.grpc) and not stream.request_known
            and stream.request.get(b"content-type") in (None, UNKNOWN)
            and stream.response.get(b":status", b"200") in (b"200", UNKNOWN))
        self.grpc = self.grpc or stream.is_grpc
        if not stream.known:
            self.stats.streams_partly_known += 1

    def feed_chunks(self, direction: int, time_ns: int, data: bytes, lost: bool = False,
                    parent: bytes = b"") -> list[H2Stream]:
        """The kernel's chunks of one call (see bpf/capture.h, struct obi_h2): frames whose
        payload may go on in later calls' chunks (a frame counts from the call its header came
        in). `lost`: frames before these were not captured (the header block under way, and
        the HPACK context, are missed). `parent`: the trace and span ids of the streams these
        frames open (a client's, serving a request)."""
        self._parent = parent
        pending = self._pending[direction]
        if lost and pending is not None:
            self._pending[direction] = pending = None
        if lost:
            self._lose(direction)
        pending_ns = self._pending_ns[direction]
        frames: list[tuple[int, H2Frame]] = []
        at, size = 0, len(data)
        while at + CHUNK_HEADER <= size:
            captured = data[at] | data[at + 1] << 8
            header = data[at + 2:at + CHUNK_HEADER]
            payload = data[at + CHUNK_HEADER:at + CHUNK_HEADER + captured]
            at += CHUNK_HEADER + captured
            if header[3] == MORE:
                if pending is not None:
                    pending = pending._replace(payload=pending.payload + payload)
                    if len(pending.payload) >= min(pending.length, _KEPT_PAYLOADS[pending.kind]):
                        frames.append((pending_ns, pending))
                        pending = None
                continue
            if pending is not None:
                frames.append((pending_ns, pending))
            length = int.from_bytes(header[:3], "big")
            stream_id = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            pending, pending_ns = H2Frame(header[3], header[4], stream_id, payload, length), time_ns
            if len(payload) >= min(length, _KEPT_PAYLOADS.get(header[3], 0)):
                frames.append((time_ns, pending))  # all of it that will come (a DATA frame's: none)
                pending = None
        self._pending[direction], self._pending_ns[direction] = pending, pending_ns
        done: list[H2Stream] = []
        for frame_ns, frame in frames:
            done += self.feed(direction, frame_ns if frame_ns else time_ns, [frame])
        return done

    def close(self) -> list[H2Stream]:
        """The connection closed: its streams in flight, ended now (reset -1 and not done)."""
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            self._ended(stream)
        return streams

    def _lose(self, direction: int) -> None:
        block = self._blocks[direction]
        self._blocks[direction] = None
        self._missed(direction, block.stream_id if block is not None else 0)

    def _frame(self, direction: int, time_ns: int, frame: H2Frame) -> H2Stream | None:
        kind, flags, stream_id, payload, _ = frame
        block = self._blocks[direction]
        if block is not None and (kind != CONTINUATION or stream_id != block.stream_id):
            self.stats.frames_refused += 1  # a header block broken off: what it added is unknown
            self._blocks[direction] = None
            self._missed(direction, block.stream_id)
            block = None
        if kind == PUSH_PROMISE:  # its header block feeds the server's HPACK context; no span
            fragment, whole = _headers_fragment(frame, promised=True)
            block = _Block(stream_id, [fragment], False, whole, promise=True)
        elif kind == HEADERS:
            if not stream_id:
                self.stats.frames_refused += 1
                return None
            fragment, whole = _headers_fragment(frame)
            block = _Block(stream_id, [fragment], bool(flags & END_STREAM), whole)
            if direction == CLIENT_TO_SERVER and stream_id not in self.streams:
                if len(self.streams) >= MAX_STREAMS:
                    self.stats.streams_dropped += 1
                else:
                    self.streams[stream_id] = H2Stream(stream_id, time_ns, parent=self._parent)
                    self.stats.streams += 1
        elif kind == CONTINUATION:
            if block is None:
                self.stats.frames_refused += 1
                return None
            block.fragments.append(payload)
            block = block._replace(whole=block.whole and frame.complete)
        elif kind == DATA:
            stream = self.streams.get(stream_id)
            if stream is None:
                return None
            if direction == CLIENT_TO_SERVER:
                if not stream.framed and len(payload) >= 5 and payload[0] <= 1 and not flags & PADDED:
                    stream.framed = int.from_bytes(payload[1:5], "big") == frame.length - 5
                stream.request_body += _data_length(frame)
                stream.client_done = stream.client_done or bool(flags & END_STREAM)
            else:
                stream.response_body += _data_length(frame)
                stream.server_done = stream.server_done or bool(flags & END_STREAM)
            return stream
        elif kind == RST_STREAM:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.reset = int.from_bytes(payload[:4], "big") if len(payload) >= 4 else 0
            return stream
        else:
            return None
        if not flags & END_HEADERS:
            self._blocks[direction] = block
            return None
        self._blocks[direction] = None
        return self._header_block(direction, block)

    def _header_block(self, direction: int, block: _Block) -> H2Stream | None:
        stream = None if block.promise else self.streams.get(block.stream_id)
        known = block.whole
        headers: list[tuple[bytes, bytes]] = []
        if block.whole:
            try:
                headers = self.contexts[direction].decode(b"".join(block.fragments))
            except ParseError:
                known = False
                self.stats.header_blocks_missed += 1
        else:
            self._missed(direction, block.stream_id)
        if stream is None:
            return None
        target = stream.request if direction == CLIENT_TO_SERVER else stream.response
        for name, value in headers:
            if name in _KEPT:
                target.setdefault(name, value)
            elif name is UNKNOWN:
                known = False
        if direction == CLIENT_TO_SERVER:
            stream.request_known = stream.request_known and known
            stream.client_done = stream.client_done or block.end_stream
        else:
            stream.response_known = stream.response_known and known
            stream.server_done = stream.server_done or block.end_stream
        return stream

    def _missed(self, direction: int, stream_id: int) -> None:
        self.contexts[direction].missed()
        self.stats.header_blocks_missed += 1
        stream = self.streams.get(stream_id)
        if stream is not None:
            if direction == CLIENT_TO_SERVER:
                stream.request_known = False
            else:
                stream.response_known = False


def _headers_fragment(frame: H2Frame, promised: bool = False) -> tuple[bytes, bool]:
    """A HEADERS (or PUSH_PROMISE) frame's header block fragment (padding, priority and the
    promised stream id removed), and whether it was captured whole."""
    payload, flags = frame.payload, frame.flags
    start, pad = 0, 0
    if flags & PADDED:
        if not payload:
            return b"", False
        pad, start = payload[0], 1
    if promised:
        start += 4
    elif flags & PRIORITY_FLAG:
        start += 5
    if not frame.complete:
        return payload[start:], False
    end = len(payload) - pad
    if end < start:
        raise ParseError("HTTP/2 HEADERS padding longer than its payload")
    return payload[start:end], True


def _data_length(frame: H2Frame) -> int:
    """A DATA frame's data bytes (its padding left out)."""
    if frame.flags & PADDED and frame.payload:
        return max(0, frame.length - 1 - frame.payload[0])
    return frame.length


# ---- spans -------------------------------------------------------------------

_UNKNOWN_METHOD = "_OTHER"  # OTel's method for one not known


def _text(value: bytes | None) -> str | None:
    """A header's value as text (None: absent, or UNKNOWN)."""
    if value is None or value is UNKNOWN:
        return None
    return value.decode("utf-8", "replace")


class Http2Spans:
    """Finished HTTP/2 streams -> spans: gRPC calls (content-type application/grpc) as RpcSpan,
    the others as HttpSpan (protocol version 2), named and attributed as OBI does."""

    def __init__(self, routes: RouteMatcher, ids: IdGenerator | None = None) -> None:
        self._routes = routes
        self._getrandbits = (ids or IdGenerator()).getrandbits

    def span(self, stream: H2Stream, server: bool, connection: Connection, tls: bool,
             ended: str = "") -> Span:
        """`ended`: why a stream in flight ended (its connection closed)."""
        service, _, _, local_address, local_port, peer_address, peer_port = connection
        request, response = stream.request, stream.response
        if server:
            kind, server_address, server_port, client_address, client_port = (
                SPAN_KIND_SERVER, local_address, local_port, peer_address, peer_port)
        else:
            kind, server_address, server_port, client_address, client_port = (
                SPAN_KIND_CLIENT, peer_address, peer_port, local_address, local_port)
        authority = _text(request.get(b":authority"))
        if authority and not server:
            server_address = host_name(authority)
        trace_id, span_id, parent_id, sampled = self._ids(_text(request.get(b"traceparent")), server,
                                                          stream.parent)
        error = "stream_reset" if stream.reset >= 0 else ended
        path = _text(request.get(b":path")) or ""
        start_ns, end_ns = stream.start_ns, stream.end_ns
        if stream.is_grpc:
            status = stream.grpc_status or ""
            return RpcSpan(service, kind, start_ns, end_ns, trace_id, span_id, parent_id, sampled, 0, path,
                           status, server_address, server_port, client_address, client_port,
                           error if not status else "")
        method = _text(request.get(b":method")) or _UNKNOWN_METHOD
        raw_status = _text(response.get(b":status")) or ""
        status_code = int(raw_status) if raw_status.isdigit() and 100 <= int(raw_status) <= 599 else 0
        scheme = _text(request.get(b":scheme")) or ("https" if tls else "http")
        clean = path.partition("?")[0] or ("/" if path else "")
        route = None
        if clean:
            route = self._routes.route_for(clean) if server else self._routes.pattern_for(clean)
        url = f"{scheme}://{authority or f'{peer_address}:{peer_port}'}{clean}" if not server else ""
        return HttpSpan(service, kind, start_ns, end_ns, trace_id, span_id, parent_id, sampled, 0, method,
                        clean, route, status_code, stream.request_body, stream.response_body, scheme, "2",
                        server_address, server_port, client_address, client_port, url,
                        error or ("" if status_code else "no_response"))

    def _ids(self, traceparent: str | None, server: bool,
             kernel_parent: bytes) -> tuple[bytes, bytes, bytes, bool]:
        """(trace, span, parent, sampled): a server continues its caller's traceparent; a
        client's traceparent, written by the application, is the span's own; else a client's
        span is a child of the request its thread served (`kernel_parent`)."""
        parent = parse_traceparent(traceparent) if traceparent else None
        if parent is not None:
            if server:
                return (parent.trace_id, self._getrandbits(64).to_bytes(8, "big"), parent.parent_span_id,
                        parent.sampled)
            return parent.trace_id, parent.parent_span_id, b"", parent.sampled
        if kernel_parent and not server:
            return kernel_parent[:16], self._getrandbits(64).to_bytes(8, "big"), kernel_parent[16:24], True
        fresh = self._getrandbits(192).to_bytes(24, "big")
        return fresh[:16], fresh[16:], b"", True


class _Followed(NamedTuple):
    """A connection followed as HTTP/2: its streams, and who and where for their spans."""

    h2: H2Connection
    server: bool
    connection: Connection
    tls: bool


class Http2Records:
    """The kernel's HTTP/2 records (struct obi_h2) -> spans: one H2Connection per connection,
    its finished streams as spans; a connection's close ends its streams in flight."""

    def __init__(self, spans: Http2Spans, stats: H2Stats | None = None, limit: int = 16384) -> None:
        self._spans = spans
        self.stats = stats or H2Stats()
        self._limit = limit
        self._followed: dict[int, _Followed] = {}

    def record(self, batch: bytes, base: int, epoch_offset: int, identity: ServiceIdentity | None,
               address: Callable[[int, bytes], str]) -> list[Span]:
        (_, direction, role, flags, _, conn, ts_ns, family, local_port, peer_port, length, local_raw,
         peer_raw) = H2_LAYOUT.unpack_from(batch, base)
        followed = self._followed.get(conn)
        if flags & _CLOSED:
            if followed is None:
                return []
            del self._followed[conn]
            end_ns = ts_ns + epoch_offset
            spans = []
            for stream in followed.h2.close():
                stream.end_ns = end_ns
                spans.append(self._spans.span(stream, followed.server, followed.connection, followed.tls,
                                              "connection_closed"))
            return spans
        if identity is None:
            return []
        if followed is None or flags & _START:
            if len(self._followed) >= self._limit:
                del self._followed[next(iter(self._followed))]
            connection = Connection(identity, 0, 0, address(family, local_raw), local_port,
                                    address(family, peer_raw), peer_port)
            followed = self._followed[conn] = _Followed(
                H2Connection(midway=not flags & _START, stats=self.stats), role == _ROLE_SERVER, connection,
                bool(flags & _TLS))
        at = base + H2_SIZE + length
        data = batch[base + H2_SIZE:at]
        parent = batch[at:at + _PARENT_SIZE] if flags & _PARENT else b""
        done = followed.h2.feed_chunks(direction, ts_ns + epoch_offset, data, bool(flags & _LOST), parent)
        return [self._spans.span(s, followed.server, followed.connection, followed.tls) for s in done]
