"""OTLP headers and tokens (the Kubernetes Secret's OTEL_EXPORTER_OTLP_HEADERS) never
show in logs at any level, in the trace printer's output or in error messages, even
when the collector refuses them."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from tests.e2e.agent import AgentProcess
from tests.e2e.reliability import get_all, python_app, span_path
from tests.e2e.test_cli import obi
from tests.otlp_receiver import OtlpReceiver

TOKEN = "s3cr3t-T0KEN-9f8e7d"
API_KEY = "k3y-4b3c2a1"
HEADERS = f"Authorization=Bearer {TOKEN},X-Api-Key={API_KEY}"


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text and API_KEY not in text and "s3cr3t" not in text


def refused_with(status: str) -> Callable[[dict[str, Any]], bool]:
    """Matches the log of a permanent export failure with this status (401, UNAUTHENTICATED...)."""
    return lambda e: (e.get("event") == "otlp_export_failed" and e.get("permanent") is True
                      and str(e.get("reason", "")).endswith(status))


@pytest.mark.parametrize(("protocol", "printer"), [("http", "json"), ("grpc", "text")])
def test_tokens_stay_out_of_logs_printer_and_errors(protocol: str, printer: str) -> None:
    with OtlpReceiver() as receiver, python_app("secret-keeper") as (app, port):
        if protocol == "grpc":
            endpoint, wire = receiver.grpc_endpoint, "grpc"
        else:
            # Credentials in the URL are secrets too.
            endpoint, wire = f"http://obi:{TOKEN}@127.0.0.1:{receiver.http_port}", "http/protobuf"
        refusals = [(401, grpc.StatusCode.UNAUTHENTICATED), (403, grpc.StatusCode.PERMISSION_DENIED)]
        env = {"OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
               "OTEL_EXPORTER_OTLP_PROTOCOL": wire, "OTEL_EXPORTER_OTLP_HEADERS": HEADERS,
               "OTEL_EXPORTER_OTLP_TRACES_HEADERS": f"X-Tenant-Token={TOKEN}",
               "OTEL_EBPF_LOG_LEVEL": "DEBUG", "OTEL_EBPF_TRACE_PRINTER": printer,
               "OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT": "200ms", "OTEL_METRIC_EXPORT_INTERVAL": "500",
               "OTEL_EBPF_INTERNAL_METRICS_EXPORTER": "otel"}
        with AgentProcess(env) as agent:
            agent.wait_instrumented(app.pid)
            for n, (status, code) in enumerate(refusals):
                receiver.fail_next(1, http_status=status, grpc_code=code)
                get_all(port, [f"/refused/{n}"])
                receiver.wait_for_failures(1)
                agent.wait_log(refused_with(code.name if protocol == "grpc" else str(status)), 10)
            get_all(port, ["/accepted"])
            receiver.wait_for(lambda: any(span_path(s) == "/accepted" for _, s in receiver.spans()), 15)
            assert agent.stop() == 0
    # The headers were sent...
    traces = receiver.trace_requests
    assert traces and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in traces)
    assert all(r.headers.get("x-api-key") == API_KEY and r.headers.get("x-tenant-token") == TOKEN
               for r in traces)
    # ...and written nowhere: debug logs, failures, printer.
    assert any(e.get("level") == "debug" for e in agent.logs), "no debug log to check"
    assert sum(e.get("event") == "otlp_export_failed" for e in agent.logs) >= 2
    assert sum("/refused/" in line or "/accepted" in line for line in agent.stdout) == 3
    assert_no_secret(json.dumps(agent.logs), "\n".join(agent.stdout))


def test_bad_endpoint_error_does_not_quote_credentials() -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        done = obi(env={"OTEL_EBPF_OPEN_PORT": "80", "OTEL_EXPORTER_OTLP_HEADERS": HEADERS,
                        name: f"http://obi:{TOKEN}@127.0.0.1:99999/v1/traces"})
        assert done.returncode == 1 and done.stderr.count("\n") == 1
        assert name in done.stderr and "invalid port" in done.stderr
        assert_no_secret(done.stdout, done.stderr)


def test_unreachable_collector_errors_do_not_quote_credentials() -> None:
    """Nothing listens: connection errors in the logs name the destination, not the secret."""
    with python_app("unreachable") as (app, port):
        env = {"OTEL_EBPF_OPEN_PORT": str(port),
               "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"https://obi:{TOKEN}@127.0.0.1:1/v1/traces",
               "OTEL_EXPORTER_OTLP_HEADERS": HEADERS, "OTEL_EBPF_LOG_LEVEL": "DEBUG",
               "OTEL_EXPORTER_OTLP_TIMEOUT": "1000", "OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT": "100ms"}
        with AgentProcess(env) as agent:
            agent.wait_instrumented(app.pid)
            get_all(port, ["/lost"])
            failed = agent.wait_log(lambda e: e.get("event") == "otlp_export_failed", 15)
            assert "127.0.0.1:1" in failed["destination"]
            assert agent.stop() == 0
    assert_no_secret(json.dumps(agent.logs), "\n".join(agent.stdout))


def test_credentials_in_the_endpoint_url_are_sent_as_basic_auth() -> None:
    """Without an Authorization header, the URL's user info becomes Basic auth (as in Go)."""
    with OtlpReceiver() as receiver, python_app("basic-auth") as (app, port):
        env = {"OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EBPF_LOG_LEVEL": "DEBUG",
               "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://obi:{TOKEN}@127.0.0.1:{receiver.http_port}",
               "OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT": "100ms"}
        with AgentProcess(env) as agent:
            agent.wait_instrumented(app.pid)
            get_all(port, ["/basic"])
            receiver.wait_for_spans(1, 15)
            assert agent.stop() == 0
    expected = "Basic " + base64.b64encode(f"obi:{TOKEN}".encode()).decode()
    assert [r.headers.get("authorization") for r in receiver.trace_requests] == [expected]
    assert_no_secret(json.dumps(agent.logs), "\n".join(agent.stdout))
    assert base64.b64encode(f"obi:{TOKEN}".encode()).decode() not in json.dumps(agent.logs)
