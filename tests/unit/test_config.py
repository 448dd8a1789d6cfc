"""Configuration: defaults < YAML file < environment, OBI key names, one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obi.config import (
    DEFAULT_EXCLUDE_INSTRUMENT,
    Config,
    ConfigError,
    Glob,
    load_config,
    ports_contain,
)
from obi.config.model import HistogramBuckets
from obi.config.values import expand_env, parse_duration, parse_key_values, parse_port_ranges
from obi.ebpf.capture import DEFAULT_RING_BUFFER_SIZE
from obi.export.endpoints import OtlpSignal, resolve_otlp_target

GUIDE_YAML = """\
trace_printer: text
otel_traces_export:
  endpoint: http://otelcol:4317
  sampler:
    name: parentbased_traceidratio
    arg: "0.01"
routes:
  patterns:
    - /factorial/{num}
"""

GUIDE_TOKEN = "Z2hwX0l4Y29QOWhr....ScQo="


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "obi-config.yml"
    path.write_text(text)
    return str(path)


def load_yaml(tmp_path: Path, text: str, **env: str) -> Config:
    return load_config(write(tmp_path, text), env)


def yaml_error(tmp_path: Path, text: str, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_yaml(tmp_path, text, **env)
    message = str(info.value)
    assert "\n" not in message
    return message


def target(config: Config, signal: OtlpSignal) -> tuple[str, str] | None:
    """(protocol, endpoint) the exporters resolve for one signal of a loaded config."""
    export = config.otel_traces_export if signal == "traces" else config.otel_metrics_export
    resolved = resolve_otlp_target(export.endpoint, export.signal_endpoint, export.protocol, signal)
    return None if resolved is None else (resolved.protocol, resolved.endpoint)


def env_error(**env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, env)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the deployment guide's configurations -------------------------------------------


def test_guide_configmap_loads_through_config_path_variable(tmp_path: Path) -> None:
    path = write(tmp_path, GUIDE_YAML)
    config = load_config(None, {"OTEL_EBPF_CONFIG_PATH": path})

    assert config.config_path == path
    assert config.trace_printer == "text"
    assert config.effective_trace_printer == "text"
    traces = config.otel_traces_export
    assert traces.signal_endpoint == "http://otelcol:4317"
    assert traces.endpoint == ""
    assert target(config, "traces") == ("grpc", "otelcol:4317")
    assert traces.sampler.name == "parentbased_traceidratio"
    assert traces.sampler.arg == pytest.approx(0.01)
    assert traces.sampler.ratio == pytest.approx(0.01)
    assert config.routes.patterns == ("/factorial/{num}",)


def test_guide_sidecar_environment() -> None:
    config = load_config(
        None,
        {
            "OTEL_EBPF_OPEN_PORT": "8443",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otelcol:4318",
            "OTEL_EBPF_KUBE_METADATA_ENABLE": "true",
        },
    )
    assert config.open_port == ((8443, 8443),)
    assert config.attributes.kubernetes.enable == "true"
    for export in (config.otel_traces_export, config.otel_metrics_export):
        assert export.endpoint == "http://otelcol:4318"
        assert export.signal_endpoint == ""
    assert target(config, "traces") == ("http/protobuf", "http://otelcol:4318/v1/traces")
    assert target(config, "metrics") == ("http/protobuf", "http://otelcol:4318/v1/metrics")
    assert config.effective_trace_printer == "disabled"
    assert config.has_process_selection


def test_guide_auto_target_exe() -> None:
    config = load_config(None, {"OTEL_EBPF_AUTO_TARGET_EXE": "*/goblog"})
    assert config.auto_target_exe is not None
    assert config.auto_target_exe.matches("/usr/local/bin/goblog")
    assert not config.auto_target_exe.matches("/usr/local/bin/goblog2")


def test_guide_daemonset_printer_and_autodetect() -> None:
    config = load_config(
        None,
        {
            "OTEL_EBPF_TRACE_PRINTER": "text",
            "OTEL_EBPF_KUBE_METADATA_ENABLE": "autodetect",
            "KUBE_NAMESPACE": "obi-demo",
        },
    )
    assert config.effective_trace_printer == "text"
    assert config.attributes.kubernetes.enable == "autodetect"


def test_guide_secret_headers_parse_and_never_show() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer {GUIDE_TOKEN}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://otlp.example.com",
    }
    config = load_config(None, env)
    assert config.otel_traces_export.headers == (("Authorization", f"Bearer {GUIDE_TOKEN}"),)
    assert config.otel_metrics_export.headers == (("Authorization", f"Bearer {GUIDE_TOKEN}"),)
    assert GUIDE_TOKEN not in repr(config)
    assert GUIDE_TOKEN not in str(config)
    assert GUIDE_TOKEN not in repr(config.otel_traces_export)

    # A configuration error elsewhere must not leak it either.
    with pytest.raises(ConfigError) as info:
        load_config(None, {**env, "OTEL_EBPF_OPEN_PORT": "abc"})
    assert GUIDE_TOKEN not in str(info.value)
    # Nor a malformed header list.
    with pytest.raises(ConfigError) as info:
        load_config(None, {"OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer {GUIDE_TOKEN},oops"})
    assert GUIDE_TOKEN not in str(info.value)
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(info.value)


# --- defaults -------------------------------------------------------------------------


def test_defaults_without_file_or_environment() -> None:
    config = load_config(None, {})
    assert config == Config()
    assert config.log_level == "INFO"
    assert config.log_format == "text"
    assert config.trace_printer is None
    assert config.effective_trace_printer == "text"  # no exporter at all
    assert config.shutdown_timeout == 10.0
    assert config.otel_traces_export.sampler.name == "parentbased_always_on"
    assert config.otel_traces_export.max_queue_size == 4096
    assert config.otel_traces_export.max_queue_bytes == 16 << 20
    assert config.ebpf.record_queue_bytes == 64 << 20
    assert config.otel_traces_export.batch_timeout == 15.0
    assert config.otel_metrics_export.interval == 60.0
    assert config.otel_metrics_export.buckets.duration_histogram[:3] == (0, 0.005, 0.01)
    assert config.otel_metrics_export.buckets.duration_histogram[-1] == 10
    assert config.routes.unmatched == "heuristic"
    assert config.ebpf.syscall_hooks == "auto"
    assert config.ebpf.context_propagation == "disabled"  # OBI's default
    assert config.ebpf.ring_buffer_size == DEFAULT_RING_BUFFER_SIZE == 8 << 20
    assert config.ebpf.request_capture_bytes == 4096
    assert config.ebpf.response_capture_bytes == 512
    assert config.ebpf.http_request_timeout == 0.0  # OBI's default: never
    assert config.ebpf.response_idle_timeout == 1.0
    assert (config.ebpf.max_connections, config.ebpf.max_inflight_requests) == (65536, 2048)
    assert config.ebpf.pid_filter_max == 4096
    assert config.attributes.kubernetes.enable == "false"
    assert config.discovery.default_exclude_instrument == DEFAULT_EXCLUDE_INSTRUMENT
    assert not config.has_process_selection


def test_empty_file_is_fine(tmp_path: Path) -> None:
    assert load_yaml(tmp_path, "") == Config(config_path=str(tmp_path / "obi-config.yml"))
    assert load_yaml(tmp_path, "# only a comment\n").log_level == "INFO"


def test_default_exclusions_cover_obi_and_collectors() -> None:
    exe = DEFAULT_EXCLUDE_INSTRUMENT[0].exe_path
    assert exe is not None
    for path in ("/usr/bin/obi", "/beyla", "/bin/otelcol-contrib", "/otelcol-contrib-v2", "/bin/alloy"):
        assert exe.matches(path), path
    assert not exe.matches("/usr/sbin/nginx")
    assert not exe.matches("/opt/otelcol-contrib/bin/app")
    namespace = DEFAULT_EXCLUDE_INSTRUMENT[1].k8s_namespace
    assert namespace is not None
    assert namespace.matches("kube-system")
    assert not namespace.matches("default")


def test_default_exclusions_can_be_emptied_or_replaced(tmp_path: Path) -> None:
    emptied = load_yaml(tmp_path, "discovery:\n  default_exclude_instrument: []\n")
    assert emptied.discovery.default_exclude_instrument == ()
    blank = load_yaml(tmp_path, "discovery:\n  default_exclude_instrument: ''\n")
    assert blank.discovery.default_exclude_instrument == ()
    replaced = load_yaml(tmp_path, "discovery:\n  default_exclude_instrument:\n    - exe_path: '*me'\n")
    assert [s.exe_path for s in replaced.discovery.default_exclude_instrument] == [Glob("*me")]


# --- YAML and environment together ----------------------------------------------------


def test_environment_overrides_yaml_field_by_field(tmp_path: Path) -> None:
    config = load_yaml(
        tmp_path,
        "log_level: debug\nshutdown_timeout: 30s\notel_traces_export:\n"
        "  endpoint: http://a:4318\n  protocol: http/protobuf\n  max_queue_size: 10\n",
        OTEL_EBPF_LOG_LEVEL="warn",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://b:4317/custom",
    )
    assert config.log_level == "WARN"
    assert config.shutdown_timeout == 30.0
    traces = config.otel_traces_export
    assert traces.signal_endpoint == "http://b:4317/custom"
    assert traces.protocol == "http/protobuf"
    assert traces.max_queue_size == 10
    assert traces.max_queue_bytes == 16 << 20
    assert load_config(None, {"OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_BYTES": "1048576"}
                       ).otel_traces_export.max_queue_bytes == 1 << 20
    assert target(config, "traces") == ("http/protobuf", "http://b:4317/custom")


def test_protocol_precedence() -> None:
    config = load_config(
        None,
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
        },
    )
    assert config.otel_traces_export.protocol == "grpc"
    assert config.otel_metrics_export.protocol == "http/protobuf"


def test_signal_endpoint_beats_common_and_http_paths() -> None:
    config = load_config(
        None,
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/otlp/",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318",
        },
    )
    assert config.otel_traces_export.signal_endpoint == "http://traces:4318"
    # OBI: a signal endpoint without a path still posts to the signal path.
    assert target(config, "traces") == ("http/protobuf", "http://traces:4318/v1/traces")
    assert target(config, "metrics") == ("http/protobuf", "http://collector:4318/otlp/v1/metrics")


def test_headers_merge_signal_over_common_and_url_decode() -> None:
    config = load_config(
        None,
        {
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=one, x-tenant = a%20b ,Authorization=Basic x%3D,,"
            "x-list=x%3Dy%2Cz",
            # Base64 padding in a value survives: only the first '=' separates.
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "API-KEY=two,X-Basic=Basic dXNlcjpwYXNz==",
        },
    )
    assert dict(config.otel_traces_export.headers) == {
        "API-KEY": "two",
        "x-tenant": "a b",
        "Authorization": "Basic x=",
        "x-list": "x=y,z",
        "X-Basic": "Basic dXNlcjpwYXNz==",
    }
    assert dict(config.otel_metrics_export.headers)["api-key"] == "one"


def test_timeouts_in_milliseconds() -> None:
    config = load_config(
        None, {"OTEL_EXPORTER_OTLP_TIMEOUT": "2500", "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "500"}
    )
    assert config.otel_traces_export.timeout == 2.5
    assert config.otel_metrics_export.timeout == 0.5


def test_metrics_interval_precedence(tmp_path: Path) -> None:
    assert load_config(None, {"OTEL_METRIC_EXPORT_INTERVAL": "5000"}).otel_metrics_export.interval == 5.0
    both = load_yaml(tmp_path, "otel_metrics_export:\n  interval: 10s\n", OTEL_METRIC_EXPORT_INTERVAL="5000")
    assert both.otel_metrics_export.interval == 10.0
    obi_env = load_yaml(
        tmp_path,
        "otel_metrics_export:\n  interval: 10s\n",
        OTEL_EBPF_METRICS_INTERVAL="1m30s",
        OTEL_METRIC_EXPORT_INTERVAL="5000",
    )
    assert obi_env.otel_metrics_export.interval == 90.0


def test_metrics_cardinality_limit(tmp_path: Path) -> None:
    assert load_config(None, {}).otel_metrics_export.cardinality_limit == 2000
    yaml = load_yaml(tmp_path, "otel_metrics_export:\n  cardinality_limit: 500\n")
    assert yaml.otel_metrics_export.cardinality_limit == 500
    both = load_yaml(tmp_path, "otel_metrics_export:\n  cardinality_limit: 500\n",
                     OTEL_EBPF_METRICS_CARDINALITY_LIMIT="100")
    assert both.otel_metrics_export.cardinality_limit == 100
    with pytest.raises(ConfigError, match="OTEL_EBPF_METRICS_CARDINALITY_LIMIT"):
        load_config(None, {"OTEL_EBPF_METRICS_CARDINALITY_LIMIT": "1"})


def test_sampler_from_environment() -> None:
    config = load_config(None, {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert config.otel_traces_export.sampler.name == "traceidratio"
    assert config.otel_traces_export.sampler.ratio == 0.25
    # The argument only matters to ratio samplers.
    always = load_config(None, {"OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER_ARG": "x"})
    assert always.otel_traces_export.sampler.arg is None
    numeric = load_config(None, {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"})
    assert numeric.otel_traces_export.sampler.ratio == 1.0


def test_yaml_sampler_arg_may_be_a_number(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, "otel_traces_export:\n  sampler: {name: traceidratio, arg: 0.5}\n")
    assert config.otel_traces_export.sampler.ratio == 0.5


def test_discovery_selectors(tmp_path: Path) -> None:
    config = load_yaml(
        tmp_path,
        """\
discovery:
  instrument:
    - open_ports: 80,443,8000-8999
      name: web
      namespace: shop
    - open_ports: 8080
    - exe_path: "*/{nginx,redis-server}"
    - k8s_namespace: frontend
      k8s_pod_labels:
        instrument: obi
      k8s_pod_annotations:
        obi.instrument: "true"
  exclude_instrument:
    - exe_path: "*prometheus*"
""",
    )
    web, port, exe, kube = config.discovery.instrument
    assert web.open_ports == ((80, 80), (443, 443), (8000, 8999))
    assert (web.name, web.namespace) == ("web", "shop")
    assert ports_contain(web.open_ports, 8500) and not ports_contain(web.open_ports, 9000)
    assert port.open_ports == ((8080, 8080),)
    assert exe.exe_path is not None and exe.exe_path.matches("/usr/sbin/redis-server")
    assert kube.has_kubernetes_criteria
    assert kube.k8s_pod_labels == (("instrument", Glob("obi")),)
    assert kube.k8s_pod_annotations == (("obi.instrument", Glob("true")),)
    assert config.discovery.exclude_instrument[0].exe_path == Glob("*prometheus*")


def test_top_level_shortcuts(tmp_path: Path) -> None:
    config = load_yaml(
        tmp_path,
        "open_port: 8000-8010\ntarget_pids: [12, 34]\nexecutable_path: 'api$'\nservice_name: shop\n",
    )
    assert config.open_port == ((8000, 8010),)
    assert config.target_pids == (12, 34)
    assert config.executable_path is not None and config.executable_path.matches("/srv/api")
    assert config.service_name == "shop"
    env = load_config(None, {"OTEL_EBPF_TARGET_PID": "7, 8", "OTEL_SERVICE_NAME": "svc"})
    assert env.target_pids == (7, 8)
    assert env.service_name == "svc"
    assert load_config(None, {"OTEL_GO_AUTO_TARGET_EXE": "*x"}).auto_target_exe == Glob("*x")


def test_resource_attributes_for_instrumented_processes() -> None:
    config = load_config(None, {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=a%2Cb"})
    assert config.resource_attributes == (("deployment.environment", "prod"), ("team", "a,b"))


def test_routes_and_ebpf_and_kubernetes(tmp_path: Path) -> None:
    config = load_yaml(
        tmp_path,
        """\
routes:
  patterns: ["/user/{id}"]
  ignored_patterns: [/health]
  ignore_mode: traces
  unmatched: path
  wildcard_char: "#"
ebpf:
  wakeup_len: 100
  track_request_headers: true
  http_request_timeout: 30s
  syscall_hooks: raw_tracepoint
  ring_buffer_size: 1048576
  record_queue_bytes: 2097152
  request_capture_bytes: 1024
  response_capture_bytes: 128
  pid_filter_max: 100
  response_idle_timeout: 250ms
  max_connections: 1000
  max_inflight_requests: 64
attributes:
  kubernetes:
    enable: true
    kubeconfig_path: /k
    cluster_name: c1
    informers_sync_timeout: 1m
    meta_restrict_local_node: true
""",
        OTEL_EBPF_BPF_SYSCALL_HOOKS="tracepoint",
    )
    assert config.routes.ignore_mode == "traces"
    assert config.routes.unmatched == "path"
    assert config.routes.wildcard_char == "#"
    ebpf = config.ebpf
    assert (ebpf.wakeup_len, ebpf.track_request_headers, ebpf.http_request_timeout) == (100, True, 30.0)
    assert ebpf.syscall_hooks == "tracepoint"
    assert (ebpf.ring_buffer_size, ebpf.request_capture_bytes, ebpf.response_capture_bytes) == (
        1048576,
        1024,
        128,
    )
    assert (ebpf.response_idle_timeout, ebpf.max_connections, ebpf.max_inflight_requests) == (0.25, 1000, 64)
    assert ebpf.record_queue_bytes == 2097152
    kube = config.attributes.kubernetes
    assert (kube.enable, kube.kubeconfig_path, kube.cluster_name) == ("true", "/k", "c1")
    assert kube.informers_sync_timeout == 60.0 and kube.meta_restrict_local_node
    assert not config.prometheus_export.enabled


@pytest.mark.parametrize("value", ["disabled", "headers", "tcp", "all", "ip", "HEADERS"])
def test_context_propagation_takes_obis_values(tmp_path: Path, value: str) -> None:
    config = load_yaml(tmp_path, f"ebpf:\n  context_propagation: {value}\n")
    assert config.ebpf.context_propagation == value.lower()
    env = load_yaml(tmp_path, "ebpf:\n  context_propagation: disabled\n",
                    OTEL_EBPF_BPF_CONTEXT_PROPAGATION=value)
    assert env.ebpf.context_propagation == value.lower()


def test_an_unknown_context_propagation_says_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'context_propagation: unknown context propagation "sometimes" '
                                          r"\(accepted: disabled, headers, tcp, all, ip\)"):
        load_yaml(tmp_path, "ebpf:\n  context_propagation: sometimes\n")


def test_prometheus_export_takes_obis_keys_and_variables(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, """
prometheus_export:
  port: 9400
  path: /m
  ttl: 30s
  buckets:
    duration_histogram: [0.1, 1]
  extra_resource_attributes: [host_name, deployment.environment]
  disable_build_info: true
  features: [application]
  instrumentations: ["*"]
  allow_service_graph_self_references: false
  service_cache_size: 100
""")
    prometheus = config.prometheus_export
    assert prometheus.enabled and (prometheus.port, prometheus.path, prometheus.ttl) == (9400, "/m", 30.0)
    assert prometheus.buckets.duration_histogram == (0.1, 1.0)
    assert prometheus.extra_resource_attributes == ("host_name", "deployment.environment")
    assert prometheus.disable_build_info and prometheus.features == ("application",)
    assert prometheus.buckets.request_size_histogram == HistogramBuckets().request_size_histogram
    env = load_config(None, {"OTEL_EBPF_PROMETHEUS_PORT": "9401", "OTEL_EBPF_PROMETHEUS_PATH": "/x",
                             "OTEL_EBPF_PROMETHEUS_TTL": "2m",
                             "OTEL_EBPF_PROMETHEUS_DISABLE_BUILD_INFO": "true",
                             "OTEL_EBPF_PROMETHEUS_EXTRA_RESOURCE_ATTRIBUTES": "a, b"}).prometheus_export
    assert (env.port, env.path, env.ttl, env.disable_build_info) == (9401, "/x", 120.0, True)
    assert env.extra_resource_attributes == ("a", "b")
    defaults = load_config(None, {"OTEL_EBPF_PROMETHEUS_PORT": "9402"}).prometheus_export
    assert (defaults.path, defaults.ttl, defaults.disable_build_info) == ("/metrics", 300.0, False)
    assert not load_yaml(tmp_path, "prometheus_export:\n  path: /m\n").prometheus_export.enabled
    assert "must start with /" in yaml_error(tmp_path, "prometheus_export:\n  port: 1\n  path: m\n")
    assert "ttl: must be positive" in yaml_error(tmp_path, "prometheus_export:\n  port: 1\n  ttl: 0s\n")
    assert "above the maximum 65535" in env_error(OTEL_EBPF_PROMETHEUS_PORT="70000")
    assert "unknown key" in yaml_error(tmp_path, "prometheus_export:\n  port: 1\n  colour: red\n")


def test_explicit_empty_unmatched_means_wildcard(tmp_path: Path) -> None:
    assert load_yaml(tmp_path, "routes:\n  unmatched: ''\n").routes.unmatched == "wildcard"


def test_booleans_accept_go_spellings(tmp_path: Path) -> None:
    for spelling, expected in (("TRUE", True), ("True", True), ("1", True), ("f", False), ("False", False)):
        config = load_config(None, {"OTEL_EBPF_ENFORCE_SYS_CAPS": spelling})
        assert config.enforce_sys_caps is expected
    assert load_yaml(tmp_path, "enforce_sys_caps: 'true'\n").enforce_sys_caps


def test_empty_environment_value_counts_as_unset(tmp_path: Path) -> None:
    config = load_yaml(tmp_path, "log_level: ERROR\n", OTEL_EBPF_LOG_LEVEL="")
    assert config.log_level == "ERROR"


def test_env_expansion_in_yaml(tmp_path: Path) -> None:
    config = load_yaml(
        tmp_path,
        "otel_traces_export:\n  endpoint: ${COLLECTOR:-http://fallback:4318}\n"
        "attributes:\n  kubernetes:\n    cluster_name: ${CLUSTER}\n",
        CLUSTER="prod-1",
    )
    assert config.otel_traces_export.signal_endpoint == "http://fallback:4318"
    assert config.attributes.kubernetes.cluster_name == "prod-1"


def test_expand_env_forms() -> None:
    env = {"A": "x", "EMPTY": ""}
    assert expand_env("${A} $(A) ${env:A} ${B:-d} ${EMPTY:-e} ${B}.", env) == "x x x d e ."
    assert expand_env("$${A} ^/srv/api$", env) == "${A} ^/srv/api$"


# --- errors ---------------------------------------------------------------------------


def test_unknown_keys_name_the_dotted_path_and_file(tmp_path: Path) -> None:
    path = str(tmp_path / "obi-config.yml")
    assert (
        yaml_error(tmp_path, "tracer_printer: text\n") == f"config file {path}: tracer_printer: unknown key"
    )
    assert (
        yaml_error(tmp_path, "otel_traces_export:\n  sampler:\n    nme: x\n")
        == f"config file {path}: otel_traces_export.sampler.nme: unknown key"
    )
    assert "discovery.instrument[1].ports: unknown key" in yaml_error(
        tmp_path, "discovery:\n  instrument:\n    - open_ports: 80\n    - ports: 80\n"
    )
    assert "attributes.kubernetes.enabled: unknown key" in yaml_error(
        tmp_path, "attributes:\n  kubernetes:\n    enabled: true\n"
    )


def test_unknown_sampler_lists_accepted(tmp_path: Path) -> None:
    path = str(tmp_path / "obi-config.yml")
    assert yaml_error(tmp_path, "otel_traces_export:\n  sampler:\n    name: foo\n") == (
        f'config file {path}: otel_traces_export.sampler.name: unknown sampler "foo" (accepted: '
        "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, "
        "parentbased_traceidratio)"
    )


@pytest.mark.parametrize("arg", ["1.5", "-0.1", "abc", "nan"])
def test_bad_ratio_sampler_argument(tmp_path: Path, arg: str) -> None:
    message = yaml_error(
        tmp_path, f"otel_traces_export:\n  sampler:\n    name: traceidratio\n    arg: '{arg}'\n"
    )
    assert "otel_traces_export.sampler.arg:" in message
    message = env_error(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG=arg)
    assert message.startswith("environment variable OTEL_TRACES_SAMPLER_ARG: ")


@pytest.mark.parametrize("ports", ["90-80", "70000", "abc", "0", "80,,81", "1-2-3"])
def test_bad_port_ranges(tmp_path: Path, ports: str) -> None:
    assert env_error(OTEL_EBPF_OPEN_PORT=ports).startswith("environment variable OTEL_EBPF_OPEN_PORT: ")
    message = yaml_error(tmp_path, f"discovery:\n  instrument:\n    - open_ports: '{ports}'\n")
    assert "discovery.instrument[0].open_ports: " in message


def test_bad_port_range_message() -> None:
    assert (
        env_error(OTEL_EBPF_OPEN_PORT="90-80")
        == 'environment variable OTEL_EBPF_OPEN_PORT: bad port range "90-80"'
    )


@pytest.mark.parametrize("glob", ["/bin/[abc", "*{a,b", "x\\", "[]"])
def test_bad_globs(tmp_path: Path, glob: str) -> None:
    assert "bad glob" in env_error(OTEL_EBPF_AUTO_TARGET_EXE=glob)
    message = yaml_error(tmp_path, f"discovery:\n  exclude_instrument:\n    - exe_path: '{glob}'\n")
    assert "discovery.exclude_instrument[0].exe_path: bad glob" in message


def test_bad_label_glob(tmp_path: Path) -> None:
    message = yaml_error(tmp_path, "discovery:\n  instrument:\n    - k8s_pod_labels:\n        app: '[x'\n")
    assert "discovery.instrument[0].k8s_pod_labels.app: bad glob" in message


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("otelcol:4317", "scheme"),
        ("ftp://otelcol:4317", "scheme"),
        ("http://:4317", "missing host"),
        ("http://otelcol:99999", "invalid port"),
        ("http://otelcol:abc", "invalid port"),
        ("http://[::1", "invalid host"),
    ],
)
def test_bad_endpoints(tmp_path: Path, url: str, why: str) -> None:
    message = yaml_error(tmp_path, f"otel_metrics_export:\n  endpoint: '{url}'\n")
    assert "otel_metrics_export.endpoint: bad URL" in message and why in message
    message = env_error(OTEL_EXPORTER_OTLP_ENDPOINT=url)
    assert message.startswith("environment variable OTEL_EXPORTER_OTLP_ENDPOINT: bad URL")


def test_http_json_is_refused_naming_the_setting(tmp_path: Path) -> None:
    unsupported = 'protocol "http/json" is not supported by obi yet (use grpc or http/protobuf)'
    assert env_error(OTEL_EXPORTER_OTLP_PROTOCOL="http/json") == (
        f"environment variable OTEL_EXPORTER_OTLP_PROTOCOL: {unsupported}"
    )
    assert env_error(OTEL_EXPORTER_OTLP_METRICS_PROTOCOL="HTTP/JSON").startswith(
        'environment variable OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: protocol "HTTP/JSON" is not supported'
    )
    message = yaml_error(tmp_path, "otel_traces_export:\n  protocol: http/json\n")
    assert message.endswith(f"otel_traces_export.protocol: {unsupported}")


def test_endpoint_errors_hide_user_info() -> None:
    message = env_error(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="ftp://user:s3cret@otelcol:4317")
    assert "s3cret" not in message and '"ftp://otelcol:4317"' in message


_ENDPOINTS = st.sampled_from(
    ["", "http://c:4317", "https://c:4318/base/", "http://[::1]:9", "ftp://c", "c:4317", "http://c:0",
     "http://:1", "http://c:x", "http://[::1", "http://u:p@c", " http://c/ "]
)  # fmt: skip
_PROTOCOLS = st.sampled_from(["", "grpc", "GRPC", "http/protobuf", "http/json", "http", " grpc "])


@given(common=_ENDPOINTS, traces=_ENDPOINTS, protocol=_PROTOCOLS)
def test_every_accepted_config_resolves(common: str, traces: str, protocol: str) -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": common,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
    }
    try:
        config = load_config(None, environ)
    except ConfigError:
        return
    # Whatever the loader accepts, the exporters can resolve without OtlpEndpointError.
    for signal in ("traces", "metrics"):
        export = config.otel_traces_export if signal == "traces" else config.otel_metrics_export
        assert (target(config, signal) is None) == (not export.enabled)


@pytest.mark.parametrize("duration", ["5", "fast", "-1s", "1x", "s"])
def test_bad_durations(tmp_path: Path, duration: str) -> None:
    message = yaml_error(tmp_path, f"shutdown_timeout: '{duration}'\n")
    assert "shutdown_timeout: " in message and "duration" in message
    assert env_error(OTEL_EBPF_SHUTDOWN_TIMEOUT=duration).startswith(
        "environment variable OTEL_EBPF_SHUTDOWN_TIMEOUT: "
    )


def test_wrong_types(tmp_path: Path) -> None:
    assert "routes.patterns: expected a list" in yaml_error(tmp_path, "routes:\n  patterns: /a\n")
    assert "discovery.instrument: expected a list" in yaml_error(
        tmp_path, "discovery:\n  instrument:\n    open_ports: 80\n"
    )
    assert "ebpf: expected a mapping" in yaml_error(tmp_path, "ebpf: [1]\n")
    assert "ebpf.wakeup_len: expected an integer" in yaml_error(tmp_path, "ebpf:\n  wakeup_len: 1.5\n")
    assert "log_level: expected a single value" in yaml_error(tmp_path, "log_level: [INFO]\n")
    assert "expected a mapping of keys at the top level" in yaml_error(tmp_path, "- a\n- b\n")


def test_bad_values(tmp_path: Path) -> None:
    assert 'log_level: unknown log level "LOUD"' in yaml_error(tmp_path, "log_level: LOUD\n")
    assert "trace_printer: unknown trace printer" in yaml_error(tmp_path, "trace_printer: xml\n")
    assert "protocol" in env_error(OTEL_EXPORTER_OTLP_PROTOCOL="http")
    assert "enforce_sys_caps: bad boolean" in yaml_error(tmp_path, "enforce_sys_caps: maybe\n")
    assert "not a power of two" in env_error(OTEL_EBPF_BPF_RING_BUFFER_SIZE="100000")
    assert "below the minimum 65536" in env_error(OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_BYTES="1000")
    assert "below the minimum 65536" in env_error(OTEL_EBPF_BPF_RECORD_QUEUE_BYTES="1")
    assert "max_queue_bytes" in yaml_error(tmp_path, "otel_traces_export:\n  max_queue_bytes: lots\n")
    assert "above the maximum 4096" in yaml_error(tmp_path, "ebpf:\n  request_capture_bytes: 8192\n")
    assert "above the maximum 1024" in env_error(OTEL_EBPF_BPF_RESPONSE_CAPTURE_BYTES="2048")
    assert "below the minimum 16" in env_error(OTEL_EBPF_BPF_MAX_INFLIGHT_REQUESTS="4")
    assert "response_idle_timeout" in yaml_error(tmp_path, "ebpf:\n  response_idle_timeout: soon\n")
    assert "wildcard_char: must be a single character" in yaml_error(
        tmp_path, "routes:\n  wildcard_char: ab\n"
    )
    assert "increasing order" in yaml_error(
        tmp_path, "otel_metrics_export:\n  buckets:\n    duration_histogram: [1, 0.5]\n"
    )
    assert "unknown metrics feature" in yaml_error(tmp_path, "otel_metrics_export:\n  features: [apps]\n")
    assert "bad process id" in env_error(OTEL_EBPF_TARGET_PID="12,x")
    assert "greater than 0s" in env_error(OTEL_EBPF_KUBE_INFORMERS_SYNC_TIMEOUT="0")
    assert "no selection criteria" in yaml_error(tmp_path, "discovery:\n  instrument:\n    - name: x\n")
    assert "must start with /" in yaml_error(tmp_path, "routes:\n  patterns: ['user/{id}']\n")


def test_invalid_yaml_and_unreadable_file(tmp_path: Path) -> None:
    path = str(tmp_path / "obi-config.yml")
    message = yaml_error(tmp_path, "routes:\n  patterns: [/a\n")
    assert message.startswith(f"config file {path}: invalid YAML at line ")
    missing = str(tmp_path / "missing.yml")
    with pytest.raises(ConfigError, match=f"^config file {missing}: cannot read: "):
        load_config(missing, {})
    if os.geteuid() != 0:  # root reads anything
        unreadable = tmp_path / "secret.yml"
        unreadable.write_text("log_level: INFO\n")
        unreadable.chmod(0)
        with pytest.raises(ConfigError, match="cannot read"):
            load_config(str(unreadable), {})


def test_explicit_path_wins_over_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "log_level: DEBUG\n")
    config = load_config(path, {"OTEL_EBPF_CONFIG_PATH": str(tmp_path / "nope.yml")})
    assert config.log_level == "DEBUG"


# --- value parsers --------------------------------------------------------------------


def test_parse_duration_go_forms() -> None:
    assert parse_duration("0") == 0.0
    assert parse_duration("100ms") == pytest.approx(0.1)
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("1.5h") == 5400.0
    assert parse_duration("250us") == pytest.approx(0.00025)
    assert parse_duration("10ns") == pytest.approx(1e-8)


def test_parse_port_ranges_and_key_values() -> None:
    assert parse_port_ranges(" 80 , 8000-8001") == ((80, 80), (8000, 8001))
    assert parse_port_ranges("80, 443,8000-8999") == ((80, 80), (443, 443), (8000, 8999))
    assert parse_key_values("a=b=c, ,d=", "header") == (("a", "b=c"), ("d", ""))
    with pytest.raises(ValueError, match="entry 1 is not key=value"):
        parse_key_values("=v", "header")
    with pytest.raises(ValueError, match="entry 2 is not key=value"):
        parse_key_values("a=1,secret", "header")
    # Another process's environment: what is malformed is skipped.
    assert parse_key_values(" a = 1 , b=x%3Dy%2Cz ,, bad, =novalue", "attribute", skip_malformed=True) == (
        ("a", "1"), ("b", "x=y,z"))


@pytest.mark.parametrize("text", ["", "80,,81", "http", "0", "70000", "9000-8000", "1-2-3", "80-"])
def test_parse_port_ranges_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="port"):
        parse_port_ranges(text)


def test_port_range_bounds_are_inclusive() -> None:
    ranges = ((80, 80), (8000, 8999))
    assert ports_contain(ranges, 80)
    assert ports_contain(ranges, 8000)
    assert ports_contain(ranges, 8999)
    assert not ports_contain(ranges, 81)
    assert not ports_contain(ranges, 9000)
    assert not ports_contain((), 80)


def test_glob_syntax() -> None:
    assert Glob("*").matches("/any/thing")
    assert Glob("/bin/?s").matches("/bin/ls")
    assert Glob("[a-c]x").matches("bx") and not Glob("[a-c]x").matches("dx")
    assert Glob("[!a]x").matches("bx") and not Glob("[!a]x").matches("ax")
    assert Glob("{a,{b,c}}d").matches("cd")
    assert Glob("a\\*b").matches("a*b") and not Glob("a\\*b").matches("axb")
    assert Glob("a.b").matches("a.b") and not Glob("a.b").matches("axb")


@given(st.text(max_size=40))
def test_glob_compiles_or_says_why(pattern: str) -> None:
    try:
        glob = Glob(pattern)
    except ValueError as err:
        assert str(err).startswith("bad glob")
    else:
        glob.matches("/usr/bin/some-thing")


@given(st.text(max_size=40))
def test_port_ranges_parse_or_say_why(text: str) -> None:
    try:
        ranges = parse_port_ranges(text)
    except ValueError as err:
        assert "\n" not in str(err)
    else:
        assert all(1 <= low <= high <= 65535 for low, high in ranges)


@given(st.text(max_size=60))
def test_expand_env_never_fails(text: str) -> None:
    assert isinstance(expand_env(text, {"A": "x"}), str)


def test_internal_metrics_exporter(tmp_path: Path) -> None:
    assert load_config(None, {}).internal_metrics.exporter == "disabled"
    config = load_yaml(tmp_path, "internal_metrics:\n  exporter: otel\n"
                                 "otel_metrics_export:\n  endpoint: http://c:4318\n")
    assert config.internal_metrics.exporter == "otel"
    env = {"OTEL_EBPF_INTERNAL_METRICS_EXPORTER": "otel", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    assert load_config(None, env).internal_metrics.exporter == "otel"
    with pytest.raises(ConfigError, match=r"internal_metrics\.exporter: otel needs an OTLP metrics endpoint"):
        load_config(None, {"OTEL_EBPF_INTERNAL_METRICS_EXPORTER": "otel"})
    yaml_text = "internal_metrics:\n  exporter: prometheus\n  prometheus:\n    port: 6060\n"
    internal = load_yaml(tmp_path, yaml_text).internal_metrics
    assert (internal.exporter, internal.prometheus_port, internal.prometheus_path) == (
        "prometheus", 6060, "/internal/metrics")
    internal = load_config(None, {"OTEL_EBPF_INTERNAL_METRICS_EXPORTER": "prometheus",
                                  "OTEL_EBPF_INTERNAL_METRICS_PROMETHEUS_PORT": "6061",
                                  "OTEL_EBPF_INTERNAL_METRICS_PROMETHEUS_PATH": "/obi"}).internal_metrics
    assert (internal.prometheus_port, internal.prometheus_path) == (6061, "/obi")
    assert internal.bpf_metric_scrape_interval == 15.0
    assert load_config(None, {"OTEL_EBPF_BPF_METRIC_SCRAPE_INTERVAL": "30s"}
                       ).internal_metrics.bpf_metric_scrape_interval == 30.0
    with pytest.raises(ConfigError, match=r"internal_metrics\.exporter: prometheus needs internal_metrics"):
        load_yaml(tmp_path, "internal_metrics:\n  exporter: prometheus\n")
    with pytest.raises(ConfigError, match=r"internal_metrics\.exporter: otel cannot be combined"):
        load_yaml(tmp_path, "internal_metrics:\n  exporter: otel\n  prometheus:\n    port: 6060\n"
                            "otel_metrics_export:\n  endpoint: http://c:4318\n")
    with pytest.raises(ConfigError, match="OTEL_EBPF_INTERNAL_METRICS_EXPORTER: unknown exporter"):
        load_config(None, {"OTEL_EBPF_INTERNAL_METRICS_EXPORTER": "statsd"})


def test_attribute_selection_turns_on_query_text_as_obi(tmp_path: Path) -> None:
    assert not load_config(None, {}).attributes.trace_attribute_selected("db.query.text")
    config = load_yaml(tmp_path, """\
attributes:
  select:
    traces:
      include: ["db.*"]
      exclude: ["db.statement"]
    http_server_request_duration:
      include: ["k8s.app.version"]
""")
    assert config.attributes.trace_attribute_selected("db.query.text")
    assert not config.attributes.trace_attribute_selected("db.statement")
    excluded = load_yaml(tmp_path, "attributes:\n  select:\n    traces:\n      include: ['*']\n"
                                   "      exclude: ['db.query.*']\n")
    assert not excluded.attributes.trace_attribute_selected("db.query.text")
    assert "attributes.select.traces.inclde: unknown key" in yaml_error(
        tmp_path, "attributes:\n  select:\n    traces:\n      inclde: ['db.*']\n")
    assert "attributes.select.traces: expected a mapping" in yaml_error(
        tmp_path, "attributes:\n  select:\n    traces: db.query.text\n")
