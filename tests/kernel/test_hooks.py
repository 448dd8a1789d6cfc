"""Every syscall hook set this kernel allows (tests.support.kernel_hook_sets: tracepoints and raw
tracepoints here; fentry/fexit and kprobes too in the 6.1 guest of tests/matrix), loaded once each
and driven through every call the capture hooks: accept, read, recv, recvmsg, readv, send, sendmsg,
writev, connect (non-blocking), write, close, and listen() by a process not traced. One load per
set: under software emulation a load takes over a minute."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from obi.ebpf._libbpf import lib
from obi.ebpf.capture import ALL_HOOKS, Capture, CaptureSettings
from tests.kernel.test_capture import CLIENT_SCRIPT, SERVERS, STATUS_CAPTURE, Records, exchange_of
from tests.support import free_port, kernel_hook_sets, start_process, stop_process

SERVER, CLIENT = lib.OBI_ROLE_SERVER, lib.OBI_ROLE_CLIENT
WAIT_S = 60.0  # returns as soon as the records are there; a guest under emulation is slow
START_S = 120.0  # a Python server starting in such a guest


@pytest.fixture(scope="module", params=kernel_hook_sets())
def hooked(request: pytest.FixtureRequest) -> Iterator[tuple[Capture, Records]]:
    with Capture(CaptureSettings(syscall_hooks=request.param, ring_buffer_size=1 << 22, uprobes=False,
                                 notice_processes=True)) as capture:
        assert capture.hooks == request.param
        yield capture, Records(capture)


def test_the_hook_sets_of_this_kernel() -> None:
    sets = kernel_hook_sets()
    assert sets[-2:] == ["tracepoint", "raw_tracepoint"]
    assert sets == [hooks for hooks in ALL_HOOKS if hooks in sets]


def test_server_calls_of_every_kind(hooked: tuple[Capture, Records]) -> None:
    """read, recv, recvmsg and readv 7 bytes at a time; a status line cut after "HTTP/1.1 ",
    then send, sendmsg and writev (tests/servers/split_server.py)."""
    capture, records = hooked
    port = free_port()
    proc = start_process([sys.executable, str(SERVERS / "split_server.py"), str(port)], ready="ready",
                           timeout=START_S)
    try:
        capture.add_pid(proc.pid)
        socket.create_connection(("127.0.0.1", port)).close()  # the accept begun before tracing
        records.all.clear()
        first = b"GET /one?x=1 HTTP/1.1\r\nHost: svc.local\r\n\r\n"
        post = b"POST /fail HTTP/1.1\r\nHost: svc.local\r\nContent-Length: 5\r\n\r\nhello"
        with socket.create_connection(("127.0.0.1", port)) as conn:
            r1 = exchange_of(conn, first, b"x\n")
            r2 = exchange_of(conn, post, b"boom\n")
            records.wait(lambda r: len(r.exchanges(proc.pid)) == 2, timeout=WAIT_S)
    finally:
        stop_process(proc)
        capture.remove_pid(proc.pid)
    one, two = records.exchanges(proc.pid)
    assert (one["req"], one["req_len"], one["resp"], one["resp_len"]) == (first, len(first), r1, len(r1))
    assert (two["req"], two["req_len"], two["resp"], two["resp_len"]) == (post, len(post), r2, len(r2))
    assert one["role"] == two["role"] == SERVER and one["end_ns"] < two["start_ns"]
    assert one["local_port"] == two["local_port"] == port
    assert capture.counters()["events_lost"] == 0


def test_client_calls_and_a_connect_in_progress(hooked: tuple[Capture, Records]) -> None:
    capture, records = hooked
    port = free_port()
    server = start_process([sys.executable, str(SERVERS / "behaviour_server.py"), str(port)], ready="ready",
                           timeout=START_S)
    client = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, str(port)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdin is not None and client.stdout is not None
        capture.add_pid(client.pid)
        records.all.clear()
        client.stdin.write("go\n")
        client.stdin.flush()
        assert client.stdout.readline() == "done\n"
        records.wait(lambda r: len(r.exchanges(client.pid)) == 3, timeout=WAIT_S)
    finally:
        stop_process(client)
        stop_process(server)
        capture.remove_pid(client.pid)
    plain, chunked, head = records.exchanges(client.pid)
    for ev in (plain, chunked, head):
        assert ev["role"] == CLIENT and ev["end_reason"] == lib.OBI_END_FRAMED
        assert ev["peer_port"] == port and ev["local_port"] != port
    assert plain["req"] == b"GET /plain HTTP/1.1\r\nHost: up\r\n\r\n"
    assert plain["resp"] == b"HTTP/1.1 200 OK\r\n"[:STATUS_CAPTURE]
    assert chunked["flags"] & lib.OBI_FLAG_CHUNKED and chunked["resp"].endswith(b"0\r\n\r\n")
    assert head["req"].startswith(b"HEAD ") and head["resp_content_length"] == 1234


def test_a_process_not_traced_that_listens_is_noticed(hooked: tuple[Capture, Records]) -> None:
    _, records = hooked
    records.all.clear()
    listener = subprocess.Popen([sys.executable, "-c", "import socket, sys, time\n"
                                 "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
                                 "print('listening', flush=True); time.sleep(30)"],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline() == "listening\n"
        records.wait(lambda r: any(p["pid"] == listener.pid for p in r.processes()), timeout=WAIT_S)
    finally:
        stop_process(listener)
    assert [(p["event"], p["path"]) for p in records.processes() if p["pid"] == listener.pid] == [
        (lib.OBI_PROCESS_LISTEN, "")]
