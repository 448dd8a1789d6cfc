"""TLS end to end: OpenSSL's plaintext through the uprobes, as exact spans.

Real TLS servers (Python's ssl module, nginx with ssl, Node.js https with its own
OpenSSL) and clients (curl, Python urllib and requests, Node.js), certificates
made by openssl in the test, the real agent, an OTLP receiver. A TLS exchange
is the same span as a plaintext one with url.scheme https, and the ciphertext on
the socket gives nothing more.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from obi.ebpf.libraries import RESCAN_DELAYS_S
from tests.e2e.agent import AgentProcess
from tests.e2e.test_http_clients import Client, check_client_spans, client_argv, run_client
from tests.e2e.test_python_app import FAST_EXPORT, SERVERS, attributes, latest_points
from tests.otlp_receiver import OtlpReceiver
from tests.servers.nginx import nginx_worker, start_nginx
from tests.support import free_port, start_process, stop_process

HOST_LIBSSL = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")


def tls_env(certificate: tuple[Path, Path]) -> dict[str, str]:
    cert, key = certificate
    return {**os.environ, "TLS_CERT": str(cert), "TLS_KEY": str(key)}


@pytest.fixture(scope="module")
def tls_upstream(certificate: tuple[Path, Path]) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The behaviour server over TLS (Python's ssl module)."""
    port = free_port()
    proc = start_process([sys.executable, str(SERVERS / "behaviour_server.py"), str(port)], ready="ready",
                         env=tls_env(certificate))
    yield proc, port
    stop_process(proc)


def curl(*args: str) -> str:
    return subprocess.run(["curl", "-sS", "-k", "--max-time", "10", *args], check=True, capture_output=True,
                          text=True).stdout


def server_spans(receiver: OtlpReceiver) -> list[tuple[dict[str, Any], Span]]:
    return [(r, s) for r, s in receiver.spans() if s.kind == Span.SPAN_KIND_SERVER]


def agent_env(receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            **FAST_EXPORT, **extra}


def stopped(agent: AgentProcess) -> dict[str, Any]:
    """The agent's last words: its counters (spans, parse errors, unknown protocols...)."""
    assert agent.stop() == 0
    return next(e for e in agent.logs if e.get("event") == "agent_stopped")


# (curl arguments, path, method, status, request body size, response body size, route)
CURL_CALLS: list[tuple[list[str], str, str, int, int, int, str]] = [
    (["--http1.1"], "/plain", "GET", 200, 0, 3, "/plain"),
    ([], "/plain?alpn=offered", "GET", 200, 0, 3, "/plain"),  # curl offers h2; the server picks 1.1
    (["-X", "POST", "--data-binary", "hello tls"], "/echo", "POST", 200, 9, 9, "/echo"),
    ([], "/status/404", "GET", 404, 0, 7, "/status/*"),  # the default route heuristic
]


def drive_with_curl(port: int) -> None:
    for args, path, *_ in CURL_CALLS:
        curl(*args, f"https://127.0.0.1:{port}{path}")


def check_server_spans(receiver: OtlpReceiver, port: int, pid: int, body_404: int = 7) -> None:
    spans = server_spans(receiver)
    assert len(spans) == len(CURL_CALLS), [attributes(s) for _, s in spans]
    for (_, path, method, status, request_size, response_size, route), (resource, span) in zip(
            CURL_CALLS, spans, strict=True):
        assert resource["process.pid"] == pid
        assert span.name == f"{method} {route}"
        assert attributes(span) == {
            "http.route": route,
            "http.request.method": method,
            "http.response.status_code": status,
            "url.path": path.partition("?")[0],
            "url.scheme": "https",
            "server.address": "127.0.0.1",
            "server.port": port,
            "client.address": "127.0.0.1",
            "http.request.body.size": request_size,
            "http.response.body.size": body_404 if status == 404 else response_size,
            "network.protocol.version": "1.1",
        }, path
    points = latest_points(receiver, "http.server.request.duration")
    assert sum(p.count for _, p in points) == len(CURL_CALLS)
    assert {a["url.scheme"] for a, _ in points} == {"https"}


def serve_curl_calls(pid: int, port: int,
                     **selection: str) -> tuple[OtlpReceiver, AgentProcess, dict[str, Any]]:
    """CURL_CALLS to the TLS server pid on port, under the agent: its receiver, the agent,
    and the agent's last counters, once every span and metric point has arrived."""
    with OtlpReceiver() as receiver, AgentProcess(agent_env(receiver, **selection)) as agent:
        agent.wait_instrumented(pid)
        agent.wait_log(lambda e: e.get("event") == "tls_library_attached", 10)
        drive_with_curl(port)
        receiver.wait_for(lambda: len(server_spans(receiver)) >= len(CURL_CALLS), 15)
        receiver.wait_for(lambda: sum(p.count for _, p in latest_points(
            receiver, "http.server.request.duration")) >= len(CURL_CALLS), 15)
        last = stopped(agent)
    return receiver, agent, last


def test_python_ssl_server_spans_and_no_ciphertext_spans(
        tls_upstream: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = tls_upstream
    receiver, _, last = serve_curl_calls(proc.pid, port, OTEL_EBPF_OPEN_PORT=str(port))
    check_server_spans(receiver, port, proc.pid)
    # the ciphertext of the same connections gave nothing: no record, no unknown protocol
    assert (last["spans"], last["unknown_protocol"], last["parse_errors"]) == (len(CURL_CALLS), 0, 0)
    assert last["tls_exchanges"] == len(CURL_CALLS) and last["tls_unbound"] == 0


NGINX_TLS = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location = /plain {{ return 200 "ok\\n"; }}
        location = /echo {{ proxy_pass http://127.0.0.1:{upstream}/echo; }}
        location = /status/404 {{ return 404 "status\\n"; }}
    }}"""


def test_nginx_https_spans(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    echo_port = free_port()
    echo = start_process([sys.executable, str(SERVERS / "behaviour_server.py"), str(echo_port)],
                         ready="ready")
    cert, key = certificate
    nginx, port = start_nginx(tmp_path, NGINX_TLS, cert=cert, key=key, upstream=echo_port)
    try:
        worker = nginx_worker(nginx.pid)
        receiver, _, last = serve_curl_calls(worker, port, OTEL_EBPF_AUTO_TARGET_EXE="*/nginx")
    finally:
        stop_process(nginx)
        stop_process(echo)
    check_server_spans(receiver, port, worker)
    # nginx's plaintext call to the echo server is the one client span
    clients = [s for _, s in receiver.spans() if s.kind == Span.SPAN_KIND_CLIENT]
    assert [attributes(s)["url.full"] for s in clients] == [f"http://127.0.0.1:{echo_port}/echo"]
    assert (last["unknown_protocol"], last["parse_errors"], last["tls_unbound"]) == (0, 0, 0)


def test_node_https_server_spans(certificate: tuple[Path, Path]) -> None:
    """Node.js links OpenSSL into its executable and moves ciphertext itself (memory BIOs)."""
    cert, key = certificate
    port = free_port()
    proc = start_process(["node", str(SERVERS / "https_server.mjs"), str(port), str(cert), str(key)],
                         ready="ready")
    try:
        receiver, agent, last = serve_curl_calls(proc.pid, port, OTEL_EBPF_OPEN_PORT=str(port))
    finally:
        stop_process(proc)
    attached = next(e for e in agent.logs if e.get("event") == "tls_library_attached")
    assert attached["path"] == os.path.realpath(shutil.which("node") or "node")
    check_server_spans(receiver, port, proc.pid)
    assert (last["unknown_protocol"], last["parse_errors"], last["tls_unbound"]) == (0, 0, 0)


@pytest.mark.parametrize("kind", ["urllib", "requests", "node-http"])
def test_https_client_spans(kind: str, tls_upstream: tuple[subprocess.Popen[str], int],
                            tmp_path: Path) -> None:
    _, port = tls_upstream
    receiver, results, pid = run_client(client_argv(kind, port, None, scheme="https"), tmp_path)
    check_client_spans(receiver, results, pid, port, scheme="https")


def test_curl_client_spans_from_its_first_request(tls_upstream: tuple[subprocess.Popen[str], int],
                                                  tmp_path: Path) -> None:
    """Short-lived curls selected by executable, beside an instrumented server that maps the
    same libssl: the uprobes are on that file already, so each curl's one request is a span
    (client), as is its serving (server)."""
    server, port = tls_upstream
    config = tmp_path / "obi.yml"
    config.write_text(f"discovery:\n  instrument:\n    - exe_path: '*/curl'\n    - open_ports: {port}\n")
    with OtlpReceiver() as receiver, \
            AgentProcess(agent_env(receiver, OTEL_EBPF_CONFIG_PATH=str(config))) as agent:
        agent.wait_instrumented(server.pid)
        agent.wait_log(lambda e: e.get("event") == "tls_library_attached", 10)
        for i in range(3):
            assert curl("--http1.1", f"https://127.0.0.1:{port}/plain/{i}") == "ok\n"
        receiver.wait_for(lambda: len(receiver.spans()) >= 6, 15)
        last = stopped(agent)
    curls = [e["pid"] for e in agent.logs
             if e.get("event") == "process_instrumented" and e["pid"] != server.pid]
    clients = [(r, s) for r, s in receiver.spans() if s.kind == Span.SPAN_KIND_CLIENT]
    assert [attributes(s)["url.full"] for _, s in clients] == [
        f"https://127.0.0.1:{port}/plain/{i}" for i in range(3)]
    assert [r["process.pid"] for r, _ in clients] == curls
    assert {attributes(s)["url.scheme"] for _, s in receiver.spans()} == {"https"}
    assert [attributes(s)["url.path"] for _, s in server_spans(receiver)] == [f"/plain/{i}" for i in range(3)]
    assert (last["spans"], last["unknown_protocol"], last["tls_unbound"]) == (6, 0, 0)


LAZY_TLS_CLIENT = """
import sys, time
port = sys.argv[1]
print("ready", flush=True)
sys.stdin.readline()
import ssl, urllib.request  # libssl is mapped only now, long after the process was instrumented
context = ssl._create_unverified_context()
for i in range(2):
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/plain/{i}", context=context) as r:
        print(r.status, len(r.read()), flush=True)
    time.sleep(0.5)
print("done", flush=True)
sys.stdin.read()
"""


def test_a_tls_library_loaded_late_is_attached_at_the_first_tls_connection(
        tls_upstream: tuple[subprocess.Popen[str], int]) -> None:
    """Python loads libssl at `import ssl`: here well after obi's scans of the new process. The
    kernel tells obi when the process starts its first TLS connection (its ClientHello), obi
    attaches then, and the next request is a span."""
    _, port = tls_upstream
    client = Client([sys.executable, "-c", LAZY_TLS_CLIENT, str(port)])
    try:
        with OtlpReceiver() as receiver, \
                AgentProcess(agent_env(receiver, OTEL_EBPF_TARGET_PID=str(client.proc.pid))) as agent:
            agent.wait_instrumented(client.proc.pid)
            time.sleep(RESCAN_DELAYS_S[-1] + 0.5)  # past the rescans of a new process
            assert not any(e.get("event") == "tls_library_attached" for e in agent.logs)
            assert client.run() == ["200 3", "200 3"]
            receiver.wait_for(lambda: any(attributes(s)["url.full"].endswith("/plain/1")
                                          for _, s in receiver.spans()), 15)
            stopped(agent)
    finally:
        client.close()
    attached = next(e for e in agent.logs if e.get("event") == "tls_library_attached")
    assert attached["pid"] == client.proc.pid
    urls = [attributes(s)["url.full"] for _, s in receiver.spans()]
    assert urls[-1] == f"https://127.0.0.1:{port}/plain/1"
    assert set(urls) <= {f"https://127.0.0.1:{port}/plain/{i}" for i in range(2)}
