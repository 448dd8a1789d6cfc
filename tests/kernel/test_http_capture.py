"""The HTTP capture programs on the real kernel: load, attach, exact events, clean detach."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from obi.ebpf._libbpf import ffi
from obi.ebpf.http_tracer import EVENT_SIZE, HttpTracer, HttpTracerSettings
from obi.ebpf.ring import struct_layout
from tests.support import bpf_link_ids, free_port, start_process, stop_process

SERVERS = Path(__file__).resolve().parents[1] / "servers"
MODES = ["tracepoint", "raw_tracepoint"]


def decode(batch: bytes) -> list[dict[str, Any]]:
    layout, names = struct_layout("struct obi_http_event", frozenset({"req_buf", "resp_buf"}))
    req_off = ffi.offsetof("struct obi_http_event", "req_buf")
    resp_off = ffi.offsetof("struct obi_http_event", "resp_buf")
    events = []
    for i in range(len(batch) // EVENT_SIZE):
        base = i * EVENT_SIZE
        ev = dict(zip(names, layout.unpack_from(batch, base), strict=True))
        ev["req"] = batch[base + req_off: base + req_off + ev["req_captured"]]
        ev["resp"] = batch[base + resp_off: base + resp_off + ev["resp_captured"]]
        events.append(ev)
    return events


def collect(tracer: HttpTracer, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Events until `count` arrived (sweeping idle responses too), or the timeout."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        for batch in tracer.ring.drain():
            events += decode(batch)
        events += decode(tracer.sweep_idle(time.monotonic_ns(), 200_000_000))
        time.sleep(0.05)
    return events


@pytest.fixture(params=MODES)
def tracer(request: pytest.FixtureRequest) -> Iterator[HttpTracer]:
    with HttpTracer(HttpTracerSettings(syscall_hooks=request.param, ring_buffer_size=1 << 20)) as t:
        assert t.hooks == request.param
        yield t


@pytest.fixture
def split_server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    proc = start_process([sys.executable, str(SERVERS / "split_server.py"), str(port)], ready="ready")
    yield proc, port
    stop_process(proc)


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_attach_then_close_leaves_no_link_and_no_fd() -> None:
    for mode in MODES:
        fds_before = open_fds()
        before = bpf_link_ids()
        tracer = HttpTracer(HttpTracerSettings(syscall_hooks=mode, ring_buffer_size=1 << 16))  # type: ignore[arg-type]
        ours = set(tracer.collection.link_ids())
        assert len(ours) == tracer.collection.link_count > 0
        assert ours <= bpf_link_ids()
        tracer.close()
        tracer.close()  # idempotent
        assert not ours & bpf_link_ids()
        assert bpf_link_ids() <= before
        assert open_fds() <= fds_before


def test_keepalive_requests_split_reads_and_writes(tracer: HttpTracer,
                                                    split_server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = split_server
    tracer.add_pid(proc.pid)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        first = b"GET /one?x=1 HTTP/1.1\r\nHost: svc.local\r\nX-Long: " + b"a" * 60 + b"\r\n\r\n"
        # The request arrives in two TCP segments; the server reads 7 bytes at a time.
        conn.sendall(first[:20])
        time.sleep(0.05)
        conn.sendall(first[20:])
        r1 = conn.recv(4096)
        while r1.count(b"\n") < 5 or not r1.endswith(b"\n"):
            r1 += conn.recv(4096)
        post = b"POST /fail HTTP/1.1\r\nHost: svc.local\r\nContent-Length: 5\r\n\r\nhello"
        conn.sendall(post)
        r2 = b""
        while b"boom\n" not in r2:
            r2 += conn.recv(4096)
    events = collect(tracer, 2)
    assert len(events) == 2, events
    one, two = events
    assert one["req"] == first and one["req_len"] == len(first)
    assert one["resp"] == r1[: len(one["resp"])] and one["resp_len"] == len(r1)
    assert one["resp"].startswith(b"HTTP/1.1 200 OK\r\n")
    assert two["req"] == post and two["req_len"] == len(post)
    assert two["resp"].startswith(b"HTTP/1.1 500 Internal Server Error") and two["resp_len"] == len(r2)
    for ev in events:
        assert ev["pid"] == proc.pid
        assert ev["family"] == socket.AF_INET
        assert ev["local_port"] == port
        assert ev["local_addr"][:4] == socket.inet_aton("127.0.0.1")
        assert ev["peer_addr"][:4] == socket.inet_aton("127.0.0.1")
        assert 0 < ev["start_ns"] < ev["end_ns"]
    assert one["end_ns"] < two["start_ns"]
    assert one["peer_port"] == two["peer_port"] != 0
    counters = tracer.counters()
    assert counters["events_lost"] == 0


def test_untraced_process_and_non_http_bytes_produce_nothing(
        tracer: HttpTracer, split_server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = split_server
    # Not in the pid filter yet: nothing.
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        conn.recv(4096)
    tracer.add_pid(proc.pid)
    # Traced, but the bytes are not an HTTP request: nothing.
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"\x16\x03\x01\x00\x05hello\r\n\r\n")
        time.sleep(0.2)
    assert collect(tracer, 1, timeout=1.0) == []
    tracer.remove_pid(proc.pid)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        conn.recv(4096)
    assert collect(tracer, 1, timeout=1.0) == []


def test_ipv6_connection(tracer: HttpTracer) -> None:
    port = free_port()
    proc = start_process([sys.executable, str(SERVERS / "split_server.py"), str(port), "::1"], ready="ready")
    try:
        tracer.add_pid(proc.pid)
        with socket.create_connection(("::1", port)) as conn:
            conn.sendall(b"GET /six HTTP/1.1\r\nHost: [::1]\r\n\r\n")
            reply = b""
            while not reply.endswith(b"x\n"):
                reply += conn.recv(4096)
        (ev,) = collect(tracer, 1)
    finally:
        stop_process(proc)
    assert ev["family"] == socket.AF_INET6
    assert ev["local_addr"] == ev["peer_addr"] == socket.inet_pton(socket.AF_INET6, "::1")
    assert ev["local_port"] == port and ev["peer_port"] != 0
    assert ev["req"].startswith(b"GET /six HTTP/1.1")
