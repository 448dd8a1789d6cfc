"""RED metrics (rate, errors, duration) aggregated from every span.

Cumulative explicit-bucket histograms named as OBI names them: for HTTP
servers http.server.request.duration (s), http.server.request.body.size and
http.server.response.body.size (By); for HTTP clients the http.client.*
three; for gRPC rpc.server.call.duration and rpc.client.call.duration (s);
for databases and caches db.client.operation.duration (s), and
db.server.operation.duration for the servers obi instruments. The pipeline
records every span before sampling, so sampling never changes these numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

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

from obi.config.model import HistogramBuckets
from obi.export.encode import SCOPE_NAME, key_value
from obi.traces.model import (
    EXCLUDE_METRICS,
    SPAN_KIND_SERVER,
    DbSpan,
    HttpSpan,
    RpcSpan,
    ServiceIdentity,
    Span,
)

# OBI's defaults (OTel semantic-convention buckets for durations), from the configuration model.
DEFAULT_DURATION_BUCKETS: Final[tuple[float, ...]] = HistogramBuckets().duration_histogram
DEFAULT_SIZE_BUCKETS: Final[tuple[float, ...]] = HistogramBuckets().request_size_histogram

HTTP_SERVER_REQUEST_DURATION: Final = "http.server.request.duration"
HTTP_SERVER_REQUEST_BODY_SIZE: Final = "http.server.request.body.size"
HTTP_SERVER_RESPONSE_BODY_SIZE: Final = "http.server.response.body.size"
HTTP_CLIENT_REQUEST_DURATION: Final = "http.client.request.duration"
HTTP_CLIENT_REQUEST_BODY_SIZE: Final = "http.client.request.body.size"
HTTP_CLIENT_RESPONSE_BODY_SIZE: Final = "http.client.response.body.size"
DB_CLIENT_OPERATION_DURATION: Final = "db.client.operation.duration"
DB_SERVER_OPERATION_DURATION: Final = "db.server.operation.duration"
RPC_SERVER_CALL_DURATION: Final = "rpc.server.call.duration"
RPC_CLIENT_CALL_DURATION: Final = "rpc.client.call.duration"


@dataclass(frozen=True, eq=False, slots=True)
class MetricFamily:
    """The histograms of one kind of span (a duration, and body sizes where the protocol has
    them), and the attributes of their series. Hashed by identity: it is half of every series
    key, looked up once per span."""

    duration: tuple[str, str]  # name, description
    request_size: tuple[str, str] | None
    response_size: tuple[str, str] | None
    attribute_names: tuple[str, ...]  # names of the series key's members; None values are left out


# OBI's default attributes: method, status code, route (when set), server address and
# port; obi's server series also carry url.scheme.
HTTP_SERVER: Final = MetricFamily(
    (HTTP_SERVER_REQUEST_DURATION, "Duration of HTTP service calls from the server side"),
    (HTTP_SERVER_REQUEST_BODY_SIZE, "Size of the HTTP request body as received at the server side"),
    (HTTP_SERVER_RESPONSE_BODY_SIZE, "Size of the HTTP response body as sent by the server side"),
    ("http.request.method", "http.response.status_code", "http.route", "url.scheme", "server.address",
     "server.port"),
)
HTTP_CLIENT: Final = MetricFamily(
    (HTTP_CLIENT_REQUEST_DURATION, "Duration of HTTP service calls from the client side"),
    (HTTP_CLIENT_REQUEST_BODY_SIZE, "Size of the HTTP request body as sent from the client side"),
    (HTTP_CLIENT_RESPONSE_BODY_SIZE, "Size of the HTTP response body as received at the client side"),
    ("http.request.method", "http.response.status_code", "http.route", "server.address", "server.port"),
)

# OBI's default attributes of database operations.
DB_CLIENT: Final = MetricFamily(
    (DB_CLIENT_OPERATION_DURATION, "Duration of database client operations"), None, None,
    ("db.system.name", "db.operation.name", "server.address", "error.type"),
)
DB_SERVER: Final = MetricFamily(
    (DB_SERVER_OPERATION_DURATION, "Duration of database operations from the server side"), None, None,
    ("db.system.name", "db.operation.name", "server.address", "error.type"),
)

# OBI's default attributes of gRPC calls (a client's also name the server).
RPC_SERVER: Final = MetricFamily(
    (RPC_SERVER_CALL_DURATION, "Duration of RPC service calls from the server side"), None, None,
    ("rpc.system.name", "rpc.method", "rpc.response.status_code", "error.type"),
)
RPC_CLIENT: Final = MetricFamily(
    (RPC_CLIENT_CALL_DURATION, "Duration of RPC service calls from the client side"), None, None,
    ("rpc.system.name", "rpc.method", "rpc.response.status_code", "error.type", "server.address"),
)

SeriesKey = tuple[str | int | None, ...]


def series_of(span: Span) -> tuple[MetricFamily, SeriesKey, int, int] | None:
    """The family and series key of a span, with its request and response sizes."""
    if isinstance(span, HttpSpan):
        status = span.status_code or None  # no response: no status code attribute
        if span.kind == SPAN_KIND_SERVER:
            return HTTP_SERVER, (span.method, status, span.route, span.scheme, span.server_address,
                                 span.server_port), span.request_body_size, span.response_body_size
        return HTTP_CLIENT, (span.method, status, span.route, span.server_address, span.server_port), \
            span.request_body_size, span.response_body_size
    if isinstance(span, RpcSpan):
        rpc_status, error = span.status or None, span.error_type or None
        if span.kind == SPAN_KIND_SERVER:
            return RPC_SERVER, ("grpc", span.method or None, rpc_status, error), 0, 0
        return RPC_CLIENT, ("grpc", span.method or None, rpc_status, error, span.server_address), 0, 0
    if isinstance(span, DbSpan):
        return DB_SERVER if span.kind == SPAN_KIND_SERVER else DB_CLIENT, (
            span.system, span.operation or None, span.server_address, span.error_type or None), 0, 0
    return None


# A series stops being reported when it saw no request for this long (OBI's ttl).
DEFAULT_SERIES_TTL_S: Final = 300.0


class HistogramState:
    """Cumulative count/sum/min/max and bucket counts of one series."""

    __slots__ = ("bucket_counts", "count", "max", "min", "sum")

    def __init__(self, bucket_count: int) -> None:
        self.bucket_counts = [0] * bucket_count
        self.count = 0
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def observe(self, bounds: tuple[float, ...], value: float) -> None:
        # Bucket i holds (bounds[i-1], bounds[i]]: bisect_left's, searched in native floats here
        # (bisect's generic comparisons were 1,300 instructions an observation when compiled).
        low, high = 0, len(bounds)
        while low < high:
            middle = (low + high) >> 1
            if bounds[middle] < value:
                low = middle + 1
            else:
                high = middle
        self.bucket_counts[low] += 1
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
    series: dict[tuple[MetricFamily, SeriesKey], SeriesState] = field(default_factory=dict)
    counts: dict[MetricFamily, int] = field(default_factory=dict)  # series per family


# The key of a family's overflow series: the attribute sets past the cardinality limit.
OVERFLOW: Final[SeriesKey] = ("\0overflow",)
OVERFLOW_ATTRIBUTE: Final = "otel.metric.overflow"
DEFAULT_CARDINALITY_LIMIT: Final = 2000


class RedMetrics:
    """Aggregates RED metrics per service, metric family and attribute set."""

    def __init__(
        self,
        duration_buckets: Sequence[float] = DEFAULT_DURATION_BUCKETS,
        request_size_buckets: Sequence[float] = DEFAULT_SIZE_BUCKETS,
        response_size_buckets: Sequence[float] = DEFAULT_SIZE_BUCKETS,
        series_ttl_s: float | None = DEFAULT_SERIES_TTL_S,
        scope_name: str = SCOPE_NAME,
        cardinality_limit: int = DEFAULT_CARDINALITY_LIMIT,
    ) -> None:
        """`cardinality_limit`: series of one family (metric) of one service, the overflow series
        included: attribute sets past it are counted in the overflow series (`overflowed`)."""
        if cardinality_limit < 2:
            raise ValueError("the cardinality limit must leave room for a series and the overflow one")
        self._limit = cardinality_limit
        self.overflowed = 0  # spans counted in an overflow series
        self._duration_bounds = _bounds(duration_buckets)
        self._request_bounds = _bounds(request_size_buckets)
        self._response_bounds = _bounds(response_size_buckets)
        self._ttl_ns = None if series_ttl_s is None else int(series_ttl_s * 1e9)
        self._scope = InstrumentationScope(name=scope_name)
        self._services: dict[int, ServiceSeries] = {}

    @property
    def series_count(self) -> int:
        return sum(len(s.series) for s in self._services.values())

    @property
    def bounds(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """The bucket bounds of the duration, request size and response size histograms."""
        return self._duration_bounds, self._request_bounds, self._response_bounds

    def live_series(self, now_ns: int) -> list[tuple[ServiceIdentity, dict[tuple[MetricFamily, SeriesKey],
                                                                           SeriesState]]]:
        """Every service's live series (expired ones are dropped first), for an exposition."""
        self._expire(now_ns)
        return [(s.service, s.series) for s in self._services.values() if s.series]

    def record(self, spans: Iterable[Span]) -> None:
        """Count every span (call before sampling)."""
        services = self._services
        duration_bounds = self._duration_bounds
        request_bounds = self._request_bounds
        response_bounds = self._response_bounds
        for span in spans:
            if span.exclude & EXCLUDE_METRICS:
                continue
            found = series_of(span)
            if found is None:
                continue
            family, key, request_size, response_size = found
            per_service = services.get(id(span.service))
            if per_service is None:
                # Holding the identity keeps id() from being reused while cached.
                per_service = services[id(span.service)] = ServiceSeries(span.service)
            state = per_service.series.get((family, key))
            if state is None:  # a new attribute set, or one past the cardinality limit
                state, key = self._new_series(per_service, family, key)
            if state is None:
                state = per_service.series[(family, key)] = SeriesState(
                    start_ns=span.end_ns,
                    last_ns=span.end_ns,
                    duration=HistogramState(len(duration_bounds) + 1),
                    request_size=HistogramState(len(request_bounds) + 1),
                    response_size=HistogramState(len(response_bounds) + 1),
                )
            elif span.end_ns > state.last_ns:
                state.last_ns = span.end_ns
            state.duration.observe(duration_bounds, (span.end_ns - span.start_ns) / 1e9)
            if family.request_size is not None:  # the families with sizes have both
                state.request_size.observe(request_bounds, request_size)
                state.response_size.observe(response_bounds, response_size)

    def _new_series(self, per_service: ServiceSeries, family: MetricFamily,
                    key: SeriesKey) -> tuple[SeriesState | None, SeriesKey]:
        """A new attribute set: its own series (None: to be made) while the family has room for
        it beside the overflow series, else the overflow series (None when it is new too)."""
        counts = per_service.counts
        count = counts.get(family, 0)
        if count < self._limit - 1:
            counts[family] = count + 1
            return None, key
        self.overflowed += 1
        return per_service.series.get((family, OVERFLOW)), OVERFLOW

    def collect(self, now_ns: int) -> ExportMetricsServiceRequest:
        """Cumulative snapshot of every live series; expired series are dropped first."""
        self._expire(now_ns)
        request = ExportMetricsServiceRequest()
        for per_service in self._services.values():
            if not per_service.series:
                continue
            points: dict[MetricFamily, tuple[list[HistogramDataPoint], list[HistogramDataPoint],
                                             list[HistogramDataPoint]]] = {}
            for (family, key), state in per_service.series.items():
                durations, requests, responses = points.setdefault(family, ([], [], []))
                if key is OVERFLOW:
                    attributes = [key_value(OVERFLOW_ATTRIBUTE, True)]
                else:
                    attributes = [key_value(name, value) for name, value in
                                  zip(family.attribute_names, key, strict=True) if value is not None]
                durations.append(_point(attributes, state, state.duration, self._duration_bounds, now_ns))
                if family.request_size is not None:
                    requests.append(_point(attributes, state, state.request_size, self._request_bounds,
                                           now_ns))
                if family.response_size is not None:
                    responses.append(_point(attributes, state, state.response_size, self._response_bounds,
                                            now_ns))
            metrics = []
            for family, (durations, requests, responses) in points.items():
                metrics.append(_histogram(*family.duration, "s", durations))
                if family.request_size is not None:
                    metrics.append(_histogram(*family.request_size, "By", requests))
                if family.response_size is not None:
                    metrics.append(_histogram(*family.response_size, "By", responses))
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
                family, key = k
                if key is not OVERFLOW:
                    per_service.counts[family] -= 1
            if not per_service.series:
                del self._services[pid_key]


def _bounds(buckets: Sequence[float]) -> tuple[float, ...]:
    bounds = tuple(float(b) for b in buckets)
    if any(b >= c for b, c in itertools.pairwise(bounds)):
        raise ValueError(f"histogram bucket boundaries must increase strictly: {list(buckets)}")
    return bounds


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


def _histogram(name: str, description: str, unit: str, points: list[HistogramDataPoint]) -> Metric:
    return Metric(
        name=name,
        unit=unit,
        description=description,
        histogram=Histogram(
            data_points=points,
            aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
        ),
    )
