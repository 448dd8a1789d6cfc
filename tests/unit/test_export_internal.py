"""obi's internal counters as OTLP sums."""

from __future__ import annotations

from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from obi.export.internal import INTERNAL_COUNTERS, CombinedMetrics, InternalMetrics
from obi.export.metrics import RedMetrics


def test_counters_become_cumulative_monotonic_sums() -> None:
    values: dict[str, int | dict[int, int]] = {"obi.ebpf.events.lost": 3, "obi.spans.built": 10}
    internal = InternalMetrics(lambda: values, start_ns=100)
    request = internal.collect(now_ns=200)
    (rm,) = request.resource_metrics
    resource = {kv.key: kv.value for kv in rm.resource.attributes}
    assert resource["service.name"].string_value == "obi"
    metrics = {m.name: m for m in rm.scope_metrics[0].metrics}
    assert set(metrics) == set(INTERNAL_COUNTERS)
    lost = metrics["obi.ebpf.events.lost"].sum
    assert lost.is_monotonic
    assert lost.aggregation_temporality == AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    (point,) = lost.data_points
    assert (point.as_int, point.start_time_unix_nano, point.time_unix_nano) == (3, 100, 200)
    assert metrics["obi.spans.built"].sum.data_points[0].as_int == 10
    assert metrics["obi.spans.exported"].sum.data_points[0].as_int == 0


def test_combined_sources_share_one_request() -> None:
    internal = InternalMetrics(dict, start_ns=1)
    combined = CombinedMetrics([RedMetrics(), internal])
    assert len(combined.collect(5).resource_metrics) == 1  # no spans yet: only obi's own


def test_per_process_counters_have_one_point_per_process() -> None:
    values: dict[str, int | dict[int, int]] = {"obi.spans.unknown_protocol": {4242: 3, 7: 1}}
    (rm,) = InternalMetrics(lambda: values, start_ns=1).collect(now_ns=2).resource_metrics
    (metric,) = [m for m in rm.scope_metrics[0].metrics if m.name == "obi.spans.unknown_protocol"]
    points = [(p.attributes[0].key, p.attributes[0].value.int_value, p.as_int)
              for p in metric.sum.data_points]
    assert points == [("process.pid", 7, 1), ("process.pid", 4242, 3)]
