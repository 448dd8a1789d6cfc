"""HTTP client spans end to end: real clients (Python urllib and requests, Node http and
fetch, Go net/http, nginx proxy_pass, a short-lived curl) against a real upstream, the real
agent, exact CLIENT spans and http.client.* metrics at an OTLP receiver."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.e2e.agent import AgentProcess
from tests.e2e.test_python_app import FAST_EXPORT, attributes, latest_points
from tests.otlp_receiver import OtlpReceiver
from tests.servers.nginx import nginx_worker, start_nginx
from tests.support import stop_process

TESTS = Path(__file__).resolve().parents[1]
CLIENTS = TESTS / "clients"
SERVERS = TESTS / "servers"
ROOT = TESTS.parent
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"

# Every client makes these requests, in this order, on keep-alive connections it then leaves idle:
# (method, path, body, expected status, response body size on the wire)
REQUESTS: list[tuple[str, str, str, int, int]] = [
    ("GET", "/plain?q=1", "-", 200, 3),
    ("POST", "/echo", "hello", 200, 5),
    ("GET", "/status/404", "-", 404, 7),
    ("GET", "/chunked?n=2", "-", 200, 33),  # two "data: N\n\n" chunks and the last chunk
]


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go client, built with the Go toolchain the test dependencies install (no network)."""
    out = tmp_path_factory.mktemp("go") / "http_client"
    go = Path(sys.executable).parent / "go"
    env = {**os.environ, "GOCACHE": str(ROOT / "build" / "gocache"), "GOPATH": str(ROOT / "build" / "gopath"),
           "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    subprocess.run([str(go), "build", "-o", str(out), str(CLIENTS / "http_client.go")], check=True, env=env,
                   cwd=tmp_path_factory.getbasetemp(), timeout=300)
    return out


class Client:
    """A client process that waits for "go" on stdin, makes its requests, says "done", then idles."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def run(self) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        lines = []
        while (line := self.proc.stdout.readline().strip()) != "done":
            assert line, "the client exited early"
            lines.append(line)
        return lines

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        stop_process(self.proc)


def request_args(port: int, scheme: str = "http") -> list[str]:
    return [arg for method, path, body, _, _ in REQUESTS
            for arg in (method, f"{scheme}://127.0.0.1:{port}{path}", body)]


PYTHON_CLIENT = textwrap.dedent("""
    import ssl, sys
    api, args = sys.argv[1], sys.argv[2:]
    unverified = ssl._create_unverified_context()  # https: the tests' self-signed certificate
    print("ready", flush=True)
    sys.stdin.readline()
    if api == "requests":
        import requests, urllib3
        urllib3.disable_warnings()
        session = requests.Session()
        for method, url, body in zip(args[::3], args[1::3], args[2::3]):
            r = session.request(method, url, data=None if body == "-" else body.encode(), verify=False)
            print(r.status_code, len(r.content), flush=True)
    else:
        import urllib.error, urllib.request
        for method, url, body in zip(args[::3], args[1::3], args[2::3]):
            req = urllib.request.Request(url, method=method, data=None if body == "-" else body.encode())
            try:
                with urllib.request.urlopen(req, context=unverified) as r:
                    print(r.status, len(r.read()), flush=True)
            except urllib.error.HTTPError as err:
                print(err.code, len(err.read()), flush=True)
    print("done", flush=True)
    sys.stdin.read()
""")


def client_argv(kind: str, port: int, go_client: Path | None, scheme: str = "http") -> list[str]:
    args = request_args(port, scheme)
    if kind in ("urllib", "requests"):
        return [sys.executable, "-c", PYTHON_CLIENT, kind, *args]
    if kind in ("node-http", "node-fetch"):
        return ["node", str(CLIENTS / "http_client.mjs"), kind.removeprefix("node-"), *args]
    assert go_client is not None
    return [str(go_client), *args]


def client_spans(receiver: OtlpReceiver) -> list[tuple[dict[str, Any], Span]]:
    return [(r, s) for r, s in receiver.spans() if s.kind == Span.SPAN_KIND_CLIENT]


def check_client_spans(receiver: OtlpReceiver, results: list[str], pid: int, upstream: int,
                       scheme: str = "http", go: bool = False) -> None:
    """The exact CLIENT spans and http.client.* metrics of one client's REQUESTS. `go`: the
    spans come from the Go uprobes, which end a call when its response headers are back, as
    OBI's do: a body without Content-Length (chunked) has no size then."""
    response_sizes = [0 if go and "chunked" in path else size for _, path, _, _, size in REQUESTS]
    assert results == [f"{status} {size if 'chunked' not in path else 18}"
                       for _, path, _, status, size in REQUESTS]
    spans = client_spans(receiver)
    assert len(spans) == len(REQUESTS)
    for (method, path, body, status, _), size, (resource, span) in zip(REQUESTS, response_sizes, spans,
                                                                       strict=True):
        assert resource["process.pid"] == pid
        route = "/status/{code}" if path.startswith("/status/") else None
        assert span.name == (f"{method} {route}" if route else method)
        expected = {
            "http.request.method": method,
            "http.response.status_code": status,
            "url.scheme": scheme,
            "server.address": "127.0.0.1",
            "server.port": upstream,
            "url.full": f"{scheme}://127.0.0.1:{upstream}{path.partition('?')[0]}",
            "http.request.body.size": 0 if body == "-" else len(body),
            "http.response.body.size": size,
        }
        if route:
            expected["http.route"] = route
        assert attributes(span) == expected, path
        error = Status.STATUS_CODE_ERROR if status >= 400 else Status.STATUS_CODE_UNSET
        assert span.status.code == error, path
        assert span.end_time_unix_nano > span.start_time_unix_nano
        assert len(span.trace_id) == 16 and span.parent_span_id == b""
    points = latest_points(receiver, "http.client.request.duration")
    by_key = {(a["http.request.method"], a["http.response.status_code"], a.get("http.route")): p.count
              for a, p in points}
    assert by_key == {("GET", 200, None): 2, ("POST", 200, None): 1, ("GET", 404, "/status/{code}"): 1}
    assert {(a["server.address"], a["server.port"]) for a, _ in points} == {("127.0.0.1", upstream)}
    sizes = latest_points(receiver, "http.client.request.body.size")
    assert sum(p.sum for _, p in sizes) == 5
    responses = latest_points(receiver, "http.client.response.body.size")
    assert sum(p.sum for _, p in responses) == sum(response_sizes)
    assert not latest_points(receiver, "http.server.request.duration")


def run_client(argv: list[str], tmp_path: Path) -> tuple[OtlpReceiver, list[str], int]:
    """Runs a Client under the agent (selected by pid); returns the receiver, the client's
    results and its pid, once every span and metric point of REQUESTS has arrived."""
    config = tmp_path / "obi.yml"
    config.write_text("routes:\n  patterns: [\"/status/{code}\"]\n")
    client = Client(argv)
    try:
        with OtlpReceiver() as receiver:
            env = {"OTEL_EBPF_TARGET_PID": str(client.proc.pid), "OTEL_EXPORTER_OTLP_ENDPOINT":
                   receiver.grpc_endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                   "OTEL_EBPF_CONFIG_PATH": str(config), **FAST_EXPORT}
            with AgentProcess(env) as agent:
                agent.wait_instrumented(client.proc.pid)
                results = client.run()
                # The client leaves its connections open and idle: every span must still come,
                # each ended by its own framing (length or chunked terminator).
                receiver.wait_for(lambda: len(client_spans(receiver)) >= len(REQUESTS), 15)
                receiver.wait_for(lambda: sum(p.count for _, p in latest_points(
                    receiver, "http.client.request.duration")) >= len(REQUESTS), 15)
                assert agent.stop() == 0
    finally:
        client.close()
    return receiver, results, client.proc.pid


@pytest.mark.parametrize("kind", ["urllib", "requests", "node-http", "node-fetch", "go"])
def test_client_spans_of_real_clients(kind: str, upstream: int, go_client: Path, tmp_path: Path) -> None:
    receiver, results, pid = run_client(client_argv(kind, upstream, go_client), tmp_path)
    check_client_spans(receiver, results, pid, upstream, go=kind == "go")


def test_a_traceparent_the_application_writes_is_the_client_span(upstream: int) -> None:
    script = textwrap.dedent(f"""
        import sys, urllib.request
        print("ready", flush=True)
        sys.stdin.readline()
        req = urllib.request.Request("http://127.0.0.1:{upstream}/headers",
                                     headers={{"traceparent": "00-{TRACE}-{SPAN}-01"}})
        with urllib.request.urlopen(req) as r:
            print(r.status, len(r.read()), flush=True)
        print("done", flush=True)
        sys.stdin.read()
    """)
    client = Client([sys.executable, "-c", script])
    try:
        with OtlpReceiver() as receiver:
            env = {"OTEL_EBPF_TARGET_PID": str(client.proc.pid), "OTEL_EXPORTER_OTLP_ENDPOINT":
                   receiver.grpc_endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", **FAST_EXPORT}
            with AgentProcess(env) as agent:
                agent.wait_instrumented(client.proc.pid)
                client.run()
                receiver.wait_for(lambda: len(client_spans(receiver)) == 1, 15)
                assert agent.stop() == 0
    finally:
        client.close()
    ((_, span),) = client_spans(receiver)
    assert (span.trace_id.hex(), span.span_id.hex(), span.parent_span_id) == (TRACE, SPAN, b"")


NGINX_PROXY = """\
    upstream backend {{ server 127.0.0.1:{upstream}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        location /api/ {{
            proxy_pass http://backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


def test_nginx_proxy_pass_makes_a_client_span_of_nginx(tmp_path: Path, upstream: int) -> None:
    nginx, port = start_nginx(tmp_path, NGINX_PROXY, upstream=upstream)
    try:
        with OtlpReceiver() as receiver:
            env = {"OTEL_EBPF_AUTO_TARGET_EXE": "*/nginx",
                   "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
                   "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", **FAST_EXPORT}
            with AgentProcess(env) as agent:
                worker = nginx_worker(nginx.pid)
                agent.wait_instrumented(worker)
                for path in ("/api/plain", "/api/status/503", "/api/plain"):
                    subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}{path}"],
                                   check=True, timeout=10)
                receiver.wait_for_spans(6, timeout=15)
                assert agent.stop() == 0
    finally:
        stop_process(nginx)
    spans = [(r["process.pid"], s) for r, s in receiver.spans()]
    servers = [s for pid, s in spans if s.kind == Span.SPAN_KIND_SERVER and pid == worker]
    clients = [s for pid, s in spans if s.kind == Span.SPAN_KIND_CLIENT and pid == worker]
    assert [attributes(s)["url.path"] for s in servers] == ["/api/plain", "/api/status/503", "/api/plain"]
    assert [attributes(s)["http.response.status_code"] for s in servers] == [200, 503, 200]
    assert [(attributes(s)["url.full"], attributes(s)["http.response.status_code"]) for s in clients] == [
        ("http://backend/plain", 200), ("http://backend/status/503", 503), ("http://backend/plain", 200)]
    for client in clients:
        found = attributes(client)
        assert (found["server.address"], found["server.port"]) == ("backend", upstream)
        assert client.status.code == Status.STATUS_CODE_ERROR or found["http.response.status_code"] < 400
    # each upstream call lies within the request nginx was serving
    for server, client in zip(servers, clients, strict=True):
        assert server.start_time_unix_nano <= client.start_time_unix_nano
        assert client.end_time_unix_nano <= server.end_time_unix_nano


def test_a_short_lived_curl_is_caught_from_its_first_request(upstream: int) -> None:
    """curl starts after obi, selected by executable: the kernel traces every new executable
    until user space decides, so the one request of its short life is a span."""
    with OtlpReceiver() as receiver:
        env = {"OTEL_EBPF_AUTO_TARGET_EXE": "*/curl", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
               "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", **FAST_EXPORT}
        with AgentProcess(env) as agent:
            pids = []
            for i in range(3):
                curl = subprocess.run(["curl", "-s", f"http://127.0.0.1:{upstream}/plain/{i}"],
                                      capture_output=True, check=True, timeout=10)
                assert curl.stdout == b"ok\n"
            receiver.wait_for(lambda: len(client_spans(receiver)) == 3, 15)
            assert agent.stop() == 0
            pids = [e["pid"] for e in agent.logs if e.get("event") == "process_instrumented"]
    spans = client_spans(receiver)
    assert [attributes(s)["url.full"] for _, s in spans] == [
        f"http://127.0.0.1:{upstream}/plain/{i}" for i in range(3)]
    assert {r["service.name"] for r, _ in spans} == {"curl"}
    assert sorted(r["process.pid"] for r, _ in spans) == sorted(pids)
