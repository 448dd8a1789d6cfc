"""Informers: list, then watch from the list's resourceVersion, for pods and replicasets.

Load on the API server per agent: one LIST and then one long WATCH per resource
(pods, apps/v1 replicasets), i.e. two watch connections. The watches carry
bookmarks and resume from the last resourceVersion, so a reconnect does not
re-list; a re-list happens only after 410 Gone. With a node name (DaemonSet,
OBI's meta_restrict_local_node) pods are listed and watched with
``fieldSelector=spec.nodeName=<node>``: the pod traffic is that of one node, not
the cluster's. ReplicaSets are cluster-wide (small objects; only the owning
Deployment's name is kept). Nodes and services are not watched: nothing obi
does reads them (k8s.node.name comes from the pod spec). The first list asks
for resourceVersion=0 (served from the API server's watch cache, not etcd);
failures back off exponentially with jitter up to a cap, and a 403 retries
slowly. Only the verbs list and watch are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio.client import ApiClient, AppsV1Api, CoreV1Api

from obi.backoff import Backoff
from obi.kube.client import KubeConfigSource, new_api_client
from obi.kube.store import JsonObject, KubeMetadataStore

_MAX_LINE = 16 << 20  # one watch event; a pod is far smaller


@dataclass(frozen=True, slots=True)
class WatchedResource:
    """A resource obi lists and watches, and how the kubernetes_asyncio client names its call."""

    plural: str
    group: str
    list_call: Callable[[ApiClient], Callable[..., Awaitable[Any]]]

    @property
    def qualified(self) -> str:
        """``pods``, ``replicasets.apps``: the name RBAC errors use."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def rbac_rule(self) -> str:
        return f"- apiGroups: ['{self.group}'] resources: ['{self.plural}'] verbs: ['list', 'watch']"


PODS = WatchedResource("pods", "", lambda api: CoreV1Api(api).list_pod_for_all_namespaces)
REPLICASETS = WatchedResource(
    "replicasets", "apps", lambda api: AppsV1Api(api).list_replica_set_for_all_namespaces
)


@dataclass(slots=True)
class KubeApiStats:
    """Counters for internal metrics: how the API server connection fares."""

    api_errors: int = 0  # failed requests and broken streams (unreachable, 5xx, malformed)
    reconnects: int = 0  # watches re-opened after their stream ended
    relists: int = 0  # full lists after 410 Gone
    forbidden: int = 0  # 403 answers (RBAC)
    unauthorized: int = 0  # 401 answers (token)
    events: int = 0  # ADDED/MODIFIED/DELETED received
    bookmarks: int = 0


# Each wait between half and all of the capped value.
_BACKOFF = Backoff(initial_s=0.5, max_s=30.0, jitter=0.5)


@dataclass(frozen=True, slots=True)
class InformerRetry:
    """When to retry a failed list or watch: capped exponential backoff with jitter, but a
    slower fixed period after a 403 (RBAC refusals are not fixed in seconds)."""

    backoff: Backoff = _BACKOFF
    forbidden_s: float = 60.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return self.backoff.delay(attempt, rng.random)


class ApiStatusError(Exception):
    """The API server answered with a failure status (HTTP or a watch ERROR event)."""

    def __init__(self, code: int, reason: str, message: str, verb: str) -> None:
        super().__init__(f"{verb}: {code} {reason}: {message}")
        self.code, self.reason, self.message, self.verb = code, reason, message, verb


class _ApiHealth:
    """Shared by the informers of one source: one warning per outage, one notice on recovery."""

    def __init__(self, log: Any) -> None:
        self._log = log
        self._down = False

    def failed(self, resource: WatchedResource, error: BaseException) -> None:
        if not self._down:
            self._down = True
            self._log.warning(
                "kube_api_unreachable",
                resource=resource.qualified,
                error=type(error).__name__,
                detail=str(error)[:300],
                hint="telemetry is exported without Kubernetes metadata until the API answers",
            )

    def ok(self) -> None:
        if self._down:
            self._down = False
            self._log.info("kube_api_reachable")


def _status_error(body: bytes, http_code: int, verb: str) -> ApiStatusError:
    """An ApiStatusError from a Status body (as the API server sends), tolerant of any body."""
    try:
        status = json.loads(body)
    except ValueError:
        status = {}
    if not isinstance(status, dict):
        status = {}
    return ApiStatusError(
        int(status.get("code") or http_code),
        str(status.get("reason", "")),
        str(status.get("message", "")),
        verb,
    )


class ResourceInformer:
    """Keeps one resource in sync: list, watch from its resourceVersion, re-list on 410 Gone."""

    def __init__(
        self,
        resource: WatchedResource,
        api: ApiClient,
        on_list: Callable[[Iterable[JsonObject]], None],
        on_event: Callable[[str, JsonObject], None],
        stats: KubeApiStats,
        health: _ApiHealth,
        *,
        field_selector: str | None = None,
        retry: InformerRetry = InformerRetry(),
        watch_timeout_s: float = 300.0,
        read_timeout_s: float = 120.0,
        page_size: int = 500,
    ) -> None:
        self.resource = resource
        self._call = resource.list_call(api)
        self._on_list, self._on_event = on_list, on_event
        self.stats = stats
        self._health = health
        self._field_selector = field_selector
        self._retry = retry
        self._watch_timeout_s = watch_timeout_s
        self._read_timeout_s = read_timeout_s
        self._page_size = page_size
        self._rng = random.Random()
        self._log = structlog.get_logger().bind(component="kube", resource=resource.qualified)
        self.resource_version = ""
        self.settled = asyncio.Event()  # first list done, or refused by RBAC
        self._forbidden_logged = False
        self._unauthorized_logged = False

    def _selector(self) -> dict[str, Any]:
        return {"field_selector": self._field_selector} if self._field_selector else {}

    async def run(self) -> None:
        """Sync until cancelled; never raises anything but CancelledError."""
        attempt = 0
        consistent_list = False  # after 410 Gone: list from etcd, not the watch cache
        while True:
            try:
                if not self.resource_version:
                    await self._list(consistent_list)
                    consistent_list = False
                    self.settled.set()
                    self._forbidden_logged = self._unauthorized_logged = False
                    self._health.ok()
                    attempt = 0
                opened = asyncio.get_running_loop().time()
                await self._watch()
                self.stats.reconnects += 1
                if asyncio.get_running_loop().time() - opened >= 1.0:
                    attempt = 0
                    continue
                # A stream closed at once (a proxy?): do not spin on re-opening it.
                delay = self._retry.delay(attempt, self._rng)
            except asyncio.CancelledError:
                raise
            except ApiStatusError as error:
                delay = self._on_status(error, attempt)
                consistent_list = consistent_list or error.code == 410
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as error:
                self.stats.api_errors += 1
                self._health.failed(self.resource, error)
                delay = self._retry.delay(attempt, self._rng)
                if self.resource_version:
                    self.stats.reconnects += 1
            except Exception as error:  # a bug or an unforeseen client error: keep the agent alive
                self.stats.api_errors += 1
                self._log.exception("kube_informer_failed", error=type(error).__name__)
                delay = self._retry.delay(attempt, self._rng)
            attempt += 1
            await asyncio.sleep(delay)

    def _on_status(self, error: ApiStatusError, attempt: int) -> float:
        """Account for a failure status; the delay before the next try."""
        if error.code == 410:
            # The resourceVersion is too old (compacted): re-list at once.
            self.stats.relists += 1
            self.resource_version = ""
            self._log.info("kube_watch_expired", verb=error.verb)
            return 0.0
        if error.code == 403:
            self.stats.forbidden += 1
            self.settled.set()
            if not self._forbidden_logged:
                self._forbidden_logged = True
                self._log.error(
                    "kube_api_forbidden",
                    message=f"cannot {error.verb} {self.resource.qualified}: add to the ClusterRole: "
                    f"{self.resource.rbac_rule()}",
                    verb=error.verb,
                    rbac_rule=self.resource.rbac_rule(),
                )
            return self._retry.forbidden_s
        if error.code == 401:
            self.stats.unauthorized += 1
            if not self._unauthorized_logged:
                self._unauthorized_logged = True
                self._log.warning("kube_api_unauthorized", verb=error.verb)
            return self._retry.delay(attempt, self._rng)
        self.stats.api_errors += 1
        self._health.failed(self.resource, error)
        return self._retry.delay(attempt, self._rng)

    async def _list(self, consistent: bool) -> None:
        items: list[JsonObject] = []
        continue_token = ""
        resource_version = ""
        while True:
            params: dict[str, Any] = {**self._selector(), "limit": self._page_size}
            if continue_token:
                params["_continue"] = continue_token
            elif not consistent:
                params["resource_version"] = "0"
            response = await self._call(
                **params,
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=max(60.0, self._read_timeout_s)),
            )
            async with response:
                body = await response.read()
                if response.status != 200:
                    raise _status_error(body, response.status, "list")
            page = json.loads(body)
            if not isinstance(page, dict):
                raise ValueError("list answer is not an object")
            page_items = page.get("items") or []
            items.extend(item for item in page_items if isinstance(item, dict))
            metadata = page.get("metadata") or {}
            resource_version = str(metadata.get("resourceVersion", "")) or resource_version
            continue_token = str(metadata.get("continue", "") or "")
            if not continue_token:
                break
        if not resource_version:
            raise ValueError("list answer without metadata.resourceVersion")
        self._on_list(items)
        self.resource_version = resource_version
        self._log.debug("kube_listed", items=len(items), resource_version=resource_version)

    async def _watch(self) -> None:
        """One watch stream; returns when the server ends it (timeout), raises on failure."""
        timeout_seconds = int(self._watch_timeout_s * (1 + self._rng.random()))
        response = await self._call(
            **self._selector(),
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=max(1, timeout_seconds),
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=30.0, sock_read=self._read_timeout_s
            ),
        )
        async with response:
            if response.status != 200:
                raise _status_error(await response.read(), response.status, "watch")
            self._health.ok()
            self._unauthorized_logged = self._forbidden_logged = False
            buffer = bytearray()
            async for chunk in response.content.iter_any():
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[: end + 1]
                    if line.strip():
                        self._handle_line(line)
                if len(buffer) > _MAX_LINE:
                    raise ValueError("watch event larger than 16 MiB")
            if buffer.strip():
                self._handle_line(bytes(buffer))

    def _handle_line(self, line: bytes) -> None:
        event = json.loads(line)
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise ValueError(f"malformed watch event: {line[:200]!r}")
        event_type, obj = str(event.get("type", "")), event["object"]
        if event_type == "ERROR":
            raise ApiStatusError(
                int(obj.get("code") or 500), str(obj.get("reason", "")), str(obj.get("message", "")), "watch"
            )
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        resource_version = str(metadata.get("resourceVersion", "")) if metadata else ""
        if event_type == "BOOKMARK":
            self.stats.bookmarks += 1
        elif event_type in ("ADDED", "MODIFIED", "DELETED"):
            self.stats.events += 1
            self._on_event(event_type, obj)
        else:
            raise ValueError(f"unknown watch event type {event_type!r}")
        if resource_version:
            self.resource_version = resource_version


class KubeMetadataSource:
    """The informers of one agent (pods, replicasets) feeding one KubeMetadataStore.

    ``node_name`` restricts pods to one node, as a DaemonSet should.
    ``synced`` is set once every informer has listed (or been refused by RBAC).
    See the module docstring for the load this puts on the API server.
    """

    def __init__(
        self,
        config_source: KubeConfigSource,
        node_name: str | None,
        store: KubeMetadataStore | None = None,
        *,
        retry: InformerRetry = InformerRetry(),
        watch_timeout_s: float = 300.0,
        read_timeout_s: float = 120.0,
        page_size: int = 500,
    ) -> None:
        self.config_source = config_source
        self.node_name = node_name or None
        self.store = store if store is not None else KubeMetadataStore()
        self.stats = KubeApiStats()
        self.synced = asyncio.Event()
        self._retry = retry
        self._watch_timeout_s = watch_timeout_s
        self._read_timeout_s = read_timeout_s
        self._page_size = page_size
        self._log = structlog.get_logger().bind(component="kube")
        self._health = _ApiHealth(self._log)
        self._task: asyncio.Task[None] | None = None
        self.informers: list[ResourceInformer] = []

    def _informers(self, api: ApiClient) -> list[ResourceInformer]:
        store = self.store
        node = self.node_name
        plan: list[
            tuple[
                WatchedResource,
                Callable[[Iterable[JsonObject]], None],
                Callable[[str, JsonObject], None],
                str | None,
            ]
        ] = [
            (PODS, store.pods_listed, store.pod_event, f"spec.nodeName={node}" if node else None),
            (REPLICASETS, store.replicasets_listed, store.replicaset_event, None),
        ]
        return [
            ResourceInformer(
                resource,
                api,
                on_list,
                on_event,
                self.stats,
                self._health,
                field_selector=selector,
                retry=self._retry,
                watch_timeout_s=self._watch_timeout_s,
                read_timeout_s=self._read_timeout_s,
                page_size=self._page_size,
            )
            for resource, on_list, on_event, selector in plan
        ]

    async def run(self) -> None:
        """Run the informers until stop() (or cancellation); never raises otherwise."""
        self._task = asyncio.current_task()
        try:
            api = await self._connect()
            try:
                self.informers = self._informers(api)
                self._log.info(
                    "kube_informers_started",
                    source=self.config_source.kind,
                    node=self.node_name or "",
                )
                async with asyncio.TaskGroup() as group:
                    for informer in self.informers:
                        group.create_task(informer.run())
                    group.create_task(self._mark_synced())
            finally:
                await api.close()
        except asyncio.CancelledError:
            if self._task is None:  # stop() asked for it
                return
            raise

    async def _connect(self) -> ApiClient:
        attempt = 0
        while True:
            try:
                return await new_api_client(self.config_source)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.stats.api_errors += 1
                if attempt == 0:
                    self._log.error(
                        "kube_config_unusable",
                        source=self.config_source.kind,
                        path=self.config_source.path,
                        error=type(error).__name__,
                        detail=str(error)[:300],
                    )
                await asyncio.sleep(self._retry.forbidden_s)
                attempt += 1

    async def _mark_synced(self) -> None:
        for informer in self.informers:
            await informer.settled.wait()
        self.synced.set()
        self._log.info("kube_synced", **self.store.counts)

    async def stop(self) -> None:
        """Stop the informers and close the connection; run() then returns."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task})
