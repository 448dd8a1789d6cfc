"""deploy/kubernetes: every manifest is valid Kubernetes (strict schemas), and every
obi container in it starts from a configuration obi's own loader accepts, with
the values the guide intends.

A container's environment is resolved as the kubelet would: literal values, the
downward API, secretKeyRef from the Secret in the same file, and the ConfigMap
mounted where OTEL_EBPF_CONFIG_PATH points.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

import obi
from obi.config import Config, load_config
from obi.config.values import parse_port_ranges
from obi.discovery.selection import selection_from_config
from obi.export.endpoints import resolve_otlp_target
from obi.export.printer import TracePrinterMode

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
IMAGE = "ghcr.io/obi-project/obi:0.1.0"
KUBERNETES_VERSION = "1.34.0"
UNPRIVILEGED_CAPABILITIES = ["BPF", "SYS_PTRACE", "NET_RAW", "CHECKPOINT_RESTORE", "DAC_READ_SEARCH",
                             "PERFMON"]
# What the downward API would give the pods here.
DOWNWARD_API = {"spec.nodeName": "node-1", "metadata.namespace": "obi-demo"}
GUIDE_RULES = [
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["pods", "services", "nodes"], "verbs": ["list", "watch"]},
]

Document = dict[str, Any]


def documents(name: str) -> list[Document]:
    with (MANIFESTS / name).open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def all_documents() -> Iterator[tuple[str, int, Document]]:
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for index, doc in enumerate(documents(path.name)):
            yield path.name, index, doc


def find(docs: list[Document], kind: str, name: str | None = None) -> Document:
    (found,) = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return found


def pod_spec(workload: Document) -> Document:
    spec: Document = workload["spec"]["template"]["spec"]
    return spec


def obi_container(workload: Document) -> Document:
    containers: list[Document] = pod_spec(workload)["containers"]
    (container,) = [c for c in containers if c["image"] == IMAGE]
    return container


def resolve_env(container: Document, workload: Document, docs: list[Document],
                config_dir: Path) -> dict[str, str]:
    """The container's environment as the kubelet would build it; a mounted ConfigMap
    file named by OTEL_EBPF_CONFIG_PATH is written under config_dir and pointed to."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = var["value"]
        elif "fieldRef" in source:
            env[var["name"]] = DOWNWARD_API[source["fieldRef"]["fieldPath"]]
        else:
            ref = source["secretKeyRef"]
            env[var["name"]] = find(docs, "Secret", ref["name"])["stringData"][ref["key"]]
    if "OTEL_EBPF_CONFIG_PATH" in env:
        path = PurePosixPath(env["OTEL_EBPF_CONFIG_PATH"])
        (mount,) = [m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == path.parent]
        (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"]]
        config_map = find(docs, "ConfigMap", volume["configMap"]["name"])
        local = config_dir / path.name
        local.write_text(config_map["data"][path.name])
        env["OTEL_EBPF_CONFIG_PATH"] = str(local)
    return env


def obi_workloads() -> Iterator[tuple[str, Document, list[Document]]]:
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs = documents(path.name)
        for doc in docs:
            if doc["kind"] in ("Deployment", "DaemonSet"):
                yield path.name, doc, docs


def manifest_config(name: str, tmp_path: Path) -> tuple[Config, dict[str, str]]:
    docs = documents(name)
    (workload,) = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    env = resolve_env(obi_container(workload), workload, docs, tmp_path)
    return load_config(None, env), env


# --- every document is valid Kubernetes


def test_one_file_per_mode_of_the_guide_and_the_prometheus_example() -> None:
    assert sorted(p.name for p in MANIFESTS.glob("*.yaml")) == [
        "configmap-daemonset.yaml", "daemonset-prometheus.yaml", "daemonset-unprivileged.yaml",
        "daemonset.yaml", "rbac.yaml", "secret.yaml", "sidecar.yaml",
    ]


@pytest.mark.parametrize(("name", "index", "doc"), list(all_documents()),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_document_validates_against_the_kubernetes_schemas(name: str, index: int,
                                                                  doc: Document) -> None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        pytest.fail(f"{name} document {index} ({doc.get('kind')}): {str(err).splitlines()[0]}")


def test_strict_validation_catches_a_misspelt_field() -> None:
    workload = copy.deepcopy(find(documents("daemonset-unprivileged.yaml"), "DaemonSet"))
    security = obi_container(workload)["securityContext"]
    security["capabilites"] = security.pop("capabilities")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(workload, KUBERNETES_VERSION, strict=True)


def test_every_obi_container_uses_our_image() -> None:
    for name, workload, _ in obi_workloads():
        for container in pod_spec(workload)["containers"]:
            assert container["image"] == IMAGE or container["name"] == "goblog", (name, container["name"])


# --- obi accepts every configuration the manifests give it


def test_every_obi_container_starts_with_a_valid_configuration(tmp_path: Path) -> None:
    for name, workload, docs in obi_workloads():
        env = resolve_env(obi_container(workload), workload, docs, tmp_path)
        config = load_config(None, env)
        # With no criteria (the guide's ConfigMap and unprivileged examples) obi
        # instruments every process listening on a TCP port.
        selection = selection_from_config(config)
        assert selection.include or selection.any_listener, f"{name}: obi would instrument nothing"
        assert pod_spec(workload)["serviceAccountName"] == "obi", name


def _lands(var: str, value: str, config: Config) -> bool:
    """Whether `value` of environment variable `var` reached the configuration model."""
    checks = {
        "OTEL_EBPF_OPEN_PORT": lambda: config.open_port == parse_port_ranges(value),
        "OTEL_EXPORTER_OTLP_ENDPOINT": lambda: config.otel_traces_export.endpoint == value
        and config.otel_metrics_export.endpoint == value,
        "OTEL_EBPF_KUBE_METADATA_ENABLE": lambda: config.attributes.kubernetes.enable == value,
        "OTEL_EBPF_AUTO_TARGET_EXE": lambda: config.auto_target_exe is not None
        and config.auto_target_exe.pattern == value,
        "OTEL_EBPF_TRACE_PRINTER": lambda: config.trace_printer == TracePrinterMode(value),
        "OTEL_EBPF_CONFIG_PATH": lambda: config.config_path == value,
        "OTEL_EXPORTER_OTLP_HEADERS": lambda: config.otel_traces_export.headers
        == tuple(tuple(kv.split("=", 1)) for kv in value.split(",")),
        "OTEL_EBPF_PROMETHEUS_PORT": lambda: config.prometheus_export.port == int(value),
        "OTEL_EBPF_INTERNAL_METRICS_EXPORTER": lambda: config.internal_metrics.exporter == value,
        "OTEL_EBPF_INTERNAL_METRICS_PROMETHEUS_PORT": lambda: config.internal_metrics.prometheus_port
        == int(value),
    }
    return checks[var]()


# What a variable needs beside it to be valid alone.
COMPANIONS = {"OTEL_EBPF_INTERNAL_METRICS_EXPORTER": {"OTEL_EBPF_INTERNAL_METRICS_PROMETHEUS_PORT": "9400"}}


# Read by the agent itself (not the configuration model): the downward API values.
AGENT_ENVIRONMENT = ("NODE_NAME", "KUBE_NAMESPACE")


def test_every_environment_variable_of_the_manifests_is_one_obi_reads(tmp_path: Path) -> None:
    obi_sources = "\n".join(p.read_text() for p in Path(obi.__file__).parent.rglob("*.py"))
    seen: set[str] = set()
    for name, workload, docs in obi_workloads():
        env = resolve_env(obi_container(workload), workload, docs, tmp_path)
        for var, value in env.items():
            seen.add(var)
            if var in AGENT_ENVIRONMENT:
                assert f'"{var}"' in obi_sources, f"{name}: obi does not read {var}"
                continue
            # Alone, each variable must be accepted and change the model as intended.
            alone = {var: value, **COMPANIONS.get(var, {})}
            assert _lands(var, value, load_config(None, alone)), f"{name}: {var}={value!r}"
    assert seen == {
        "OTEL_EBPF_OPEN_PORT", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EBPF_KUBE_METADATA_ENABLE",
        "OTEL_EBPF_AUTO_TARGET_EXE", "OTEL_EBPF_TRACE_PRINTER", "OTEL_EBPF_CONFIG_PATH",
        "OTEL_EXPORTER_OTLP_HEADERS", "NODE_NAME", "KUBE_NAMESPACE", "OTEL_EBPF_PROMETHEUS_PORT",
        "OTEL_EBPF_INTERNAL_METRICS_EXPORTER", "OTEL_EBPF_INTERNAL_METRICS_PROMETHEUS_PORT",
    }


# --- each mode as the guide has it


def test_rbac_is_the_guides() -> None:
    docs = documents("rbac.yaml")
    assert find(docs, "ServiceAccount", "obi")
    assert find(docs, "ClusterRole", "obi")["rules"] == GUIDE_RULES
    binding = find(docs, "ClusterRoleBinding", "obi")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "obi", "namespace": "default"}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "obi"}


def test_sidecar(tmp_path: Path) -> None:
    deployment = find(documents("sidecar.yaml"), "Deployment", "goblog")
    spec = pod_spec(deployment)
    assert spec["shareProcessNamespace"] is True
    assert obi_container(deployment)["securityContext"] == {"privileged": True}
    config, env = manifest_config("sidecar.yaml", tmp_path)
    assert env == {"OTEL_EBPF_OPEN_PORT": "8443", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otelcol:4318",
                   "OTEL_EBPF_KUBE_METADATA_ENABLE": "true"}
    assert config.open_port == ((8443, 8443),)
    assert config.attributes.kubernetes.enable == "true"


def test_daemonset(tmp_path: Path) -> None:
    daemonset = find(documents("daemonset.yaml"), "DaemonSet", "obi")
    assert pod_spec(daemonset)["hostPID"] is True
    assert obi_container(daemonset)["securityContext"] == {"privileged": True}
    config, env = manifest_config("daemonset.yaml", tmp_path)
    assert env["OTEL_EBPF_AUTO_TARGET_EXE"] == "*/goblog"
    assert env["NODE_NAME"] == DOWNWARD_API["spec.nodeName"]
    assert config.auto_target_exe is not None and config.auto_target_exe.matches("/goblog")
    assert not config.open_port


def test_prometheus_daemonset(tmp_path: Path) -> None:
    daemonset = find(documents("daemonset-prometheus.yaml"), "DaemonSet", "obi")
    annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
    [port] = obi_container(daemonset)["ports"]
    config, _ = manifest_config("daemonset-prometheus.yaml", tmp_path)
    prometheus, internal = config.prometheus_export, config.internal_metrics
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(prometheus.port),
                           "prometheus.io/path": prometheus.path}
    assert port == {"name": "metrics", "containerPort": prometheus.port}
    assert prometheus.enabled and not config.otel_metrics_export.enabled
    assert (internal.exporter, internal.prometheus_port) == ("prometheus", prometheus.port)
    assert pod_spec(daemonset)["hostPID"] is True


def test_unprivileged_daemonset(tmp_path: Path) -> None:
    docs = documents("daemonset-unprivileged.yaml")
    daemonset = find(docs, "DaemonSet", "obi")
    assert daemonset["metadata"]["namespace"] == "obi-demo"
    spec = pod_spec(daemonset)
    assert spec["hostPID"] is True
    container = obi_container(daemonset)
    assert container["securityContext"] == {
        "runAsUser": 0, "readOnlyRootFilesystem": True,
        "capabilities": {"add": UNPRIVILEGED_CAPABILITIES, "drop": ["ALL"]},
    }
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/var/run/obi"]]["emptyDir"] == {}
    assert volumes[mounts["/sys/fs/cgroup"]]["hostPath"] == {"path": "/sys/fs/cgroup"}
    assert spec["tolerations"] == [{"effect": "NoSchedule", "operator": "Exists"},
                                   {"effect": "NoExecute", "operator": "Exists"}]
    # Its service account lives in obi-demo and has the ClusterRole of rbac.yaml.
    assert find(docs, "ServiceAccount", "obi")["metadata"]["namespace"] == "obi-demo"
    binding = find(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "obi", "namespace": "obi-demo"}]
    assert binding["roleRef"]["name"] == find(documents("rbac.yaml"), "ClusterRole")["metadata"]["name"]
    config, env = manifest_config("daemonset-unprivileged.yaml", tmp_path)
    assert env["KUBE_NAMESPACE"] == "obi-demo" and env["NODE_NAME"] == "node-1"
    assert config.trace_printer == TracePrinterMode.TEXT
    assert config.attributes.kubernetes.enable == "autodetect"


def test_configmap_daemonset(tmp_path: Path) -> None:
    docs = documents("configmap-daemonset.yaml")
    embedded = yaml.safe_load(find(docs, "ConfigMap", "obi-config")["data"]["obi-config.yml"])
    assert embedded == {
        "trace_printer": "text",
        "otel_traces_export": {"endpoint": "http://otelcol:4317",
                               "sampler": {"name": "parentbased_traceidratio", "arg": "0.01"}},
        "routes": {"patterns": ["/factorial/{num}"]},
    }
    daemonset = find(docs, "DaemonSet", "obi")
    container = obi_container(daemonset)
    assert container["securityContext"] == {"privileged": True, "readOnlyRootFilesystem": True}
    volumes = {v["name"]: v for v in pod_spec(daemonset)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/config"]]["configMap"] == {"name": "obi-config"}
    assert volumes[mounts["/var/run/obi"]]["emptyDir"] == {}

    config, env = manifest_config("configmap-daemonset.yaml", tmp_path)
    assert config.config_path == env["OTEL_EBPF_CONFIG_PATH"] == str(tmp_path / "obi-config.yml")
    assert config.trace_printer == TracePrinterMode.TEXT
    traces = config.otel_traces_export
    assert traces.signal_endpoint == "http://otelcol:4317"
    assert (traces.sampler.name, traces.sampler.arg) == ("parentbased_traceidratio", 0.01)
    assert config.routes.patterns == ("/factorial/{num}",)
    target = resolve_otlp_target(traces.endpoint, traces.signal_endpoint, traces.protocol, "traces")
    assert target is not None and (target.protocol, target.endpoint) == ("grpc", "otelcol:4317")


def test_secret(tmp_path: Path) -> None:
    docs = documents("secret.yaml")
    secret = find(docs, "Secret", "otelcol-secret")
    assert secret["type"] == "Opaque"
    assert secret["stringData"] == {"headers": "Authorization=Bearer Z2hwX0l4Y29QOWhr....ScQo="}
    daemonset = find(docs, "DaemonSet", "obi")
    (headers,) = [v for v in obi_container(daemonset)["env"] if v["name"] == "OTEL_EXPORTER_OTLP_HEADERS"]
    # The guide swaps these two; the Secret's name is `name`, its entry is `key`.
    assert headers["valueFrom"] == {"secretKeyRef": {"name": "otelcol-secret", "key": "headers"}}
    config, _ = manifest_config("secret.yaml", tmp_path)
    expected = (("Authorization", "Bearer Z2hwX0l4Y29QOWhr....ScQo="),)
    assert config.otel_traces_export.headers == config.otel_metrics_export.headers == expected
    # The credentials never show in the configuration's representation.
    assert "Z2hwX0l4Y29QOWhr" not in repr(config)

