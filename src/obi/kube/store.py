"""In-memory Kubernetes state fed by informer events: container id -> ContainerMeta in O(1).

Objects arrive as the API's JSON (dicts). Only what decoration needs is kept:
pods (by uid, with their containers) and ReplicaSet -> Deployment names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import structlog

from obi.kube.model import ContainerMeta, PodMeta

ContainerListener = Callable[[ContainerMeta], None]
JsonObject = Mapping[str, Any]

# Pod spec env entries obi reads (plain ``value`` only; valueFrom would need more API calls).
_USEFUL_ENV = frozenset({"OTEL_SERVICE_NAME", "OTEL_SERVICE_NAMESPACE", "OTEL_RESOURCE_ATTRIBUTES"})
# A Job created by a CronJob is named <cronjob>-<scheduled time in minutes>.
_CRONJOB_JOB_NAME = re.compile(r"(.+)-(\d+)")
_POD_TEMPLATE_HASH = "pod-template-hash"
# Owner kinds with their own k8s.<kind>.name attribute, by the API's Kind.
_KNOWN_KINDS = {
    "ReplicaSet": "replicaset",
    "Deployment": "deployment",
    "StatefulSet": "statefulset",
    "DaemonSet": "daemonset",
    "Job": "job",
    "CronJob": "cronjob",
}

DELETED = "DELETED"


@dataclass(slots=True)
class _PodRecord:
    meta: PodMeta
    replicaset: str  # the controlling ReplicaSet's name, "" when not owned by one
    containers: dict[str, str]  # container id -> container name


def _mapping(value: object) -> JsonObject:
    return value if isinstance(value, Mapping) else {}


def _metadata(obj: JsonObject) -> JsonObject:
    return _mapping(obj.get("metadata"))


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items() if v is not None}


def _list(value: object) -> list[JsonObject]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def strip_container_scheme(container_id: str) -> str:
    """``containerd://<id>`` / ``cri-o://<id>`` / ``docker://<id>`` -> ``<id>``."""
    _, sep, bare = container_id.partition("://")
    return bare if sep else container_id


def _controller_ref(metadata: JsonObject) -> JsonObject | None:
    """The ownerReference marked controller, else the first one (OBI reads them in order)."""
    refs = _list(metadata.get("ownerReferences"))
    for ref in refs:
        if ref.get("controller") is True:
            return ref
    return refs[0] if refs else None


def _container_env(spec: JsonObject) -> dict[str, dict[str, str]]:
    env_by_container: dict[str, dict[str, str]] = {}
    for key in ("containers", "initContainers"):
        for container in _list(spec.get(key)):
            env = {
                str(entry.get("name")): str(entry["value"])
                for entry in _list(container.get("env"))
                if entry.get("name") in _USEFUL_ENV and isinstance(entry.get("value"), str)
            }
            if env:
                env_by_container[str(container.get("name", ""))] = env
    return env_by_container


def _pod_containers(status: JsonObject) -> dict[str, str]:
    containers: dict[str, str] = {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for container in _list(status.get(key)):
            raw_id = container.get("containerID")
            if isinstance(raw_id, str) and raw_id:
                containers[strip_container_scheme(raw_id)] = str(container.get("name", ""))
    return containers


class KubeMetadataStore:
    """Pods and ReplicaSets as the informers announce them.

    Lookups are dictionary reads. Listeners hear, synchronously, of every container
    that becomes known or whose metadata changes (an update of its pod, or its
    ReplicaSet arriving later and naming the Deployment).
    """

    def __init__(self) -> None:
        self._log = structlog.get_logger().bind(component="kube")
        self._pods: dict[str, _PodRecord] = {}
        self._containers: dict[str, ContainerMeta] = {}
        # (namespace, ReplicaSet name) -> Deployment name ("" for a ReplicaSet without one).
        self._replicasets: dict[tuple[str, str], str] = {}
        self._pods_by_replicaset: dict[tuple[str, str], set[str]] = {}
        self._listeners: list[ContainerListener] = []

    # --- lookups -------------------------------------------------------------------------

    def container(self, container_id: str) -> ContainerMeta | None:
        """The metadata of a container by its runtime id (as in /proc/PID/cgroup)."""
        return self._containers.get(container_id)

    def pod(self, uid: str) -> PodMeta | None:
        record = self._pods.get(uid)
        return record.meta if record else None

    def containers(self) -> Iterator[ContainerMeta]:
        """Every known container (a snapshot: safe to mutate the store while iterating)."""
        return iter(list(self._containers.values()))

    def subscribe(self, listener: ContainerListener) -> Callable[[], None]:
        """Call ``listener`` for each container that becomes known or changes; returns an unsubscribe."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, meta: ContainerMeta) -> None:
        for listener in list(self._listeners):
            try:
                listener(meta)
            except Exception:
                self._log.exception("kube_listener_failed", container_id=meta.container_id)

    # --- pods ----------------------------------------------------------------------------

    def pod_event(self, event_type: str, obj: JsonObject) -> None:
        """Apply one watch event (ADDED, MODIFIED, DELETED) for a pod."""
        uid = str(_metadata(obj).get("uid", ""))
        if not uid:
            return
        if event_type == DELETED:
            self._remove_pod(uid)
        else:
            self._upsert_pod(uid, obj)

    def pods_listed(self, items: Iterable[JsonObject]) -> None:
        """Replace the pods with a full list (initial list or re-list): the missing ones are deleted."""
        listed: dict[str, JsonObject] = {}
        for obj in items:
            uid = str(_metadata(obj).get("uid", ""))
            if uid:
                listed[uid] = obj
        for uid in [uid for uid in self._pods if uid not in listed]:
            self._remove_pod(uid)
        for uid, obj in listed.items():
            self._upsert_pod(uid, obj)

    def _owners(
        self,
        namespace: str,
        pod_name: str,
        labels: Mapping[str, str],
        replicaset: str,
        ref: JsonObject | None,
    ) -> tuple[dict[str, str], str, str]:
        """(owners by kind, top owner kind, top owner name) of a pod."""
        if ref is None:
            return {}, "Pod", pod_name
        kind, name = str(ref.get("kind", "")), str(ref.get("name", ""))
        owners: dict[str, str] = {}
        top_kind, top_name = kind, name
        if kind in _KNOWN_KINDS:
            owners[_KNOWN_KINDS[kind]] = name
        if kind == "ReplicaSet":
            deployment = self._replicasets.get((namespace, replicaset))
            if deployment is None:
                # ReplicaSet not seen yet: a Deployment's ReplicaSet is <deployment>-<pod-template-hash>.
                template_hash = labels.get(_POD_TEMPLATE_HASH, "")
                suffix = f"-{template_hash}"
                if template_hash and name.endswith(suffix) and len(name) > len(suffix):
                    deployment = name[: -len(suffix)]
            if deployment:
                owners["deployment"] = deployment
                top_kind, top_name = "Deployment", deployment
        elif kind == "Job":
            # Jobs are not watched (the guide's RBAC has no batch/jobs): infer the CronJob from the
            # name like OBI, but only for the numeric suffix a CronJob gives its Jobs.
            match = _CRONJOB_JOB_NAME.fullmatch(name)
            if match:
                owners["cronjob"] = match.group(1)
                top_kind, top_name = "CronJob", match.group(1)
        return owners, top_kind, top_name

    def _upsert_pod(self, uid: str, obj: JsonObject) -> None:
        metadata = _metadata(obj)
        spec = _mapping(obj.get("spec"))
        status = _mapping(obj.get("status"))
        namespace = str(metadata.get("namespace", ""))
        name = str(metadata.get("name", ""))
        labels = _str_map(metadata.get("labels"))
        ref = _controller_ref(metadata)
        replicaset = str(ref.get("name", "")) if ref and ref.get("kind") == "ReplicaSet" else ""
        owners, top_kind, top_name = self._owners(namespace, name, labels, replicaset, ref)
        start_time = status.get("startTime") or metadata.get("creationTimestamp") or ""
        meta = PodMeta(
            namespace=namespace,
            name=name,
            uid=uid,
            node_name=str(spec.get("nodeName", "") or ""),
            start_time=str(start_time),
            labels=labels,
            annotations=_str_map(metadata.get("annotations")),
            owners=owners,
            top_owner_kind=top_kind,
            top_owner_name=top_name,
            container_env=_container_env(spec),
        )
        containers = _pod_containers(status)
        previous = self._pods.get(uid)
        if previous is not None:
            if previous.replicaset != replicaset:
                self._unlink_replicaset(namespace, previous.replicaset, uid)
            for container_id in previous.containers:
                if container_id not in containers:
                    self._containers.pop(container_id, None)
        self._pods[uid] = _PodRecord(meta, replicaset, containers)
        if replicaset:
            self._pods_by_replicaset.setdefault((namespace, replicaset), set()).add(uid)
        self._index_containers(self._pods[uid])

    def _index_containers(self, record: _PodRecord) -> None:
        for container_id, container_name in record.containers.items():
            meta = ContainerMeta(container_id, container_name, record.meta)
            if self._containers.get(container_id) != meta:
                self._containers[container_id] = meta
                self._notify(meta)

    def _unlink_replicaset(self, namespace: str, replicaset: str, uid: str) -> None:
        if not replicaset:
            return
        key = (namespace, replicaset)
        uids = self._pods_by_replicaset.get(key)
        if uids is not None:
            uids.discard(uid)
            if not uids:
                del self._pods_by_replicaset[key]

    def _remove_pod(self, uid: str) -> None:
        record = self._pods.pop(uid, None)
        if record is None:
            return
        self._unlink_replicaset(record.meta.namespace, record.replicaset, uid)
        for container_id in record.containers:
            current = self._containers.get(container_id)
            if current is not None and current.pod.uid == uid:
                del self._containers[container_id]

    # --- replicasets ---------------------------------------------------------------------

    def replicaset_event(self, event_type: str, obj: JsonObject) -> None:
        metadata = _metadata(obj)
        key = (str(metadata.get("namespace", "")), str(metadata.get("name", "")))
        if event_type == DELETED:
            self._replicasets.pop(key, None)
        else:
            self._replicasets[key] = self._deployment_of(metadata)
        self._refresh_replicaset_pods(key)

    def replicasets_listed(self, items: Iterable[JsonObject]) -> None:
        listed: dict[tuple[str, str], str] = {}
        for obj in items:
            metadata = _metadata(obj)
            listed[(str(metadata.get("namespace", "")), str(metadata.get("name", "")))] = self._deployment_of(
                metadata
            )
        changed = {
            key
            for key in self._replicasets.keys() | listed.keys()
            if self._replicasets.get(key) != listed.get(key)
        }
        self._replicasets = listed
        for key in changed:
            self._refresh_replicaset_pods(key)

    @staticmethod
    def _deployment_of(metadata: JsonObject) -> str:
        for ref in _list(metadata.get("ownerReferences")):
            if ref.get("kind") == "Deployment":
                return str(ref.get("name", ""))
        return ""

    def _refresh_replicaset_pods(self, key: tuple[str, str]) -> None:
        """Recompute the owner chain of the pods of one ReplicaSet (O(its pods))."""
        for uid in list(self._pods_by_replicaset.get(key, ())):
            record = self._pods[uid]
            pod = record.meta
            ref = {"kind": "ReplicaSet", "name": record.replicaset}
            owners, top_kind, top_name = self._owners(
                pod.namespace, pod.name, pod.labels, record.replicaset, ref
            )
            if (owners, top_kind, top_name) == (pod.owners, pod.top_owner_kind, pod.top_owner_name):
                continue
            record.meta = replace(pod, owners=owners, top_owner_kind=top_kind, top_owner_name=top_name)
            self._index_containers(record)

    @property
    def counts(self) -> dict[str, int]:
        """Sizes of the state, for internal metrics and tests."""
        return {
            "pods": len(self._pods),
            "containers": len(self._containers),
            "replicasets": len(self._replicasets),
        }
