"""RED metrics aggregation: counts, sums, buckets, cumulative collects, attributes."""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from obi.export.encode import SCOPE_NAME
from obi.export.metrics import (
    DEFAULT_DURATION_BUCKETS,
    DEFAULT_SIZE_BUCKETS,
    HistogramState,
    RedMetrics,
)
from tests.unit.test_export_encode import attrs, make_service, make_span

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def span_at(start_ms: float, duration_ms: float, **kw: Any) -> Any:
    start = T0 + int(start_ms * MS)
    return make_span(start_ns=start, end_ns=start + int(duration_ms * MS), **kw)


def metric(request: Any, name: str, resource_index: int = 0) -> Metric:
    (scope,) = request.resource_metrics[resource_index].scope_metrics
    assert scope.scope.name == SCOPE_NAME
    found = [m for m in scope.metrics if m.name == name]
    assert len(found) == 1
    result: Metric = found[0]
    return result


def test_defaults_are_obis() -> None:
    assert DEFAULT_DURATION_BUCKETS == (
        0,
        0.005,
        0.01,
        0.025,
        0.05,
        0.075,
        0.1,
        0.25,
        0.5,
        0.75,
        1,
        2.5,
        5,
        7.5,
        10,
    )
    assert DEFAULT_SIZE_BUCKETS == (0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def test_histograms_counts_sums_buckets_and_attributes() -> None:
    service = make_service()
    red = RedMetrics(duration_buckets=[0.001, 0.01, 0.1], request_size_buckets=[10, 100])
    red.record(
        [
            span_at(0, 0.5, service=service, request_body_size=5),  # (.., 0.001]
            span_at(1, 1.0, service=service, request_body_size=10),  # exactly a bound: (0.0005, 0.001]
            span_at(2, 50, service=service, request_body_size=1000),  # (0.01, 0.1]
            span_at(3, 500, service=service, request_body_size=50),  # (0.1, +inf)
        ]
    )
    request = red.collect(T0 + 10_000 * MS)
    assert len(request.resource_metrics) == 1
    resource = attrs(request.resource_metrics[0].resource.attributes)
    assert resource["service.name"] == ("string_value", "api")

    duration = metric(request, "http.server.request.duration")
    assert duration.unit == "s"
    assert (
        duration.histogram.aggregation_temporality
        == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    )
    (point,) = duration.histogram.data_points
    assert point.count == 4
    assert point.sum == pytest.approx(0.5515)
    assert list(point.explicit_bounds) == [0.001, 0.01, 0.1]
    assert list(point.bucket_counts) == [2, 0, 1, 1]
    assert point.min == pytest.approx(0.0005)
    assert point.max == pytest.approx(0.5)
    assert point.start_time_unix_nano == T0 + int(0.5 * MS)  # first observation
    assert point.time_unix_nano == T0 + 10_000 * MS
    assert attrs(point.attributes) == {
        "http.request.method": ("string_value", "GET"),
        "http.response.status_code": ("int_value", 200),
        "http.route": ("string_value", "/items/{id}"),
        "url.scheme": ("string_value", "http"),
        "server.address": ("string_value", "127.0.0.1"),
        "server.port": ("int_value", 8080),
    }

    req_size = metric(request, "http.server.request.body.size")
    assert req_size.unit == "By"
    (point,) = req_size.histogram.data_points
    assert list(point.bucket_counts) == [2, 1, 1]
    assert point.sum == 1065

    resp_size = metric(request, "http.server.response.body.size")
    (point,) = resp_size.histogram.data_points
    assert list(point.explicit_bounds) == list(DEFAULT_SIZE_BUCKETS)
    assert point.count == 4 and point.sum == 4 * 321
    assert list(point.bucket_counts) == [0, 0, 0, 0, 0, 1 * 4, 0, 0, 0, 0, 0]


def test_series_split_by_attributes_and_services_and_no_route() -> None:
    api, web = make_service("api", 1), make_service("web", 2)
    red = RedMetrics()
    red.record(
        [
            span_at(0, 1, service=api),
            span_at(0, 1, service=api, status_code=500),
            span_at(0, 1, service=api, route=None),
            span_at(0, 1, service=web, method="POST"),
            span_at(0, 1, service=api),
        ]
    )
    assert red.series_count == 4
    request = red.collect(T0 + 5 * MS)
    assert len(request.resource_metrics) == 2
    points = metric(request, "http.server.request.duration").histogram.data_points
    by_attrs = {tuple(sorted(attrs(p.attributes).items())): p.count for p in points}
    assert len(by_attrs) == 3
    counts = sorted(by_attrs.values())
    assert counts == [1, 1, 2]
    no_route = [p for p in points if "http.route" not in attrs(p.attributes)]
    assert len(no_route) == 1
    web_point = metric(request, "http.server.request.duration", 1).histogram.data_points[0]
    assert attrs(web_point.attributes)["http.request.method"] == ("string_value", "POST")


def test_cumulative_across_collects() -> None:
    red = RedMetrics()
    service = make_service()
    red.record([span_at(0, 1, service=service)])
    first = metric(red.collect(T0 + 10 * MS), "http.server.request.duration").histogram.data_points[0]
    red.record([span_at(20, 3, service=service), span_at(21, 3, service=service)])
    second = metric(red.collect(T0 + 30 * MS), "http.server.request.duration").histogram.data_points[0]
    assert (first.count, second.count) == (1, 3)
    assert second.sum == pytest.approx(0.007)
    assert second.start_time_unix_nano == first.start_time_unix_nano
    assert second.time_unix_nano == T0 + 30 * MS
    # Nothing new: the same cumulative numbers again.
    third = metric(red.collect(T0 + 40 * MS), "http.server.request.duration").histogram.data_points[0]
    assert third.count == 3


def test_unsampled_spans_count_too() -> None:
    red = RedMetrics()
    service = make_service()
    red.record([span_at(0, 1, service=service, sampled=False), span_at(0, 1, service=service)])
    point = metric(red.collect(T0 + MS * 10), "http.server.request.duration").histogram.data_points[0]
    assert point.count == 2


def test_idle_series_expire_after_ttl() -> None:
    red = RedMetrics(series_ttl_s=1.0)
    service = make_service()
    red.record([span_at(0, 1, service=service), span_at(0, 1, service=service, status_code=404)])
    red.record([span_at(1500, 1, service=service, status_code=404)])
    request = red.collect(T0 + 2100 * MS)
    points = metric(request, "http.server.request.duration").histogram.data_points
    assert [attrs(p.attributes)["http.response.status_code"][1] for p in points] == [404]
    assert red.collect(T0 + 10_000 * MS).resource_metrics == []
    assert red.series_count == 0


def test_empty_and_bad_buckets() -> None:
    assert RedMetrics().collect(T0).resource_metrics == []
    with pytest.raises(ValueError, match="increase strictly"):
        RedMetrics(duration_buckets=[1, 1, 2])


def test_database_operations_have_a_duration_histogram_and_no_sizes() -> None:
    from obi.traces.model import SPAN_KIND_SERVER
    from tests.unit.test_export_encode import make_db_span

    service = make_service()
    red = RedMetrics(duration_buckets=[0.001, 0.01])
    red.record([
        make_db_span(service, operation="GET"),
        make_db_span(service, operation="GET", end_ns=T0 + 5 * MS, start_ns=T0),
        make_db_span(service, operation="LPUSH", error_type="WRONGTYPE", status_code="WRONGTYPE"),
        make_db_span(service, operation="", system="memcached"),
        make_db_span(service, operation="GET", kind=SPAN_KIND_SERVER),
    ])  # fmt: skip
    request = red.collect(T0 + 10 * MS)
    (scope,) = request.resource_metrics[0].scope_metrics
    assert sorted(m.name for m in scope.metrics) == ["db.client.operation.duration",
                                                     "db.server.operation.duration"]
    client = metric(request, "db.client.operation.duration")
    assert client.unit == "s"
    points = {tuple(sorted((k, v) for k, (_, v) in attrs(p.attributes).items())): p
              for p in client.histogram.data_points}
    local = ("server.address", "127.0.0.1")
    get = points[(("db.operation.name", "GET"), ("db.system.name", "redis"), local)]
    assert get.count == 2 and list(get.bucket_counts) == [1, 1, 0]
    lpush = points[(("db.operation.name", "LPUSH"), ("db.system.name", "redis"), ("error.type", "WRONGTYPE"),
                    local)]
    assert lpush.count == 1
    assert points[(("db.system.name", "memcached"), local)].count == 1
    assert metric(request, "db.server.operation.duration").histogram.data_points[0].count == 1


def test_grpc_calls_have_the_rpc_duration_histograms() -> None:
    from obi.traces.model import SPAN_KIND_CLIENT
    from tests.unit.test_export_encode import make_rpc_span

    service = make_service()
    red = RedMetrics(duration_buckets=[0.001, 0.01])
    red.record([make_rpc_span(service), make_rpc_span(service, status="UNAVAILABLE"),
                make_rpc_span(service, kind=SPAN_KIND_CLIENT)])
    request = red.collect(T0 + 10 * MS)
    server = metric(request, "rpc.server.call.duration")
    assert server.unit == "s"
    assert sorted(tuple(sorted((k, v) for k, (_, v) in attrs(p.attributes).items()))
                  for p in server.histogram.data_points) == [
        (("rpc.method", "/shop.Cart/Add"), ("rpc.response.status_code", "OK"), ("rpc.system.name", "grpc")),
        (("rpc.method", "/shop.Cart/Add"), ("rpc.response.status_code", "UNAVAILABLE"),
         ("rpc.system.name", "grpc"))]
    (client,) = metric(request, "rpc.client.call.duration").histogram.data_points
    assert attrs(client.attributes)["server.address"] == ("string_value", "127.0.0.1")


def test_a_metric_past_its_cardinality_limit_folds_into_one_overflow_series() -> None:
    """Paths without a route, each a series: past the limit (the overflow series included),
    requests with a new attribute set are counted in the overflow series, marked
    otel.metric.overflow; those of the series already there still go to their own; another
    metric and another service have their own limits; series that expire make room again."""
    api, web = make_service("api", 1), make_service("web", 2)
    red = RedMetrics(cardinality_limit=4, series_ttl_s=1.0)
    red.record([span_at(0, 1, service=api, route=None, path=f"/p{i}", server_address=f"h{i}")
                for i in range(10)])
    red.record([span_at(0, 1, service=api, route=None, path="/p0", server_address="h0"),  # has its own
                span_at(0, 2, service=api, server_address="h1"),  # a route this time: a new set
                span_at(0, 1, service=web, server_address="w")])
    assert red.overflowed == 7 + 1  # h3..h9, then h1 with a route
    request = red.collect(T0 + 10 * MS)
    points = metric(request, "http.server.request.duration").histogram.data_points
    counts = {tuple(sorted((k, v[1]) for k, v in attrs(p.attributes).items())): p.count for p in points}
    assert len(points) == 4
    assert counts[(("otel.metric.overflow", True),)] == 8
    assert sorted(attrs(p.attributes)["server.address"][1] for p in points
                  if "server.address" in attrs(p.attributes)) == ["h0", "h1", "h2"]
    assert [p.count for p in points if attrs(p.attributes).get("server.address") == ("string_value", "h0")
            ] == [2]
    web_points = metric(request, "http.server.request.duration", 1).histogram.data_points
    assert [attrs(p.attributes)["server.address"][1] for p in web_points] == ["w"]
    # series expire when a collect finds them idle past the TTL: then there is room again
    assert red.collect(T0 + 1500 * MS).resource_metrics == []
    red.record([span_at(1500, 1, service=api, server_address="late")])
    later = metric(red.collect(T0 + 2200 * MS), "http.server.request.duration").histogram.data_points
    assert [attrs(p.attributes)["server.address"][1] for p in later] == ["late"]
    with pytest.raises(ValueError):
        RedMetrics(cardinality_limit=1)


@given(st.lists(st.floats(-1e6, 1e6), min_size=0, max_size=20, unique=True),
       st.one_of(st.floats(allow_nan=True), st.integers(-10**7, 10**7)))
def test_an_observation_lands_in_the_bucket_bisect_says(bounds: list[float], value: float) -> None:
    ordered = tuple(sorted(bounds))
    state = HistogramState(len(ordered) + 1)
    for each in (value, *ordered):  # the bounds themselves belong to the bucket they close
        state.observe(ordered, each)
    expected = [0] * (len(ordered) + 1)
    for each in (value, *ordered):
        expected[bisect_left(ordered, each)] += 1
    assert state.bucket_counts == expected
