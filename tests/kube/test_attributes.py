"""Resource attributes and service name/namespace of a container from its pod (OBI's order)."""

from __future__ import annotations

from obi.kube.attributes import resource_attributes, service_name_and_namespace
from obi.kube.model import ContainerMeta, PodMeta


def _meta(
    *,
    owners: dict[str, str] | None = None,
    top: tuple[str, str] = ("Deployment", "web"),
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> ContainerMeta:
    pod = PodMeta(
        namespace="shop",
        name="web-7d4b9c8f6-x2x9k",
        uid="11111111-1111-1111-1111-111111111111",
        node_name="node-1",
        start_time="2024-05-01T10:00:00Z",
        labels=labels or {},
        annotations=annotations or {},
        owners={"replicaset": "web-7d4b9c8f6", "deployment": "web"} if owners is None else owners,
        top_owner_kind=top[0],
        top_owner_name=top[1],
        container_env={"app": env} if env else {},
    )
    return ContainerMeta("a" * 64, "app", pod)


def test_deployment_pod_attributes() -> None:
    assert resource_attributes(_meta(), "prod-eu") == {
        "k8s.namespace.name": "shop",
        "k8s.pod.name": "web-7d4b9c8f6-x2x9k",
        "k8s.container.name": "app",
        "k8s.pod.uid": "11111111-1111-1111-1111-111111111111",
        "k8s.pod.start_time": "2024-05-01T10:00:00Z",
        "k8s.node.name": "node-1",
        "k8s.replicaset.name": "web-7d4b9c8f6",
        "k8s.deployment.name": "web",
        "k8s.owner.name": "web",
        "k8s.kind": "Deployment",
        "k8s.cluster.name": "prod-eu",
    }


def test_only_applicable_attributes() -> None:
    attrs = resource_attributes(_meta(owners={"statefulset": "db"}, top=("StatefulSet", "db")), "")
    assert attrs["k8s.statefulset.name"] == "db"
    for absent in (
        "k8s.deployment.name",
        "k8s.replicaset.name",
        "k8s.daemonset.name",
        "k8s.cluster.name",
        "k8s.job.name",
        "k8s.cronjob.name",
    ):
        assert absent not in attrs
    cron = resource_attributes(_meta(owners={"job": "b-28519440", "cronjob": "b"}, top=("CronJob", "b")), "")
    assert (cron["k8s.job.name"], cron["k8s.cronjob.name"], cron["k8s.owner.name"]) == (
        "b-28519440",
        "b",
        "b",
    )


def test_service_name_order() -> None:
    full = _meta(
        env={"OTEL_SERVICE_NAME": "from-env", "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs"},
        annotations={"resource.opentelemetry.io/service.name": "from-annotation"},
        labels={"app.kubernetes.io/name": "from-label"},
    )
    assert service_name_and_namespace(full)[0] == "from-env"
    assert (
        service_name_and_namespace(
            _meta(
                env={"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=x,service.name=from-attrs"},
                annotations={"resource.opentelemetry.io/service.name": "from-annotation"},
            )
        )[0]
        == "from-attrs"
    )
    assert (
        service_name_and_namespace(
            _meta(
                annotations={"resource.opentelemetry.io/service.name": "from-annotation"},
                labels={"app.kubernetes.io/name": "from-label"},
            )
        )[0]
        == "from-annotation"
    )
    assert (
        service_name_and_namespace(_meta(labels={"app.kubernetes.io/name": "from-label"}))[0] == "from-label"
    )
    assert service_name_and_namespace(_meta())[0] == "web"
    unowned = _meta(owners={}, top=("Pod", "web-7d4b9c8f6-x2x9k"))
    assert service_name_and_namespace(unowned)[0] == "web-7d4b9c8f6-x2x9k"


def test_unexpanded_env_references_are_ignored() -> None:
    meta = _meta(env={"OTEL_SERVICE_NAME": "$(POD_NAME)"}, labels={"app.kubernetes.io/name": "from-label"})
    assert service_name_and_namespace(meta)[0] == "from-label"


def test_env_of_another_container_does_not_apply() -> None:
    meta = _meta(env={"OTEL_SERVICE_NAME": "from-env"})
    other = ContainerMeta(meta.container_id, "sidecar", meta.pod)
    assert service_name_and_namespace(other)[0] == "web"


def test_service_namespace_order() -> None:
    annotations = {"resource.opentelemetry.io/service.namespace": "ns-annotation"}
    labels = {"app.kubernetes.io/part-of": "ns-label"}
    assert (
        service_name_and_namespace(
            _meta(
                env={
                    "OTEL_SERVICE_NAMESPACE": "ns-env",
                    "OTEL_RESOURCE_ATTRIBUTES": "service.namespace=ns-attrs",
                },
                annotations=annotations,
                labels=labels,
            )
        )[1]
        == "ns-env"
    )
    assert (
        service_name_and_namespace(
            _meta(env={"OTEL_RESOURCE_ATTRIBUTES": "service.namespace=ns-attrs"}, annotations=annotations)
        )[1]
        == "ns-attrs"
    )
    assert service_name_and_namespace(_meta(annotations=annotations, labels=labels))[1] == "ns-annotation"
    assert service_name_and_namespace(_meta(labels=labels))[1] == "ns-label"
    assert service_name_and_namespace(_meta())[1] == "shop"
