"""End to end with Debian's nginx: curl for exact spans, a bounded wrk run for counts,
and a server started after the agent."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.agent import AgentProcess
from tests.e2e.test_python_app import FAST_EXPORT, SERVERS, attributes, curl
from tests.otlp_receiver import OtlpReceiver
from tests.servers.nginx import nginx_worker, start_nginx
from tests.support import free_port, start_process, stop_process


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc, port = start_nginx(tmp_path)
    yield proc, port
    stop_process(proc)


def test_nginx_spans_and_bounded_wrk_run(nginx: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = nginx
    worker = nginx_worker(proc.pid)
    with OtlpReceiver() as receiver:
        env = {"OTEL_EBPF_AUTO_TARGET_EXE": "*/nginx",
               "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
               # Unthrottled wrk bursts far past the default queue: every span must still arrive.
               "OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_SIZE": "200000", **FAST_EXPORT}
        with AgentProcess(env) as agent:
            agent.wait_instrumented(worker)
            base = f"http://127.0.0.1:{port}"
            assert curl(f"{base}/index.html") == "<h1>obi</h1>\n"
            assert len(curl(f"{base}/big.bin")) == 100_000   # served with sendfile
            curl(f"{base}/fail")
            curl("-X", "POST", "--data-binary", "abc", f"{base}/created")
            receiver.wait_for_spans(4, timeout=15)
            curl_spans = {attributes(s)["url.path"]: s for _, s in receiver.spans()}
            assert set(curl_spans) == {"/index.html", "/big.bin", "/fail", "/created"}
            assert attributes(curl_spans["/index.html"])["http.response.body.size"] == 13
            assert attributes(curl_spans["/big.bin"])["http.response.body.size"] == 100_000
            assert attributes(curl_spans["/fail"])["http.response.status_code"] == 500
            assert attributes(curl_spans["/created"])["http.request.body.size"] == 3
            assert attributes(curl_spans["/created"])["http.request.method"] == "POST"
            resource = receiver.spans()[0][0]
            assert resource["service.name"] == "nginx"
            assert resource["process.pid"] == worker

            # A bounded load: 2 s, 4 connections, keep-alive.
            out = subprocess.run(["wrk", "-t1", "-c4", "-d2s", f"{base}/index.html"], check=True,
                                 capture_output=True, text=True, timeout=30).stdout
            completed = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
            assert completed > 100
            receiver.wait_for_spans(4 + completed, timeout=30)
            assert agent.stop() == 0
            stopped = agent.wait_log(lambda e: e.get("event") == "agent_stopped", 1)
        spans = receiver.spans()
        load = [s for _, s in spans if attributes(s)["url.path"] == "/index.html"]
        # wrk counts the responses it read; at most one request per connection was cut short.
        assert completed + 1 <= len(load) <= completed + 1 + 4
        assert stopped["events_lost"] == 0
        assert stopped["parse_errors"] == 0
        assert stopped["spans_export_dropped"] == 0
        assert stopped["spans_exported"] == len(spans)


def test_server_started_after_the_agent() -> None:
    port = free_port()
    with OtlpReceiver() as receiver:
        env = {"OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
               f"{receiver.http_endpoint}/v1/traces", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
               **FAST_EXPORT}
        with AgentProcess(env) as agent:
            app = start_process([sys.executable, str(SERVERS / "app.py"), str(port)], ready="ready")
            try:
                agent.wait_instrumented(app.pid, timeout=5)
                assert curl(f"http://127.0.0.1:{port}/hello") == "hello\n"
                receiver.wait_for_spans(1, timeout=15)
            finally:
                stop_process(app)
            # The exited process is forgotten.
            agent.wait_log(lambda e: e.get("event") == "process_forgotten" and e.get("pid") == app.pid, 5)
        (resource, span), = receiver.spans()
        assert resource["process.pid"] == app.pid
        assert span.name == "GET /hello"
