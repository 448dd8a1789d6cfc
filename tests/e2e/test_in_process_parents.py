"""Calls a served request makes are its children: one trace, parent span ids, in-process.

A thread-per-request Python server (http.server's ThreadingHTTPServer) calls a
backend from the request's own thread, or from a thread that thread starts.
The kernel ties the call to the request the thread serves and gives both their
span ids, so the client span is the server span's child; an incoming
traceparent makes the whole subtree part of that trace.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.agent import AgentProcess
from tests.e2e.test_http_clients import NGINX_PROXY
from tests.e2e.test_python_app import FAST_EXPORT, SERVERS, attributes, curl
from tests.otlp_receiver import OtlpReceiver
from tests.servers.nginx import nginx_worker, start_nginx
from tests.support import free_port, start_process, stop_process

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def by_kind(receiver: OtlpReceiver) -> tuple[list[Span], list[Span]]:
    spans = [s for _, s in receiver.spans()]
    return ([s for s in spans if s.kind == Span.SPAN_KIND_SERVER],
            [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT])


def test_calls_are_children_of_the_request_their_thread_serves(upstream: int) -> None:
    port = free_port()
    app = start_process([sys.executable, str(SERVERS / "calling_server.py"), str(port), str(upstream)],
                        ready="ready")
    try:
        with OtlpReceiver() as receiver, AgentProcess({
                "OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", **FAST_EXPORT}) as agent:
            agent.wait_instrumented(app.pid)
            base = f"http://127.0.0.1:{port}"
            assert curl(f"{base}/call") == "ok\n"
            assert curl(f"{base}/thread-call") == "ok\n"
            assert curl("-H", f"traceparent: 00-{TRACE}-{PARENT}-01", f"{base}/call") == "ok\n"
            assert curl(f"{base}/none", f"{base}/call") == "none\nok\n"  # keep-alive: two requests
            receiver.wait_for(lambda: len(receiver.spans()) >= 9, 15)
            assert agent.stop() == 0
    finally:
        stop_process(app)
    servers, clients = by_kind(receiver)
    paths: list[Any] = [attributes(s)["url.path"] for s in servers]
    assert paths == ["/call", "/thread-call", "/call", "/none", "/call"]
    assert [attributes(c)["url.full"] for c in clients] == [f"http://127.0.0.1:{upstream}/plain"] * 4
    callers = [s for s in servers if attributes(s)["url.path"] != "/none"]
    for server, client in zip(callers, clients, strict=True):
        assert client.trace_id == server.trace_id, attributes(server)["url.path"]
        assert client.parent_span_id == server.span_id
        assert client.span_id not in (server.span_id, b"")
        assert server.start_time_unix_nano <= client.start_time_unix_nano
        assert client.end_time_unix_nano <= server.end_time_unix_nano
    # the request that came with a traceparent: its trace, its parent, for the whole subtree
    assert (callers[2].trace_id.hex(), callers[2].parent_span_id.hex()) == (TRACE, PARENT)
    assert [s.parent_span_id for i, s in enumerate(callers) if i != 2] == [b""] * 3
    # nothing links what was not a call made for a request
    none = servers[3]
    assert none.trace_id not in {c.trace_id for c in clients} and none.parent_span_id == b""
    assert len({s.trace_id for s in servers}) == len(servers)


def test_nginx_proxying_many_requests_at_once_links_each_call_to_its_request(upstream: int,
                                                                            tmp_path: Path) -> None:
    """nginx serves many requests on one thread: the thread does not say which one a call
    upstream is for, ngx_chain_writer's context does (a uprobe on nginx's exported function). Each
    upstream call is the child of the request it proxies, over new and kept-alive upstream
    connections, with a slow request in flight and twenty more at once beside it."""
    nginx, port = start_nginx(tmp_path, NGINX_PROXY, upstream=upstream)
    try:
        with OtlpReceiver() as receiver, AgentProcess({
                "OTEL_EBPF_AUTO_TARGET_EXE": "*/nginx", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", **FAST_EXPORT}) as agent:
            agent.wait_instrumented(nginx_worker(nginx.pid))
            agent.wait_log(lambda e: e.get("event") == "nginx_binary_attached", 10)
            base = f"http://127.0.0.1:{port}/api"
            assert curl(f"{base}/plain/alone") == "ok\n"
            # one slow request in flight while others come and go on the same worker thread
            slow = subprocess.Popen(["curl", "-s", f"{base}/chunked?n=3&gap=300"], stdout=subprocess.PIPE)
            time.sleep(0.2)
            urls = "\n".join(f"{base}/plain/{i}" for i in range(20))
            fetch = ["xargs", "-P", "20", "-n", "1", "curl", "-sS", "--max-time", "10", "-o", "/dev/null"]
            subprocess.run(fetch, input=urls, text=True, check=True, timeout=30)
            assert slow.communicate(timeout=10)[0].count(b"data:") == 3
            receiver.wait_for(lambda: len(receiver.spans()) >= 44, 15)
            assert agent.stop() == 0
    finally:
        stop_process(nginx)
    servers, clients = by_kind(receiver)
    by_id = {s.span_id: s for s in servers}
    assert len(servers) == len(clients) == 22
    for client in clients:
        upstream_path = urlsplit(attributes(client)["url.full"]).path
        server = by_id[client.parent_span_id]
        assert attributes(server)["url.path"] == "/api" + upstream_path
        assert client.trace_id == server.trace_id
        assert server.start_time_unix_nano <= client.start_time_unix_nano <= server.end_time_unix_nano, (
            upstream_path, client.start_time_unix_nano - server.start_time_unix_nano,
            server.end_time_unix_nano - client.start_time_unix_nano)


FLASK_APP = """
import urllib.request
from flask import Flask

app = Flask(__name__)
BACKEND = open("backend_port").read().strip()


@app.route("/orders/<int:order>")
def order(order):
    with urllib.request.urlopen(f"http://127.0.0.1:{BACKEND}/plain") as response:
        return f"order {order}: " + response.read().decode()
"""


def test_gunicorn_sync_workers_running_flask(upstream: int, tmp_path: Path) -> None:
    """gunicorn's sync workers serve one request at a time on one thread: a Flask view's call
    is the child of the request it serves, in each worker."""
    (tmp_path / "flask_app.py").write_text(FLASK_APP)
    (tmp_path / "backend_port").write_text(str(upstream))
    port = free_port()
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    app = start_process([gunicorn, "--chdir", str(tmp_path), "--workers", "2", "--bind", f"127.0.0.1:{port}",
                         "flask_app:app"], port=port)
    try:
        with OtlpReceiver() as receiver, AgentProcess({
                "OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", **FAST_EXPORT}) as agent:
            agent.wait_instrumented(app.pid)
            for i in range(6):
                assert curl(f"http://127.0.0.1:{port}/orders/{i}") == f"order {i}: ok\n"
            receiver.wait_for(lambda: len(receiver.spans()) >= 12, 15)
            assert agent.stop() == 0
    finally:
        stop_process(app)
    servers, clients = by_kind(receiver)
    assert sorted(attributes(s)["url.path"] for s in servers) == [f"/orders/{i}" for i in range(6)]
    by_span = {s.span_id: s for s in servers}
    assert len(clients) == 6
    for client in clients:
        server = by_span[client.parent_span_id]
        assert client.trace_id == server.trace_id
        assert server.start_time_unix_nano <= client.start_time_unix_nano <= server.end_time_unix_nano
    assert len({c.parent_span_id for c in clients}) == 6
