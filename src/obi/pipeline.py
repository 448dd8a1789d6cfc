"""The agent: every stage built in one function, started together, stopped in order.

    kernel ring --CaptureDrain--> BatchQueue --RecordProcessor--> spans --SpanFanout--> RED metrics
         ^                                        |                            \\-> sampler -> printer, OTLP
         |                                        v (process events, in ring order)
    pid filter <------------------------- ProcessRegistry <-- ProcessWatcher (/proc)

Stages are constructed in `build_agent` before any starts; `Agent` only runs
them. Shutdown stops discovery, flushes the kernel side, lets the span stage
finish, then flushes the exporters within the shutdown timeout, and detaches
every BPF link last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from obi.compiled import compiled_modules
from obi.config import Config
from obi.discovery.criteria import Selection
from obi.discovery.registry import ProcessRegistry
from obi.discovery.selection import selection_from_config, selects_at_exec
from obi.discovery.watcher import ProcessWatcher
from obi.ebpf.capture import Capture, CaptureSettings
from obi.ebpf.drain import CaptureDrain, DrainSettings
from obi.ebpf.goprobes import GoHttp, GoOffsetSlots, GoTls
from obi.ebpf.libraries import Instrumenter, UprobeFiles
from obi.ebpf.nginx import Nginx
from obi.ebpf.objects import MapStats
from obi.ebpf.tls import OpenSsl
from obi.ebpf.uprobes import detach
from obi.export.batch import (
    BatchingExporter,
    OtlpSender,
    OtlpTransport,
    PeriodicMetricsExporter,
    make_transport,
)
from obi.export.endpoints import OtlpTarget, resolve_otlp_target
from obi.export.fanout import SpanFanout
from obi.export.internal import CombinedMetrics, InternalMetrics, MetricsSource
from obi.export.metrics import RedMetrics
from obi.export.printer import TracePrinter
from obi.export.prometheus import ExpositionOptions, InternalState, internal_families, render_families
from obi.export.prometheus import render_async as render_exposition
from obi.export.scrape import ScrapeServer
from obi.protocols import ProtocolRegistry
from obi.protocols.base import IdGenerator, SpanStats
from obi.protocols.gohttp import GoHttpSpans
from obi.protocols.http import Http1
from obi.protocols.http2 import H2Stats, Http2Records, Http2Spans
from obi.protocols.memcached import Memcached
from obi.protocols.mysql import MySql
from obi.protocols.postgres import Postgres
from obi.protocols.redis import Redis
from obi.traces.model import ServiceIdentity
from obi.traces.records import OnProcessEvent, RecordProcessor
from obi.traces.routes import RouteMatcher
from obi.traces.sampler import build_sampler

if TYPE_CHECKING:
    from obi.kube.decorator import KubeDecorator
    from obi.kube.informers import KubeMetadataSource


def _trace_target(config: Config) -> OtlpTarget | None:
    t = config.otel_traces_export
    return resolve_otlp_target(t.endpoint, t.signal_endpoint, t.protocol, "traces")


def _metrics_target(config: Config) -> OtlpTarget | None:
    m = config.otel_metrics_export
    return resolve_otlp_target(m.endpoint, m.signal_endpoint, m.protocol, "metrics")


def _kube_metadata(config: Config, log: structlog.typing.FilteringBoundLogger) -> KubeMetadataSource | None:
    """The Kubernetes metadata source, when enabled and a cluster is reachable by config."""
    kube = config.attributes.kubernetes
    if kube.enable == "false":
        return None
    from obi.kube.client import kube_config_source
    from obi.kube.informers import KubeMetadataSource

    source = kube_config_source(kube.kubeconfig_path, os.environ)
    if source is None:
        if kube.enable == "true":
            log.warning("kubernetes_not_found",
                        hint="no in-cluster service account, KUBECONFIG or "
                        "attributes.kubernetes.kubeconfig_path: spans stay undecorated")
        return None
    # Pods of this node only (OBI's meta_restrict_local_node): NODE_NAME from the
    # downward API, else the host name; without either, all pods.
    node = os.environ.get("NODE_NAME") or (socket.gethostname() if kube.meta_restrict_local_node else None)
    metadata = KubeMetadataSource(source, node_name=node)
    log.info("kubernetes_metadata_enabled", source=source.kind, node=node or "all",
             cluster=kube.cluster_name or None, obi_namespace=os.environ.get("KUBE_NAMESPACE"))
    return metadata


def service_overrides(config: Config) -> Callable[[ServiceIdentity], None]:
    """obi's own OTEL_SERVICE_NAME / _NAMESPACE / OTEL_RESOURCE_ATTRIBUTES (OBI semantics)."""

    def apply(identity: ServiceIdentity) -> None:
        if config.service_name:
            identity.service_name = config.service_name
        if config.service_namespace:
            identity.service_namespace = config.service_namespace
        for key, value in config.resource_attributes:
            identity.attributes.setdefault(key, value)

    return apply


def inactive_settings(config: Config, kube_enabled: bool) -> list[str]:
    """OBI settings obi accepts but does not act on yet."""
    ignored = []
    if config.ebpf.track_request_headers:
        ignored.append("ebpf.track_request_headers")
    entries = (*config.discovery.instrument, *config.discovery.exclude_instrument)
    if not kube_enabled and any(e.has_kubernetes_criteria for e in entries):
        ignored.append("discovery k8s_* selectors: no Kubernetes metadata (attributes.kubernetes.enable)")
    if any(e.name or e.namespace for e in config.discovery.instrument):
        ignored.append("discovery.instrument name/namespace")
    for selection in config.attributes.select:
        if selection.section != "traces":
            ignored.append(f"attributes.select.{selection.section}: only the traces section (db.query.text)")
    extra_features = [f for f in config.otel_metrics_export.features if f != "application"]
    if extra_features:
        ignored.append(f"otel_metrics_export.features {','.join(extra_features)}: only application metrics")
    prometheus = config.prometheus_export
    extra_features = [f for f in prometheus.features if f != "application"]
    if prometheus.enabled and extra_features:
        ignored.append(f"prometheus_export.features {','.join(extra_features)}: only application metrics")
    if prometheus.enabled and set(prometheus.instrumentations) - {"*"}:
        ignored.append("prometheus_export.instrumentations: every protocol obi understands is measured")
    return ignored


@dataclass
class Agent:
    """obi's running pipeline, built by `build_agent`; `run()` until `stop` is set."""

    config: Config
    capture: Capture
    drain: CaptureDrain
    watcher: ProcessWatcher
    registry: ProcessRegistry
    records: RecordProcessor
    span_stats: SpanStats
    fanout: SpanFanout
    printer: TracePrinter
    trace_exporter: BatchingExporter | None
    metrics_exporter: PeriodicMetricsExporter | None
    kube: KubeMetadataSource | None
    log: structlog.typing.FilteringBoundLogger
    uprobes: UprobeFiles | None = None
    metrics: RedMetrics | None = None
    scraped: RedMetrics | None = None
    scrapes: list[ScrapeServer] = field(default_factory=list)  # the Prometheus endpoints
    bpf_maps: list[MapStats] = field(default_factory=list)  # counted for the internal endpoint

    async def _count_maps(self, interval_s: float) -> None:
        """The BPF maps' entries, counted in a thread every interval (OBI's
        bpf_metric_scrape_interval): a walk of a full connection table takes tens of ms."""
        while True:
            try:
                self.bpf_maps = await asyncio.to_thread(self.capture.map_stats)
            except OSError as err:  # counted next time; never the agent's end
                self.log.warning("bpf_map_count_failed", error=str(err))
            await asyncio.sleep(interval_s)

    def internal_state(self) -> InternalState:
        """What the internal Prometheus endpoint shows (obi.export.prometheus)."""
        traces = self.trace_exporter.sender if self.trace_exporter is not None else None
        metrics = self.metrics_exporter.sender if self.metrics_exporter is not None else None
        counted: dict[tuple[int, str], int] = {}
        for server in self.scrapes:
            for (path, _), n in server.stats.requests.items():
                if path in server.paths:  # unknown paths are a client's choice: not a label
                    counted[(server.port, path)] = counted.get((server.port, path), 0) + n
        return InternalState(
            counters=self.internal_counters(), instrumented=self.registry.instrumented_by_name(),
            bpf_maps=self.bpf_maps,
            trace_exports=traces.exports if isinstance(traces, OtlpSender) else None,
            trace_export_errors=dict(traces.failures) if isinstance(traces, OtlpSender) else {},
            metric_exports=metrics.exports if isinstance(metrics, OtlpSender) else None,
            metric_export_errors=dict(metrics.failures) if isinstance(metrics, OtlpSender) else {},
            scrapes=counted)

    def internal_counters(self) -> dict[str, int | dict[int, int]]:
        """Every counter of the pipeline, by internal metric name (obi.export.internal)."""
        kernel = self.drain.kernel
        records, spans, exporter = self.records.stats, self.span_stats, self.trace_exporter
        h2_stats = self.records.http2.stats if self.records.http2 is not None else None
        counters: dict[str, int | dict[int, int]] = {
            "obi.ebpf.events": kernel.get("exchanges", 0),
            "obi.ebpf.events.lost": kernel.get("events_lost", 0) + kernel.get("process_events_lost", 0),
            "obi.ebpf.connections.untracked": kernel.get("conn_table_full", 0),
            "obi.ebpf.calls.untracked": kernel.get("call_table_full", 0),
            "obi.ebpf.requests.untracked": kernel.get("slots_full", 0),
            "obi.ebpf.processes.untraced": kernel.get("pid_filter_full", 0)
            + self.registry.stats.pid_filter_full,
            "obi.ebpf.responses.orphan": kernel.get("orphan_responses", 0),
            "obi.ebpf.connections.tls_skipped": kernel.get("tls_skipped", 0),
            "obi.ebpf.tls.unbound": kernel.get("tls_unbound", 0),
            "obi.ebpf.tls.exchanges": kernel.get("tls_exchanges", 0),
            "obi.pipeline.events.dropped": self.drain.queue.dropped_records,
            "obi.spans.built": records.spans,
            "obi.spans.unparsed": records.parse_errors,
            "obi.spans.unknown_process": records.unknown_process,
            "obi.spans.unknown_protocol": dict(records.unknown_protocol_by_pid),
            "obi.spans.headers_truncated": spans.headers_truncated,
            "obi.spans.unanswered": spans.unanswered,
            "obi.spans.requests_truncated": spans.requests_truncated,
            "obi.spans.split_requests": spans.split_requests,
            "obi.protocols.connections.forgotten": spans.connections_forgotten,
            "obi.ebpf.h2.lost": kernel.get("h2_lost", 0),
            "obi.spans.h2.header_blocks_missed": h2_stats.header_blocks_missed if h2_stats else 0,
            "obi.spans.h2.streams_partly_known": h2_stats.streams_partly_known if h2_stats else 0,
            "obi.metrics.cardinality.overflow": sum(m.overflowed for m in (self.metrics, self.scraped)
                                                    if m is not None),
            "obi.printer.lines.dropped": self.printer.dropped_lines,
            "obi.spans.exported": exporter.sent if exporter else 0,
            "obi.spans.export.dropped": exporter.dropped if exporter else 0,
            "obi.spans.export.failed": exporter.failed if exporter else 0,
        }
        if self.kube is not None:
            stats = self.kube.stats
            counters.update({"obi.kube.api.errors": stats.api_errors,
                             "obi.kube.api.forbidden": stats.forbidden,
                             "obi.kube.watch.reconnects": stats.reconnects,
                             "obi.kube.relists": stats.relists})
        return counters

    async def _spans(self) -> None:
        queue, process, offer = self.drain.queue, self.records.process, self.fanout.offer
        while True:
            batch = await queue.get()
            try:
                offer(process(batch))
            finally:
                queue.done()
            # get() does not yield while batches wait: without this, a backlog would keep the
            # loop (signals, exports, the drain itself) waiting until all of it is processed.
            await asyncio.sleep(0)

    async def _discover(self) -> None:
        """Discovery, after the informers' first lists (so exclusions by namespace hold)."""
        if self.kube is not None:
            timeout = self.config.attributes.kubernetes.informers_sync_timeout
            try:
                await asyncio.wait_for(self.kube.synced.wait(), timeout)
            except TimeoutError:
                self.log.warning("kubernetes_sync_timeout", timeout_s=timeout,
                                 hint="instrumenting now; pods are decorated as the API announces them")
        await self.watcher.run(self.registry.on_watcher_change)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        tasks: dict[str, asyncio.Task[None]] = {}
        self.drain.attach(loop)
        try:
            for server in self.scrapes:
                await server.start()
            if self.config.internal_metrics.exporter == "prometheus":
                interval = self.config.internal_metrics.bpf_metric_scrape_interval
                tasks["bpf_maps"] = asyncio.create_task(self._count_maps(interval))
            if self.kube is not None:
                tasks["kubernetes"] = asyncio.create_task(self.kube.run())
            tasks["discovery"] = asyncio.create_task(self._discover())
            tasks["spans"] = asyncio.create_task(self._spans())
            tasks["drain"] = asyncio.create_task(self.drain.run(stop))
            if self.trace_exporter is not None:
                tasks["traces"] = asyncio.create_task(self.trace_exporter.run())
            if self.metrics_exporter is not None:
                tasks["metrics"] = asyncio.create_task(self.metrics_exporter.run())
            for what in inactive_settings(self.config, self.kube is not None):
                self.log.warning("setting_not_supported_yet", setting=what)
            if not self.config.has_process_selection:
                self.log.warning("no_discovery_criteria",
                                 instrumenting="every process listening on a TCP port",
                                 hint="narrow it with OTEL_EBPF_OPEN_PORT, OTEL_EBPF_AUTO_TARGET_EXE or "
                                 "discovery.instrument")
            self.log.info("agent_started", hooks=self.capture.hooks, trace_printer=self.printer.mode.value,
                          traces=str(_trace_target(self.config) or "off"),
                          metrics=str(_metrics_target(self.config) or "off"),
                          prometheus=" ".join(f":{s.port}{path}" for s in self.scrapes for path in s.paths)
                          or "off",
                          compiled_modules=len(compiled_modules()))
            stop_wait = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stop_wait, *tasks.values()], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop_wait and task.exception() is not None:
                    name = next(n for n, t in tasks.items() if t is task)
                    self.log.error("stage_failed", stage=name, error=repr(task.exception()))
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.drain.detach(loop)
            await self._shutdown(tasks)

    def _detach(self, uprobe_links: list[int]) -> float:
        """Closes the uprobes' links and the capture's; returns how long it took."""
        started = time.monotonic()
        detach(uprobe_links)
        self.capture.detach()
        return round(time.monotonic() - started, 3)

    async def _flush_stage(self, name: str, flush: Coroutine[None, None, None], left: float) -> None:
        """Run one exporter's shutdown; cancel it if it overruns its share of the timeout."""
        task = asyncio.create_task(flush)
        _, hung = await asyncio.wait([task], timeout=left + 0.5)
        if hung:
            task.cancel()
            self.log.error("shutdown_stage_hung", stage=name, timeout_s=self.config.shutdown_timeout)

    async def _shutdown(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        began = time.monotonic()
        deadline = began + self.config.shutdown_timeout
        phases: dict[str, float] = {}
        mark = began

        def phase(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            phases[name] = round(now - mark, 3)
            mark = now

        # In place, not through wait_for: a task would wait for the loop to come round, and
        # under load each round is a batch of spans (1.2 s in all, once, in CI); stop() only
        # sets events, and the pass under way ends by itself.
        await self.watcher.stop()
        if self.kube is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.kube.stop(), 2.0)
        phase("discovery")
        # Everything the kernel completed, plus responses under way.
        with contextlib.suppress(OSError):
            self.drain.flush()
        phase("drain")
        # Nothing more is drained: the programs are detached from a thread meanwhile, since
        # each detach waits for the kernel (seconds in all, under load) while spans flush.
        uprobe_links = self.uprobes.take_links() if self.uprobes is not None else []
        detached = asyncio.create_task(asyncio.to_thread(self._detach, uprobe_links))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain.queue.join(), max(0.1, deadline - time.monotonic()))
        for name in ("kubernetes", "discovery", "spans", "drain"):
            task = tasks.get(name)
            if task is not None:
                task.cancel()
        await asyncio.gather(*(tasks[n] for n in ("spans", "drain") if n in tasks), return_exceptions=True)
        # Batches the span stage had no time for are counted, not silently lost.
        self.drain.queue.discard()
        phase("spans")
        # Traces flush first, so that the last metrics push carries final counters (obi's
        # own included); the metrics keep a share of what is left of the timeout for it.
        left = max(0.1, deadline - time.monotonic())
        if self.trace_exporter is not None:
            reserve = min(1.0, left / 4) if self.metrics_exporter is not None else 0.0
            await self._flush_stage("traces", self.trace_exporter.shutdown(left - reserve), left - reserve)
            phase("traces")
        if self.metrics_exporter is not None:
            left = max(0.1, deadline - time.monotonic())
            await self._flush_stage("metrics", self.metrics_exporter.shutdown(left), left)
            phase("metrics")
        for server in self.scrapes:
            await server.close()
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        self.printer.close()
        waited = time.monotonic()
        detach_s = await detached
        phases["detach_wait"] = round(time.monotonic() - waited, 3)
        self.capture.close()
        exporter, records, spans = self.trace_exporter, self.records.stats, self.span_stats
        self.log.info("agent_stopped", spans=records.spans,
                      spans_exported=exporter.sent if exporter else 0,
                      spans_export_dropped=exporter.dropped if exporter else 0,
                      spans_export_failed=exporter.failed if exporter else 0,
                      parse_errors=records.parse_errors, unknown_process=records.unknown_process,
                      go_requests=records.go_requests, go_duplicates=records.go_duplicates,
                      unknown_protocol=records.unknown_protocol, spans_without_response=spans.unanswered,
                      truncated_requests=spans.headers_truncated,
                      events_dropped=self.drain.queue.dropped_records,
                      ring_records=self.drain.drained_records, ring_bytes=self.drain.drained_bytes,
                      shutdown_s=round(time.monotonic() - began, 3), shutdown_phases_s=phases,
                      detach_s=detach_s,
                      **self.drain.kernel)


@dataclass
class SpanStage:
    """Everything between the drained records and the exporters' transports: the per-event path."""

    records: RecordProcessor
    span_stats: SpanStats
    fanout: SpanFanout
    printer: TracePrinter
    trace_exporter: BatchingExporter | None
    metrics: RedMetrics | None
    scraped: RedMetrics | None = None  # what the Prometheus endpoint shows


def build_span_stage(config: Config, identity_for: Callable[[int], ServiceIdentity | None],
                     on_process: OnProcessEvent, go_http_pids: set[int] | frozenset[int],
                     trace_transport: OtlpTransport | None = None) -> SpanStage:
    """The protocols, the record processor, the fanout to RED metrics (when metrics are exported),
    the sampler, the printer and the trace exporter (when traces are): built from the
    configuration alone. `trace_transport` replaces the configured one (the replay benchmark)."""
    ebpf, routes = config.ebpf, config.routes
    span_stats = SpanStats()
    route_matcher = RouteMatcher(patterns=list(routes.patterns), unmatched=routes.unmatched,
                                 ignored_patterns=list(routes.ignored_patterns),
                                 wildcard_char=routes.wildcard_char)
    ids = IdGenerator()
    http = Http1(route_matcher, ids, span_stats, ignore_mode=routes.ignore_mode,
                 request_timeout_ns=int(ebpf.http_request_timeout * 1e9))
    go_http = GoHttpSpans(route_matcher, span_stats, ignore_mode=routes.ignore_mode)
    query_text = config.attributes.trace_attribute_selected("db.query.text")
    protocols = ProtocolRegistry([http, Redis(ids, span_stats, query_text),
                                  Memcached(ids, span_stats, query_text),
                                  Postgres(ids, span_stats, query_text), MySql(ids, span_stats, query_text)])
    http2 = Http2Records(Http2Spans(route_matcher, ids), H2Stats())
    records = RecordProcessor(protocols, identity_for, on_process, go_http, go_http_pids, http2)
    traces = config.otel_traces_export
    sampler_arg = None if traces.sampler.arg is None else str(traces.sampler.arg)
    sampler = build_sampler(traces.sampler.name, sampler_arg)
    printer = TracePrinter(config.effective_trace_printer)
    trace_exporter: BatchingExporter | None = None
    target = _trace_target(config)
    if target is not None:
        transport = trace_transport or make_transport(target, dict(traces.headers),
                                                      traces.insecure_skip_verify)
        trace_exporter = BatchingExporter(
            OtlpSender(transport, signal="traces"), max_queue_size=traces.max_queue_size,
            max_queue_bytes=traces.max_queue_bytes, max_export_batch_size=traces.max_export_batch_size,
            batch_timeout_s=traces.batch_timeout, export_timeout_s=traces.timeout)
    metrics: RedMetrics | None = None
    if _metrics_target(config) is not None:
        b = config.otel_metrics_export.buckets
        metrics = RedMetrics(b.duration_histogram, b.request_size_histogram, b.response_size_histogram,
                             cardinality_limit=config.otel_metrics_export.cardinality_limit)
    scraped: RedMetrics | None = None
    prometheus = config.prometheus_export
    if prometheus.enabled:
        b = prometheus.buckets
        scraped = RedMetrics(b.duration_histogram, b.request_size_histogram, b.response_size_histogram,
                             series_ttl_s=prometheus.ttl,
                             cardinality_limit=config.otel_metrics_export.cardinality_limit)
    fanout = SpanFanout(sampler, metrics, printer, trace_exporter, scraped)
    return SpanStage(records, span_stats, fanout, printer, trace_exporter, metrics, scraped)


def _joined(renders: list[Callable[[], Awaitable[bytes]]]) -> Callable[[], Awaitable[bytes]]:
    """One path served from several expositions (OBI: one registry per port and path)."""
    if len(renders) == 1:
        return renders[0]

    async def joined() -> bytes:
        return b"".join([await render() for render in renders])

    return joined


def build_agent(config: Config) -> Agent:
    """Every stage of the agent, constructed (and the kernel side attached) but not started."""
    log = structlog.get_logger().bind(component="agent")
    ebpf = config.ebpf
    kube = _kube_metadata(config, log)
    selection = selection_from_config(config, kube_enabled=kube is not None)
    if ebpf.context_propagation == "ip":
        log.warning("deprecated_setting", setting="ebpf.context_propagation", value="ip",
                    replacement="tcp")
    capture = Capture(CaptureSettings(
        syscall_hooks=ebpf.syscall_hooks,
        request_capture_bytes=ebpf.request_capture_bytes,
        response_capture_bytes=ebpf.response_capture_bytes,
        wakeup_len=ebpf.wakeup_len,
        ring_buffer_size=ebpf.ring_buffer_size,
        max_processes=ebpf.pid_filter_max,
        max_connections=ebpf.max_connections,
        max_exchanges=ebpf.max_inflight_requests,
        trace_execs=selects_at_exec(selection),
        notice_processes=True,
        propagate_headers=ebpf.context_propagation in ("headers", "all"),
        propagate_tcp=ebpf.context_propagation in ("tcp", "ip", "all"),
    ))
    try:
        return _build_stages(config, capture, kube, selection, log)
    except BaseException:
        capture.close()
        raise


def _build_stages(config: Config, capture: Capture, kube: KubeMetadataSource | None, selection: Selection,
                  log: structlog.typing.FilteringBoundLogger) -> Agent:
    ebpf = config.ebpf
    request_timeout_ns = int(ebpf.http_request_timeout * 1e9)
    drain = CaptureDrain(capture, DrainSettings(idle_ns=int(ebpf.response_idle_timeout * 1e9),
                                                request_timeout_ns=request_timeout_ns,
                                                queue_bytes=ebpf.record_queue_bytes))
    decorator: KubeDecorator | None = None
    if kube is not None:
        from obi.kube.decorator import KubeDecorator

        decorator = KubeDecorator(kube.store, config.attributes.kubernetes.cluster_name,
                                  service_overrides(config))
    watcher = ProcessWatcher(selection, kube_facts=decorator.kube_facts if decorator is not None else None)
    drain.on_process_events_lost = watcher.rescan
    uprobes: UprobeFiles | None = None
    if capture.uprobes is not None:
        programs, attacher = capture.programs, capture.uprobes
        instrumenters: list[Instrumenter] = [OpenSsl(attacher, programs), Nginx(attacher, programs)]
        if capture.go:
            slots = GoOffsetSlots(programs)
            instrumenters += [GoHttp(attacher, programs, slots), GoTls(attacher, programs, slots)]
        uprobes = UprobeFiles(instrumenters, ready=programs.ready)
    registry = ProcessRegistry(capture, watcher, prepare=service_overrides(config), observer=decorator,
                               libraries=uprobes)
    stage = build_span_stage(config, registry.identity_for, registry.on_kernel_event,
                             uprobes.pids_of(GoHttp.name) if uprobes is not None else frozenset())
    metrics_cfg = config.otel_metrics_export
    metrics_exporter: PeriodicMetricsExporter | None = None
    agent_ref: list[Agent] = []
    mtarget = _metrics_target(config)
    if mtarget is not None and stage.metrics is not None:
        source: MetricsSource = stage.metrics
        if config.internal_metrics.exporter == "otel":
            internal = InternalMetrics(lambda: agent_ref[0].internal_counters(), time.time_ns())
            source = CombinedMetrics([stage.metrics, internal])
        mtransport = make_transport(mtarget, dict(metrics_cfg.headers), metrics_cfg.insecure_skip_verify)
        msender = OtlpSender(mtransport, signal="metrics")
        metrics_exporter = PeriodicMetricsExporter(source, msender, metrics_cfg.interval,
                                                   export_timeout_s=metrics_cfg.timeout)
    # The Prometheus endpoints: path -> what renders it, by port (both may share one port, or a path).
    endpoints: dict[int, dict[str, list[Callable[[], Awaitable[bytes]]]]] = {}
    if stage.scraped is not None:
        scraped, prometheus = stage.scraped, config.prometheus_export
        options = ExpositionOptions(build_info=not prometheus.disable_build_info)
        endpoints.setdefault(prometheus.port, {}).setdefault(prometheus.path, []).append(
            lambda: render_exposition(scraped, time.time_ns(), options))

    async def internal_exposition() -> bytes:
        return render_families(internal_families(agent_ref[0].internal_state()))

    if config.internal_metrics.exporter == "prometheus":
        internal_cfg = config.internal_metrics
        on_port = endpoints.setdefault(internal_cfg.prometheus_port, {})
        on_port.setdefault(internal_cfg.prometheus_path, []).append(internal_exposition)
    scrapes = [ScrapeServer(port, {path: _joined(renders) for path, renders in paths.items()})
               for port, paths in endpoints.items()]
    agent = Agent(config=config, capture=capture, drain=drain, watcher=watcher, registry=registry,
                  records=stage.records, span_stats=stage.span_stats, fanout=stage.fanout,
                  printer=stage.printer, trace_exporter=stage.trace_exporter,
                  metrics_exporter=metrics_exporter, kube=kube, log=log,
                  uprobes=uprobes, metrics=stage.metrics, scraped=stage.scraped, scrapes=scrapes)
    agent_ref.append(agent)
    return agent
