"""The agent: every stage built in one function, started together, stopped in order.

    ring buffer --(bounded queue of batches)--> span builder --> RED metrics
                                                      \\--> sampler --> printer, OTLP traces
    discovery --> pid filter map (kernel) and service identities (span builder)

Stages are constructed before any starts. Shutdown drains the kernel side
first, then flushes exporters within the shutdown timeout, then detaches
every BPF link.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from obi.config import Config, Glob
from obi.config import Selector as ConfigSelector
from obi.discovery.criteria import KubeCriteria, Selection, Selector
from obi.discovery.watcher import ProcessWatcher
from obi.ebpf.http_tracer import HttpTracer, HttpTracerSettings
from obi.export.batch import (
    BatchingExporter,
    OtlpSender,
    OtlpTraceSender,
    PeriodicMetricsExporter,
    make_transport,
)
from obi.export.endpoints import OtlpTarget, resolve_otlp_target
from obi.export.internal import CombinedMetrics, InternalMetrics, MetricsSource
from obi.export.metrics import RedMetrics
from obi.export.printer import TracePrinter
from obi.traces.model import HttpSpan, ServiceIdentity
from obi.traces.routes import RouteMatcher
from obi.traces.sampler import Sampler, build_sampler
from obi.traces.spans import HttpSpanBuilder

if TYPE_CHECKING:
    from obi.kube.decorator import KubeDecorator
    from obi.kube.informers import KubeMetadataSource

# A response whose connection has been quiet this long is complete.
RESPONSE_IDLE_NS = 500_000_000
# How often the ring is drained and idle responses swept without a wakeup.
DRAIN_INTERVAL_S = 0.1
# Batches waiting between the ring reader and the span builder.
BATCH_QUEUE_SIZE = 256
# How long a process's identity outlives it, for its last events in flight.
EXITED_IDENTITY_GRACE_S = 10.0


def _kube_criteria(entry: ConfigSelector) -> KubeCriteria | None:
    def glob(value: Glob | None) -> str | None:
        return str(value) if value is not None else None

    criteria = KubeCriteria(
        namespace=glob(entry.k8s_namespace), pod_name=glob(entry.k8s_pod_name),
        container_name=glob(entry.k8s_container_name), deployment_name=glob(entry.k8s_deployment_name),
        replicaset_name=glob(entry.k8s_replicaset_name), statefulset_name=glob(entry.k8s_statefulset_name),
        daemonset_name=glob(entry.k8s_daemonset_name), owner_name=glob(entry.k8s_owner_name),
        pod_labels=tuple((k, str(v)) for k, v in entry.k8s_pod_labels),
        pod_annotations=tuple((k, str(v)) for k, v in entry.k8s_pod_annotations))
    return None if criteria.is_empty else criteria


def _selector(entry: ConfigSelector) -> Selector:
    return Selector(open_ports=entry.open_ports, exe_path=str(entry.exe_path) if entry.exe_path else None,
                    kube=_kube_criteria(entry))


def selection_from_config(config: Config, kube_enabled: bool = False) -> Selection:
    """The discovery policy: OBI's shortcuts and discovery entries, minus exclusions.

    Without Kubernetes metadata, entries that only have k8s_* criteria could never
    match and are left out. With no criteria at all (the guide's DaemonSet and
    ConfigMap examples), every process listening on a TCP port is instrumented.
    """
    include: list[Selector] = []
    if config.open_port:
        include.append(Selector(open_ports=config.open_port))
    if config.auto_target_exe is not None:
        include.append(Selector(exe_path=str(config.auto_target_exe)))
    if config.target_pids:
        include.append(Selector(pids=config.target_pids))
    if config.executable_path is not None:
        include.append(Selector(exe_path_regex=str(config.executable_path)))

    def usable(selector: Selector) -> bool:
        return not selector.is_empty and (kube_enabled or selector.kube is None)

    include += [s for s in map(_selector, config.discovery.instrument) if usable(s)]
    exclude = [s for s in map(_selector, (*config.discovery.exclude_instrument,
                                          *config.discovery.default_exclude_instrument)) if usable(s)]
    return Selection(include=tuple(include), exclude=tuple(exclude),
                     any_listener=not config.has_process_selection)


def _trace_target(config: Config) -> OtlpTarget | None:
    t = config.otel_traces_export
    return resolve_otlp_target(t.endpoint, t.signal_endpoint, t.protocol, "traces")


def _metrics_target(config: Config) -> OtlpTarget | None:
    m = config.otel_metrics_export
    return resolve_otlp_target(m.endpoint, m.signal_endpoint, m.protocol, "metrics")


@dataclass
class AgentStats:
    """Internal counters surfaced in logs and at exit (nothing dropped silently)."""

    batches_dropped: int = 0
    events_dropped: int = 0
    kernel: dict[str, int] = field(default_factory=dict)


class Agent:
    """obi's running pipeline; `run()` until `stop` is set."""

    def __init__(self, config: Config) -> None:
        self._log = structlog.get_logger().bind(component="agent")
        self.config = config
        ebpf = config.ebpf
        self.tracer = HttpTracer(HttpTracerSettings(
            syscall_hooks=ebpf.syscall_hooks,
            request_capture_bytes=ebpf.request_capture_bytes,
            response_capture_bytes=ebpf.response_capture_bytes,
            wakeup_len=ebpf.wakeup_len,
            ring_buffer_size=ebpf.ring_buffer_size,
            max_processes=ebpf.pid_filter_max,
        ))
        try:
            self._build_stages(config)
        except BaseException:
            self.tracer.close()
            raise

    def _build_kube(self, config: Config) -> KubeMetadataSource | None:
        """The Kubernetes metadata source, when enabled and a cluster is reachable by config."""
        kube = config.attributes.kubernetes
        if kube.enable == "false":
            return None
        from obi.kube.client import kube_config_source
        from obi.kube.informers import KubeMetadataSource

        source = kube_config_source(kube.kubeconfig_path, os.environ)
        if source is None:
            if kube.enable == "true":
                self._log.warning("kubernetes_not_found",
                                  hint="no in-cluster service account, KUBECONFIG or "
                                  "attributes.kubernetes.kubeconfig_path: spans stay undecorated")
            return None
        # Pods of this node only (OBI's meta_restrict_local_node): NODE_NAME from the
        # downward API, else the host name; without either, all pods.
        node = os.environ.get("NODE_NAME") or (
            socket.gethostname() if kube.meta_restrict_local_node else None)
        metadata = KubeMetadataSource(source, node_name=node)
        self._log.info("kubernetes_metadata_enabled", source=source.kind, node=node or "all",
                       cluster=kube.cluster_name or None, obi_namespace=os.environ.get("KUBE_NAMESPACE"))
        return metadata

    def _build_stages(self, config: Config) -> None:
        self._identities: dict[int, ServiceIdentity] = {}
        self.kube = self._build_kube(config)
        self.decorator: KubeDecorator | None = None
        if self.kube is not None:
            from obi.kube.decorator import KubeDecorator

            self.decorator = KubeDecorator(self.kube.store, config.attributes.kubernetes.cluster_name,
                                           self._identity_for, self._apply_service_overrides)
        self.watcher = ProcessWatcher(
            selection_from_config(config, kube_enabled=self.kube is not None),
            kube_facts=self.decorator.kube_facts if self.decorator is not None else None)
        self._exited: dict[int, float] = {}
        routes = config.routes
        self.builder = HttpSpanBuilder(self._identity_for, RouteMatcher(
            patterns=list(routes.patterns), unmatched=routes.unmatched,
            ignored_patterns=list(routes.ignored_patterns), wildcard_char=routes.wildcard_char))
        traces = config.otel_traces_export
        self.sampler: Sampler = build_sampler(traces.sampler.name,
                                              None if traces.sampler.arg is None else str(traces.sampler.arg))
        self.printer = TracePrinter(config.effective_trace_printer)
        self.trace_exporter: BatchingExporter | None = None
        target = _trace_target(config)
        if target is not None:
            sender = OtlpSender(make_transport(target, dict(traces.headers)), signal="traces")
            self.trace_exporter = BatchingExporter(
                OtlpTraceSender(sender), max_queue_size=traces.max_queue_size,
                max_export_batch_size=traces.max_export_batch_size,
                batch_timeout_s=traces.batch_timeout, export_timeout_s=traces.timeout)
        metrics_cfg = config.otel_metrics_export
        self.metrics: RedMetrics | None = None
        self.metrics_exporter: PeriodicMetricsExporter | None = None
        mtarget = _metrics_target(config)
        if mtarget is not None:
            b = metrics_cfg.buckets
            self.metrics = RedMetrics(b.duration_histogram, b.request_size_histogram,
                                      b.response_size_histogram)
            source: MetricsSource = self.metrics
            if config.internal_metrics.exporter == "otel":
                internal = InternalMetrics(self.internal_counters, time.time_ns())
                source = CombinedMetrics([self.metrics, internal])
            msender = OtlpSender(make_transport(mtarget, dict(metrics_cfg.headers)), signal="metrics")
            self.metrics_exporter = PeriodicMetricsExporter(source, msender, metrics_cfg.interval,
                                                            export_timeout_s=metrics_cfg.timeout)
        self._batches: asyncio.Queue[bytes] = asyncio.Queue(BATCH_QUEUE_SIZE)
        self.stats = AgentStats()
        self._lost_reported = 0
        self._queue_full_logged = False

    def _warn_unimplemented(self) -> None:
        """OBI settings obi accepts but does not act on yet: said once, at start."""
        cfg = self.config
        ignored = []
        if cfg.ebpf.track_request_headers:
            ignored.append("ebpf.track_request_headers")
        if cfg.ebpf.http_request_timeout:
            ignored.append("ebpf.http_request_timeout")
        entries = (*cfg.discovery.instrument, *cfg.discovery.exclude_instrument)
        if self.kube is None and any(e.has_kubernetes_criteria for e in entries):
            ignored.append("discovery k8s_* selectors: no Kubernetes metadata (attributes.kubernetes.enable)")
        if any(e.name or e.namespace for e in cfg.discovery.instrument):
            ignored.append("discovery.instrument name/namespace")
        for what in ignored:
            self._log.warning("setting_not_supported_yet", setting=what)
        if not cfg.has_process_selection:
            self._log.warning("no_discovery_criteria", instrumenting="every process listening on a TCP port",
                              hint="narrow it with OTEL_EBPF_OPEN_PORT, OTEL_EBPF_AUTO_TARGET_EXE or "
                              "discovery.instrument")

    def internal_counters(self) -> dict[str, int]:
        """Every counter of the pipeline, by internal metric name (obi.export.internal)."""
        kernel = self.stats.kernel
        built = self.builder.stats
        exporter = self.trace_exporter
        return {
            "obi.ebpf.events": kernel.get("events_sent", 0),
            "obi.ebpf.events.lost": kernel.get("events_lost", 0),
            "obi.ebpf.connections.untracked": kernel.get("conn_table_full", 0),
            "obi.ebpf.calls.untracked": kernel.get("call_table_full", 0),
            "obi.pipeline.events.dropped": self.stats.events_dropped,
            "obi.spans.built": built.spans,
            "obi.spans.unparsed": built.parse_errors,
            "obi.spans.unknown_process": built.unknown_process,
            "obi.spans.exported": exporter.sent if exporter else 0,
            "obi.spans.export.dropped": exporter.dropped if exporter else 0,
            "obi.spans.export.failed": exporter.failed if exporter else 0,
            **self._kube_counters(),
        }

    def _kube_counters(self) -> dict[str, int]:
        if self.kube is None:
            return {}
        stats = self.kube.stats
        return {"obi.kube.api.errors": stats.api_errors, "obi.kube.api.forbidden": stats.forbidden,
                "obi.kube.watch.reconnects": stats.reconnects, "obi.kube.relists": stats.relists}

    # ---- discovery -> kernel ----------------------------------------------

    def _identity_for(self, pid: int) -> ServiceIdentity | None:
        return self._identities.get(pid)

    def _apply_service_overrides(self, identity: ServiceIdentity) -> None:
        """obi's own OTEL_SERVICE_NAME / _NAMESPACE / OTEL_RESOURCE_ATTRIBUTES (OBI semantics)."""
        cfg = self.config
        if cfg.service_name:
            identity.service_name = cfg.service_name
        if cfg.service_namespace:
            identity.service_namespace = cfg.service_namespace
        for key, value in cfg.resource_attributes:
            identity.attributes.setdefault(key, value)

    def _on_processes(self, added: list[ServiceIdentity], removed: list[int]) -> None:
        now = time.monotonic()
        for pid in removed:
            self.tracer.remove_pid(pid)
            if self.decorator is not None:
                self.decorator.forget(pid)
            self._exited[pid] = now
            self._log.info("process_forgotten", pid=pid)
        for identity in added:
            self._apply_service_overrides(identity)
            if self.decorator is not None:
                self.decorator.track(identity)
            self._exited.pop(identity.pid, None)
            self._identities[identity.pid] = identity
            self.tracer.add_pid(identity.pid)
            self._log.info("process_instrumented", pid=identity.pid, service=identity.service_name,
                           exe=identity.exe_path)
        for pid, gone_at in list(self._exited.items()):
            if now - gone_at > EXITED_IDENTITY_GRACE_S:
                del self._exited[pid]
                self._identities.pop(pid, None)

    # ---- ring -> batches ----------------------------------------------------

    def _enqueue(self, batch: bytes) -> None:
        try:
            self._batches.put_nowait(batch)
        except asyncio.QueueFull:
            self.stats.batches_dropped += 1
            self.stats.events_dropped += len(batch) // self.builder.record_size
            if not self._queue_full_logged:
                self._queue_full_logged = True
                self._log.warning("batch_queue_full", dropped_events=self.stats.events_dropped,
                                  hint="the span stage is behind; spans are being dropped and counted")

    def _drain_ring(self) -> None:
        for batch in self.tracer.ring.drain():
            self._enqueue(batch)

    def _sweep(self, idle_ns: int) -> None:
        swept = self.tracer.sweep_idle(time.monotonic_ns(), idle_ns)
        if swept:
            self._enqueue(swept)

    def _check_kernel_counters(self) -> None:
        counters = self.tracer.counters()
        self.stats.kernel = counters
        lost = counters["events_lost"]
        if lost > self._lost_reported:
            self._log.warning("ring_buffer_events_lost", lost_total=lost, new=lost - self._lost_reported,
                              hint="raise ebpf.ring_buffer_size (OTEL_EBPF_BPF_RING_BUFFER_SIZE)")
            self._lost_reported = lost

    async def _drain_timer(self, stop: asyncio.Event) -> None:
        ticks = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), DRAIN_INTERVAL_S)
            self._drain_ring()
            self._sweep(RESPONSE_IDLE_NS)
            ticks += 1
            if ticks % 10 == 0:
                self._check_kernel_counters()

    # ---- batches -> spans -> exporters --------------------------------------

    def process(self, spans: Sequence[HttpSpan]) -> None:
        """Metrics for every span; sampled spans to the printer and exporters."""
        if not spans:
            return
        if self.metrics is not None:
            self.metrics.record(spans)
        sampler = self.sampler
        sampled = []
        for span in spans:
            parent = span.sampled if span.parent_span_id else None
            span.sampled = sampler.should_sample(span.trace_id, parent)
            if span.sampled:
                sampled.append(span)
        if sampled:
            if self.printer.enabled:
                self.printer.print_spans(sampled)
            if self.trace_exporter is not None:
                self.trace_exporter.offer(sampled)

    async def _span_stage(self) -> None:
        while True:
            batch = await self._batches.get()
            self.process(self.builder.build(batch))
            self._batches.task_done()

    # ---- lifecycle -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        tasks: dict[str, asyncio.Task[None]] = {}
        loop.add_reader(self.tracer.ring.epoll_fd, self._drain_ring)
        try:
            if self.kube is not None:
                tasks["kubernetes"] = asyncio.create_task(self.kube.run())
            tasks["discovery"] = asyncio.create_task(self._discover())
            tasks["spans"] = asyncio.create_task(self._span_stage())
            tasks["drain"] = asyncio.create_task(self._drain_timer(stop))
            if self.trace_exporter is not None:
                tasks["traces"] = asyncio.create_task(self.trace_exporter.run())
            if self.metrics_exporter is not None:
                tasks["metrics"] = asyncio.create_task(self.metrics_exporter.run())
            self._warn_unimplemented()
            self._log.info("agent_started", hooks=self.tracer.hooks, trace_printer=self.printer.mode.value,
                           traces=str(_trace_target(self.config) or "off"),
                           metrics=str(_metrics_target(self.config) or "off"))
            stop_wait = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stop_wait, *tasks.values()], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop_wait and task.exception() is not None:
                    name = next(n for n, t in tasks.items() if t is task)
                    self._log.error("stage_failed", stage=name, error=repr(task.exception()))
                    raise task.exception()  # type: ignore[misc]
        finally:
            loop.remove_reader(self.tracer.ring.epoll_fd)
            await self._shutdown(tasks)

    async def _discover(self) -> None:
        """Discovery, after the informers' first lists (so exclusions by namespace hold)."""
        if self.kube is not None:
            timeout = self.config.attributes.kubernetes.informers_sync_timeout
            try:
                await asyncio.wait_for(self.kube.synced.wait(), timeout)
            except TimeoutError:
                self._log.warning("kubernetes_sync_timeout", timeout_s=timeout,
                                  hint="instrumenting now; pods are decorated as the API announces them")
        await self.watcher.run(self._on_processes)

    async def _flush_stage(self, name: str, flush: Coroutine[None, None, None], left: float) -> None:
        """Run one exporter's shutdown; cancel it if it overruns its share of the timeout."""
        task = asyncio.create_task(flush)
        _, hung = await asyncio.wait([task], timeout=left + 0.5)
        if hung:
            task.cancel()
            self._log.error("shutdown_stage_hung", stage=name, timeout_s=self.config.shutdown_timeout)

    async def _shutdown(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        deadline = time.monotonic() + self.config.shutdown_timeout
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.watcher.stop(), 2.0)
        if self.kube is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.kube.stop(), 2.0)
        # Everything the kernel completed, plus responses still in flight.
        self._drain_ring()
        self._sweep(0)
        self._check_kernel_counters()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._batches.join(), max(0.1, deadline - time.monotonic()))
        for name in ("kubernetes", "discovery", "spans", "drain"):
            task = tasks.get(name)
            if task is not None:
                task.cancel()
        await asyncio.gather(*(tasks[n] for n in ("spans", "drain") if n in tasks), return_exceptions=True)
        # Batches the span stage had no time for are counted, not silently lost.
        while not self._batches.empty():
            self.stats.events_dropped += len(self._batches.get_nowait()) // self.builder.record_size
        # Traces flush first, so that the last metrics push carries final counters (obi's
        # own included); the metrics keep a share of what is left of the timeout for it.
        left = max(0.1, deadline - time.monotonic())
        if self.trace_exporter is not None:
            reserve = min(1.0, left / 4) if self.metrics_exporter is not None else 0.0
            await self._flush_stage("traces", self.trace_exporter.shutdown(left - reserve), left - reserve)
        if self.metrics_exporter is not None:
            left = max(0.1, deadline - time.monotonic())
            await self._flush_stage("metrics", self.metrics_exporter.shutdown(left), left)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        self.printer.close()
        self.tracer.close()
        exporter = self.trace_exporter
        self._log.info("agent_stopped", spans=self.builder.stats.spans,
                       spans_exported=exporter.sent if exporter else 0,
                       spans_export_dropped=exporter.dropped if exporter else 0,
                       spans_export_failed=exporter.failed if exporter else 0,
                       parse_errors=self.builder.stats.parse_errors,
                       unknown_process=self.builder.stats.unknown_process,
                       events_dropped=self.stats.events_dropped, **self.stats.kernel)
