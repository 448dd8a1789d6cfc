"""Ordinary HTTP traffic that a naive capture gets wrong, end to end with exact spans:
100-continue, big headers, pipelining, long streams, fork-per-request and prefork servers,
a process dying with requests in flight, a request that trickles in."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.e2e.agent import AgentProcess
from tests.e2e.test_python_app import FAST_EXPORT, attributes
from tests.otlp_receiver import OtlpReceiver
from tests.support import free_port, start_process, stop_process, wait_for_port

SERVERS = Path(__file__).resolve().parents[1] / "servers"
TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


@contextmanager
def traced_server(env: dict[str, str] | None = None,
                  argv: list[str] | None = None) -> Iterator[tuple[subprocess.Popen[str], int, OtlpReceiver,
                                                                  AgentProcess]]:
    """A server (the behaviour server unless argv says otherwise, "{port}" replaced), an
    OTLP receiver, and the agent selecting the server by its port."""
    port = free_port()
    command = [a.replace("{port}", str(port)) for a in argv] if argv else [
        sys.executable, str(SERVERS / "behaviour_server.py"), str(port)]
    proc = start_process(command, port=port)
    try:
        with OtlpReceiver() as receiver:
            agent_env = {"OTEL_EBPF_OPEN_PORT": str(port),
                         "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
                         "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", **FAST_EXPORT, **(env or {})}
            with AgentProcess(agent_env) as agent:
                agent.wait_instrumented(proc.pid)
                yield proc, port, receiver, agent
    finally:
        stop_process(proc)


def server_spans(receiver: OtlpReceiver) -> list[tuple[dict[str, Any], Span]]:
    return [(r, s) for r, s in receiver.spans() if s.kind == Span.SPAN_KIND_SERVER]


def stopped(agent: AgentProcess) -> dict[str, Any]:
    return agent.wait_log(lambda e: e.get("event") == "agent_stopped", 5)


def curl(*args: str) -> bytes:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], check=True, capture_output=True,
                          timeout=15).stdout


def test_expect_100_continue_ends_at_the_final_response() -> None:
    body = b"x" * 2000
    with traced_server() as (_, port, receiver, agent):
        out = subprocess.run(["curl", "-sS", "-v", "--max-time", "10", "-H", "Expect: 100-continue",
                              "--data-binary", "@-", f"http://127.0.0.1:{port}/continue"], input=body,
                             capture_output=True, check=True, timeout=15)
        assert b"Expect: 100-continue" in out.stderr and b"HTTP/1.1 100 Continue" in out.stderr
        receiver.wait_for_spans(1, timeout=15)
        assert agent.stop() == 0
    ((_, span),) = server_spans(receiver)
    assert span.name == "POST /continue"
    found = attributes(span)
    assert found["http.response.status_code"] == 200  # the final status, not the interim 100
    assert (found["http.request.body.size"], found["http.response.body.size"]) == (2000, 3)
    assert span.status.code == Status.STATUS_CODE_UNSET


def test_traceparent_after_2_kib_of_headers_and_headers_beyond_the_capture() -> None:
    cookie = "session=" + "c" * 2048
    jwt = "Bearer " + "j" * 300
    with traced_server() as (_, port, receiver, agent):
        base = f"http://127.0.0.1:{port}"
        curl("-H", f"Cookie: {cookie}", "-H", f"Authorization: {jwt}",
             "-H", f"traceparent: 00-{TRACE}-{PARENT}-01", f"{base}/deep-traceparent")
        # beyond the 4 KiB request capture: a span still, counted as truncated
        curl("-H", "Cookie: " + "z" * 5000, "-H", f"traceparent: 00-{TRACE}-{PARENT}-01", f"{base}/huge")
        # response headers (3 KiB of Set-Cookie) far beyond the 512 B response capture
        assert curl(f"{base}/bigheaders") == b"big\n"
        receiver.wait_for_spans(3, timeout=15)
        assert agent.stop() == 0
        stats = stopped(agent)
    spans = {attributes(s)["url.path"]: s for _, s in server_spans(receiver)}
    deep = spans["/deep-traceparent"]
    assert (deep.trace_id.hex(), deep.parent_span_id.hex()) == (TRACE, PARENT)
    huge = spans["/huge"]
    assert huge.parent_span_id == b"" and huge.trace_id.hex() != TRACE
    assert stats["truncated_requests"] == 1
    assert attributes(spans["/bigheaders"])["http.response.body.size"] == 4


def test_pipelined_requests_give_one_span_each() -> None:
    with traced_server() as (_, port, receiver, agent):
        requests = (b"GET /p/one HTTP/1.1\r\nHost: p\r\n\r\n"
                    b"POST /echo HTTP/1.1\r\nHost: p\r\nContent-Length: 4\r\n\r\nabcd"
                    b"GET /status/503 HTTP/1.1\r\nHost: p\r\n\r\n")
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(requests)  # one write
            reply = b""
            while reply.count(b"HTTP/1.1 ") < 3 or not reply.endswith(b"status\n"):
                reply += conn.recv(65536)
            receiver.wait_for_spans(3, timeout=15)
        assert agent.stop() == 0
    spans = [attributes(s) for _, s in server_spans(receiver)]
    assert [(a["http.request.method"], a["url.path"], a["http.response.status_code"]) for a in spans] == [
        ("GET", "/p/one", 200), ("POST", "/echo", 200), ("GET", "/status/503", 503)]
    assert [(a["http.request.body.size"], a["http.response.body.size"]) for a in spans] == [
        (0, 3), (4, 4), (0, 7)]


def test_a_stream_with_pauses_longer_than_the_idle_timeout_ends_at_its_last_byte() -> None:
    with traced_server({"OTEL_EBPF_BPF_RESPONSE_IDLE_TIMEOUT": "200ms"}) as (_, port, receiver, agent):
        started = time.monotonic()
        body = curl("-N", f"http://127.0.0.1:{port}/chunked?n=4&gap=400")
        took = time.monotonic() - started
        assert body == b"".join(b"data: %d\n\n" % i for i in range(4))
        receiver.wait_for_spans(1, timeout=15)
        assert agent.stop() == 0
    ((_, span),) = server_spans(receiver)
    duration = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9
    assert 1.6 <= duration <= took  # four pauses of 0.4 s, each longer than the idle timeout
    wire = len(b"".join(b"%x\r\ndata: %d\n\n\r\n" % (len(b"data: 0\n\n"), i) for i in range(4))) + 5
    assert attributes(span)["http.response.body.size"] == wire


FORKING_SERVER = textwrap.dedent("""
    import os, socketserver, sys
    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            line = self.rfile.readline()
            while self.rfile.readline() not in (b"\\r\\n", b""):
                pass
            body = str(os.getpid()).encode()
            self.wfile.write(b"HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(body), body))
    server = socketserver.ForkingTCPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.serve_forever()
""")


def test_fork_per_request_server_children_are_traced_from_their_first_request() -> None:
    argv = [sys.executable, "-c", FORKING_SERVER, "{port}"]
    with traced_server(argv=argv) as (proc, port, receiver, agent):
        bodies = [curl(f"http://127.0.0.1:{port}/fork/{i}") for i in range(5)]
        receiver.wait_for_spans(5, timeout=15)
        assert agent.stop() == 0
    children = [int(b) for b in bodies]
    assert proc.pid not in children and len(set(children)) == 5
    spans = server_spans(receiver)
    assert [(r["process.pid"], attributes(s)["url.path"]) for r, s in spans] == [
        (child, f"/fork/{i}") for i, child in enumerate(children)]
    assert {r["service.name"] for r, _ in spans} == {"python3.11"}


WSGI_APP = textwrap.dedent("""
    import os
    def app(environ, start_response):
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
""")


def test_gunicorn_workers_started_later_are_traced_from_their_first_request(tmp_path: Path) -> None:
    (tmp_path / "wsgi_app.py").write_text(WSGI_APP)
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    argv = [gunicorn, "--chdir", str(tmp_path), "--workers", "1", "--max-requests", "3",
            "--bind", "127.0.0.1:{port}", "wsgi_app:app"]
    with traced_server({"OTEL_SERVICE_NAME": "shop"}, argv=argv) as (_, port, receiver, agent):
        bodies = []
        for i in range(9):
            for _ in range(50):  # a worker restarting refuses or resets for a moment
                try:
                    bodies.append(curl(f"http://127.0.0.1:{port}/g/{i}"))
                    break
                except subprocess.CalledProcessError:
                    time.sleep(0.1)
                    wait_for_port(port)
        receiver.wait_for_spans(9, timeout=20)
        assert agent.stop() == 0
    workers = [int(b) for b in bodies]
    assert len(workers) == 9 and len(set(workers)) >= 3  # every 3 requests a new worker
    spans = server_spans(receiver)
    assert [(r["process.pid"], attributes(s)["url.path"]) for r, s in spans] == [
        (worker, f"/g/{i}") for i, worker in enumerate(workers)]
    assert {r["service.name"] for r, _ in spans} == {"shop"}


def test_requests_in_flight_when_the_process_exits_become_error_spans() -> None:
    with traced_server() as (proc, port, receiver, agent):
        hanging = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        for i, conn in enumerate(hanging):
            conn.sendall(b"GET /hang?n=%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as killer:
            killer.sendall(b"GET /die HTTP/1.1\r\nHost: h\r\n\r\n")
            assert killer.recv(100) == b""
        proc.wait(5)
        receiver.wait_for_spans(3, timeout=15)
        for conn in hanging:
            conn.close()
        assert agent.stop() == 0
        stats = stopped(agent)
    spans = [s for _, s in server_spans(receiver)]
    assert sorted(attributes(s)["url.path"] for s in spans) == ["/die", "/hang", "/hang"]
    for span in spans:
        found = attributes(span)
        assert "http.response.status_code" not in found
        assert found["error.type"] == "process_exited"
        assert span.status.code == Status.STATUS_CODE_ERROR
    assert stats["spans_without_response"] == 3


def test_a_request_whose_first_read_is_two_bytes() -> None:
    with traced_server() as (_, port, receiver, agent):
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"GE")
            time.sleep(0.3)
            conn.sendall(b"T /trickle HTTP/1.1\r\nHost: t\r\n\r\n")
            reply = b""
            while not reply.endswith(b"ok\n"):
                reply += conn.recv(4096)
            receiver.wait_for_spans(1, timeout=15)
        assert agent.stop() == 0
    ((_, span),) = server_spans(receiver)
    assert span.name == "GET /trickle" and attributes(span)["url.path"] == "/trickle"
    assert attributes(span)["http.response.status_code"] == 200


def test_http_request_timeout_reports_408_as_obi_does() -> None:
    env = {"OTEL_EBPF_BPF_HTTP_REQUEST_TIMEOUT": "500ms"}
    with traced_server(env) as (_, port, receiver, agent):
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(b"GET /hang HTTP/1.1\r\nHost: t\r\n\r\n")
            receiver.wait_for_spans(1, timeout=15)
        assert agent.stop() == 0
    ((_, span),) = server_spans(receiver)
    assert attributes(span)["http.response.status_code"] == 408
    assert span.end_time_unix_nano - span.start_time_unix_nano == 500_000_000
