"""SpanFanout: metrics see every span, traces only the sampled ones, ignored routes per ignore_mode."""

from __future__ import annotations

import io
from collections.abc import Sequence

from obi.export.fanout import SpanFanout
from obi.export.metrics import RedMetrics
from obi.export.printer import TracePrinter
from obi.protocols import ProtocolRegistry
from obi.protocols.base import SpanStats
from obi.protocols.http import Http1
from obi.traces.model import EXCLUDE_METRICS, EXCLUDE_TRACES, Span
from obi.traces.records import RecordProcessor
from obi.traces.routes import RouteMatcher
from obi.traces.sampler import build_sampler
from tests.unit.test_records import OK, Processes, exchange


class Exporter:
    def __init__(self) -> None:
        self.offered: list[Span] = []

    def offer(self, spans: Sequence[Span]) -> None:
        self.offered += spans


def spans_for(mode: str) -> list[Span]:
    processes = Processes()
    module = Http1(RouteMatcher([], ignored_patterns=["/health"]), stats=SpanStats(), ignore_mode=mode)
    records = RecordProcessor(ProtocolRegistry([module]), processes.identities.get,
                              processes.on_process)
    return list(records.process(exchange(7, b"GET /health HTTP/1.1\r\n\r\n", OK)
                                + exchange(7, b"GET /work HTTP/1.1\r\n\r\n", OK)))


def run(spans: list[Span], sampler: str = "always_on") -> tuple[int, list[str]]:
    metrics, exporter = RedMetrics(), Exporter()
    fanout = SpanFanout(build_sampler(sampler, None), metrics, TracePrinter("disabled", io.StringIO()),
                        exporter)  # type: ignore[arg-type]
    fanout.offer(spans)
    counted = sum(p.count for rm in metrics.collect(1).resource_metrics for sm in rm.scope_metrics
                  for m in sm.metrics if m.name == "http.server.request.duration"
                  for p in m.histogram.data_points)
    return counted, [s.name for s in exporter.offered]


def test_ignore_mode_all_leaves_ignored_paths_out_of_everything() -> None:
    assert run(spans_for("all")) == (1, ["GET /work"])


def test_ignore_mode_traces_counts_them_in_metrics_only() -> None:
    spans = spans_for("traces")
    assert [s.exclude for s in spans] == [EXCLUDE_TRACES, 0]
    assert run(spans) == (2, ["GET /work"])


def test_ignore_mode_metrics_exports_their_spans_only() -> None:
    spans = spans_for("metrics")
    assert [s.exclude for s in spans] == [EXCLUDE_METRICS, 0]
    assert run(spans) == (1, ["GET /health", "GET /work"])


def test_sampling_never_changes_metrics() -> None:
    assert run(spans_for("all"), "always_off") == (1, [])
