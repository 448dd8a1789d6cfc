"""obi's own counters as OTLP metrics (OBI's `internal_metrics.exporter: otel`).

Every loss in the pipeline is counted somewhere (kernel ring, batch queue,
export queue); this turns those counters into cumulative monotonic sums under
the agent's own resource, sent with the application metrics.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from obi import __version__
from obi.export.encode import SCOPE_NAME, key_value

# name -> (unit, description). The counters source returns values by these names.
INTERNAL_COUNTERS: Mapping[str, tuple[str, str]] = {
    "obi.ebpf.events": ("{event}", "Exchanges the kernel side delivered to the ring buffer"),
    "obi.ebpf.events.lost": ("{event}", "Records lost because the ring buffer was full"),
    "obi.ebpf.connections.untracked": ("{connection}", "Connections not traced: connection table full"),
    "obi.ebpf.calls.untracked": ("{call}", "Syscalls not traced: in-flight call table full"),
    "obi.ebpf.requests.untracked": ("{request}", "Exchanges not captured: every exchange slot was in use"),
    "obi.ebpf.processes.untraced": ("{process}", "Processes not traced: the pid filter was full"),
    "obi.ebpf.responses.orphan": ("{call}", "Response bytes with no request in flight on their connection"),
    "obi.ebpf.connections.tls_skipped": ("{connection}", "Connections whose TLS ciphertext is not captured"),
    "obi.ebpf.tls.unbound": ("{call}", "TLS plaintext dropped: the socket of its SSL object was not known"),
    "obi.ebpf.tls.exchanges": ("{event}", "Exchanges captured from TLS plaintext (uprobes)"),
    "obi.pipeline.events.dropped": ("{event}", "Events dropped because the span stage was behind"),
    "obi.spans.built": ("{span}", "Spans built from kernel events"),
    "obi.spans.unparsed": ("{event}", "Exchanges a protocol recognised but could not parse"),
    "obi.spans.unknown_process": ("{event}", "Events of a process obi no longer knew, or never selected"),
    "obi.spans.unknown_protocol": ("{event}", "Exchanges of a protocol obi does not know, per process"),
    "obi.spans.headers_truncated": ("{request}", "Requests whose headers went on past the capture"),
    "obi.spans.unanswered": ("{span}", "Spans of requests that got no response"),
    "obi.spans.requests_truncated": ("{event}", "Exchanges whose requests went on past the capture: "
                                     "requests pipelined after the capture are not spans"),
    "obi.spans.split_requests": ("{request}", "Requests whose bytes the kernel split over two exchanges: "
                                 "left out"),
    "obi.ebpf.h2.lost": ("{event}", "HTTP/2 frames (or their records) not captured: the connection's headers "
                         "after them are reported as unknown"),
    "obi.spans.h2.header_blocks_missed": ("{event}", "HTTP/2 header blocks not seen whole: the headers they "
                                          "stood for are unknown, never guessed"),
    "obi.spans.h2.streams_partly_known": ("{span}", "HTTP/2 streams reported without some of their headers "
                                          "(indexed before obi joined the connection, or missed)"),
    "obi.protocols.connections.forgotten": ("{connection}", "Connections whose protocol state (Redis "
                                            "SELECT, prepared statements) was dropped: too many at once"),
    "obi.metrics.cardinality.overflow": ("{span}", "Requests counted in a metric's overflow series "
                                         "(otel.metric.overflow): its cardinality limit was reached"),
    "obi.printer.lines.dropped": ("{span}", "Trace printer lines dropped: its output did not keep up"),
    "obi.spans.exported": ("{span}", "Spans the trace exporter delivered"),
    "obi.spans.export.dropped": ("{span}", "Spans dropped from the full export queue"),
    "obi.spans.export.failed": ("{span}", "Spans whose export failed after retries"),
    "obi.kube.api.errors": ("{error}", "Kubernetes API requests or watches that failed"),
    "obi.kube.api.forbidden": ("{error}", "Kubernetes API answers 403 Forbidden (RBAC)"),
    "obi.kube.watch.reconnects": ("{reconnect}", "Kubernetes watches re-opened"),
    "obi.kube.relists": ("{list}", "Kubernetes full re-lists after 410 Gone"),
}


class MetricsSource(Protocol):
    """Something that snapshots cumulative metrics for one OTLP export."""

    def collect(self, now_ns: int) -> ExportMetricsServiceRequest: ...


class InternalMetrics:
    """The agent's counters as one ResourceMetrics (service.name "obi")."""

    def __init__(self, counters: Callable[[], Mapping[str, int | Mapping[int, int]]], start_ns: int) -> None:
        """`counters` gives each counter's value, or for counters kept per process {pid: value}."""
        self._counters = counters
        self._start_ns = start_ns
        self._resource = Resource(attributes=[
            key_value("service.name", "obi"),
            key_value("service.instance.id", f"{socket.gethostname()}:{os.getpid()}"),
            key_value("service.version", __version__),
            key_value("host.name", socket.gethostname()),
            key_value("process.pid", os.getpid()),
        ])
        self._scope = InstrumentationScope(name=SCOPE_NAME, version=__version__)

    def collect(self, now_ns: int) -> ExportMetricsServiceRequest:
        values = self._counters()
        metrics = []
        for name, (unit, description) in INTERNAL_COUNTERS.items():
            value = values.get(name, 0)
            if isinstance(value, Mapping):  # one point per process: {pid: count}
                points = [NumberDataPoint(start_time_unix_nano=self._start_ns, time_unix_nano=now_ns,
                                          as_int=int(count), attributes=[key_value("process.pid", pid)])
                          for pid, count in sorted(value.items())]
            else:
                points = [NumberDataPoint(start_time_unix_nano=self._start_ns, time_unix_nano=now_ns,
                                          as_int=int(value))]
            metrics.append(Metric(name=name, unit=unit, description=description, sum=Sum(
                data_points=points, is_monotonic=True,
                aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE)))
        request = ExportMetricsServiceRequest()
        request.resource_metrics.append(ResourceMetrics(
            resource=self._resource, scope_metrics=[ScopeMetrics(scope=self._scope, metrics=metrics)]))
        return request


class CombinedMetrics:
    """Several sources exported together in one request."""

    def __init__(self, sources: Sequence[MetricsSource]) -> None:
        self._sources = list(sources)

    def collect(self, now_ns: int) -> ExportMetricsServiceRequest:
        request = ExportMetricsServiceRequest()
        for source in self._sources:
            request.resource_metrics.extend(source.collect(now_ns).resource_metrics)
        return request
