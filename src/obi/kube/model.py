"""Kubernetes metadata of a pod and of one of its containers, as decoration needs it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Keys of PodMeta.owners: the workload kinds that have their own k8s.<kind>.name attribute.
OWNER_KINDS = ("deployment", "replicaset", "statefulset", "daemonset", "job", "cronjob")


@dataclass(frozen=True, slots=True)
class PodMeta:
    """What obi keeps of a pod: identity, labels, annotations, owner chain, OTel env of its containers.

    ``owners`` maps a lowercase kind of OWNER_KINDS to the owner's name; ``top_owner_kind`` and
    ``top_owner_name`` are the last link of the chain (the pod itself, kind "Pod", when unowned).
    ``container_env`` holds, per container name, the plain-value OTEL_* entries of the pod spec.
    """

    namespace: str
    name: str
    uid: str
    node_name: str
    start_time: str  # RFC 3339, status.startTime (creationTimestamp until the kubelet sets it)
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    owners: Mapping[str, str]
    top_owner_kind: str
    top_owner_name: str
    container_env: Mapping[str, Mapping[str, str]]


@dataclass(frozen=True, slots=True)
class ContainerMeta:
    """One container of a pod, found by the id its runtime gave it (the id in /proc/PID/cgroup)."""

    container_id: str
    container_name: str
    pod: PodMeta
