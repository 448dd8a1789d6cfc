"""Processes -> their pods: Kubernetes facts for discovery, decoration of identities.

The agent hands every instrumented process here; its container id is read
once from /proc/PID/cgroup, and whenever the informers know (or learn later)
the pod of that container, the process's ServiceIdentity gets the k8s.*
resource attributes and the Kubernetes service name. Spans share the
identity object, so decoration costs nothing per span.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from obi.discovery.criteria import KubeFacts
from obi.kube.attributes import resource_attributes, service_name_and_namespace
from obi.kube.cgroup import container_id
from obi.kube.model import ContainerMeta
from obi.kube.store import KubeMetadataStore
from obi.traces.model import ServiceIdentity

_CONTAINER_CACHE_MAX = 65536


class KubeDecorator:
    """Tracks which instrumented processes live in which container, and decorates them."""

    def __init__(self, store: KubeMetadataStore, cluster_name: str,
                 after_decoration: Callable[[ServiceIdentity], None],
                 proc_root: str = "/proc") -> None:
        """`after_decoration` re-applies settings that outrank Kubernetes (obi's own overrides)."""
        self._store = store
        self._cluster_name = cluster_name
        self._identities: dict[int, ServiceIdentity] = {}  # the processes tracked
        self._after = after_decoration
        self._proc_root = proc_root
        self._container_ids: dict[tuple[int, int], str | None] = {}  # (pid, start time) -> id
        self._container_of: dict[int, str] = {}
        self._pids_of_container: dict[str, set[int]] = {}
        self._log = structlog.get_logger().bind(component="kube")
        store.subscribe(self._on_container_meta)

    def container_id(self, pid: int, start_time: int) -> str | None:
        """The container of a process, read once per process (from the loop or the discovery thread)."""
        key = (pid, start_time)
        if key not in self._container_ids:
            if len(self._container_ids) > _CONTAINER_CACHE_MAX:
                self._container_ids.clear()
            self._container_ids[key] = container_id(pid, self._proc_root)
        return self._container_ids[key]

    def kube_facts(self, pid: int, start_time: int) -> KubeFacts | None:
        """The pod of a process as k8s_* selectors see it (called from the discovery thread)."""
        cid = self.container_id(pid, start_time)
        meta = self._store.container(cid) if cid else None
        if meta is None:
            return None
        pod = meta.pod
        return KubeFacts(namespace=pod.namespace, pod_name=pod.name, container_name=meta.container_name,
                         owners=pod.owners, labels=pod.labels, annotations=pod.annotations)

    def track(self, identity: ServiceIdentity) -> None:
        """A process was instrumented: decorate it now if its pod is known, else when it is."""
        cid = self.container_id(identity.pid, identity.start_time)
        if not cid:
            return
        self._identities[identity.pid] = identity
        self._container_of[identity.pid] = cid
        self._pids_of_container.setdefault(cid, set()).add(identity.pid)
        meta = self._store.container(cid)
        if meta is not None:
            self._decorate(identity, meta)

    def forget(self, pid: int) -> None:
        """A process exited."""
        self._identities.pop(pid, None)
        cid = self._container_of.pop(pid, None)
        if cid is None:
            return
        pids = self._pids_of_container.get(cid, set())
        pids.discard(pid)
        if not pids:
            self._pids_of_container.pop(cid, None)

    def _decorate(self, identity: ServiceIdentity, meta: ContainerMeta) -> None:
        """k8s.* resource attributes and the Kubernetes service name (OBI's order)."""
        identity.attributes.update(resource_attributes(meta, self._cluster_name))
        name, namespace = service_name_and_namespace(meta)
        if not identity.name_from_env:
            identity.service_name = name
            identity.service_namespace = namespace
        elif not identity.service_namespace:
            identity.service_namespace = namespace
        self._after(identity)

    def _on_container_meta(self, meta: ContainerMeta) -> None:
        """A pod was announced or changed: decorate the processes already in it."""
        for pid in self._pids_of_container.get(meta.container_id, ()):
            identity = self._identities.get(pid)
            if identity is not None:
                self._decorate(identity, meta)
                self._log.info("process_decorated", pid=pid, pod=meta.pod.name,
                               namespace=meta.pod.namespace, service=identity.service_name)
