"""The Prometheus exposition of the RED metrics: names, labels, escaping, ttl, and promtool's word."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from obi.export.metrics import RedMetrics
from obi.export.prometheus import ExpositionOptions, label_value, number, render
from obi.traces.model import SPAN_KIND_CLIENT, DbSpan
from tests.unit.test_export_encode import make_service, make_span

START = 1_700_000_000_000_000_000


def promtool_check(text: bytes) -> str:
    """`promtool check metrics` on an exposition: its complaints ('' when clean)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make deps` installs Debian's prometheus"
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    complaints = (done.stdout + done.stderr).decode()
    assert done.returncode == 0 or complaints, "promtool failed without saying why"
    return complaints


def lines_of(text: bytes, prefix: str) -> list[str]:
    return [line for line in text.decode().splitlines() if line.startswith(prefix)]


def test_an_http_server_series_under_obis_names_and_labels() -> None:
    service = make_service("checkout", 77, service_namespace="shop")
    metrics = RedMetrics(duration_buckets=(0.001, 0.01), request_size_buckets=(100.0,),
                         response_size_buckets=(100.0, 1000.0), series_ttl_s=None)
    # 2**-8 and 2**-6 s: their sum is exact in binary
    metrics.record([make_span(service, end_ns=START + 3_906_250, start_ns=START),
                    make_span(service, end_ns=START + 15_625_000, start_ns=START)])
    text = render(metrics, START + 30_000_000_000)
    labels = ('service_name="checkout",service_namespace="shop",instance="host:77",job="shop/checkout",'
              'http_request_method="GET",http_response_status_code="200",http_route="/items/{id}",'
              'url_scheme="http",server_address="127.0.0.1",server_port="8080"')
    assert lines_of(text, "http_server_request_duration_seconds") == [
        f'http_server_request_duration_seconds_bucket{{{labels},le="0.001"}} 0',
        f'http_server_request_duration_seconds_bucket{{{labels},le="0.01"}} 1',
        f'http_server_request_duration_seconds_bucket{{{labels},le="+Inf"}} 2',
        f"http_server_request_duration_seconds_sum{{{labels}}} 0.01953125",
        f"http_server_request_duration_seconds_count{{{labels}}} 2",
    ]
    assert lines_of(text, "http_server_response_body_size_bytes_count") == [
        f"http_server_response_body_size_bytes_count{{{labels}}} 2"]
    assert lines_of(text, "http_server_response_body_size_bytes_bucket")[1].endswith('le="1000"} 2')
    assert "# TYPE http_server_request_duration_seconds histogram" in text.decode()
    [target] = lines_of(text, "target_info{")
    assert target.startswith('target_info{service_name="checkout",service_namespace="shop",'
                             'instance="host:77",job="shop/checkout",')
    assert 'telemetry_sdk_language="python"' in target and 'source="obi"' in target
    assert 'process_pid="77"' in target and target.endswith("} 1")
    [build] = lines_of(text, "obi_build_info{")
    assert 'target_lang="python"' in build and build.endswith("} 1")
    assert promtool_check(text) == ""


def test_every_family_is_named_as_obi_names_it_and_written_together() -> None:
    first, second = make_service("a", 1), make_service("b", 2)
    metrics = RedMetrics(series_ttl_s=None)
    metrics.record([
        make_span(first), make_span(second), make_span(first, kind=SPAN_KIND_CLIENT, server_port=9200),
        DbSpan(first, SPAN_KIND_CLIENT, START, START + 1000, b"\x01" * 16, b"\x02" * 8, b"", True, 0,
               "postgresql", "SELECT", "users", "", "db", 5432, "127.0.0.1", 40000, "", "", None),
    ])
    text = render(metrics, START + 1)
    types = [line.split()[2] for line in text.decode().splitlines() if line.startswith("# TYPE")]
    assert types == ["http_server_request_duration_seconds", "http_server_request_body_size_bytes",
                     "http_server_response_body_size_bytes", "http_client_request_duration_seconds",
                     "http_client_request_body_size_bytes", "http_client_response_body_size_bytes",
                     "db_client_operation_duration_seconds", "target_info", "obi_build_info"]
    # Both services' server series sit under the one TYPE line of their metric.
    counts = lines_of(text, "http_server_request_duration_seconds_count")
    assert [c.split('service_name="')[1][0] for c in counts] == ["a", "b"]
    assert len(lines_of(text, "target_info{")) == 2
    assert promtool_check(text) == ""


@pytest.mark.parametrize("route", ['/say/"hi"', "/back\\slash", "/new\nline", "/ünïcødé/日本", "/{id}"])
def test_label_values_are_escaped(route: str) -> None:
    metrics = RedMetrics(series_ttl_s=None)
    metrics.record([make_span(make_service(), route=route)])
    text = render(metrics, START)
    escaped = route.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    assert f'http_route="{escaped}"' in text.decode()
    assert promtool_check(text) == ""


def test_escaping_and_numbers() -> None:
    assert label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert label_value(True) == "true" and label_value(404) == "404"
    assert [number(v) for v in (0.0, 10.0, 0.005, 1e-05, float("inf"), 2.5)] == \
        ["0", "10", "0.005", "1e-05", "+Inf", "2.5"]


def test_series_not_updated_for_the_ttl_leave_with_their_target_info() -> None:
    metrics = RedMetrics(series_ttl_s=60)
    old, fresh = make_service("old", 1), make_service("fresh", 2)
    metrics.record([make_span(old, start_ns=START, end_ns=START + 1000)])
    metrics.record([make_span(fresh, start_ns=START + 50 * 10**9, end_ns=START + 50 * 10**9 + 1000)])
    before = render(metrics, START + 59 * 10**9)
    assert len(lines_of(before, "http_server_request_duration_seconds_count")) == 2
    after = render(metrics, START + 61 * 10**9)
    [count] = lines_of(after, "http_server_request_duration_seconds_count")
    assert 'service_name="fresh"' in count
    [target] = lines_of(after, "target_info{")
    assert 'service_name="fresh"' in target
    gone = render(metrics, START + 200 * 10**9)
    assert lines_of(gone, "http_server") == [] and lines_of(gone, "target_info") == []
    assert promtool_check(gone) == ""


def test_build_info_can_be_left_out_and_the_whole_resource_is_on_target_info() -> None:
    service = make_service(attributes={"k8s.namespace.name": "shop", "host.name": "node-1",
                                       "os.type": "linux", "deployment.environment": "prod"})
    metrics = RedMetrics(series_ttl_s=None)
    metrics.record([make_span(service)])
    text = render(metrics, START, ExpositionOptions(build_info=False))
    assert lines_of(text, "obi_build_info") == [] and "# TYPE obi_build_info" not in text.decode()
    [count] = lines_of(text, "http_server_request_duration_seconds_count")
    assert 'k8s_namespace_name="shop"' in count and "host_name" not in count  # k8s labels on every series
    [target] = lines_of(text, "target_info{")
    assert 'host_name="node-1"' in target and 'deployment_environment="prod"' in target
    assert target.count("os_type=") == 1  # each label once
    assert promtool_check(text) == ""


def test_the_overflow_series_is_labelled() -> None:
    metrics = RedMetrics(series_ttl_s=None, cardinality_limit=2)
    service = make_service()
    metrics.record([make_span(service, route=f"/r/{i}") for i in range(3)])
    counts = lines_of(render(metrics, START), "http_server_request_duration_seconds_count")
    assert len(counts) == 2 and 'otel_metric_overflow="true"' in counts[1]


def test_obis_own_metrics_under_obis_internal_names() -> None:
    from obi.ebpf.objects import MapStats
    from obi.export.prometheus import InternalState, internal_families, render_families

    state = InternalState(
        counters={"obi.ebpf.events": 120, "obi.spans.unknown_protocol": {4242: 3, 17: 1}},
        instrumented={"nginx": 2, "python3": 1}, trace_exports=7,
        trace_export_errors={"grpc status UNAVAILABLE": 2}, metric_exports=None, metric_export_errors={},
        scrapes={(9400, "/metrics"): 5, (9400, "/internal/metrics"): 1},
        bpf_maps=[MapStats(12, "pid_filter", "Hash", 4096, 3)])
    text = render_families(internal_families(state))
    assert lines_of(text, "obi_instrumented_processes{") == [
        'obi_instrumented_processes{process_name="nginx"} 2',
        'obi_instrumented_processes{process_name="python3"} 1']
    assert lines_of(text, "obi_otel_trace_exports_total ") == ["obi_otel_trace_exports_total 7"]
    assert lines_of(text, "obi_otel_trace_export_errors_total{") == [
        'obi_otel_trace_export_errors_total{error="grpc status UNAVAILABLE"} 2']
    assert lines_of(text, "obi_otel_metric") == []  # no OTLP metrics export: no series for it
    assert lines_of(text, "obi_prometheus_http_requests_total{") == [
        'obi_prometheus_http_requests_total{port="9400",path="/internal/metrics"} 1',
        'obi_prometheus_http_requests_total{port="9400",path="/metrics"} 5']
    assert lines_of(text, "obi_ebpf_events_total ") == ["obi_ebpf_events_total 120"]
    assert lines_of(text, "obi_spans_unknown_protocol_total{") == [
        'obi_spans_unknown_protocol_total{process_pid="17"} 1',
        'obi_spans_unknown_protocol_total{process_pid="4242"} 3']
    assert lines_of(text, "obi_spans_exported_total ") == ["obi_spans_exported_total 0"]
    labels = 'map_id="12",map_name="pid_filter",map_type="Hash"'
    assert lines_of(text, "obi_bpf_map_") == [f"obi_bpf_map_entries_total{{{labels}}} 3",
                                               f"obi_bpf_map_max_entries_total{{{labels}}} 4096"]
    assert promtool_check(text) == ""  # OBI's *_total names for gauges: typed untyped, so clean



async def test_the_rendering_gives_the_event_loop_turns_and_writes_what_render_writes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import obi.export.prometheus as prometheus

    monkeypatch.setattr(prometheus, "SERIES_PER_TURN", 10)
    metrics = RedMetrics(series_ttl_s=None)
    service = make_service()
    metrics.record([make_span(service, route=f"/r/{i}") for i in range(45)])
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1

    counter = asyncio.create_task(count_turns())
    text = await prometheus.render_async(metrics, START)
    counter.cancel()
    assert turns >= 3  # 45 series, a turn every 10 (the first starts the counter)
    assert text == render(metrics, START)
