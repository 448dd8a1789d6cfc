"""End to end: a Python http.server app, curl, the real agent, an OTLP receiver.

The two configurations of the Kubernetes guide: the sidecar environment
(OTEL_EBPF_OPEN_PORT + OTEL_EXPORTER_OTLP_ENDPOINT on 4318, HTTP/protobuf)
and the ConfigMap YAML (gRPC on 4317, parentbased_traceidratio, routes).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.e2e.agent import AgentProcess
from tests.otlp_receiver import OtlpReceiver
from tests.support import free_port, start_process, stop_process

SERVERS = Path(__file__).resolve().parents[1] / "servers"
TRACEPARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT_SPAN = "b7ad6b7169203331"
FAST_EXPORT = {"OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT": "200ms", "OTEL_METRIC_EXPORT_INTERVAL": "500"}


def curl(*args: str) -> str:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    # The well-known OTLP ports: the agent must pick the protocol from them.
    with OtlpReceiver(grpc_port=4317, http_port=4318) as r:
        yield r


@pytest.fixture
def app() -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "OTEL_SERVICE_NAME": "e2e-app"}
    proc = start_process([sys.executable, str(SERVERS / "app.py"), str(port)], ready="ready", env=env)
    yield proc, port
    stop_process(proc)


def by_path(received: list[tuple[dict[str, Any], Span]]) -> dict[str, tuple[dict[str, Any], Span]]:
    out = {}
    for resource, span in received:
        attrs = {kv.key: kv.value for kv in span.attributes}
        out[attrs["url.path"].string_value] = (resource, span)
    return out


def latest_points(receiver: OtlpReceiver, name: str) -> list[tuple[dict[str, Any], Any]]:
    """(point attributes, point) of the named metric in the newest export (cumulative)."""
    for request in reversed(receiver.metric_requests):
        assert request.metrics is not None
        points = [(attributes(p), p) for rm in request.metrics.resource_metrics
                  for sm in rm.scope_metrics for m in sm.metrics if m.name == name
                  for p in m.histogram.data_points]
        if points:
            return points
    return []


def attributes(span: Any) -> dict[str, Any]:
    """Attributes of a span or a data point as a plain dict."""
    values: dict[str, Any] = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        values[kv.key] = getattr(kv.value, which)
    return values


def test_sidecar_environment_over_http(receiver: OtlpReceiver,
                                       app: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = app
    base = f"http://127.0.0.1:{port}"
    env = {"OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
           "OTEL_EBPF_KUBE_METADATA_ENABLE": "true",
           "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer s3cr3t-t0ken",
           "OTEL_EBPF_INTERNAL_METRICS_EXPORTER": "otel", **FAST_EXPORT}
    with AgentProcess(env) as agent:
        agent.wait_instrumented(proc.pid)
        # Keep-alive: two requests on one connection.
        assert curl(f"{base}/hello", f"{base}/factorial/5") == "hello\n120\n"
        # Not keep-alive, with a query string.
        assert curl("-H", "Connection: close", f"{base}/hello2?x=1&y=2") == "not found\n"
        # Continues the caller's trace.
        curl("-H", f"traceparent: 00-{TRACEPARENT_TRACE}-{TRACEPARENT_SPAN}-01", f"{base}/factorial/3")
        curl(f"{base}/status/500")
        assert curl("-X", "POST", "--data-binary", "hello world", f"{base}/echo") == "hello world"
        receiver.wait_for_spans(6, timeout=15)
        receiver.wait_for(lambda: sum(p.count for _, p in latest_points(
            receiver, "http.server.request.duration")) >= 6, timeout=15)
        assert agent.stop() == 0
        logs = "\n".join(map(str, agent.logs))
    assert "s3cr3t-t0ken" not in logs

    # Every request went over HTTP/protobuf with the configured header.
    assert receiver.trace_requests and all(r.transport == "http" for r in receiver.requests)
    assert all(r.headers.get("authorization") == "Bearer s3cr3t-t0ken" for r in receiver.requests)

    spans = by_path(receiver.spans())
    assert sorted(spans) == ["/echo", "/factorial/3", "/factorial/5", "/hello", "/hello2", "/status/500"]
    resource, hello = spans["/hello"]
    assert resource["service.name"] == "e2e-app"
    assert resource["process.pid"] == proc.pid
    assert resource["telemetry.sdk.language"] == "python"
    assert {"service.instance.id", "telemetry.sdk.name", "telemetry.sdk.version", "host.name",
            "os.type"} <= set(resource)
    assert hello.kind == Span.SPAN_KIND_SERVER
    assert hello.name == "GET /hello"
    assert attributes(hello) == {
        "http.request.method": "GET", "http.response.status_code": 200, "url.path": "/hello",
        "url.scheme": "http", "http.route": "/hello", "server.address": "127.0.0.1", "server.port": port,
        "client.address": "127.0.0.1", "network.protocol.version": "1.1",
        "http.request.body.size": 0, "http.response.body.size": 6,
    }
    assert hello.status.code == Status.STATUS_CODE_UNSET
    assert hello.end_time_unix_nano > hello.start_time_unix_nano
    assert hello.parent_span_id == b""

    # No route patterns: OBI's heuristic routes (ids and gibberish segments become "*").
    _, fact5 = spans["/factorial/5"]
    assert attributes(fact5)["http.response.body.size"] == 4
    assert attributes(fact5)["http.route"] == "/factorial/*" and fact5.name == "GET /factorial/*"
    _, query = spans["/hello2"]
    assert attributes(query)["http.response.status_code"] == 404
    assert attributes(query)["http.route"] == "/*" and query.name == "GET /*"

    _, continued = spans["/factorial/3"]
    assert continued.trace_id.hex() == TRACEPARENT_TRACE
    assert continued.parent_span_id.hex() == TRACEPARENT_SPAN
    assert continued.span_id.hex() != TRACEPARENT_SPAN

    _, failed = spans["/status/500"]
    assert attributes(failed)["http.response.status_code"] == 500
    assert attributes(failed)["http.route"] == "/status/*"
    assert failed.status.code == Status.STATUS_CODE_ERROR

    _, echo = spans["/echo"]
    assert echo.name == "POST /echo"
    assert attributes(echo)["http.request.body.size"] == 11
    assert attributes(echo)["http.response.body.size"] == 11

    # Distinct traces for distinct requests without a traceparent.
    roots = [s for _, s in spans.values() if not s.parent_span_id]
    assert len({s.trace_id for s in roots}) == len(roots) == 5

    # RED metrics: one observation per request, by route and status.
    counts = {(a["http.request.method"], a.get("http.route"), a["http.response.status_code"]): p.count
              for a, p in latest_points(receiver, "http.server.request.duration")}
    assert counts == {
        ("GET", "/hello", 200): 1,
        ("GET", "/factorial/*", 200): 2,
        ("GET", "/*", 404): 1,
        ("GET", "/status/*", 500): 1,
        ("POST", "/echo", 200): 1,
    }
    # obi's own counters ride along (internal_metrics.exporter: otel), sent last at shutdown.
    internal = {name: receiver.metric_points(name)[-1] for name in
                ("obi.spans.built", "obi.ebpf.events.lost", "obi.spans.exported", "obi.spans.export.dropped")}
    assert internal["obi.spans.built"][0]["service.name"] == "obi"
    assert {name: getattr(point, "as_int", None) for name, (_, point) in internal.items()} == {
        "obi.spans.built": 6, "obi.ebpf.events.lost": 0,
        "obi.spans.exported": 6, "obi.spans.export.dropped": 0}
    body_points = latest_points(receiver, "http.server.request.body.size")
    body = {a["http.request.method"]: p.sum for a, p in body_points}
    assert body == {"GET": 0, "POST": 11}


CONFIGMAP_YAML = """\
trace_printer: text
otel_traces_export:
  endpoint: http://127.0.0.1:4317
  sampler:
    name: parentbased_traceidratio
    arg: "0.01"
routes:
  patterns:
    - /factorial/{num}
"""


def test_configmap_yaml_over_grpc(tmp_path: Path, receiver: OtlpReceiver,
                                  app: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = app
    config = tmp_path / "obi-config.yml"
    config.write_text(CONFIGMAP_YAML)
    # Metrics too, to show that sampling never changes them.
    env = {"OTEL_EBPF_CONFIG_PATH": str(config), "OTEL_EBPF_OPEN_PORT": str(port),
           "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://127.0.0.1:4317", **FAST_EXPORT}
    with AgentProcess(env) as agent:
        agent.wait_instrumented(proc.pid)
        for n in range(1, 21):
            # Sampled parents are always kept by the parent-based sampler...
            curl("-H", f"traceparent: 00-{n:032x}-{n:016x}-01", f"http://127.0.0.1:{port}/factorial/{n}")
            # ...unsampled ones never.
            curl("-H", f"traceparent: 00-{n + 100:032x}-{n:016x}-00", f"http://127.0.0.1:{port}/factorial/{n}")
        receiver.wait_for_spans(20, timeout=15)
        receiver.wait_for(lambda: sum(p.count for _, p in latest_points(
            receiver, "http.server.request.duration")) >= 40, timeout=15)
        assert agent.stop() == 0
        printed = list(agent.stdout)
    assert receiver.trace_requests and all(r.transport == "grpc" for r in receiver.requests)
    spans = [s for _, s in receiver.spans()]
    assert len(spans) == 20
    assert sorted(int(s.trace_id.hex(), 16) for s in spans) == list(range(1, 21))
    for span in spans:
        assert span.name == "GET /factorial/{num}"
        assert attributes(span)["http.route"] == "/factorial/{num}"
    counts = {a["http.route"]: p.count for a, p in latest_points(receiver, "http.server.request.duration")}
    assert counts == {"/factorial/{num}": 40}
    # trace_printer: text prints the sampled spans too.
    assert sum("/factorial/" in line for line in printed) == 20
