"""Where spans go: RED metrics see every span; the sampled ones go to the printer and exporter."""

from __future__ import annotations

from collections.abc import Sequence

from obi.export.batch import BatchingExporter
from obi.export.metrics import RedMetrics
from obi.export.printer import TracePrinter
from obi.traces.model import EXCLUDE_TRACES, Span
from obi.traces.sampler import Sampler


class SpanFanout:
    """Metrics first (before sampling, so sampling never changes them), then the sampled spans."""

    def __init__(self, sampler: Sampler, metrics: RedMetrics | None, printer: TracePrinter,
                 exporter: BatchingExporter | None, scraped: RedMetrics | None = None) -> None:
        """`metrics` feeds the OTLP metrics export, `scraped` the Prometheus endpoint (each with
        its own buckets and ttl)."""
        self._sampler = sampler
        self._metrics = metrics
        self._scraped = scraped
        self._printer = printer
        self._exporter = exporter

    def offer(self, spans: Sequence[Span]) -> None:
        if not spans:
            return
        if self._metrics is not None:
            self._metrics.record(spans)
        if self._scraped is not None:
            self._scraped.record(spans)
        sampler = self._sampler
        sampled = []
        for span in spans:
            if span.exclude & EXCLUDE_TRACES:
                continue
            parent = span.sampled if span.parent_span_id else None
            span.sampled = sampler.should_sample(span.trace_id, parent)
            if span.sampled:
                sampled.append(span)
        if sampled:
            if self._printer.enabled:
                self._printer.print_spans(sampled)
            if self._exporter is not None:
                self._exporter.offer(sampled)
