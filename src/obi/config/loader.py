"""Build the Config: defaults, then the YAML file, then environment variables, field by field.

Every problem becomes one ConfigError line naming the file or variable and the
dotted key. Unknown YAML keys are errors; unknown environment variables are not
(the environment is shared with everything else).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar, cast, get_args

import yaml

from obi.config import values
from obi.config.model import (
    DEFAULT_EXCLUDE_INSTRUMENT,
    AttributesConfig,
    AttributeSelection,
    Config,
    ConfigError,
    ContextPropagation,
    DiscoveryConfig,
    EbpfConfig,
    Headers,
    HistogramBuckets,
    InternalMetricsConfig,
    InternalMetricsExporter,
    KubeEnable,
    KubernetesConfig,
    LogFormat,
    LogLevel,
    MetricsExportConfig,
    MetricsFeature,
    PrometheusExportConfig,
    RouteIgnoreMode,
    RoutesConfig,
    SamplerConfig,
    Selector,
    SyscallHooks,
    TracesExportConfig,
)
from obi.config.patterns import Glob, PathRegex
from obi.config.values import PortRanges, quote
from obi.ebpf._libbpf import lib
from obi.export.endpoints import OtlpSignal, parse_otlp_protocol, resolve_otlp_target
from obi.export.printer import TracePrinterMode
from obi.traces.routes import UNMATCHED_MODES
from obi.traces.sampler import RATIO_SAMPLER_NAMES, SAMPLER_NAMES

T = TypeVar("T")

CONFIG_PATH_ENV = "OTEL_EBPF_CONFIG_PATH"

# The accepted values of each choice, in the order error messages list them: taken
# from the Literal types (or the implementing module), never listed twice.
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)
LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)
TRACE_PRINTERS: tuple[TracePrinterMode, ...] = tuple(TracePrinterMode)
ROUTE_IGNORE_MODES: tuple[RouteIgnoreMode, ...] = get_args(RouteIgnoreMode)
SYSCALL_HOOKS: tuple[SyscallHooks, ...] = get_args(SyscallHooks)
CONTEXT_PROPAGATION: tuple[ContextPropagation, ...] = get_args(ContextPropagation)
KUBE_ENABLE: tuple[KubeEnable, ...] = get_args(KubeEnable)
METRICS_FEATURES: tuple[MetricsFeature, ...] = get_args(MetricsFeature)

# Kernel-side limits of obi's capture buffers (obi-only keys).
# The capture buffers are sized in the kernel program (bpf/capture.h).
REQUEST_CAPTURE_RANGE = (64, lib.OBI_REQ_CAPTURE_MAX)
RESPONSE_CAPTURE_RANGE = (16, lib.OBI_RESP_CAPTURE_MAX)
CONNECTIONS_RANGE = (64, 1 << 22)
INFLIGHT_RANGE = (16, 1 << 16)
RING_BUFFER_RANGE = (4096, 1 << 30)
QUEUE_BYTES_RANGE = (1 << 16, 1 << 34)  # the bytes bound of a queue: 64 KiB to 16 GiB
PID_FILTER_RANGE = (1, 1 << 20)

_GLOB_FIELDS = (
    "exe_path",
    "k8s_namespace",
    "k8s_pod_name",
    "k8s_container_name",
    "k8s_deployment_name",
    "k8s_replicaset_name",
    "k8s_statefulset_name",
    "k8s_daemonset_name",
    "k8s_owner_name",
)
_GLOB_MAP_FIELDS = ("k8s_pod_labels", "k8s_pod_annotations")


def load_config(path: str | None, environ: Mapping[str, str]) -> Config:
    """Load the configuration from ``path`` (or OTEL_EBPF_CONFIG_PATH) and ``environ``."""
    env = _Environment(environ)
    if path is None:
        path = env.get(CONFIG_PATH_ENV)
    root = _Node({}, "", "")
    if path:
        root = _Node(_read_yaml(path, environ), "", f"config file {path}")
    config = _build(root, env)
    root.finish()
    if config.internal_metrics.exporter == "otel" and not config.otel_metrics_export.enabled:
        where = f"config file {path}: " if path else ""
        raise ConfigError(f"{where}internal_metrics.exporter: otel needs an OTLP metrics endpoint "
                          "(otel_metrics_export.endpoint or OTEL_EXPORTER_OTLP_ENDPOINT)")
    return replace(config, config_path=path or "")


def _read_yaml(path: str, environ: Mapping[str, str]) -> Mapping[object, object]:
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"config file {path}: cannot read: {reason}") from None
    try:
        data = yaml.safe_load(values.expand_env(text, environ))
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"config file {path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {path}: expected a mapping of keys at the top level")
    return cast(Mapping[object, object], data)


class _Environment:
    """Environment variables, empty values counting as unset."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get(self, name: str) -> str | None:
        value = self._environ.get(name)
        return value if value and value.strip() else None

    def parse(self, name: str, parser: Callable[[str], T]) -> T | None:
        raw = self.get(name)
        if raw is None:
            return None
        try:
            return parser(raw)
        except ValueError as err:
            raise ConfigError(f"environment variable {name}: {err}") from None

    def first(self, names: Sequence[str], parser: Callable[[str], T]) -> T | None:
        for name in names:
            value = self.parse(name, parser)
            if value is not None:
                return value
        return None


class _Node:
    """A YAML mapping being read: knows its dotted path and reports keys nobody read."""

    def __init__(self, data: Mapping[object, object], path: str, source: str) -> None:
        self._data = data
        self._path = path
        self._source = source
        self._read: set[str] = set()
        self._children: list[_Node] = []

    def key_path(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self._source}: {self.key_path(key)}: {message}")

    def error_here(self, message: str) -> ConfigError:
        return ConfigError(f"{self._source}: {self._path}: {message}")

    def names(self) -> list[str]:
        return [str(key) for key in self._data]

    def has(self, key: str) -> bool:
        return key in self._data

    def raw(self, key: str) -> object:
        self._read.add(key)
        return self._data.get(key)

    def child(self, key: str) -> _Node:
        value = self.raw(key)
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise self.error(key, "expected a mapping")
        node = _Node(cast(Mapping[object, object], value), self.key_path(key), self._source)
        self._children.append(node)
        return node

    def children(self, key: str) -> list[_Node]:
        """The entries of a list of mappings."""
        items = self.list(key)
        nodes: list[_Node] = []
        for index, item in enumerate(items):
            path = f"{self.key_path(key)}[{index}]"
            if not isinstance(item, Mapping):
                raise ConfigError(f"{self._source}: {path}: expected a mapping")
            node = _Node(cast(Mapping[object, object], item), path, self._source)
            self._children.append(node)
            nodes.append(node)
        return nodes

    def finish(self) -> None:
        for key in self._data:
            if not isinstance(key, str) or key not in self._read:
                raise ConfigError(f"{self._source}: {self.key_path(str(key))}: unknown key")
        for node in self._children:
            node.finish()

    def parse(self, key: str, parser: Callable[[str], T]) -> T | None:
        """Parse a scalar through a text parser; None when the key is absent or null."""
        value = self.raw(key)
        if value is None:
            return None
        if isinstance(value, (Mapping, list)):
            raise self.error(key, "expected a single value")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        try:
            return parser(text)
        except ValueError as err:
            raise self.error(key, str(err)) from None

    def string(self, key: str) -> str | None:
        value = self.raw(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.error(key, "expected a string")
        return str(value)

    def boolean(self, key: str) -> bool | None:
        value = self.raw(key)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return self.parse(key, values.parse_bool)
        raise self.error(key, f"bad boolean {quote(value)} (accepted: true, false)")

    def integer(self, key: str, low: int | None = None, high: int | None = None) -> int | None:
        value = self.raw(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self.error(key, f"expected an integer, got {quote(value)}")
        return self.parse(key, lambda text: values.parse_int(text, low, high))

    def duration(self, key: str) -> float | None:
        return self.parse(key, values.parse_duration)

    def list(self, key: str) -> list[object]:
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(key, "expected a list")
        return value

    def strings(self, key: str) -> tuple[str, ...] | None:
        if self.raw(key) is None:
            return None
        items: list[str] = []
        for index, item in enumerate(self.list(key)):
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise self.error(f"{key}[{index}]", "expected a string")
            items.append(str(item))
        return tuple(items)

    def choice(self, key: str, accepted: Sequence[T], what: str) -> T | None:
        return self.parse(key, lambda text: _choice(text, accepted, what))

    def ports(self, key: str) -> PortRanges | None:
        value = self.raw(key)
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        ranges: list[tuple[int, int]] = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise self.error(key, f"bad port range {quote(item)}")
            try:
                ranges.extend(values.parse_port_ranges(str(item)))
            except ValueError as err:
                raise self.error(key, str(err)) from None
        return tuple(ranges)

    def glob(self, key: str) -> Glob | None:
        return self.parse(key, Glob)


def _choice(text: str, accepted: Sequence[T], what: str) -> T:
    wanted = text.strip().lower()
    for option in accepted:
        if str(option).lower() == wanted:
            return option
    names = ", ".join(str(option) for option in accepted)
    raise ValueError(f"unknown {what} {quote(text)} (accepted: {names})")


def _pick(*candidates: T | None, default: T) -> T:
    """The first value that is set: callers list environment before YAML."""
    for candidate in candidates:
        if candidate is not None:
            return candidate
    return default


def _build(root: _Node, env: _Environment) -> Config:
    defaults = Config()
    trace_printer = _pick(
        env.parse("OTEL_EBPF_TRACE_PRINTER", lambda t: _choice(t, TRACE_PRINTERS, "trace printer")),
        root.choice("trace_printer", TRACE_PRINTERS, "trace printer"),
        default=None,
    )
    return Config(
        log_level=_pick(
            env.parse("OTEL_EBPF_LOG_LEVEL", lambda t: _choice(t, LOG_LEVELS, "log level")),
            root.choice("log_level", LOG_LEVELS, "log level"),
            default=defaults.log_level,
        ),
        log_format=_pick(
            env.parse("OTEL_EBPF_LOG_FORMAT", lambda t: _choice(t, LOG_FORMATS, "log format")),
            root.choice("log_format", LOG_FORMATS, "log format"),
            default=defaults.log_format,
        ),
        trace_printer=trace_printer,
        shutdown_timeout=_pick(
            env.parse("OTEL_EBPF_SHUTDOWN_TIMEOUT", values.parse_duration),
            root.duration("shutdown_timeout"),
            default=defaults.shutdown_timeout,
        ),
        enforce_sys_caps=_pick(
            env.parse("OTEL_EBPF_ENFORCE_SYS_CAPS", values.parse_bool),
            root.boolean("enforce_sys_caps"),
            default=defaults.enforce_sys_caps,
        ),
        open_port=_pick(
            env.parse("OTEL_EBPF_OPEN_PORT", values.parse_port_ranges),
            root.ports("open_port"),
            default=defaults.open_port,
        ),
        auto_target_exe=env.first(("OTEL_EBPF_AUTO_TARGET_EXE", "OTEL_GO_AUTO_TARGET_EXE"), Glob),
        executable_path=_pick(
            env.parse("OTEL_EBPF_EXECUTABLE_PATH", PathRegex),
            root.parse("executable_path", PathRegex),
            default=None,
        ),
        target_pids=_pick(
            env.parse("OTEL_EBPF_TARGET_PID", values.parse_pids),
            _yaml_pids(root),
            default=defaults.target_pids,
        ),
        service_name=_pick(
            env.first(("OTEL_SERVICE_NAME", "OTEL_EBPF_SERVICE_NAME"), str.strip),
            root.string("service_name"),
            default="",
        ),
        service_namespace=_pick(
            env.parse("OTEL_EBPF_SERVICE_NAMESPACE", str.strip),
            root.string("service_namespace"),
            default="",
        ),
        resource_attributes=_pick(
            env.parse(
                "OTEL_RESOURCE_ATTRIBUTES",
                lambda t: values.parse_key_values(t, "resource attribute"),
            ),
            default=(),
        ),
        discovery=_discovery(root.child("discovery")),
        routes=_routes(root.child("routes")),
        otel_traces_export=_traces(root.child("otel_traces_export"), env),
        otel_metrics_export=_metrics(root.child("otel_metrics_export"), env),
        prometheus_export=_prometheus(root.child("prometheus_export"), env),
        internal_metrics=_internal_metrics(root.child("internal_metrics"), env),
        ebpf=_ebpf(root.child("ebpf"), env),
        attributes=_attributes(root.child("attributes"), env),
    )


def _yaml_pids(root: _Node) -> tuple[int, ...] | None:
    value = root.raw("target_pids")
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    text = ",".join(str(item) for item in items)
    if any(isinstance(item, bool) or not isinstance(item, (int, str)) for item in items):
        raise root.error("target_pids", f"bad process id list {quote(text)}")
    try:
        return values.parse_pids(text)
    except ValueError as err:
        raise root.error("target_pids", str(err)) from None


def _selector(node: _Node, require_criteria: bool) -> Selector:
    globs = {key: node.glob(key) for key in _GLOB_FIELDS}
    maps = {key: _glob_map(node, key) for key in _GLOB_MAP_FIELDS}
    selector = Selector(
        open_ports=_pick(node.ports("open_ports"), default=()),
        name=_pick(node.string("name"), default=""),
        namespace=_pick(node.string("namespace"), default=""),
        **globs,  # type: ignore[arg-type]
        **maps,  # type: ignore[arg-type]
    )
    node.finish()  # a misspelt key explains a missing criterion better
    if require_criteria and not (
        selector.open_ports or selector.exe_path or selector.has_kubernetes_criteria
    ):
        raise node.error_here("no selection criteria (set open_ports, exe_path or a k8s_* field)")
    return selector


def _glob_map(node: _Node, key: str) -> tuple[tuple[str, Glob], ...]:
    child = node.child(key)
    pairs: list[tuple[str, Glob]] = []
    for label in child.names():
        pattern = child.glob(label)
        if pattern is None:
            raise child.error(label, "expected a glob")
        pairs.append((label, pattern))
    return tuple(pairs)


def _selectors(node: _Node, key: str, require_criteria: bool) -> tuple[Selector, ...]:
    return tuple(_selector(entry, require_criteria) for entry in node.children(key))


def _discovery(node: _Node) -> DiscoveryConfig:
    default_exclude = DEFAULT_EXCLUDE_INSTRUMENT
    if node.has("default_exclude_instrument"):
        raw = node.raw("default_exclude_instrument")
        # OBI: "set to empty" disables the default exclusions.
        if raw is None or raw == "":
            default_exclude = ()
        else:
            default_exclude = _selectors(node, "default_exclude_instrument", True)
    return DiscoveryConfig(
        instrument=_selectors(node, "instrument", True),
        exclude_instrument=_selectors(node, "exclude_instrument", True),
        default_exclude_instrument=default_exclude,
    )


def _routes(node: _Node) -> RoutesConfig:
    defaults = RoutesConfig()
    unmatched = node.string("unmatched")
    wildcard_char = node.string("wildcard_char")
    if wildcard_char is not None and len(wildcard_char) != 1:
        raise node.error("wildcard_char", f"must be a single character, got {quote(wildcard_char)}")
    for key in ("patterns", "ignored_patterns"):
        for index, pattern in enumerate(node.strings(key) or ()):
            if not pattern.startswith("/"):
                raise node.error(f"{key}[{index}]", f"route pattern {quote(pattern)} must start with /")
    return RoutesConfig(
        patterns=_pick(node.strings("patterns"), default=()),
        ignored_patterns=_pick(node.strings("ignored_patterns"), default=()),
        ignore_mode=_pick(
            node.choice("ignore_mode", ROUTE_IGNORE_MODES, "ignore mode"), default=defaults.ignore_mode
        ),
        # OBI treats an explicit empty value as "wildcard".
        unmatched="wildcard"
        if unmatched == ""
        else _pick(node.choice("unmatched", UNMATCHED_MODES, "unmatched mode"), default=defaults.unmatched),
        wildcard_char=_pick(wildcard_char, default=defaults.wildcard_char),
    )


def _headers(env: _Environment, signal: str) -> Headers:
    merged: dict[str, tuple[str, str]] = {}
    for name in ("OTEL_EXPORTER_OTLP_HEADERS", f"OTEL_EXPORTER_OTLP_{signal}_HEADERS"):
        pairs = env.parse(name, lambda t: values.parse_key_values(t, "header"))
        for key, value in pairs or ():
            merged[key.lower()] = (key, value)
    return tuple(merged.values())


def _endpoint_parser(signal: OtlpSignal) -> Callable[[str], str]:
    """A parser refusing every endpoint that the exporters' resolve_otlp_target would refuse.

    Its OtlpEndpointError is a ValueError: the loader reports it naming the key.
    The protocol is checked on its own by parse_otlp_protocol, so an endpoint and a
    protocol that each pass always resolve together.
    """

    def parse(text: str) -> str:
        if resolve_otlp_target(text, "", "", signal) is None:
            raise ValueError("empty URL")
        return text.strip()

    return parse


def _otlp_common(node: _Node, env: _Environment, signal: OtlpSignal) -> dict[str, object]:
    upper = signal.upper()
    endpoint = _endpoint_parser(signal)
    return {
        "endpoint": _pick(env.parse("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint), default=""),
        "signal_endpoint": _pick(
            env.parse(f"OTEL_EXPORTER_OTLP_{upper}_ENDPOINT", endpoint),
            node.parse("endpoint", endpoint),
            default="",
        ),
        "protocol": _pick(
            env.parse(f"OTEL_EXPORTER_OTLP_{upper}_PROTOCOL", parse_otlp_protocol),
            env.parse("OTEL_EXPORTER_OTLP_PROTOCOL", parse_otlp_protocol),
            node.parse("protocol", parse_otlp_protocol),
            default="",
        ),
        "insecure_skip_verify": _pick(
            env.first(
                ("OTEL_EBPF_OTEL_INSECURE_SKIP_VERIFY", "OTEL_EBPF_INSECURE_SKIP_VERIFY"),
                values.parse_bool,
            ),
            node.boolean("insecure_skip_verify"),
            default=False,
        ),
        "headers": _headers(env, upper),
        "timeout": _pick(
            env.parse(f"OTEL_EXPORTER_OTLP_{upper}_TIMEOUT", values.parse_millis),
            env.parse("OTEL_EXPORTER_OTLP_TIMEOUT", values.parse_millis),
            default=10.0,
        ),
    }


def _ratio(text: str) -> float:
    ratio = values.parse_float(text)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"sampler argument {quote(text)} must be a number between 0 and 1")
    return ratio


def _sampler(node: _Node, env: _Environment) -> SamplerConfig:
    name = _pick(
        env.parse("OTEL_TRACES_SAMPLER", lambda t: _choice(t, SAMPLER_NAMES, "sampler")),
        node.choice("name", SAMPLER_NAMES, "sampler"),
        default=SamplerConfig().name,
    )
    env_arg = env.get("OTEL_TRACES_SAMPLER_ARG")
    yaml_arg = node.string("arg")
    arg: float | None = None
    if name in RATIO_SAMPLER_NAMES:
        if env_arg is not None:
            arg = env.parse("OTEL_TRACES_SAMPLER_ARG", _ratio)
        elif yaml_arg is not None:
            arg = node.parse("arg", _ratio)
    return SamplerConfig(name=name, arg=arg)


def _traces(node: _Node, env: _Environment) -> TracesExportConfig:
    defaults = TracesExportConfig()
    common = _otlp_common(node, env, "traces")
    return TracesExportConfig(
        **common,  # type: ignore[arg-type]
        sampler=_sampler(node.child("sampler"), env),
        max_queue_size=_pick(
            env.parse("OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_SIZE", lambda t: values.parse_int(t, 1)),
            node.integer("max_queue_size", 1),
            default=defaults.max_queue_size,
        ),
        max_export_batch_size=_pick(
            env.parse("OTEL_EBPF_OTLP_TRACES_MAX_EXPORT_BATCH_SIZE", lambda t: values.parse_int(t, 1)),
            node.integer("max_export_batch_size", 1),
            default=defaults.max_export_batch_size,
        ),
        max_queue_bytes=_pick(
            env.parse("OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_BYTES", _queue_bytes),
            node.integer("max_queue_bytes", *QUEUE_BYTES_RANGE),
            default=defaults.max_queue_bytes,
        ),
        batch_timeout=_pick(
            env.parse("OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT", values.parse_duration),
            node.duration("batch_timeout"),
            default=defaults.batch_timeout,
        ),
    )


def _buckets(node: _Node) -> HistogramBuckets:
    defaults = HistogramBuckets()
    found: dict[str, tuple[float, ...]] = {}
    for key in ("duration_histogram", "request_size_histogram", "response_size_histogram"):
        if node.raw(key) is None:
            continue
        items = node.list(key)
        bounds: list[float] = []
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float, str)):
                raise node.error(key, f"bad bucket boundary {quote(item)}")
            try:
                bounds.append(values.parse_float(str(item)))
            except ValueError as err:
                raise node.error(key, str(err)) from None
        if any(b >= a for a, b in zip(bounds[1:], bounds, strict=False)):
            raise node.error(key, "bucket boundaries must be in increasing order")
        found[key] = tuple(bounds)
    return replace(defaults, **found)


def _features(text: str) -> tuple[MetricsFeature, ...]:
    return tuple(
        _choice(item, METRICS_FEATURES, "metrics feature") for item in text.split(",") if item.strip()
    )


def _feature_list(node: _Node, key: str) -> tuple[MetricsFeature, ...] | None:
    """Metric features as a YAML list or a comma-separated string."""
    if not node.has(key):
        return None
    if isinstance(node.raw(key), list):
        try:
            return _features(",".join(node.strings(key) or ()))
        except ValueError as err:
            raise node.error(key, str(err)) from None
    return node.parse(key, _features)


def _metrics(node: _Node, env: _Environment) -> MetricsExportConfig:
    defaults = MetricsExportConfig()
    common = _otlp_common(node, env, "metrics")
    yaml_features = _feature_list(node, "features")
    return MetricsExportConfig(
        **common,  # type: ignore[arg-type]
        # OBI: OTEL_EBPF_METRICS_INTERVAL and YAML interval win over OTEL_METRIC_EXPORT_INTERVAL.
        interval=_pick(
            env.parse("OTEL_EBPF_METRICS_INTERVAL", values.parse_duration),
            node.duration("interval"),
            env.parse("OTEL_METRIC_EXPORT_INTERVAL", values.parse_millis),
            default=defaults.interval,
        ),
        buckets=_buckets(node.child("buckets")),
        cardinality_limit=_pick(
            env.parse("OTEL_EBPF_METRICS_CARDINALITY_LIMIT", lambda t: values.parse_int(t, 2)),
            node.integer("cardinality_limit", 2),
            default=defaults.cardinality_limit,
        ),
        features=_pick(
            env.first(("OTEL_EBPF_METRICS_FEATURES", "OTEL_EBPF_OTEL_METRICS_FEATURES"), _features),
            yaml_features,
            default=defaults.features,
        ),
    )


def _prometheus(node: _Node, env: _Environment) -> PrometheusExportConfig:
    defaults = PrometheusExportConfig()
    path = _pick(env.get("OTEL_EBPF_PROMETHEUS_PATH"), node.string("path"), default=defaults.path)
    if not path.startswith("/"):
        raise node.error("path", f"{quote(path)} must start with /")
    ttl = _pick(env.parse("OTEL_EBPF_PROMETHEUS_TTL", values.parse_duration), node.duration("ttl"),
                default=defaults.ttl)
    if ttl <= 0:
        raise node.error("ttl", "must be positive")
    yaml_features = _feature_list(node, "features")
    # OBI's, for span and service-graph metrics obi does not make: accepted, without effect
    for key in ("allow_service_graph_self_references", "extra_span_resource_attributes",
                "service_cache_size"):
        node.raw(key)
    return PrometheusExportConfig(
        port=_pick(
            env.parse("OTEL_EBPF_PROMETHEUS_PORT", lambda t: values.parse_int(t, 0, 65535)),
            node.integer("port", 0, 65535),
            default=defaults.port,
        ),
        path=path,
        ttl=ttl,
        buckets=_buckets(node.child("buckets")),
        extra_resource_attributes=_pick(
            env.parse("OTEL_EBPF_PROMETHEUS_EXTRA_RESOURCE_ATTRIBUTES", _names),
            node.strings("extra_resource_attributes"),
            default=defaults.extra_resource_attributes,
        ),
        disable_build_info=_pick(
            env.parse("OTEL_EBPF_PROMETHEUS_DISABLE_BUILD_INFO", values.parse_bool),
            node.boolean("disable_build_info"),
            default=defaults.disable_build_info,
        ),
        features=_pick(env.parse("OTEL_EBPF_PROMETHEUS_FEATURES", _features), yaml_features,
                       default=defaults.features),
        instrumentations=_pick(
            env.parse("OTEL_EBPF_PROMETHEUS_INSTRUMENTATIONS", _names),
            node.strings("instrumentations"),
            default=defaults.instrumentations,
        ),
    )


def _names(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _internal_metrics(node: _Node, env: _Environment) -> InternalMetricsConfig:
    """OBI's internal_metrics: `otel` rides on otel_metrics_export, `prometheus` has its endpoint."""

    def exporter(text: str) -> str:
        value = text.strip().lower()
        if value not in ("disabled", "otel", "prometheus"):
            raise ValueError(f"unknown exporter {quote(text)} (accepted: disabled, otel, prometheus)")
        return value

    defaults = InternalMetricsConfig()
    prometheus = node.child("prometheus")
    chosen = _pick(env.parse("OTEL_EBPF_INTERNAL_METRICS_EXPORTER", exporter),
                   node.parse("exporter", exporter), default="disabled")
    port = _pick(env.parse("OTEL_EBPF_INTERNAL_METRICS_PROMETHEUS_PORT", _port),
                 prometheus.integer("port", 0, 65535), default=defaults.prometheus_port)
    path = _pick(env.get("OTEL_EBPF_INTERNAL_METRICS_PROMETHEUS_PATH"), prometheus.string("path"),
                 default=defaults.prometheus_path)
    if not path.startswith("/"):
        raise prometheus.error("path", f"{quote(path)} must start with /")
    if chosen == "prometheus" and port == 0:
        raise node.error("exporter", "prometheus needs internal_metrics.prometheus.port "
                         "(OTEL_EBPF_INTERNAL_METRICS_PROMETHEUS_PORT)")
    if chosen == "otel" and port != 0:  # as OBI: one or the other
        raise node.error("exporter", "otel cannot be combined with internal_metrics.prometheus.port")
    interval = _pick(env.parse("OTEL_EBPF_BPF_METRIC_SCRAPE_INTERVAL", values.parse_duration),
                     node.duration("bpf_metric_scrape_interval"), default=defaults.bpf_metric_scrape_interval)
    if interval <= 0:
        raise node.error("bpf_metric_scrape_interval", "must be positive")
    return InternalMetricsConfig(exporter=cast(InternalMetricsExporter, chosen), prometheus_port=port,
                                 prometheus_path=path, bpf_metric_scrape_interval=interval)


def _port(text: str) -> int:
    return values.parse_int(text, 0, 65535)


def _power_of_two(value: int) -> int:
    if value & (value - 1):
        raise ValueError(f"{value} is not a power of two")
    return value


def _queue_bytes(text: str) -> int:
    return values.parse_int(text, *QUEUE_BYTES_RANGE)


def _ring_size(text: str) -> int:
    return _power_of_two(values.parse_int(text, *RING_BUFFER_RANGE))


def _ebpf(node: _Node, env: _Environment) -> EbpfConfig:
    defaults = EbpfConfig()
    return EbpfConfig(
        wakeup_len=_pick(
            env.parse("OTEL_EBPF_BPF_WAKEUP_LEN", lambda t: values.parse_int(t, 0)),
            node.integer("wakeup_len", 0),
            default=defaults.wakeup_len,
        ),
        track_request_headers=_pick(
            env.parse("OTEL_EBPF_BPF_TRACK_REQUEST_HEADERS", values.parse_bool),
            node.boolean("track_request_headers"),
            default=defaults.track_request_headers,
        ),
        http_request_timeout=_pick(
            env.parse("OTEL_EBPF_BPF_HTTP_REQUEST_TIMEOUT", values.parse_duration),
            node.duration("http_request_timeout"),
            default=defaults.http_request_timeout,
        ),
        context_propagation=_pick(
            env.parse("OTEL_EBPF_BPF_CONTEXT_PROPAGATION",
                      lambda t: _choice(t, CONTEXT_PROPAGATION, "context propagation")),
            node.choice("context_propagation", CONTEXT_PROPAGATION, "context propagation"),
            default=defaults.context_propagation,
        ),
        syscall_hooks=_pick(
            env.parse("OTEL_EBPF_BPF_SYSCALL_HOOKS", lambda t: _choice(t, SYSCALL_HOOKS, "hook type")),
            node.choice("syscall_hooks", SYSCALL_HOOKS, "hook type"),
            default=defaults.syscall_hooks,
        ),
        ring_buffer_size=_pick(
            env.parse("OTEL_EBPF_BPF_RING_BUFFER_SIZE", _ring_size),
            node.parse("ring_buffer_size", _ring_size),
            default=defaults.ring_buffer_size,
        ),
        record_queue_bytes=_pick(
            env.parse("OTEL_EBPF_BPF_RECORD_QUEUE_BYTES", _queue_bytes),
            node.integer("record_queue_bytes", *QUEUE_BYTES_RANGE),
            default=defaults.record_queue_bytes,
        ),
        request_capture_bytes=_pick(
            env.parse(
                "OTEL_EBPF_BPF_REQUEST_CAPTURE_BYTES",
                lambda t: values.parse_int(t, *REQUEST_CAPTURE_RANGE),
            ),
            node.integer("request_capture_bytes", *REQUEST_CAPTURE_RANGE),
            default=defaults.request_capture_bytes,
        ),
        response_capture_bytes=_pick(
            env.parse(
                "OTEL_EBPF_BPF_RESPONSE_CAPTURE_BYTES",
                lambda t: values.parse_int(t, *RESPONSE_CAPTURE_RANGE),
            ),
            node.integer("response_capture_bytes", *RESPONSE_CAPTURE_RANGE),
            default=defaults.response_capture_bytes,
        ),
        pid_filter_max=_pick(
            env.parse("OTEL_EBPF_BPF_PID_FILTER_MAX", lambda t: values.parse_int(t, *PID_FILTER_RANGE)),
            node.integer("pid_filter_max", *PID_FILTER_RANGE),
            default=defaults.pid_filter_max,
        ),
        response_idle_timeout=_pick(
            env.parse("OTEL_EBPF_BPF_RESPONSE_IDLE_TIMEOUT", values.parse_duration),
            node.duration("response_idle_timeout"),
            default=defaults.response_idle_timeout,
        ),
        max_connections=_pick(
            env.parse("OTEL_EBPF_BPF_MAX_CONNECTIONS", lambda t: values.parse_int(t, *CONNECTIONS_RANGE)),
            node.integer("max_connections", *CONNECTIONS_RANGE),
            default=defaults.max_connections,
        ),
        max_inflight_requests=_pick(
            env.parse("OTEL_EBPF_BPF_MAX_INFLIGHT_REQUESTS", lambda t: values.parse_int(t, *INFLIGHT_RANGE)),
            node.integer("max_inflight_requests", *INFLIGHT_RANGE),
            default=defaults.max_inflight_requests,
        ),
    )


def _positive_duration(text: str) -> float:
    seconds = values.parse_duration(text)
    if seconds <= 0:
        raise ValueError("duration must be greater than 0s")
    return seconds


def _attributes(node: _Node, env: _Environment) -> AttributesConfig:
    kube = node.child("kubernetes")
    defaults = KubernetesConfig()
    select = node.child("select")
    selections = []
    for section in select.names():
        entry = select.child(section)
        selections.append(AttributeSelection(section, entry.strings("include") or (),
                                             entry.strings("exclude") or ()))
    return AttributesConfig(
        select=tuple(selections),
        kubernetes=KubernetesConfig(
            enable=_pick(
                env.parse("OTEL_EBPF_KUBE_METADATA_ENABLE", lambda t: _choice(t, KUBE_ENABLE, "value")),
                kube.parse("enable", lambda t: _choice(t, KUBE_ENABLE, "value")),
                default=defaults.enable,
            ),
            kubeconfig_path=_pick(env.get("KUBECONFIG"), kube.string("kubeconfig_path"), default=""),
            cluster_name=_pick(
                env.get("OTEL_EBPF_KUBE_CLUSTER_NAME"), kube.string("cluster_name"), default=""
            ),
            informers_sync_timeout=_pick(
                env.parse("OTEL_EBPF_KUBE_INFORMERS_SYNC_TIMEOUT", _positive_duration),
                kube.parse("informers_sync_timeout", _positive_duration),
                default=defaults.informers_sync_timeout,
            ),
            meta_restrict_local_node=_pick(
                env.parse("OTEL_EBPF_KUBE_META_RESTRICT_LOCAL_NODE", values.parse_bool),
                kube.boolean("meta_restrict_local_node"),
                default=defaults.meta_restrict_local_node,
            ),
        )
    )


__all__ = ["CONFIG_PATH_ENV", "ConfigError", "load_config"]
