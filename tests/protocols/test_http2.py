"""HTTP/2 streams from frames, against the h2 library's client and server talking in memory:
interleaved streams, gRPC trailers, resets, and what is lost (a connection joined mid-way, a
header block cut short) reported as unknown, never wrong."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
from hypothesis import given, settings
from hypothesis import strategies as st

from obi.protocols.hpack_context import UNKNOWN
from obi.protocols.http2 import (
    CLIENT_TO_SERVER,
    PREFACE,
    SERVER_TO_CLIENT,
    H2Connection,
    H2Frame,
    H2Stream,
    split_frames,
)


class Wire:
    """An h2 client and server in memory, and every write each made, in order."""

    def __init__(self) -> None:
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                            validate_inbound_headers=False))
        self.writes: list[tuple[int, bytes]] = []
        self.client.initiate_connection()
        self.server.initiate_connection()
        self.flush()

    def flush(self) -> None:
        for direction, side, peer in ((CLIENT_TO_SERVER, self.client, self.server),
                                      (SERVER_TO_CLIENT, self.server, self.client)):
            data = side.data_to_send()
            if data:
                self.writes.append((direction, data))
                peer.receive_data(data)

    def request(self, stream_id: int, path: str, grpc: bool = False, body: bytes = b"",
                extra: list[tuple[str, str]] | None = None) -> None:
        headers = [(":method", "POST" if body or grpc else "GET"), (":path", path), (":scheme", "http"),
                   (":authority", "svc:50051"), *(extra or [])]
        if grpc:
            headers.append(("content-type", "application/grpc"))
        self.client.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.client.send_data(stream_id, body, end_stream=True)
        self.flush()

    def respond(self, stream_id: int, status: int = 200, body: bytes = b"",
                grpc_status: int | None = None) -> None:
        self.server.send_headers(stream_id, [(":status", str(status))],
                                 end_stream=not body and grpc_status is None)
        if body:
            self.server.send_data(stream_id, body, end_stream=grpc_status is None)
        if grpc_status is not None:
            self.server.send_headers(stream_id, [("grpc-status", str(grpc_status))], end_stream=True)
        self.flush()

    def reset(self, stream_id: int) -> None:
        self.client.reset_stream(stream_id, 8)  # CANCEL
        self.flush()


def replay(writes: list[tuple[int, bytes]], midway: bool = False,
           cut: dict[int, int] | None = None) -> tuple[H2Connection, list[H2Stream]]:
    """Every write through the assembler (a write's frames at its index as the time); `cut`:
    writes whose bytes past an offset were not captured."""
    connection = H2Connection(midway=midway)
    done: list[H2Stream] = []
    pending = [b"", b""]
    for t, (direction, data) in enumerate(writes):
        data = pending[direction] + data
        if direction == CLIENT_TO_SERVER and data.startswith(PREFACE):
            data = data[len(PREFACE):]
        if cut and t in cut:  # the capture lost this write's end: frames past it only as far as known
            frames, used = split_frames(data[:cut[t]])
            rest = data[used:]
            if len(rest) >= 9:
                length = int.from_bytes(rest[:3], "big")
                stream_id = int.from_bytes(rest[5:9], "big")
                frames.append(H2Frame(rest[3], rest[4], stream_id, rest[9:cut[t] - used], length))
            pending[direction] = b""
            done += connection.feed(direction, t, frames)
            break  # the byte stream's frame boundaries past a loss are not known: stop there
        frames, used = split_frames(data)
        pending[direction] = data[used:]
        done += connection.feed(direction, t, frames)
    return connection, done


def test_interleaved_grpc_and_plain_streams() -> None:
    wire = Wire()
    wire.request(1, "/shop.Cart/Add", grpc=True, body=b"\0\0\0\0\x02hi",
                 extra=[("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")])
    wire.request(3, "/index.html")
    wire.respond(3, 404, b"missing")
    wire.respond(1, 200, b"\0\0\0\0\x01k", grpc_status=14)
    _, done = replay(wire.writes)
    assert [s.stream_id for s in done] == [3, 1]
    plain, grpc = done
    assert plain.request[b":path"] == b"/index.html" and plain.response[b":status"] == b"404"
    assert (plain.response_body, plain.grpc, plain.grpc_status) == (7, False, None)
    assert grpc.grpc and grpc.request[b":path"] == b"/shop.Cart/Add"
    assert grpc.grpc_status == "UNAVAILABLE" and grpc.response[b":status"] == b"200"
    assert grpc.request[b"traceparent"].startswith(b"00-0af7651916cd43dd")
    assert (grpc.request_body, grpc.response_body) == (7, 6)
    assert grpc.start_ns < plain.end_ns < grpc.end_ns
    assert all(s.request_known and s.response_known for s in done)


def test_reset_streams_end_with_their_error_code() -> None:
    wire = Wire()
    wire.request(1, "/slow")
    wire.reset(1)
    (stream,) = replay(wire.writes)[1]
    assert (stream.reset, stream.response) == (8, {})


def test_joined_mid_way_streams_know_what_can_be_known() -> None:
    wire = Wire()
    for i in range(3):
        wire.request(1 + 2 * i, f"/item/{i}", extra=[("x-tenant", "acme")])
        wire.respond(1 + 2 * i, 200, b"ok")
    # writes: the two prefaces and settings, then each stream's request and response
    _, done = replay(wire.writes[4:], midway=True)  # the first stream's frames unseen
    assert [s.stream_id for s in done] == [3, 5]
    assert all(s.request[b":path"] == f"/item/{(s.stream_id - 1) // 2}".encode() for s in done)
    assert all(b":authority" not in s.request and not s.request_known for s in done)  # whose, unknown
    for stream in done:
        path = stream.request.get(b":path")
        assert path in (UNKNOWN, f"/item/{(stream.stream_id - 1) // 2}".encode())
        assert stream.response.get(b":status") in (UNKNOWN, b"200")


def test_a_header_block_cut_short_is_missed_not_guessed() -> None:
    wire = Wire()
    wire.request(1, "/a")
    wire.respond(1, 200, b"x")
    index = len(wire.writes)
    wire.request(3, "/b" * 200)  # a long header block
    connection, done = replay(wire.writes, cut={index: 30})
    assert [s.stream_id for s in done] == [1]
    assert connection.stats.header_blocks_missed == 1
    assert not connection.contexts[CLIENT_TO_SERVER].complete
    assert not connection.streams[3].request_known


requests = st.lists(st.tuples(st.sampled_from(["/a", "/b/c", "/pkg.S/M"]), st.booleans(),
                              st.sampled_from([200, 404, 503]), st.binary(max_size=30)),
                    min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(plan=requests, order=st.permutations(range(6)), skip=st.integers(0, 8))
def test_any_interleaving_and_any_join_point(plan: list[Any], order: list[int], skip: int) -> None:
    """Requests all sent, answered in any order; obi joining after `skip` writes: every stream
    it reports carries its own path and status, or UNKNOWN."""
    wire = Wire()
    for i, (path, grpc, _, body) in enumerate(plan):
        wire.request(1 + 2 * i, path, grpc=grpc, body=body)
    for i in [o for o in order if o < len(plan)]:
        _, grpc, status, body = plan[i]
        wire.respond(1 + 2 * i, status, body, grpc_status=0 if grpc else None)
    writes = wire.writes[skip:]
    _, done = replay(writes, midway=skip > 0)
    if skip == 0:
        assert sorted(s.stream_id for s in done) == [1 + 2 * i for i in range(len(plan))]
    for stream in done:
        path, grpc, status, _ = plan[(stream.stream_id - 1) // 2]
        assert stream.request.get(b":path", UNKNOWN) in (UNKNOWN, path.encode())
        assert stream.response.get(b":status", UNKNOWN) in (UNKNOWN, str(status).encode())
        if skip == 0:
            assert stream.request_known and stream.response_known
            assert stream.grpc_status == ("OK" if grpc else None)


def test_streams_become_grpc_and_http_spans_as_obi_names_them() -> None:
    from obi.protocols.base import Connection, IdGenerator
    from obi.protocols.http2 import Http2Spans
    from obi.traces.model import HttpSpan, RpcSpan, ServiceIdentity
    from obi.traces.routes import RouteMatcher

    wire = Wire()
    wire.request(1, "/shop.Cart/Add", grpc=True, body=b"\0\0\0\0\x02hi",
                 extra=[("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")])
    wire.request(3, "/items/42?x=1")
    wire.request(5, "/shop.Cart/Get", grpc=True)
    wire.respond(3, 404, b"missing")
    wire.respond(1, 200, b"\0\0\0\0\x01k", grpc_status=14)
    wire.respond(5, 200, b"", grpc_status=0)
    _, done = replay(wire.writes)
    service = ServiceIdentity(pid=7, exe_path="/usr/bin/app", service_name="app")
    server = Connection(service, 0, 0, "10.0.0.2", 50051, "10.0.0.1", 40000)
    builder = Http2Spans(RouteMatcher(patterns=["/items/{id}"]), IdGenerator(1))
    plain, grpc, ok = (builder.span(s, True, server, tls=False) for s in done)
    assert isinstance(grpc, RpcSpan) and isinstance(plain, HttpSpan) and isinstance(ok, RpcSpan)
    assert grpc.name == "/shop.Cart/Add" and grpc.is_error  # UNAVAILABLE is a server's error
    assert grpc.attributes() == {"rpc.system.name": "grpc", "rpc.method": "/shop.Cart/Add",
                                 "rpc.response.status_code": "UNAVAILABLE", "server.address": "10.0.0.2",
                                 "server.port": 50051, "client.address": "10.0.0.1"}
    assert grpc.trace_id.hex() == "0af7651916cd43dd8448eb211c80319c"  # continued
    assert grpc.parent_span_id.hex() == "b7ad6b7169203331"
    assert not ok.is_error and ok.attributes()["rpc.response.status_code"] == "OK"
    assert (plain.name, plain.path, plain.status_code, plain.protocol_version) == ("GET /items/{id}",
                                                                                    "/items/42", 404, "2")
    assert plain.response_body_size == 7
    client = Connection(service, 0, 0, "10.0.0.1", 40000, "10.0.0.2", 50051)
    call = builder.span(done[1], False, client, tls=True)
    assert isinstance(call, RpcSpan) and call.kind == 3 and call.is_error  # a client's: any status but OK
    assert call.span_id.hex() == "b7ad6b7169203331"  # the application's own context
    assert call.server_address == "svc"
    plain_call = builder.span(done[0], False, client, tls=True)
    assert isinstance(plain_call, HttpSpan) and plain_call.url_full == "http://svc:50051/items/42"


def chunks(frames: list[tuple[bytes, int]]) -> bytes:
    """The kernel's chunk layout: captured payload length (2, little endian), the 9-byte frame
    header, the captured payload. (frame bytes, how many payload bytes were captured)."""
    out = b""
    for frame, captured in frames:
        out += captured.to_bytes(2, "little") + frame[:9] + frame[9:9 + captured]
    return out


def more(payload: bytes) -> bytes:
    """A chunk of payload going on from an earlier call (type OBI_H2_MORE)."""
    header = len(payload).to_bytes(3, "big") + bytes([0xFF, 0, 0, 0, 0, 0])
    return len(payload).to_bytes(2, "little") + header + payload


def raw_frames(data: bytes) -> list[bytes]:
    frames, _ = split_frames(data)
    out, at = [], 0
    for frame in frames:
        out.append(data[at:at + 9 + frame.length])
        at += 9 + frame.length
    return out


def test_kernel_chunks_payloads_in_pieces_and_data_headers() -> None:
    """Header blocks come whole, in pieces over several records (MORE chunks), or cut; DATA
    frames as their header and first five bytes, which may come in a later call's MORE chunk;
    other frames not at all."""
    wire = Wire()
    wire.request(1, "/pkg.S/M", grpc=True, body=b"\0\0\0\0\x01z")
    wire.respond(1, 200, b"\0\0\0\0\x01k", grpc_status=0)
    request = [f for f in raw_frames(wire.writes[2][1]) if f[3] in (0, 1)]  # HEADERS, DATA
    response = [f for f in raw_frames(wire.writes[3][1]) if f[3] in (0, 1)]
    headers, data = request
    connection = H2Connection()
    # the request's HEADERS in three pieces over two records, then its DATA header only
    assert connection.feed_chunks(CLIENT_TO_SERVER, 1, chunks([(headers, 5)])) == []
    assert connection.feed_chunks(CLIENT_TO_SERVER, 2, more(headers[14:20]) + more(headers[20:])
                                  + chunks([(data, 0)])) == []
    assert connection.streams[1].request[b":path"] == b"/pkg.S/M"
    assert connection.streams[1].request_body == 0  # the DATA frame waits for its first bytes
    assert connection.feed_chunks(CLIENT_TO_SERVER, 3, more(data[9:14])) == []
    assert connection.streams[1].request_body == 6 and connection.streams[1].client_done
    assert connection.streams[1].framed  # one whole gRPC message
    out = chunks([(frame, 5 if frame[3] == 0 else len(frame) - 9) for frame in response])
    (done,) = connection.feed_chunks(SERVER_TO_CLIENT, 4, out)
    assert (done.grpc_status, done.response_body, done.start_ns, done.end_ns) == ("OK", 6, 1, 4)


def test_a_lost_record_makes_later_headers_unknown_not_wrong() -> None:
    wire = Wire()
    wire.request(1, "/a", extra=[("x-tenant", "acme")])
    wire.request(3, "/b", extra=[("x-tenant", "acme")])  # refers to the entry the first added
    connection = H2Connection()
    (second,) = [f for f in raw_frames(wire.writes[3][1]) if f[3] == 1]  # the first request's: lost
    assert connection.feed_chunks(CLIENT_TO_SERVER, 1, chunks([(second, len(second) - 9)]), lost=True) == []
    stream = connection.streams[3]
    assert stream.request[b":path"] == b"/b" and not stream.request_known  # x-tenant: unknown


def test_a_channel_joined_mid_way_is_grpc_by_its_messages_and_its_past_calls() -> None:
    """Joined after the client's encoder indexed every header: the content-type and the method
    are unknown. A stream whose DATA frame holds exactly one length-prefixed gRPC message is a
    gRPC call, and so is every later stream of that connection whose headers cannot say; a
    plain POST on another connection joined the same way stays an HTTP request. Each stream
    reported without some of its headers is counted."""
    from obi.protocols.base import Connection, IdGenerator
    from obi.protocols.http2 import Http2Spans
    from obi.traces.model import HttpSpan, RpcSpan, ServiceIdentity
    from obi.traces.routes import RouteMatcher

    wire = Wire()
    for stream_id in (1, 3):
        wire.request(stream_id, "/shop.Cart/Add", grpc=True, body=b"\0\0\0\0\x02hi")
        wire.respond(stream_id, 200, b"\0\0\0\0\x01k", grpc_status=0)
    wire.request(5, "/shop.Cart/Add", grpc=True)  # no message: its headers alone cannot say
    wire.respond(5, 200, b"", grpc_status=0)
    connection, done = replay(wire.writes[4:], midway=True)  # the first call unseen
    assert [(s.stream_id, s.request.get(b":path"), s.framed, s.is_grpc) for s in done] == [
        (3, None, True, True), (5, None, False, True)]
    assert connection.grpc and connection.stats.streams_partly_known == 2
    service = ServiceIdentity(pid=7, exe_path="/usr/bin/app", service_name="app")
    server = Connection(service, 0, 0, "10.0.0.2", 50051, "10.0.0.1", 40000)
    builder = Http2Spans(RouteMatcher(patterns=[]), IdGenerator(1))
    for stream in done:
        span = builder.span(stream, True, server, tls=False)
        assert isinstance(span, RpcSpan) and span.name == "GRPC" and not span.is_error
        assert span.attributes() == {"rpc.system.name": "grpc", "server.address": "10.0.0.2",
                                     "server.port": 50051, "client.address": "10.0.0.1"}

    plain = Wire()
    for stream_id in (1, 3):
        plain.request(stream_id, "/orders", body=b'{"item": 1}', extra=[("content-type", "application/json")])
        plain.respond(stream_id, 200, b"\0\0\0\0\x01k")  # an answer shaped like a message does not count
    connection, (stream,) = replay(plain.writes[4:], midway=True)
    assert not stream.is_grpc and not connection.grpc
    span = builder.span(stream, True, server, tls=False)
    assert isinstance(span, HttpSpan) and (span.method, span.status_code) == ("POST", 200)
    # a message-shaped request answered 201 is no gRPC call either: gRPC answers 200
    created = Wire()
    for stream_id, status in ((1, 200), (3, 201)):  # 201 first sent after the join: known
        created.request(stream_id, "/orders", body=b"\0\0\0\0\x01k", extra=[("content-type", "x/y")])
        created.respond(stream_id, status, b"")
    connection, (stream,) = replay(created.writes[4:], midway=True)
    assert stream.framed and not stream.is_grpc and not connection.grpc


@given(st.binary(min_size=5, max_size=40))
def test_only_exactly_one_message_makes_data_grpc(body: bytes) -> None:
    wire = Wire()
    wire.request(1, "/x", body=body)
    wire.respond(1, 200, b"ok")
    (stream,) = replay(wire.writes)[1]
    assert stream.framed == (body[0] <= 1 and int.from_bytes(body[1:5], "big") == len(body) - 5)


def test_a_client_stream_opened_while_serving_is_that_requests_child() -> None:
    """The kernel's parent (trace and span of the request the calling thread served) makes a
    client span its child; an application's own traceparent still wins; a server's span never
    takes it."""
    from obi.protocols.base import Connection, IdGenerator
    from obi.protocols.http2 import Http2Spans
    from obi.traces.model import ServiceIdentity
    from obi.traces.routes import RouteMatcher

    trace, served = bytes(range(16)), bytes(range(16, 24))
    wire = Wire()
    wire.request(1, "/shop.Cart/Add", grpc=True, body=b"\0\0\0\0\x02hi")
    wire.request(3, "/shop.Cart/Add", grpc=True, body=b"\0\0\0\0\x02hi",
                 extra=[("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")])
    wire.respond(1, 200, b"\0\0\0\0\x01k", grpc_status=0)
    wire.respond(3, 200, b"\0\0\0\0\x01k", grpc_status=0)
    connection = H2Connection()
    done: list[H2Stream] = []
    for t, (direction, data) in enumerate(wire.writes):
        if data.startswith(PREFACE):
            data = data[len(PREFACE):]
        frames, _ = split_frames(data)
        connection._parent = trace + served if direction == CLIENT_TO_SERVER else b""
        done += connection.feed(direction, t, frames)
    assert [s.parent for s in done] == [trace + served] * 2
    service = ServiceIdentity(pid=7, exe_path="/usr/bin/app", service_name="app")
    client = Connection(service, 0, 0, "10.0.0.1", 40000, "10.0.0.2", 50051)
    builder = Http2Spans(RouteMatcher(patterns=[]), IdGenerator(1))
    child, own = (builder.span(s, False, client, tls=False) for s in done)
    assert (child.trace_id, child.parent_span_id) == (trace, served) and child.span_id != served
    assert (own.trace_id.hex(), own.span_id.hex(), own.parent_span_id) == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", b"")
    root = builder.span(done[0], True, client, tls=False)  # as a server's: never
    assert root.trace_id != trace and not root.parent_span_id
