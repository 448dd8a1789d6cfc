"""HTTP/2 in the kernel: a connection that starts with the client preface is walked frame by
frame, whatever the calls' boundaries, and user space rebuilds its streams from the records."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest

from obi.ebpf._libbpf import lib
from obi.ebpf.capture import Capture, CaptureSettings
from obi.ebpf.records import H2_FIELDS, H2_LAYOUT, H2_SIZE, RECORD_H2
from obi.protocols.http2 import H2Connection, H2Stream
from tests.capture_records import split_records
from tests.support import free_port, start_process, stop_process

SERVERS = Path(__file__).resolve().parents[1] / "servers"


def h2_records(capture: Capture, until: float) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    while time.monotonic() < until:
        for batch, _ in capture.ring.drain():
            for raw in split_records(batch):
                if raw[0] == RECORD_H2:
                    rec = dict(zip(H2_FIELDS, H2_LAYOUT.unpack_from(raw), strict=True))
                    rec["data"] = raw[H2_SIZE:H2_SIZE + rec["len"]]
                    records.append(rec)
        time.sleep(0.05)
    return records


def streams_of(records: list[dict[str, Any]], midway: bool = False) -> tuple[list[H2Stream], H2Connection]:
    connection = H2Connection(midway=midway)
    done: list[H2Stream] = []
    for rec in records:
        if rec["flags"] & lib.OBI_H2_CLOSED:
            continue
        done += connection.feed_chunks(rec["direction"], rec["ts_ns"], rec["data"],
                                       lost=bool(rec["flags"] & lib.OBI_H2_LOST))
    return done, connection


@pytest.fixture(params=[7, 65536], ids=["reads-of-7-bytes", "whole-reads"])
def h2_server(request: pytest.FixtureRequest) -> Iterator[tuple[int, int]]:
    port = free_port()
    proc = start_process([sys.executable, str(SERVERS / "h2_server.py"), str(port), str(request.param)],
                         ready="ready")
    yield proc.pid, port
    stop_process(proc)


def talk(port: int, requests: list[tuple[str, bool]], split_writes: bool) -> list[int]:
    """Opens an h2c connection, sends each request (path, gRPC?) and reads every answer."""
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    statuses: list[int] = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(client.data_to_send())
        for i, (path, grpc) in enumerate(requests):
            headers = [(":method", "POST" if grpc else "GET"), (":path", path), (":scheme", "http"),
                       (":authority", f"127.0.0.1:{port}"),
                       ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
            if grpc:
                headers.append(("content-type", "application/grpc"))
            client.send_headers(1 + 2 * i, headers, end_stream=not grpc)
            if grpc:
                client.send_data(1 + 2 * i, b"\0\0\0\0\x03abc", end_stream=True)
            out = client.data_to_send()
            if split_writes:  # a frame header cut in two, and a payload in three
                for piece in (out[:4], out[4:13], out[13:20], out[20:]):
                    sock.sendall(piece)
                    time.sleep(0.01)
            else:
                sock.sendall(out)
            ended = False
            while not ended:
                for event in client.receive_data(sock.recv(65536)):
                    if isinstance(event, h2.events.ResponseReceived):
                        statuses.append(int(dict(event.headers)[b":status"]))
                    ended = ended or isinstance(event, h2.events.StreamEnded)
                pending = client.data_to_send()
                if pending:
                    sock.sendall(pending)
    return statuses


@pytest.mark.parametrize("split_writes", [False, True], ids=["whole-writes", "split-writes"])
def test_streams_rebuilt_from_the_servers_frames(h2_server: tuple[int, int], split_writes: bool) -> None:
    pid, port = h2_server
    with Capture(CaptureSettings(ring_buffer_size=1 << 22)) as capture:
        capture.add_pid(pid)
        requests = [("/a", False), ("/size/16000", False), ("/pkg.S/M", True), ("/status/14", True)]
        assert talk(port, requests, split_writes) == [200] * 4
        records = h2_records(capture, time.monotonic() + 1.0)
    assert records and all(r["pid"] in (pid, 0) and r["role"] == lib.OBI_ROLE_SERVER for r in records)
    assert records[0]["flags"] & lib.OBI_H2_START and not any(r["flags"] & lib.OBI_H2_LOST for r in records)
    assert records[-1]["flags"] & lib.OBI_H2_CLOSED
    done, connection = streams_of(records)
    assert [(s.stream_id, s.request[b":path"], s.response[b":status"]) for s in done] == [
        (1, b"/a", b"200"), (3, b"/size/16000", b"200"), (5, b"/pkg.S/M", b"200"), (7, b"/status/14", b"200")]
    assert [s.response_body for s in done] == [2, 16000, 2, 2]
    assert [s.grpc_status for s in done] == [None, None, "OK", "UNAVAILABLE"]
    assert all(s.request_known and s.response_known for s in done)
    assert done[2].request_body == 8
    assert all(s.request[b"traceparent"].startswith(b"00-0af7651916cd43dd") for s in done)
    assert connection.stats.header_blocks_missed == 0


def test_a_full_record_loses_frames_openly_never_wrongly(h2_server: tuple[int, int]) -> None:
    """Sixty requests in one write, each header block of about 150 bytes: more than a record
    holds when the server reads them at once. The frames past it are lost and the next record
    says so; every stream user space reports carries its own path or none."""
    pid, port = h2_server
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    with Capture(CaptureSettings(ring_buffer_size=1 << 22)) as capture:
        capture.add_pid(pid)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(client.data_to_send())
            for i in range(60):
                headers = [(":method", "GET"), (":path", f"/item/{i}"), (":scheme", "http"),
                           (":authority", "x"), ("x-note", f"{i:03d}" + "n" * 180)]
                client.send_headers(1 + 2 * i, headers, end_stream=True)
            sock.sendall(client.data_to_send())
            answered: set[int] = set()
            while len(answered) < 60:
                for event in client.receive_data(sock.recv(65536)):
                    if isinstance(event, h2.events.StreamEnded):
                        answered.add(event.stream_id)
                if pending := client.data_to_send():
                    sock.sendall(pending)
            # one more request after the loss: its record says LOST first
            client.send_headers(121, [(":method", "GET"), (":path", "/after"), (":scheme", "http"),
                                      (":authority", "x")], end_stream=True)
            sock.sendall(client.data_to_send())
            while 121 not in answered:
                for event in client.receive_data(sock.recv(65536)):
                    if isinstance(event, h2.events.StreamEnded):
                        answered.add(event.stream_id)
        records = h2_records(capture, time.monotonic() + 1.0)
        assert capture.counters()["h2_lost"] == 0  # nothing lost by the ring: by the record's room
    requests = [r for r in records if r["direction"] == lib.OBI_H2_TO_SERVER]
    full = any(r["len"] > lib.OBI_H2_DATA_MAX - 200 for r in requests)  # not with reads of 7 bytes
    assert full == any(r["flags"] & lib.OBI_H2_LOST for r in requests)
    done, connection = streams_of(records)
    assert (connection.stats.header_blocks_missed >= 1) == full
    known = 0
    for stream in done:
        path = stream.request.get(b":path")
        expected = b"/after" if stream.stream_id == 121 else f"/item/{(stream.stream_id - 1) // 2}".encode()
        assert path in (None, expected), (stream.stream_id, path)  # none, or its own
        known += path == expected
    assert 10 < known < 61 if full else known == 61


def test_a_connection_joined_midway_is_followed_from_its_next_frames() -> None:
    """A connection opened, and used, before the capture began: its first bytes the capture sees
    are whole frames, so it is followed from there as the server's (the socket a listener
    accepted), without a START. Headers that the client's encoder had put in its HPACK table
    before are unknown, never taken for others; those it adds from then on are known."""
    port = free_port()
    proc = start_process([sys.executable, str(SERVERS / "h2_server.py"), str(port), "65536"], ready="ready")
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    authority = f"127.0.0.1:{port}"

    def call(sock: socket.socket, stream_id: int, path: str, grpc: bool = False) -> None:
        headers = [(":method", "POST" if grpc else "GET"), (":path", path), (":scheme", "http"),
                   (":authority", authority)]
        if grpc:
            headers.append(("content-type", "application/grpc"))
        client.send_headers(stream_id, headers, end_stream=not grpc)
        if grpc:
            client.send_data(stream_id, b"\0\0\0\0\x03abc", end_stream=True)
        sock.sendall(client.data_to_send())
        ended = False
        while not ended:
            for event in client.receive_data(sock.recv(65536)):
                ended = ended or (isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id)
            if pending := client.data_to_send():
                sock.sendall(pending)

    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(client.data_to_send())
            call(sock, 1, "/before")
            with Capture(CaptureSettings(ring_buffer_size=1 << 22)) as capture:
                capture.add_pid(proc.pid)
                time.sleep(0.2)
                # the server's read in progress when the capture began is not seen: its answer is
                # the first thing it sees, for a stream it never saw begin
                call(sock, 3, "/before")
                call(sock, 5, "/new")
                call(sock, 7, "/before")
                call(sock, 9, "/pkg.S/M", grpc=True)
                call(sock, 11, "/status/14", grpc=True)
                records = h2_records(capture, time.monotonic() + 1.0)
    finally:
        stop_process(proc)
    assert records and all(r["pid"] in (proc.pid, 0) and r["role"] == lib.OBI_ROLE_SERVER for r in records)
    assert not any(r["flags"] & (lib.OBI_H2_START | lib.OBI_H2_LOST) for r in records)
    assert records[0]["direction"] == lib.OBI_H2_TO_CLIENT
    done, _ = streams_of(records, midway=True)
    assert [(s.stream_id, s.request.get(b":path"), s.response.get(b":status")) for s in done] == [
        (5, b"/new", b"200"), (7, None, b"200"), (9, b"/pkg.S/M", b"200"), (11, b"/status/14", b"200")]
    # indexed before the capture, name and value: a header obi cannot name, not kept
    assert [s.request.get(b":authority") for s in done] == [None] * 4
    assert not any(s.request_known for s in done)
    assert [s.grpc_status for s in done] == [None, None, "OK", "UNAVAILABLE"]
    assert all(s.response_known for s in done)  # the server's answers use the static table and new entries
    assert [s.response_body for s in done] == [2, 2, 2, 2]
