"""A fake Kubernetes API server speaking the real REST and watch protocol, for tests.

Lists are shaped like the API's (kind, apiVersion, metadata.resourceVersion,
items, limit/continue pagination), ``fieldSelector`` is honoured, and
``?watch=true`` streams newline-delimited JSON events over chunked transfer
encoding, with BOOKMARKs. It can expire resourceVersions (410 Gone, as an
ERROR event or an HTTP 410), refuse a resource (403 with a real Status body),
drop connections, stop and come back on the same port. Every request is
recorded, with its bearer token.
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

Obj = dict[str, Any]
GoneMode = Literal["event", "http"]

# URL path (cluster-wide form) -> (resource, group, List kind).
_RESOURCES = {
    "pods": ("", "v1", "Pod"),
    "nodes": ("", "v1", "Node"),
    "services": ("", "v1", "Service"),
    "replicasets": ("apps", "apps/v1", "ReplicaSet"),
}


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    resource: str  # "" for paths that are not a known resource
    query: Mapping[str, str]
    token: str

    @property
    def verb(self) -> str:
        """The RBAC verb: list, watch, or the HTTP method for anything else."""
        if self.method != "GET" or not self.resource:
            return self.method.lower()
        return "watch" if parse_bool(self.query.get("watch")) else "list"


@dataclass(eq=False, slots=True)
class _Watch:
    resource: str
    selector: list[tuple[str, str]]
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)
    transport: asyncio.Transport | None = None


def parse_bool(value: str | None) -> bool:
    """A query boolean as the API server (Go's strconv.ParseBool) reads it."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _parse_selector(text: str) -> list[tuple[str, str]]:
    terms = []
    for term in filter(None, text.split(",")):
        key, _, value = term.replace("==", "=").partition("=")
        terms.append((key.strip(), value.strip()))
    return terms


def _field(obj: Obj, dotted: str) -> str:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


def _matches(obj: Obj, selector: list[tuple[str, str]]) -> bool:
    return all(_field(obj, key) == value for key, value in selector)


def _status(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


class FakeApiServer:
    """In-process API server on 127.0.0.1; ``await start()``, ``await stop()``, ``await start()`` again."""

    def __init__(
        self,
        token: str | None = "fake-token",
        ssl_context: ssl.SSLContext | None = None,
        bookmark_interval: float = 0.2,
    ) -> None:
        self.accepted_tokens: set[str] = {token} if token else set()
        self.ssl_context = ssl_context
        self.bookmark_interval = bookmark_interval
        self.requests: list[RecordedRequest] = []
        self.forbidden: set[str] = set()
        self.expire_next_watch: dict[str, GoneMode] = {}
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {name: {} for name in _RESOURCES}
        self.resource_version = 100
        self.compacted_version = 0
        self._history: list[tuple[int, str, str, Obj]] = []
        self._watches: set[_Watch] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (on the same port as before after a stop)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
        await site.start()
        if not self.port:
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Go away: drop every connection and stop listening."""
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def drop_watches(self) -> None:
        """Cut every open watch connection abruptly (no terminating chunk)."""
        for watch in list(self._watches):
            if watch.transport is not None:
                watch.transport.abort()
            watch.queue.put_nowait(None)

    # --- objects -------------------------------------------------------------------------

    def _record(self, resource: str, event_type: str, obj: Obj) -> None:
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        snapshot = copy.deepcopy(obj)
        self._history.append((self.resource_version, resource, event_type, snapshot))
        for watch in list(self._watches):
            if watch.resource == resource and _matches(snapshot, watch.selector):
                watch.queue.put_nowait((event_type, snapshot))

    def add(self, resource: str, obj: Obj) -> Obj:
        """Create (or replace) an object; ADDED flows to open watches."""
        obj = copy.deepcopy(obj)
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        event_type = "MODIFIED" if key in self.objects[resource] else "ADDED"
        self.objects[resource][key] = obj
        self._record(resource, event_type, obj)
        return obj

    def modify(self, resource: str, obj: Obj) -> Obj:
        return self.add(resource, obj)

    def delete(self, resource: str, namespace: str, name: str) -> None:
        obj = self.objects[resource].pop((namespace, name))
        self._record(resource, "DELETED", obj)

    def compact(self) -> None:
        """Forget history: every resourceVersion seen so far is now too old (410 Gone)."""
        self.compacted_version = self.resource_version + 1
        self._history.clear()

    def send_bookmarks(self) -> None:
        for watch in list(self._watches):
            watch.queue.put_nowait(("BOOKMARK", {}))

    # --- inspection ----------------------------------------------------------------------

    def requests_for(self, resource: str, verb: str | None = None) -> list[RecordedRequest]:
        return [r for r in self.requests if r.resource == resource and (verb is None or r.verb == verb)]

    def open_watches(self, resource: str) -> int:
        return sum(1 for watch in self._watches if watch.resource == resource)

    def write_kubeconfig(self, path: str, token: str | None = None) -> str:
        """A kubeconfig pointing at this server with bearer-token auth (JSON is valid YAML)."""
        user: Obj = {"token": token or next(iter(self.accepted_tokens), "none")}
        cluster: Obj = {"server": self.url}
        if self.ssl_context:
            cluster["insecure-skip-tls-verify"] = True
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "obi", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "obi"}}],
            "current-context": "fake",
        }
        with open(path, "w", encoding="utf-8") as file:
            json.dump(config, file)
        return path

    # --- HTTP --------------------------------------------------------------------------

    @staticmethod
    def _resource_of(path: str) -> str:
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            rest = parts[2:]
        elif parts[:3] == ["apis", "apps", "v1"]:
            rest = parts[3:]
        else:
            return ""
        if len(rest) == 3 and rest[0] == "namespaces":
            rest = rest[2:]
        if len(rest) == 1 and rest[0] in _RESOURCES:
            group = _RESOURCES[rest[0]][0]
            if (group == "apps") == (parts[0] == "apis"):
                return rest[0]
        return ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        resource = self._resource_of(request.path)
        recorded = RecordedRequest(request.method, request.path, resource, dict(request.query), token)
        self.requests.append(recorded)
        if self.accepted_tokens and token not in self.accepted_tokens:
            return web.json_response(_status(401, "Unauthorized", "Unauthorized"), status=401)
        if not resource:
            return web.json_response(
                _status(404, "NotFound", "the server could not find the requested resource"), status=404
            )
        if request.method != "GET":
            return web.json_response(_status(405, "MethodNotAllowed", "not allowed by the fake"), status=405)
        group = _RESOURCES[resource][0]
        if resource in self.forbidden:
            scope = f'in API group "{group}" at the cluster scope'
            message = (
                f"{resource}{'.' + group if group else ''} is forbidden: User "
                f'"system:serviceaccount:default:obi" cannot {recorded.verb} resource '
                f'"{resource}" {scope}'
            )
            return web.json_response(
                _status(403, "Forbidden", message, {"group": group, "kind": resource}), status=403
            )
        namespace = ""
        parts = [p for p in request.path.split("/") if p]
        if "namespaces" in parts:
            namespace = parts[parts.index("namespaces") + 1]
        selector = _parse_selector(request.query.get("fieldSelector", ""))
        if namespace:
            selector.append(("metadata.namespace", namespace))
        if recorded.verb == "watch":
            return await self._watch(request, resource, selector)
        return self._list(request, resource, selector)

    def _list(self, request: web.Request, resource: str, selector: list[tuple[str, str]]) -> web.Response:
        _, api_version, kind = _RESOURCES[resource]
        items = [
            {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
            for _, obj in sorted(self.objects[resource].items())
            if _matches(obj, selector)
        ]
        offset = int(request.query.get("continue") or 0)
        limit = int(request.query.get("limit") or 0)
        page = items[offset : offset + limit] if limit else items[offset:]
        metadata: Obj = {"resourceVersion": str(self.resource_version)}
        if limit and offset + limit < len(items):
            metadata["continue"] = str(offset + limit)
        body = {"kind": f"{kind}List", "apiVersion": api_version, "metadata": metadata, "items": page}
        return web.json_response(body)

    async def _watch(
        self, request: web.Request, resource: str, selector: list[tuple[str, str]]
    ) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        gone = self.expire_next_watch.pop(resource, None)
        if gone is None and since and since < self.compacted_version:
            gone = "event"
        message = f"too old resource version: {since} ({self.resource_version})"
        if gone == "http":
            return web.json_response(_status(410, "Expired", message), status=410)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if gone == "event":
            await self._send(response, "ERROR", _status(410, "Expired", message))
            return response
        watch = _Watch(resource, selector, transport=request.transport)
        for version, res, event_type, obj in self._history:
            if res == resource and version > since and _matches(obj, selector):
                watch.queue.put_nowait((event_type, obj))
        self._watches.add(watch)
        deadline = time.monotonic() + float(request.query.get("timeoutSeconds") or 3600)
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    item = await asyncio.wait_for(watch.queue.get(), min(remaining, self.bookmark_interval))
                except TimeoutError:
                    item = ("BOOKMARK", {})
                if item is None:
                    return response
                event_type, obj = item
                if event_type == "BOOKMARK":
                    if not parse_bool(request.query.get("allowWatchBookmarks")):
                        continue
                    _, api_version, kind = _RESOURCES[resource]
                    obj = {
                        "kind": kind,
                        "apiVersion": api_version,
                        "metadata": {"resourceVersion": str(self.resource_version)},
                    }
                await self._send(response, event_type, obj)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._watches.discard(watch)
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, event_type: str, obj: Obj) -> None:
        await response.write(json.dumps({"type": event_type, "object": obj}).encode() + b"\n")


# --- realistic objects ---------------------------------------------------------------------


def owner_reference(kind: str, name: str, api_version: str = "apps/v1") -> Obj:
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": f"uid-{kind.lower()}-{name}",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def pod(
    name: str,
    namespace: str = "default",
    *,
    uid: str,
    node: str = "node-1",
    containers: Iterable[tuple[str, str]] = (),
    init_containers: Iterable[tuple[str, str]] = (),
    owner: Obj | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    env: Mapping[str, Mapping[str, str]] | None = None,
    start_time: str = "2024-05-01T10:00:00Z",
    runtime: str = "containerd",
) -> Obj:
    """A running Pod as the API returns it; containers are (name, 64-hex id) pairs."""
    containers, init_containers = list(containers), list(init_containers)
    env = env or {}

    def spec_container(container: str) -> Obj:
        return {
            "name": container,
            "image": f"registry.example/{container}:1.0",
            "env": [{"name": k, "value": v} for k, v in env.get(container, {}).items()]
            + [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        }

    def status(container: str, container_id: str, init: bool) -> Obj:
        state = (
            {"terminated": {"exitCode": 0, "reason": "Completed"}}
            if init
            else {"running": {"startedAt": start_time}}
        )
        return {
            "name": container,
            "containerID": f"{runtime}://{container_id}",
            "image": f"registry.example/{container}:1.0",
            "imageID": "sha256:" + "ab" * 32,
            "ready": not init,
            "restartCount": 0,
            "started": not init,
            "state": state,
        }

    metadata: Obj = {
        "name": name,
        "namespace": namespace,
        "uid": uid,
        "creationTimestamp": start_time,
        "labels": dict(labels or {}),
        "annotations": dict(annotations or {}),
    }
    if owner:
        metadata["ownerReferences"] = [owner]
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": metadata,
        "spec": {
            "nodeName": node,
            "serviceAccountName": "default",
            "containers": [spec_container(c) for c, _ in containers],
            "initContainers": [spec_container(c) for c, _ in init_containers],
        },
        "status": {
            "phase": "Running",
            "hostIP": "10.0.0.1",
            "podIP": "10.1.0.5",
            "podIPs": [{"ip": "10.1.0.5"}],
            "startTime": start_time,
            "containerStatuses": [status(c, i, False) for c, i in containers],
            "initContainerStatuses": [status(c, i, True) for c, i in init_containers],
        },
    }


def replicaset(name: str, namespace: str = "default", *, deployment: str | None = None) -> Obj:
    metadata: Obj = {"name": name, "namespace": namespace, "uid": f"uid-rs-{name}", "labels": {}}
    if deployment:
        metadata["ownerReferences"] = [owner_reference("Deployment", deployment)]
    return {
        "kind": "ReplicaSet",
        "apiVersion": "apps/v1",
        "metadata": metadata,
        "spec": {"replicas": 1},
        "status": {"replicas": 1},
    }


def node(name: str, address: str = "10.0.0.1") -> Obj:
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "uid": f"uid-node-{name}", "labels": {"kubernetes.io/hostname": name}},
        "status": {
            "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}]
        },
    }


def service(name: str, namespace: str = "default", cluster_ip: str = "10.96.0.10") -> Obj:
    return {
        "kind": "Service",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-svc-{name}"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ports": [{"port": 80, "protocol": "TCP"}],
        },
    }
