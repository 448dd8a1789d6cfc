"""The validated configuration model: frozen, fully typed, with OBI's key names and defaults.

Durations are float seconds. Keys marked "obi-only" do not exist in OBI; every
other field carries the YAML key and environment variable of OBI.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Literal

from obi.config.patterns import Glob, PathRegex
from obi.config.values import PortRanges
from obi.export.endpoints import OtlpProtocol
from obi.export.printer import TracePrinterMode
from obi.traces.routes import DEFAULT_UNMATCHED, RouteUnmatched
from obi.traces.sampler import SamplerName


class ConfigError(Exception):
    """A configuration problem, as one line naming the source and the key."""


LogLevel = Literal["DEBUG", "INFO", "WARN", "ERROR"]
LogFormat = Literal["text", "json"]
# The protocol setting: "" when not set (obi.export.endpoints guesses it from the port).
OtlpProtocolSetting = OtlpProtocol | Literal[""]
RouteIgnoreMode = Literal["all", "traces", "metrics"]
SyscallHooks = Literal["auto", "fentry", "kprobe", "tracepoint", "raw_tracepoint"]
# OBI's ebpf.context_propagation; "ip" is its deprecated name of "tcp".
ContextPropagation = Literal["disabled", "headers", "tcp", "all", "ip"]
KubeEnable = Literal["true", "false", "autodetect"]
MetricsFeature = Literal[
    "application",
    "application_span",
    "application_span_otel",
    "application_host",
    "application_service_graph",
    "application_process",
    "network",
    "network_inter_zone",
]

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Selector:
    """One entry of ``discovery.instrument`` / ``exclude_instrument``: every set criterion must match."""

    open_ports: PortRanges = ()
    exe_path: Glob | None = None
    # Service name and namespace given to the processes this entry selects.
    name: str = ""
    namespace: str = ""
    # Kubernetes criteria: accepted now, matched once Kubernetes metadata exists.
    k8s_namespace: Glob | None = None
    k8s_pod_name: Glob | None = None
    k8s_container_name: Glob | None = None
    k8s_deployment_name: Glob | None = None
    k8s_replicaset_name: Glob | None = None
    k8s_statefulset_name: Glob | None = None
    k8s_daemonset_name: Glob | None = None
    k8s_owner_name: Glob | None = None
    k8s_pod_labels: tuple[tuple[str, Glob], ...] = ()
    k8s_pod_annotations: tuple[tuple[str, Glob], ...] = ()

    @property
    def has_kubernetes_criteria(self) -> bool:
        return any(
            (
                self.k8s_namespace,
                self.k8s_pod_name,
                self.k8s_container_name,
                self.k8s_deployment_name,
                self.k8s_replicaset_name,
                self.k8s_statefulset_name,
                self.k8s_daemonset_name,
                self.k8s_owner_name,
                self.k8s_pod_labels,
                self.k8s_pod_annotations,
            )
        )


_KUBE_SYSTEM_NAMESPACES = (
    "kube-system,kube-node-lease,local-path-storage,grafana-alloy,cert-manager,monitoring,"
    "gke-connect,gke-gmp-system,gke-managed-cim,gke-managed-filestorecsi,"
    "gke-managed-metrics-server,gke-managed-system,gke-system,gke-managed-volumepopulator,"
    "gatekeeper-system"
)

# OBI's default_exclude_instrument: itself (as obi, ebpf-instrument, beyla), Alloy,
# OpenTelemetry collectors, and Kubernetes system namespaces.
DEFAULT_EXCLUDE_INSTRUMENT: tuple[Selector, ...] = (
    Selector(
        exe_path=Glob(
            "{*beyla,*alloy,*obi,*ebpf-instrument,*prometheus-config-reloader,"
            "*otelcol,*otelcol-contrib,*otelcol-contrib[!/]*}"
        )
    ),
    Selector(k8s_namespace=Glob("{" + _KUBE_SYSTEM_NAMESPACES + "}")),
)


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """YAML ``discovery``: which processes to instrument."""

    instrument: tuple[Selector, ...] = ()
    exclude_instrument: tuple[Selector, ...] = ()
    default_exclude_instrument: tuple[Selector, ...] = DEFAULT_EXCLUDE_INSTRUMENT


@dataclass(frozen=True, slots=True)
class RoutesConfig:
    """YAML ``routes``: how ``http.route`` is derived from the path."""

    patterns: tuple[str, ...] = ()
    ignored_patterns: tuple[str, ...] = ()
    ignore_mode: RouteIgnoreMode = "all"
    unmatched: RouteUnmatched = DEFAULT_UNMATCHED
    wildcard_char: str = "*"


@dataclass(frozen=True, slots=True)
class SamplerConfig:
    """YAML ``otel_traces_export.sampler``; env OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG."""

    name: SamplerName = "parentbased_always_on"
    arg: float | None = None  # only for the ratio samplers, validated in [0, 1]

    @property
    def ratio(self) -> float:
        """The ratio of the ratio samplers; 1.0 when no argument was given (OTel default)."""
        return 1.0 if self.arg is None else self.arg


@dataclass(frozen=True, slots=True)
class TracesExportConfig:
    """YAML ``otel_traces_export``.

    ``endpoint`` is the common OTEL_EXPORTER_OTLP_ENDPOINT; ``signal_endpoint`` is
    YAML ``endpoint`` or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (OBI maps both there).
    ``protocol`` is the resolved setting ("" = not set). ``resolve_otlp_target`` in
    obi.export.endpoints turns them into the destination; the loader checked that it can.
    """

    endpoint: str = ""
    signal_endpoint: str = ""
    protocol: OtlpProtocolSetting = ""
    insecure_skip_verify: bool = False
    headers: Headers = field(default=(), repr=False)  # env only, never shown
    timeout: float = 10.0  # OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT, ms in the environment
    sampler: SamplerConfig = SamplerConfig()
    max_queue_size: int = 4096
    max_export_batch_size: int = 512  # obi-only
    max_queue_bytes: int = 16 << 20  # obi-only: the queue's encoded spans, whatever their count
    batch_timeout: float = 15.0

    @property
    def enabled(self) -> bool:
        return bool(self.endpoint or self.signal_endpoint)


_SIZE_BUCKETS = (0.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0)


@dataclass(frozen=True, slots=True)
class HistogramBuckets:
    """YAML ``otel_metrics_export.buckets``: explicit bucket boundaries (OBI's defaults)."""

    duration_histogram: tuple[float, ...] = (
        0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    )  # fmt: skip
    request_size_histogram: tuple[float, ...] = _SIZE_BUCKETS
    response_size_histogram: tuple[float, ...] = _SIZE_BUCKETS


@dataclass(frozen=True, slots=True)
class MetricsExportConfig:
    """YAML ``otel_metrics_export``; endpoints, protocol, headers as for traces with _METRICS_ variables."""

    endpoint: str = ""
    signal_endpoint: str = ""
    protocol: OtlpProtocolSetting = ""
    insecure_skip_verify: bool = False
    headers: Headers = field(default=(), repr=False)
    timeout: float = 10.0
    interval: float = 60.0
    buckets: HistogramBuckets = HistogramBuckets()
    features: tuple[MetricsFeature, ...] = ("application",)
    # series of one metric of one service; a new attribute set past it goes into one overflow
    # series (otel.metric.overflow=true), as the OpenTelemetry SDKs do (their default, 2000)
    cardinality_limit: int = 2000

    @property
    def enabled(self) -> bool:
        return bool(self.endpoint or self.signal_endpoint)


InternalMetricsExporter = Literal["disabled", "otel", "prometheus"]


@dataclass(frozen=True, slots=True)
class InternalMetricsConfig:
    """YAML ``internal_metrics``: obi's own counters (events lost, spans dropped, ...).

    ``otel`` sends them with the application metrics through otel_metrics_export;
    ``prometheus`` serves them on ``prometheus.port`` and ``prometheus.path`` (the port may be
    the application endpoint's).
    """

    exporter: InternalMetricsExporter = "disabled"
    prometheus_port: int = 0
    prometheus_path: str = "/internal/metrics"
    bpf_metric_scrape_interval: float = 15.0  # how often the BPF maps' entries are counted


@dataclass(frozen=True, slots=True)
class PrometheusExportConfig:
    """YAML ``prometheus_export``: a scrape endpoint, open when ``port`` is not 0."""

    port: int = 0
    path: str = "/metrics"
    ttl: float = 300.0  # a series not updated this long leaves the exposition
    buckets: HistogramBuckets = HistogramBuckets()
    extra_resource_attributes: tuple[str, ...] = ()  # more resource attributes on target_info
    disable_build_info: bool = False
    # OBI's, for metric groups and protocols obi has no other choice of yet (warned about)
    features: tuple[MetricsFeature, ...] = ()
    instrumentations: tuple[str, ...] = ("*",)

    @property
    def enabled(self) -> bool:
        return self.port != 0


@dataclass(frozen=True, slots=True)
class EbpfConfig:
    """YAML ``ebpf``."""

    wakeup_len: int = 0  # 0: unset (OBI's default); the ring reader picks its batching
    track_request_headers: bool = False
    # An HTTP request unanswered this long is reported with status 408 (OBI); 0: never.
    http_request_timeout: float = 0.0
    # Trace context on the wire: "headers" adds a traceparent to outgoing HTTP/1 requests.
    context_propagation: ContextPropagation = "disabled"
    # obi-only keys below.
    syscall_hooks: SyscallHooks = "auto"
    ring_buffer_size: int = 8 << 20  # obi.ebpf.capture.DEFAULT_RING_BUFFER_SIZE
    record_queue_bytes: int = 64 << 20  # drained records waiting for the span stage
    request_capture_bytes: int = 4096
    response_capture_bytes: int = 512
    pid_filter_max: int = 4096
    # A response the kernel cannot frame (not HTTP/1.x) is over once quiet this long; 0: only
    # the next request or the connection's end close it.
    response_idle_timeout: float = 1.0
    max_connections: int = 65536  # TCP connections (and file descriptors) followed at once
    max_inflight_requests: int = 2048  # exchanges in flight at once, each with its capture buffer


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    """YAML ``attributes.kubernetes``: stored for the Kubernetes decorator."""

    enable: KubeEnable = "false"
    kubeconfig_path: str = ""
    cluster_name: str = ""
    informers_sync_timeout: float = 30.0
    meta_restrict_local_node: bool = False


@dataclass(frozen=True, slots=True)
class AttributeSelection:
    """One section of YAML ``attributes.select`` (``traces``, or a metric such as
    ``http_server_request_duration``): attribute names or globs to add and to leave out."""

    section: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AttributesConfig:
    """YAML ``attributes``."""

    kubernetes: KubernetesConfig = KubernetesConfig()
    select: tuple[AttributeSelection, ...] = ()

    def trace_attribute_selected(self, name: str) -> bool:
        """Whether an attribute off by default (``db.query.text``) is on for spans:
        ``attributes.select.traces`` includes it and does not exclude it (globs, as OBI)."""
        for selection in self.select:
            if selection.section == "traces":
                return (any(fnmatch.fnmatchcase(name, g) for g in selection.include)
                        and not any(fnmatch.fnmatchcase(name, g) for g in selection.exclude))
        return False


@dataclass(frozen=True, slots=True)
class Config:
    """The whole agent configuration: defaults < YAML file < environment."""

    log_level: LogLevel = "INFO"
    log_format: LogFormat = "text"  # obi-only
    trace_printer: TracePrinterMode | None = None  # None: not set, see effective_trace_printer
    shutdown_timeout: float = 10.0
    enforce_sys_caps: bool = False
    # Discovery shortcuts.
    open_port: PortRanges = ()
    auto_target_exe: Glob | None = None  # env only, as in OBI
    executable_path: PathRegex | None = None  # OBI's deprecated regex selector
    target_pids: tuple[int, ...] = ()
    # OBI's deprecated global service name/namespace (OTEL_SERVICE_NAME,
    # OTEL_EBPF_SERVICE_NAMESPACE) for the processes the shortcuts select.
    service_name: str = ""
    service_namespace: str = ""
    # OTEL_RESOURCE_ATTRIBUTES given to obi: fallback resource attributes for every
    # instrumented process (OBI reads the process's own variable first).
    resource_attributes: tuple[tuple[str, str], ...] = ()
    discovery: DiscoveryConfig = DiscoveryConfig()
    routes: RoutesConfig = RoutesConfig()
    otel_traces_export: TracesExportConfig = TracesExportConfig()
    otel_metrics_export: MetricsExportConfig = MetricsExportConfig()
    prometheus_export: PrometheusExportConfig = PrometheusExportConfig()
    internal_metrics: InternalMetricsConfig = InternalMetricsConfig()
    ebpf: EbpfConfig = EbpfConfig()
    attributes: AttributesConfig = AttributesConfig()
    config_path: str = ""  # the YAML file loaded, "" if none

    @property
    def effective_trace_printer(self) -> TracePrinterMode:
        """The trace printer to run: as set, else "text" when no exporter is configured at all."""
        if self.trace_printer is not None:
            return self.trace_printer
        if (
            self.otel_traces_export.enabled
            or self.otel_metrics_export.enabled
            or self.prometheus_export.enabled
        ):
            return TracePrinterMode.DISABLED
        return TracePrinterMode.TEXT

    @property
    def has_process_selection(self) -> bool:
        """Whether any criterion selects processes to instrument."""
        return bool(
            self.open_port
            or self.auto_target_exe
            or self.executable_path
            or self.target_pids
            or self.discovery.instrument
        )
