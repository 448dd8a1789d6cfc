"""OTel resource attributes and service identity of a container, from its Kubernetes metadata."""

from __future__ import annotations

from obi.discovery.identity import parse_resource_attributes
from obi.kube.model import ContainerMeta

SERVICE_NAME_ANNOTATION = "resource.opentelemetry.io/service.name"
SERVICE_NAMESPACE_ANNOTATION = "resource.opentelemetry.io/service.namespace"
# OBI's default "resource labels": well-known labels read when no annotation is set.
SERVICE_NAME_LABEL = "app.kubernetes.io/name"
SERVICE_NAMESPACE_LABEL = "app.kubernetes.io/part-of"

_ENV_SERVICE_NAME = "OTEL_SERVICE_NAME"
_ENV_SERVICE_NAMESPACE = "OTEL_SERVICE_NAMESPACE"
_ENV_RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"

# Owner kinds in PodMeta.owners and the attribute each one sets.
_OWNER_ATTRIBUTES = (
    ("replicaset", "k8s.replicaset.name"),
    ("deployment", "k8s.deployment.name"),
    ("statefulset", "k8s.statefulset.name"),
    ("daemonset", "k8s.daemonset.name"),
    ("job", "k8s.job.name"),
    ("cronjob", "k8s.cronjob.name"),
)


def resource_attributes(meta: ContainerMeta, cluster_name: str) -> dict[str, str]:
    """The k8s.* resource attributes of a container; each only where it applies (non-empty)."""
    pod = meta.pod
    attrs = {
        "k8s.namespace.name": pod.namespace,
        "k8s.pod.name": pod.name,
        "k8s.container.name": meta.container_name,
        "k8s.pod.uid": pod.uid,
        "k8s.pod.start_time": pod.start_time,
        "k8s.node.name": pod.node_name,
    }
    for kind, attribute in _OWNER_ATTRIBUTES:
        attrs[attribute] = pod.owners.get(kind, "")
    # OBI also sets the top owner (the pod itself when unowned) and its kind.
    attrs["k8s.owner.name"] = pod.top_owner_name
    attrs["k8s.kind"] = pod.top_owner_kind
    attrs["k8s.cluster.name"] = cluster_name
    return {key: value for key, value in attrs.items() if value}


def _resolved(value: str | None) -> str:
    """The value, or "" when missing, empty or an unexpanded ``$(VAR)`` reference (OBI)."""
    if not value or value.startswith("$("):
        return ""
    return value


def service_name_and_namespace(meta: ContainerMeta) -> tuple[str, str]:
    """service.name and service.namespace of a container in OBI's order of sources.

    Name: the container's OTEL_SERVICE_NAME, service.name in its OTEL_RESOURCE_ATTRIBUTES,
    the pod annotation resource.opentelemetry.io/service.name, the label app.kubernetes.io/name,
    the top owner's name (the pod name when unowned). Namespace: OTEL_SERVICE_NAMESPACE,
    service.namespace in OTEL_RESOURCE_ATTRIBUTES, the annotation
    resource.opentelemetry.io/service.namespace, the label app.kubernetes.io/part-of, the
    Kubernetes namespace.
    """
    pod = meta.pod
    env = pod.container_env.get(meta.container_name, {})
    declared = parse_resource_attributes(env.get(_ENV_RESOURCE_ATTRIBUTES, ""))
    name = (
        _resolved(env.get(_ENV_SERVICE_NAME))
        or _resolved(declared.get("service.name"))
        or pod.annotations.get(SERVICE_NAME_ANNOTATION, "")
        or pod.labels.get(SERVICE_NAME_LABEL, "")
        or pod.top_owner_name
        or pod.name
    )
    namespace = (
        _resolved(env.get(_ENV_SERVICE_NAMESPACE))
        or _resolved(declared.get("service.namespace"))
        or pod.annotations.get(SERVICE_NAMESPACE_ANNOTATION, "")
        or pod.labels.get(SERVICE_NAMESPACE_LABEL, "")
        or pod.namespace
    )
    return name, namespace
