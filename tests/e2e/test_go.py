"""The guide's own workload: a Go HTTPS server (goblog) and its Go client call, end to end.

goblog (tests/apps/goblog) is built in the test with Debian's Go 1.19 and with a
current Go, stripped and not, and selected both ways the guide does: by its open
port (sidecar) and by the `*/goblog` executable glob (DaemonSet). curl calls it
over HTTP/1.1 and over HTTP/2 (TLS, ALPN); one route calls a plain-http backend
with Go's net/http client. Every span is exact: the server spans of both HTTP
versions, and the client span as a child of the request it was made for, with
no duplicate from the syscalls or the ciphertext.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.agent import AgentProcess
from tests.e2e.test_http_clients import Client
from tests.e2e.test_python_app import FAST_EXPORT, attributes, latest_points
from tests.e2e.test_tls import curl
from tests.golang import build_go
from tests.otlp_receiver import OtlpReceiver
from tests.support import free_port, start_process, stop_process

GOBLOG = Path(__file__).resolve().parents[1] / "apps" / "goblog" / "main.go"

# (curl arguments, path, status, route, protocol version, response body size)
CALLS: list[tuple[list[str], str, int, str, str, int]] = [
    (["--http1.1"], "/posts/7", 200, "/posts/*", "1.1", 6),
    (["--http2"], "/posts/8", 200, "/posts/*", "2", 6),
    (["--http1.1"], "/missing", 404, "/missing", "1.1", 19),
    (["--http2"], "/missing", 404, "/missing", "2", 19),
    (["--http2"], "/api/backend", 200, "/api/backend", "2", 3),
]


def spans_of(receiver: OtlpReceiver, kind: int) -> list[tuple[dict[str, Any], Span]]:
    return [(r, s) for r, s in receiver.spans() if s.kind == kind]


@pytest.mark.parametrize(("toolchain", "stripped", "selection"),
                         list(itertools.product(["debian", "current"], [False, True], ["port", "exe"])))
def test_goblog_https_server_and_client_spans(toolchain: str, stripped: bool, selection: str, upstream: int,
                                              certificate: tuple[Path, Path]) -> None:
    binary = build_go(GOBLOG, toolchain, stripped, "goblog")
    cert, key = certificate
    port = free_port()
    app = start_process([str(binary), "-listen", f"127.0.0.1:{port}", "-cert", str(cert), "-key", str(key),
                         "-backend", f"http://127.0.0.1:{upstream}"], ready="ready")
    select = {"OTEL_EBPF_OPEN_PORT": str(port)} if selection == "port" else {
        "OTEL_EBPF_AUTO_TARGET_EXE": "*/goblog"}
    try:
        with OtlpReceiver() as receiver, AgentProcess({
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                **FAST_EXPORT, **select}) as agent:
            agent.wait_instrumented(app.pid)
            attached = agent.wait_log(lambda e: e.get("event") == "go_binary_attached", 15)
            for args, path, *_ in CALLS:
                subprocess.run(["curl", "-sS", "-k", "-o", "/dev/null", "--max-time", "10", *args,
                                f"https://127.0.0.1:{port}{path}"], check=True, timeout=15)
            receiver.wait_for(lambda: len(receiver.spans()) >= len(CALLS) + 1, 15)
            receiver.wait_for(lambda: sum(p.count for _, p in latest_points(
                receiver, "http.server.request.duration")) >= len(CALLS), 15)
            assert agent.stop() == 0
            last = next(e for e in agent.logs if e.get("event") == "agent_stopped")
    finally:
        stop_process(app)
    assert attached["pid"] == app.pid
    assert ("table:" in attached["detail"]) == stripped, attached["detail"]
    servers = spans_of(receiver, Span.SPAN_KIND_SERVER)
    clients = spans_of(receiver, Span.SPAN_KIND_CLIENT)
    assert len(servers) == len(CALLS) and len(clients) == 1, [attributes(s) for _, s in receiver.spans()]
    for (_, path, status, route, version, size), (resource, span) in zip(CALLS, servers, strict=True):
        assert resource["process.pid"] == app.pid and resource["service.name"] == "goblog"
        assert span.name == f"GET {route}"
        assert attributes(span) == {
            "http.request.method": "GET", "http.response.status_code": status, "http.route": route,
            "url.scheme": "https", "server.address": "127.0.0.1", "server.port": port,
            "client.address": "127.0.0.1", "network.protocol.version": version, "url.path": path,
            "http.request.body.size": 0, "http.response.body.size": size,
        }, path
    (_, client), (_, served) = clients[0], servers[-1]
    assert attributes(client) == {
        "http.request.method": "GET", "http.response.status_code": 200, "url.scheme": "http",
        "server.address": "127.0.0.1", "server.port": upstream,
        "url.full": f"http://127.0.0.1:{upstream}/plain", "http.request.body.size": 0,
        "http.response.body.size": 3,
    }
    # the call goblog made for /api/backend is a child of that request, in its trace
    assert (client.trace_id, client.parent_span_id) == (served.trace_id, served.span_id)
    assert served.start_time_unix_nano <= client.start_time_unix_nano
    assert client.end_time_unix_nano <= served.end_time_unix_nano
    assert len({s.trace_id for _, s in servers}) == len(CALLS)
    # nothing twice: the client's plaintext (syscalls) and the server's ciphertext gave no span
    assert (last["spans"], last["unknown_protocol"], last["parse_errors"]) == (len(CALLS) + 1, 0, 0)
    assert (last["go_requests"], last["go_duplicates"]) == (len(CALLS) + 1, 1)


GOTLS = Path(__file__).resolve().parents[1] / "apps" / "gotls" / "main.go"


@pytest.mark.parametrize("toolchain", ["debian", "current"])
def test_crypto_tls_plaintext_without_net_http(toolchain: str, certificate: tuple[Path, Path]) -> None:
    """A Go server and a Go client that speak HTTP/1.1 by hand over crypto/tls (no net/http):
    their spans come from crypto/tls's plaintext, through the same exchanges as syscall bytes."""
    binary = build_go(GOTLS, toolchain, True, "gotls")
    cert, key = certificate
    port = free_port()
    server = start_process([str(binary), "server", f"127.0.0.1:{port}", str(cert), str(key)], ready="ready")
    client = Client([str(binary), "client", f"127.0.0.1:{port}", "/a", "/missing", "/b"])
    try:
        with OtlpReceiver() as receiver, AgentProcess({
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EBPF_AUTO_TARGET_EXE": "*/gotls", **FAST_EXPORT}) as agent:
            agent.wait_instrumented(server.pid)
            agent.wait_instrumented(client.proc.pid)
            agent.wait_log(lambda e: e.get("event") == "go_tls_attached", 15)
            assert client.run() == ["200 3", "404 10", "200 3"]
            receiver.wait_for(lambda: len(receiver.spans()) >= 6, 15)
            assert agent.stop() == 0
            last = next(e for e in agent.logs if e.get("event") == "agent_stopped")
    finally:
        client.close()
        stop_process(server)
    assert not any(e.get("event") == "go_binary_attached" for e in agent.logs)  # no net/http in it
    servers = [s for r, s in spans_of(receiver, Span.SPAN_KIND_SERVER) if r["process.pid"] == server.pid]
    clients = [s for r, s in spans_of(receiver, Span.SPAN_KIND_CLIENT) if r["process.pid"] == client.proc.pid]
    assert [(attributes(s)["url.path"], attributes(s)["http.response.status_code"]) for s in servers] == [
        ("/a", 200), ("/missing", 404), ("/b", 200)]
    assert [attributes(s)["url.full"] for s in clients] == [
        f"https://127.0.0.1:{port}{path}" for path in ("/a", "/missing", "/b")]
    assert {attributes(s)["url.scheme"] for s in servers + clients} == {"https"}
    assert (last["spans"], last["unknown_protocol"], last["tls_unbound"]) == (6, 0, 0)


def test_goblog_sidecar_in_a_shared_pid_namespace(certificate: tuple[Path, Path]) -> None:
    """The guide's sidecar: goblog and obi in a pid namespace of their own (shareProcessNamespace),
    goblog selected by its port 8443-like HTTPS port, seen as pid 2."""
    binary = build_go(GOBLOG, "current", True, "goblog")
    cert, key = certificate
    port = free_port()
    app = f"{binary} -listen 127.0.0.1:{port} -cert {cert} -key {key} >/dev/null"
    with OtlpReceiver() as receiver:
        agent = AgentProcess(
            {"OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
             "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", **FAST_EXPORT},
            command=["unshare", "--pid", "--fork", "--mount-proc", "bash", "-c",
                     f"{app} & {sys.executable} -m obi.cli"])
        with agent:
            assert agent.wait_instrumented(2, 15)["pid"] == 2
            agent.wait_log(lambda e: e.get("event") == "go_binary_attached", 15)
            for version in ("--http1.1", "--http2"):
                assert curl(version, f"https://127.0.0.1:{port}/posts/3") == "post 3"
            receiver.wait_for_spans(2, timeout=15)
            assert agent.stop() == 0
    spans = receiver.spans()
    assert [(r["process.pid"], r["service.name"]) for r, _ in spans] == [(2, "goblog")] * 2
    assert [attributes(s)["network.protocol.version"] for _, s in spans] == ["1.1", "2"]
    assert {attributes(s)["url.scheme"] for _, s in spans} == {"https"}
