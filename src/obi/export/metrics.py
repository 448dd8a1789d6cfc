"""RED metrics (rate, errors, duration) for HTTP servers, aggregated from every span.

Cumulative explicit-bucket histograms named as OBI names them:
http.server.request.duration (s), http.server.request.body.size and
http.server.response.body.size (By). The pipeline records every span before
sampling, so sampling never changes these numbers.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from obi.export.encode import SCOPE_NAME, key_value
from obi.traces.model import HttpSpan, ServiceIdentity

# OBI's defaults (OTel semantic-convention buckets for durations).
DEFAULT_DURATION_BUCKETS: tuple[float, ...] = (
    0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10,
)  # fmt: skip
DEFAULT_SIZE_BUCKETS: tuple[float, ...] = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

HTTP_SERVER_REQUEST_DURATION = "http.server.request.duration"
HTTP_SERVER_REQUEST_BODY_SIZE = "http.server.request.body.size"
HTTP_SERVER_RESPONSE_BODY_SIZE = "http.server.response.body.size"

# Default metric attributes, OBI's set for HTTP server metrics plus url.scheme:
# (http.request.method, http.response.status_code, http.route, url.scheme,
# server.address, server.port). http.route is left out when unset.
SeriesKey = tuple[str, int, str | None, str, str, int]

# A series stops being reported when it saw no request for this long (OBI's ttl).
DEFAULT_SERIES_TTL_S = 300.0


class HistogramState:
    """Cumulative count/sum/min/max and bucket counts of one series."""

    __slots__ = ("bucket_counts", "count", "max", "min", "sum")

    def __init__(self, bucket_count: int) -> None:
        self.bucket_counts = [0] * bucket_count
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def observe(self, bounds: Sequence[float], value: float) -> None:
        # Bucket i holds (bounds[i-1], bounds[i]]: bisect_left finds it.
        self.bucket_counts[bisect_left(bounds, value)] += 1
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value


@dataclass(slots=True)
class SeriesState:
    """All three histograms of one attribute set; they share count and timing."""

    start_ns: int
    last_ns: int
    duration: HistogramState
    request_size: HistogramState
    response_size: HistogramState


@dataclass(slots=True)
class ServiceSeries:
    service: ServiceIdentity
    series: dict[SeriesKey, SeriesState] = field(default_factory=dict)


class RedMetrics:
    """Aggregates HTTP server RED metrics per service and attribute set."""

    def __init__(
        self,
        duration_buckets: Sequence[float] = DEFAULT_DURATION_BUCKETS,
        request_size_buckets: Sequence[float] = DEFAULT_SIZE_BUCKETS,
        response_size_buckets: Sequence[float] = DEFAULT_SIZE_BUCKETS,
        series_ttl_s: float | None = DEFAULT_SERIES_TTL_S,
        scope_name: str = SCOPE_NAME,
    ) -> None:
        self._duration_bounds = _bounds(duration_buckets)
        self._request_bounds = _bounds(request_size_buckets)
        self._response_bounds = _bounds(response_size_buckets)
        self._ttl_ns = None if series_ttl_s is None else int(series_ttl_s * 1e9)
        self._scope = InstrumentationScope(name=scope_name)
        self._services: dict[int, ServiceSeries] = {}

    @property
    def series_count(self) -> int:
        return sum(len(s.series) for s in self._services.values())

    def record(self, spans: Iterable[HttpSpan]) -> None:
        """Count every span (call before sampling)."""
        services = self._services
        duration_bounds = self._duration_bounds
        request_bounds = self._request_bounds
        response_bounds = self._response_bounds
        for span in spans:
            per_service = services.get(id(span.service))
            if per_service is None:
                # Holding the identity keeps id() from being reused while cached.
                per_service = services[id(span.service)] = ServiceSeries(span.service)
            key: SeriesKey = (
                span.method,
                span.status_code,
                span.route,
                span.scheme,
                span.server_address,
                span.server_port,
            )
            state = per_service.series.get(key)
            if state is None:
                state = per_service.series[key] = SeriesState(
                    start_ns=span.end_ns,
                    last_ns=span.end_ns,
                    duration=HistogramState(len(duration_bounds) + 1),
                    request_size=HistogramState(len(request_bounds) + 1),
                    response_size=HistogramState(len(response_bounds) + 1),
                )
            elif span.end_ns > state.last_ns:
                state.last_ns = span.end_ns
            state.duration.observe(duration_bounds, (span.end_ns - span.start_ns) / 1e9)
            state.request_size.observe(request_bounds, span.request_body_size)
            state.response_size.observe(response_bounds, span.response_body_size)

    def collect(self, now_ns: int) -> ExportMetricsServiceRequest:
        """Cumulative snapshot of every live series; expired series are dropped first."""
        self._expire(now_ns)
        request = ExportMetricsServiceRequest()
        for per_service in self._services.values():
            if not per_service.series:
                continue
            durations: list[HistogramDataPoint] = []
            requests: list[HistogramDataPoint] = []
            responses: list[HistogramDataPoint] = []
            for key, state in per_service.series.items():
                attributes = _series_attributes(key)
                durations.append(_point(attributes, state, state.duration, self._duration_bounds, now_ns))
                requests.append(_point(attributes, state, state.request_size, self._request_bounds, now_ns))
                responses.append(
                    _point(attributes, state, state.response_size, self._response_bounds, now_ns)
                )
            metrics = [
                _histogram(
                    HTTP_SERVER_REQUEST_DURATION,
                    "s",
                    "Duration of HTTP service calls from the server side",
                    durations,
                ),
                _histogram(
                    HTTP_SERVER_REQUEST_BODY_SIZE,
                    "By",
                    "Size of the HTTP request body as received at the server side",
                    requests,
                ),
                _histogram(
                    HTTP_SERVER_RESPONSE_BODY_SIZE,
                    "By",
                    "Size of the HTTP response body as sent by the server side",
                    responses,
                ),
            ]
            resource = Resource(
                attributes=[key_value(k, v) for k, v in per_service.service.resource_attributes().items()]
            )
            request.resource_metrics.append(
                ResourceMetrics(
                    resource=resource,
                    scope_metrics=[ScopeMetrics(scope=self._scope, metrics=metrics)],
                )
            )
        return request

    def _expire(self, now_ns: int) -> None:
        if self._ttl_ns is None:
            return
        oldest = now_ns - self._ttl_ns
        for pid_key, per_service in list(self._services.items()):
            stale = [k for k, s in per_service.series.items() if s.last_ns < oldest]
            for k in stale:
                del per_service.series[k]
            if not per_service.series:
                del self._services[pid_key]


def _bounds(buckets: Sequence[float]) -> tuple[float, ...]:
    bounds = tuple(float(b) for b in buckets)
    if any(b >= c for b, c in itertools.pairwise(bounds)):
        raise ValueError(f"histogram bucket boundaries must increase strictly: {list(buckets)}")
    return bounds


def _series_attributes(key: SeriesKey) -> list[KeyValue]:
    method, status, route, scheme, server_address, server_port = key
    attrs = [
        key_value("http.request.method", method),
        key_value("http.response.status_code", status),
    ]
    if route is not None:
        attrs.append(key_value("http.route", route))
    attrs.append(key_value("url.scheme", scheme))
    attrs.append(key_value("server.address", server_address))
    attrs.append(key_value("server.port", server_port))
    return attrs


def _point(
    attributes: list[KeyValue],
    series: SeriesState,
    state: HistogramState,
    bounds: tuple[float, ...],
    now_ns: int,
) -> HistogramDataPoint:
    return HistogramDataPoint(
        attributes=attributes,
        start_time_unix_nano=series.start_ns,
        time_unix_nano=now_ns,
        count=state.count,
        sum=state.sum,
        bucket_counts=state.bucket_counts,
        explicit_bounds=bounds,
        min=state.min,
        max=state.max,
    )


def _histogram(name: str, unit: str, description: str, points: list[HistogramDataPoint]) -> Metric:
    return Metric(
        name=name,
        unit=unit,
        description=description,
        histogram=Histogram(
            data_points=points,
            aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
        ),
    )
