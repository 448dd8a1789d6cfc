"""The capture programs on the real kernel: exact records for each role and case, clean detach."""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from obi.ebpf._libbpf import lib
from obi.ebpf.capture import Capture, CaptureSettings
from obi.ebpf.goprobes import GoHttp, GoOffsetSlots
from obi.ebpf.libraries import UprobeFiles
from obi.ebpf.records import RECORD_EXCHANGE, RECORD_PROCESS
from obi.ebpf.tls import OpenSsl
from obi.protocols.gohttp import GO_HTTP_FIELDS, GO_HTTP_LAYOUT
from tests.capture_records import decode, traced_pids
from tests.golang import build_go
from tests.support import (
    bpf_link_ids,
    free_port,
    kernel_hook_sets,
    self_signed_certificate,
    start_process,
    stop_process,
)

SERVERS = Path(__file__).resolve().parents[1] / "servers"
GOBLOG = Path(__file__).resolve().parents[1] / "apps" / "goblog" / "main.go"
MODES = kernel_hook_sets()
SERVER, CLIENT = lib.OBI_ROLE_SERVER, lib.OBI_ROLE_CLIENT
STATUS_CAPTURE: int = lib.OBI_STATUS_CAPTURE


@pytest.fixture(autouse=True)
def quiet_libbpf() -> Iterator[None]:
    """The captures here log through structlog in-process: keep libbpf's debug chatter out."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    yield
    structlog.reset_defaults()


class Records:
    """Drains a capture and keeps every record."""

    def __init__(self, capture: Capture) -> None:
        self.capture = capture
        self.all: list[dict[str, Any]] = []

    def drain(self) -> None:
        for batch, _ in self.capture.ring.drain():
            self.all += decode(batch)

    def exchanges(self, pid: int | None = None) -> list[dict[str, Any]]:
        return [r for r in self.all if r["kind"] == RECORD_EXCHANGE and (pid is None or r["pid"] == pid)]

    def processes(self) -> list[dict[str, Any]]:
        return [r for r in self.all if r["kind"] == RECORD_PROCESS]

    def wait(self, done: Callable[[Records], bool], timeout: float = 5.0, idle_ns: int = 0,
             request_timeout_ns: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.capture.sweep(idle_ns, request_timeout_ns)
            self.drain()
            if done(self) or time.monotonic() > deadline:
                return
            time.sleep(0.05)


@pytest.fixture(params=MODES)
def capture(request: pytest.FixtureRequest) -> Iterator[Capture]:
    with Capture(CaptureSettings(syscall_hooks=request.param, ring_buffer_size=1 << 22)) as c:
        assert c.hooks == request.param
        assert c.http_framing, "bpf_loop is available on this kernel: HTTP framing must be on"
        yield c


@pytest.fixture
def server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    proc = start_process([sys.executable, str(SERVERS / "behaviour_server.py"), str(port)], ready="ready")
    yield proc, port
    stop_process(proc)


def exchange_of(sock: socket.socket, request: bytes, until: bytes) -> bytes:
    sock.sendall(request)
    reply = b""
    while until not in reply:
        chunk = sock.recv(65536)
        if not chunk:
            break
        reply += chunk
    return reply


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_attach_then_close_leaves_no_link_and_no_fd() -> None:
    for mode in MODES:
        fds_before = open_fds()
        before = bpf_link_ids()
        capture = Capture(CaptureSettings(syscall_hooks=mode, ring_buffer_size=1 << 16))  # type: ignore[arg-type]
        ours = set(capture.collection.link_ids())
        assert len(ours) == capture.collection.link_count > 0
        assert ours <= bpf_link_ids()
        capture.close()
        capture.close()  # idempotent
        assert not ours & bpf_link_ids()
        assert bpf_link_ids() <= before
        assert open_fds() <= fds_before


def test_server_keepalive_exchanges_end_at_their_framed_last_byte(
        capture: Capture, server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    capture.add_pid(proc.pid)
    # the server entered accept() before it was traced: let that accept finish first
    socket.create_connection(("127.0.0.1", port)).close()
    records = Records(capture)
    first = b"GET /plain?x=1 HTTP/1.1\r\nHost: svc.local\r\n\r\n"
    post = b"POST /status/500 HTTP/1.1\r\nHost: svc.local\r\nContent-Length: 5\r\n\r\nhello"
    with socket.create_connection(("127.0.0.1", port)) as conn:
        r1 = exchange_of(conn, first, b"ok\n")
        # the server's next read ends the first exchange; the second ends by its length,
        # then the sweep emits it (the server is still reading nothing new)
        r2 = exchange_of(conn, post, b"status\n")
        records.wait(lambda r: len(r.exchanges()) == 2)
        one, two = records.exchanges()
        local_port = conn.getsockname()[1]
    assert one["role"] == two["role"] == SERVER
    assert one["req"] == first and one["req_len"] == len(first)
    # framed by their Content-Length: the status line is all user space needs of them
    assert one["resp"] == r1[:STATUS_CAPTURE] and one["resp_len"] == len(r1)
    assert two["req"] == post and two["req_len"] == len(post)
    assert two["resp"] == r2[:STATUS_CAPTURE] and two["resp_len"] == len(r2)
    assert one["end_reason"] == two["end_reason"] == lib.OBI_END_FRAMED
    for ev in (one, two):
        assert ev["pid"] == proc.pid
        assert ev["flags"] & lib.OBI_FLAG_HTTP and ev["flags"] & lib.OBI_FLAG_LENGTH_KNOWN
        assert ev["flags"] & lib.OBI_FLAG_STATUS_ONLY and not ev["flags"] & lib.OBI_FLAG_ROLE_GUESSED
        assert ev["family"] == socket.AF_INET
        assert ev["local_port"] == port and ev["peer_port"] == local_port
        assert ev["local_addr"][:4] == ev["peer_addr"][:4] == socket.inet_aton("127.0.0.1")
        assert 0 < ev["start_ns"] <= ev["resp_start_ns"] <= ev["end_ns"]
    assert one["resp_content_length"] == 3 and one["resp_header_len"] == len(r1) - 3
    assert one["end_ns"] < two["start_ns"]
    assert capture.counters()["events_lost"] == 0


def test_requests_read_in_pieces_and_responses_written_in_pieces(capture: Capture) -> None:
    """read, recv, recvmsg and readv 7 bytes at a time; a status line cut after "HTTP/1.1 ",
    then send, sendmsg and writev."""
    port = free_port()
    proc = start_process([sys.executable, str(SERVERS / "split_server.py"), str(port)], ready="ready")
    try:
        capture.add_pid(proc.pid)
        socket.create_connection(("127.0.0.1", port)).close()  # the accept begun before tracing
        records = Records(capture)
        first = b"GET /one?x=1 HTTP/1.1\r\nHost: svc.local\r\nX-Long: " + b"a" * 60 + b"\r\n\r\n"
        post = b"POST /fail HTTP/1.1\r\nHost: svc.local\r\nContent-Length: 5\r\n\r\nhello"
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(first[:20])  # two TCP segments
            time.sleep(0.05)
            r1 = exchange_of(conn, first[20:], b"x\n")
            r2 = exchange_of(conn, post, b"boom\n")
            records.wait(lambda r: len(r.exchanges()) == 2)
    finally:
        stop_process(proc)
    one, two = records.exchanges()
    assert (one["req"], one["req_len"], one["resp"], one["resp_len"]) == (first, len(first), r1, len(r1))
    assert (two["req"], two["req_len"], two["resp"], two["resp_len"]) == (post, len(post), r2, len(r2))
    assert one["role"] == two["role"] == SERVER and one["end_ns"] < two["start_ns"]
    assert one["end_reason"] == two["end_reason"] == lib.OBI_END_READ  # the status line came cut: unframed
    assert not (one["flags"] | two["flags"]) & lib.OBI_FLAG_STATUS_ONLY  # unframed: captured whole


CLIENT_SCRIPT = textwrap.dedent("""
    import socket, sys, time
    port = int(sys.argv[1])
    sys.stdin.readline()  # wait until traced
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))   # non-blocking connect: EINPROGRESS
    except BlockingIOError:
        pass
    import select; select.select([], [s], [], 5)
    s.setblocking(True)
    def ask(req, until):
        s.sendall(req)
        got = b""
        while until not in got:
            got += s.recv(65536)
        return got
    ask(b"GET /plain HTTP/1.1\\r\\nHost: up\\r\\n\\r\\n", b"ok\\n")
    ask(b"GET /chunked?n=2 HTTP/1.1\\r\\nHost: up\\r\\n\\r\\n", b"0\\r\\n\\r\\n")
    ask(b"HEAD /plain HTTP/1.1\\r\\nHost: up\\r\\n\\r\\n", b"\\r\\n\\r\\n")
    print("done", flush=True)
    time.sleep(30)
""")


def test_client_exchanges_end_by_framing_without_waiting(
        capture: Capture, server: tuple[subprocess.Popen[str], int]) -> None:
    _, port = server
    client = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, str(port)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdin is not None and client.stdout is not None
        capture.add_pid(client.pid)
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline() == "done\n"
        records = Records(capture)
        # the client stays connected and idle: each exchange must end by its framing
        records.wait(lambda r: len(r.exchanges()) == 3)
        plain, chunked, head = records.exchanges()
    finally:
        stop_process(client)
    for ev in (plain, chunked, head):
        assert ev["role"] == CLIENT and ev["pid"] == client.pid
        assert ev["end_reason"] == lib.OBI_END_FRAMED
        assert ev["peer_port"] == port and ev["local_port"] != port
    assert plain["req"] == b"GET /plain HTTP/1.1\r\nHost: up\r\n\r\n"
    assert plain["resp"] == b"HTTP/1.1 200 OK\r\n"[:STATUS_CAPTURE]
    assert plain["flags"] & lib.OBI_FLAG_STATUS_ONLY
    assert chunked["flags"] & lib.OBI_FLAG_CHUNKED and chunked["resp"].endswith(b"0\r\n\r\n")
    assert head["req"].startswith(b"HEAD ") and head["resp_content_length"] == 1234
    assert head["resp_len"] == head["resp_header_len"]


def test_pipelined_requests_stay_in_one_exchange(capture: Capture,
                                                  server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    capture.add_pid(proc.pid)
    requests = b"".join(b"GET /plain/%d HTTP/1.1\r\nHost: p\r\n\r\n" % i for i in range(3))
    with socket.create_connection(("127.0.0.1", port)) as conn:
        reply = b""
        conn.sendall(requests)
        while reply.count(b"ok\n") < 3:
            reply += conn.recv(65536)
        records = Records(capture)
        records.wait(lambda r: len(r.exchanges()) >= 1)
        time.sleep(0.2)
        records.wait(lambda r: False, timeout=0.2)
    (ev,) = records.exchanges()
    assert ev["req"] == requests
    # the first response (written alone, framed) as its status line; those pipelined after it whole
    one = len(reply) // 3
    assert ev["flags"] & lib.OBI_FLAG_STATUS_ONLY and ev["resp_len"] == len(reply)
    assert ev["resp"] == reply[:STATUS_CAPTURE] + reply[one:]


def test_interim_100_continue_does_not_end_the_exchange(
        capture: Capture, server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    capture.add_pid(proc.pid)
    head = b"POST /continue HTTP/1.1\r\nHost: c\r\nExpect: 100-continue\r\nContent-Length: 2000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as conn:
        assert exchange_of(conn, head, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        time.sleep(0.3)
        final = exchange_of(conn, b"x" * 2000, b"ok\n")
        records = Records(capture)
        records.wait(lambda r: len(r.exchanges()) == 1)
    (ev,) = records.exchanges()
    assert ev["req_len"] == len(head) + 2000
    assert ev["req"] == (head + b"x" * 2000)[: ev["req_captured"]]
    assert ev["resp"].startswith(b"HTTP/1.1 200 OK") and ev["resp_len"] == len(final)
    assert ev["end_ns"] - ev["start_ns"] >= 300_000_000  # until the final response, not the interim


def test_chunked_stream_with_long_pauses_ends_at_its_last_byte(
        capture: Capture, server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    capture.add_pid(proc.pid)
    records = Records(capture)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /chunked?n=3&gap=400 HTTP/1.1\r\nHost: s\r\n\r\n")
        reply = b""
        started = time.monotonic()
        while not reply.endswith(b"0\r\n\r\n"):
            reply += conn.recv(65536)
            # the sweep runs with a 100 ms idle time all along: a framed stream must not end early
            records.wait(lambda r: False, timeout=0.01, idle_ns=100_000_000)
        took = time.monotonic() - started
        records.wait(lambda r: len(r.exchanges()) == 1, idle_ns=100_000_000)
    (ev,) = records.exchanges()
    assert ev["resp_len"] == len(reply) and ev["end_reason"] == lib.OBI_END_FRAMED
    assert (ev["end_ns"] - ev["resp_start_ns"]) / 1e9 == pytest.approx(took, abs=0.15)


def test_response_headers_longer_than_the_capture_keep_their_length(
        capture: Capture, server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    capture.add_pid(proc.pid)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        reply = exchange_of(conn, b"GET /bigheaders HTTP/1.1\r\nHost: b\r\n\r\n", b"big\n")
        records = Records(capture)
        records.wait(lambda r: len(r.exchanges()) == 1)
    (ev,) = records.exchanges()
    assert ev["resp_captured"] == STATUS_CAPTURE and ev["flags"] & lib.OBI_FLAG_STATUS_ONLY
    assert ev["resp_len"] == len(reply)
    assert ev["resp_content_length"] == 4 and ev["resp_header_len"] == len(reply) - 4


def test_a_first_read_of_two_bytes_still_makes_an_http_exchange(
        capture: Capture, server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    capture.add_pid(proc.pid)
    request = b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(request[:2])
        time.sleep(0.2)
        exchange_of(conn, request[2:], b"ok\n")
        records = Records(capture)
        records.wait(lambda r: len(r.exchanges()) == 1)
    (ev,) = records.exchanges()
    assert ev["req"] == request and ev["flags"] & lib.OBI_FLAG_HTTP


PEEKING_SERVER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(8)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    with conn:
        conn.recv(1, socket.MSG_PEEK)  # as nginx does on an ssl port, to tell TLS from plaintext
        data = b""
        while not data.endswith(b"\\r\\n\\r\\n"):
            data += conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n")
"""


def test_bytes_peeked_are_not_bytes_moved(capture: Capture) -> None:
    """recv(MSG_PEEK) leaves the bytes in the socket: the read after it moves them once."""
    port = free_port()
    proc = start_process([sys.executable, "-c", PEEKING_SERVER, str(port)], ready="ready")
    try:
        capture.add_pid(proc.pid)
        request = b"GET /peeked HTTP/1.1\r\nHost: t\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port)) as conn:
            exchange_of(conn, request, b"ok\n")
        records = Records(capture)
        records.wait(lambda r: len(r.exchanges()) == 1)
    finally:
        stop_process(proc)
    (ev,) = records.exchanges()
    assert (ev["req"], ev["req_len"]) == (request, len(request))
    assert ev["flags"] & lib.OBI_FLAG_HTTP


def test_unframed_protocol_ends_on_next_request_or_idle(capture: Capture) -> None:
    """A line protocol the kernel knows nothing of: paired by direction, ended by
    the next request, and the last one by the idle time."""
    port = free_port()
    echo = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import socket
        srv = socket.create_server(("127.0.0.1", {port}))
        print("ready", flush=True)
        conn, _ = srv.accept()
        while data := conn.recv(100):
            conn.sendall(b"+" + data)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None and echo.stdout.readline() == "ready\n"
        capture.add_pid(echo.pid)
        records = Records(capture)
        with socket.create_connection(("127.0.0.1", port)) as conn:
            assert exchange_of(conn, b"PING 1\n", b"\n") == b"+PING 1\n"
            assert exchange_of(conn, b"PING 2\n", b"\n") == b"+PING 2\n"
            records.wait(lambda r: len(r.exchanges()) == 2, idle_ns=200_000_000)
    finally:
        stop_process(echo)
    one, two = records.exchanges()
    assert (one["req"], one["resp"]) == (b"PING 1\n", b"+PING 1\n")
    assert (two["req"], two["resp"]) == (b"PING 2\n", b"+PING 2\n")
    assert one["end_reason"] == lib.OBI_END_READ  # the server went back to reading
    assert not one["flags"] & lib.OBI_FLAG_HTTP
    assert two["end_reason"] in (lib.OBI_END_READ, lib.OBI_END_IDLE)


def test_unanswered_http_request_times_out(capture: Capture,
                                            server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    capture.add_pid(proc.pid)
    records = Records(capture)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /hang HTTP/1.1\r\nHost: h\r\n\r\n")
        records.wait(lambda r: len(r.exchanges()) == 1, request_timeout_ns=300_000_000)
    (ev,) = records.exchanges()
    assert ev["end_reason"] == lib.OBI_END_TIMEOUT and ev["resp_len"] == 0 and ev["resp_start_ns"] == 0


def test_process_exit_with_a_request_in_flight_emits_it(capture: Capture,
                                                        server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    capture.add_pid(proc.pid)
    records = Records(capture)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /die HTTP/1.1\r\nHost: d\r\n\r\n")
        assert conn.recv(100) == b""
    proc.wait(5)
    records.wait(lambda r: len(r.exchanges()) == 1 and len(r.processes()) == 1)
    (ev,) = records.exchanges()
    assert ev["end_reason"] == lib.OBI_END_EXIT and ev["req"].startswith(b"GET /die") and ev["resp_len"] == 0
    (exit_event,) = records.processes()
    assert exit_event["event"] == lib.OBI_PROCESS_EXIT and exit_event["pid"] == proc.pid
    assert proc.pid not in traced_pids(capture)


FORKING_SERVER = textwrap.dedent("""
    import socketserver, sys
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            while self.rfile.readline() not in (b"\\r\\n", b""):
                pass
            self.wfile.write(b"HTTP/1.0 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n")
    server = socketserver.ForkingTCPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
""")


def test_fork_per_request_children_are_traced_from_their_first_request(capture: Capture) -> None:
    """socketserver.ForkingTCPServer: the parent accepts, a new child reads and answers."""
    port = free_port()
    proc = start_process([sys.executable, "-c", FORKING_SERVER, str(port)], ready="ready")
    try:
        capture.add_pid(proc.pid)
        records = Records(capture)
        for i in range(3):
            with socket.create_connection(("127.0.0.1", port)) as conn:
                assert exchange_of(conn, b"GET /f/%d HTTP/1.0\r\n\r\n" % i, b"ok\n").endswith(b"ok\n")
        records.wait(lambda r: len(r.exchanges()) == 3)
    finally:
        stop_process(proc)
    forks = [p for p in records.processes() if p["event"] == lib.OBI_PROCESS_FORK]
    children = [f["pid"] for f in forks if f["parent"] == proc.pid]
    assert len(children) == 3
    assert [(e["pid"], e["req"]) for e in records.exchanges()] == [
        (child, b"GET /f/%d HTTP/1.0\r\n\r\n" % i) for i, child in enumerate(children)]
    for ev in records.exchanges():
        assert ev["role"] == SERVER and not ev["flags"] & lib.OBI_FLAG_ROLE_GUESSED  # accepted by the parent
        assert ev["resp"] == b"HTTP/1.0 200 OK\r\n"[:STATUS_CAPTURE] and ev["local_port"] == port
        assert ev["resp_len"] == len(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")


def test_a_request_read_by_a_parent_and_answered_by_its_child_is_one_exchange(capture: Capture) -> None:
    port = free_port()
    proc = start_process([sys.executable, str(SERVERS / "forking_server.py"), str(port)], ready="ready")
    try:
        capture.add_pid(proc.pid)
        records = Records(capture)
        with socket.create_connection(("127.0.0.1", port)) as conn:
            reply = exchange_of(conn, b"GET /fork HTTP/1.0\r\n\r\n", b"\n")
        child = int(reply.rsplit(b"\r\n\r\n", 1)[1])
        records.wait(lambda r: len(r.exchanges()) == 1)
    finally:
        stop_process(proc)
    forks = [p for p in records.processes() if p["event"] == lib.OBI_PROCESS_FORK]
    assert [(f["pid"], f["parent"]) for f in forks] == [(child, proc.pid)]
    (ev,) = records.exchanges()
    assert ev["pid"] == proc.pid  # the exchange belongs to the process that read the request
    assert ev["role"] == SERVER and ev["req"] == b"GET /fork HTTP/1.0\r\n\r\n"
    assert ev["resp"].startswith(b"HTTP/1.0 200 OK") and ev["resp_len"] == len(reply)


def test_tls_connections_are_left_alone(capture: Capture, server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    capture.add_pid(proc.pid)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"\x16\x03\x01\x00\x05hello\r\n\r\n")
        time.sleep(0.2)
    records = Records(capture)
    records.wait(lambda r: False, timeout=0.3, idle_ns=1)
    assert records.exchanges() == []
    assert capture.counters()["tls_skipped"] == 1


def test_untraced_and_forgotten_processes_produce_nothing(
        capture: Capture, server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    with socket.create_connection(("127.0.0.1", port)) as conn:
        exchange_of(conn, b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n", b"ok\n")
    capture.add_pid(proc.pid)
    capture.remove_pid(proc.pid)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        exchange_of(conn, b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n", b"ok\n")
    records = Records(capture)
    records.wait(lambda r: False, timeout=0.3, idle_ns=1, request_timeout_ns=1)
    assert records.all == []


def test_ipv6_connection(capture: Capture) -> None:
    port = free_port()
    proc = start_process([sys.executable, str(SERVERS / "behaviour_server.py"), str(port), "::1"],
                         ready="ready")
    try:
        capture.add_pid(proc.pid)
        with socket.create_connection(("::1", port)) as conn:
            exchange_of(conn, b"GET /six HTTP/1.1\r\nHost: [::1]\r\n\r\n", b"ok\n")
            records = Records(capture)
            records.wait(lambda r: len(r.exchanges()) == 1)
    finally:
        stop_process(proc)
    (ev,) = records.exchanges()
    assert ev["family"] == socket.AF_INET6
    assert ev["local_addr"] == ev["peer_addr"] == socket.inet_pton(socket.AF_INET6, "::1")
    assert ev["local_port"] == port and ev["peer_port"] != 0


def test_a_full_pid_filter_refuses_and_counts_children() -> None:
    with Capture(CaptureSettings(syscall_hooks="raw_tracepoint", max_processes=2,
                                 ring_buffer_size=1 << 16)) as capture:
        sleeper = subprocess.Popen(["sh", "-c", "read x; sleep 0.1 & sleep 0.1 & sleep 0.1 & wait"],
                                   stdin=subprocess.PIPE, text=True)
        try:
            assert capture.add_pid(sleeper.pid)
            assert capture.add_pid(os.getppid())
            assert not capture.add_pid(1)  # the table is full
            assert sleeper.stdin is not None
            sleeper.stdin.write("\n")
            sleeper.stdin.flush()
            sleeper.wait(5)
        finally:
            sleeper.kill()
            sleeper.wait()
        assert capture.counters()["pid_filter_full"] >= 3


def test_exec_tracing_catches_a_new_process_from_its_first_request(
        server: tuple[subprocess.Popen[str], int]) -> None:
    _, port = server
    with Capture(CaptureSettings(syscall_hooks="raw_tracepoint", trace_execs=True,
                                 ring_buffer_size=1 << 22)) as capture:
        records = Records(capture)
        curl = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/plain"], capture_output=True,
                              check=True)
        assert curl.stdout == b"ok\n"
        records.wait(lambda r: any(e["req"].startswith(b"GET /plain") for e in r.exchanges()))
    execs = [p for p in records.processes()
             if p["event"] == lib.OBI_PROCESS_EXEC and p["path"].endswith("curl")]
    assert execs and execs[0]["parent"] == 1  # provisional: the kernel traces it until user space decides
    (ev,) = [e for e in records.exchanges() if e["req"].startswith(b"GET /plain")]
    assert ev["pid"] == execs[0]["pid"] and ev["role"] == CLIENT and ev["end_reason"] == lib.OBI_END_FRAMED


@pytest.mark.parametrize("mode", MODES)
def test_untraced_processes_that_listen_are_noticed_and_traced_ones_are_not(mode: str) -> None:
    listener = textwrap.dedent("""
        import socket, sys
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        print("started", flush=True)
        sys.stdin.readline()
        s.listen()
        print("listening", flush=True)
        sys.stdin.readline()
        """)
    settings = CaptureSettings(syscall_hooks=mode, notice_processes=True, ring_buffer_size=1 << 22)  # type: ignore[arg-type]
    with Capture(settings) as capture:
        records = Records(capture)
        untraced, traced = (subprocess.Popen([sys.executable, "-c", listener], text=True,
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(2))
        try:
            # Popen returns once exec has closed the child's fds, which can be before the kernel's
            # exec event: traced from then on, that exec would be reported as the traced pid's own
            for proc in (untraced, traced):
                assert proc.stdout is not None and proc.stdout.readline() == "started\n"
            capture.add_pid(traced.pid)
            for proc in (untraced, traced):
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
                assert proc.stdout.readline() == "listening\n"
            spawned = subprocess.Popen(["true"])
            spawned.wait(5)

            def ours(r: Records) -> list[tuple[int, int, str]]:
                pids = (untraced.pid, traced.pid, spawned.pid)
                return [(p["event"], p["pid"], p["path"]) for p in r.processes() if p["pid"] in pids]

            records.wait(lambda r: len(ours(r)) >= 1)
            records.wait(lambda r: False, timeout=0.3)  # anything else would have come by now
        finally:
            for proc in (untraced, traced):
                stop_process(proc)
    # neither the traced listener (known already) nor an exec (a new pid: the next poll's)
    assert ours(records) == [(lib.OBI_PROCESS_LISTEN, untraced.pid, "")]


def test_connections_opened_before_tracing_get_their_role_from_the_first_bytes(
        capture: Capture, server: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = server
    with socket.create_connection(("127.0.0.1", port)) as conn:
        exchange_of(conn, b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n", b"ok\n")
        capture.add_pid(proc.pid)  # the connection exists already, its reader blocked in recv()
        # if that recv() began before tracing, its bytes are not seen and its answer is an orphan
        exchange_of(conn, b"GET /maybe HTTP/1.1\r\nHost: x\r\n\r\n", b"ok\n")
        exchange_of(conn, b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n", b"ok\n")
        records = Records(capture)
        records.wait(lambda r: any(e["req"].startswith(b"GET /later") for e in r.exchanges()))
    paths = [e["req"].split(b" ")[1] for e in records.exchanges()]
    assert paths in ([b"/maybe", b"/later"], [b"/later"])
    assert capture.counters()["orphan_responses"] == 2 - len(paths)
    for ev in records.exchanges():
        assert ev["role"] == SERVER and ev["flags"] & lib.OBI_FLAG_ROLE_GUESSED and ev["local_port"] == port


def test_sigkill_mid_response_is_emitted_as_exit(capture: Capture) -> None:
    port = free_port()
    proc = start_process([sys.executable, "-c", textwrap.dedent(f"""
        import socket, time
        srv = socket.create_server(("127.0.0.1", {port}))
        print("ready", flush=True)
        conn, _ = srv.accept()
        conn.recv(1000)
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 100\\r\\n\\r\\npart")
        time.sleep(60)
        """)], ready="ready")
    capture.add_pid(proc.pid)
    records = Records(capture)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        exchange_of(conn, b"GET /slow HTTP/1.1\r\nHost: k\r\n\r\n", b"part")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        records.wait(lambda r: len(r.exchanges()) == 1)
    (ev,) = records.exchanges()
    sent = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart"
    assert ev["end_reason"] == lib.OBI_END_EXIT and ev["resp_len"] == len(sent)
    assert ev["resp"] == sent[:STATUS_CAPTURE]


@pytest.mark.parametrize("mode", MODES)
def test_descriptors_of_exited_processes_do_not_fill_the_tables(mode: str) -> None:
    """Children that exit with their connection and a file still open (no close()) leave
    their descriptors behind in the fd table; with 150 of them in a table of 64, every
    later connection is still tracked and nothing is counted as full."""
    port = free_port()
    proc = start_process([sys.executable, "-c", textwrap.dedent(f"""
        import os, socket
        srv = socket.create_server(("127.0.0.1", {port}))
        print("ready", flush=True)
        while True:
            conn, _ = srv.accept()
            conn.recv(1000)
            if os.fork() == 0:
                with open(os.devnull, "wb", buffering=0) as log:
                    log.write(b"x")
                    conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 3\\r\\n\\r\\nok\\n")
                    os._exit(0)  # the socket and the file close without close()
            conn.close()
            os.waitpid(-1, 0)
        """)], ready="ready")
    try:
        with Capture(CaptureSettings(syscall_hooks=mode, ring_buffer_size=1 << 22,  # type: ignore[arg-type]
                                     max_connections=64)) as capture:
            capture.add_pid(proc.pid)
            socket.create_connection(("127.0.0.1", port)).close()  # the accept begun before tracing
            records = Records(capture)
            for i in range(150):
                with socket.create_connection(("127.0.0.1", port)) as conn:
                    assert exchange_of(conn, b"GET /%d HTTP/1.0\r\n\r\n" % i, b"ok\n").endswith(b"ok\n")
                records.drain()
            records.wait(lambda r: len(r.exchanges()) >= 150)
            counters = capture.counters()
    finally:
        stop_process(proc)
    assert sorted(ev["req"] for ev in records.exchanges()) == sorted(
        b"GET /%d HTTP/1.0\r\n\r\n" % i for i in range(150))
    assert counters["conn_table_full"] == 0


@pytest.mark.parametrize("mode", ["uprobe_multi", "perf_event"])
def test_tls_plaintext_through_either_way_of_attaching_uprobes(mode: str, tmp_path: Path) -> None:
    """OpenSSL's plaintext as exchanges flagged TLS, the ciphertext on the same connection
    skipped, with uprobe_multi links (Linux 6.6+) and with uprobe perf events (older kernels)."""
    cert, key = self_signed_certificate(tmp_path / "cert.pem", tmp_path / "key.pem")
    port = free_port()
    env = {**os.environ, "TLS_CERT": str(cert), "TLS_KEY": str(key)}
    proc = start_process([sys.executable, str(SERVERS / "behaviour_server.py"), str(port)], ready="ready",
                         env=env)
    settings = CaptureSettings(syscall_hooks="raw_tracepoint", ring_buffer_size=1 << 22,
                               uprobe_mode=mode)  # type: ignore[arg-type]
    try:
        with Capture(settings) as capture:
            assert capture.uprobe_mode.kind == mode and capture.uprobes is not None
            files = UprobeFiles([OpenSsl(capture.uprobes, capture.programs)])
            try:
                capture.add_pid(proc.pid)
                files.track(proc.pid)
                assert files.attached_paths
                request = b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n"
                context = ssl._create_unverified_context()
                with socket.create_connection(("127.0.0.1", port)) as raw, \
                        context.wrap_socket(raw) as conn:
                    exchange_of(conn, request, b"ok\n")
                records = Records(capture)
                records.wait(lambda r: len(r.exchanges()) == 1, idle_ns=1)
            finally:
                files.close()
    finally:
        stop_process(proc)
    (ev,) = records.exchanges()
    assert ev["flags"] & lib.OBI_FLAG_TLS and ev["flags"] & lib.OBI_FLAG_HTTP
    assert ev["req"] == request and ev["resp_len"] > 0
    assert ev["role"] == lib.OBI_ROLE_SERVER and ev["local_port"] == port


@pytest.mark.parametrize("mode", ["uprobe_multi", "perf_event"])
def test_go_http2_request_through_either_way_of_attaching_uprobes(mode: str, tmp_path: Path) -> None:
    """A stripped Go 1.19 HTTPS server (offsets from the table, passed by each probe's cookie):
    one Go record for an HTTP/2 request, with its status and path, in both attach modes."""
    cert, key = self_signed_certificate(tmp_path / "cert.pem", tmp_path / "key.pem")
    binary = build_go(GOBLOG, "debian", True, "goblog")
    port = free_port()
    proc = start_process([str(binary), "-listen", f"127.0.0.1:{port}", "-cert", str(cert), "-key", str(key)],
                         ready="ready")
    settings = CaptureSettings(syscall_hooks="raw_tracepoint", ring_buffer_size=1 << 22,
                               uprobe_mode=mode)  # type: ignore[arg-type]
    try:
        with Capture(settings) as capture:
            assert capture.uprobes is not None and capture.go
            slots = GoOffsetSlots(capture.programs)
            files = UprobeFiles([GoHttp(capture.uprobes, capture.programs, slots)])
            try:
                capture.add_pid(proc.pid)
                files.track(proc.pid)
                assert files.attached_paths == [str(binary)]
                subprocess.run(["curl", "-sk", "--http2", "-o", "/dev/null",
                                f"https://127.0.0.1:{port}/missing"], check=True, timeout=10)
                records = Records(capture)
                records.wait(lambda r: any(x["kind"] == lib.OBI_RECORD_GO_HTTP for x in r.all))
            finally:
                files.close()
    finally:
        stop_process(proc)
    (raw,) = [r["raw"] for r in records.all if r["kind"] == lib.OBI_RECORD_GO_HTTP]
    ev = dict(zip(GO_HTTP_FIELDS, GO_HTTP_LAYOUT.unpack_from(raw), strict=True))
    assert (ev["role"], ev["status"], ev["proto_major"]) == (lib.OBI_ROLE_SERVER, 404, 2)
    assert ev["path"][:ev["path_len"]] == b"/missing" and ev["local_port"] == port
    assert ev["flags"] & lib.OBI_GO_FLAG_TLS and ev["flags"] & lib.OBI_GO_FLAG_ADDR


def test_map_stats_count_what_the_maps_hold(capture: Capture) -> None:
    def by_name() -> dict[str, tuple[str, int, int]]:
        return {m.name: (m.type, m.entries, m.max_entries) for m in capture.map_stats()}

    before = by_name()
    kind, entries, max_entries = before["pid_filter"]
    assert kind == "Hash" and max_entries == capture.settings.max_processes
    pids = [os.getpid(), os.getppid()]
    for pid in pids:
        capture.add_pid(pid)
    assert by_name()["pid_filter"][1] == entries + len(pids)
    # Arrays are full by definition; the ring buffer has no entries to count and is left out.
    counters = by_name()["counters"]
    assert counters[0] == "PerCPUArray" and counters[1] == counters[2]
    assert "events" not in before
    assert len({m.map_id for m in capture.map_stats()}) == len(before)  # the kernel's ids, one each
    capture.close()
    assert capture.map_stats() == []  # after close, nothing to walk (and no walk of freed maps)
