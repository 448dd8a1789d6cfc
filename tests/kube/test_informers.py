"""The informers with the real kubernetes_asyncio client against the fake API server."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

import structlog

from obi.kube.client import KubeConfigSource, kube_config_source
from obi.kube.informers import KubeMetadataSource
from tests.kube.conftest import FAST_RETRY, SourceRunner, eventually
from tests.kube.fake_apiserver import (
    FakeApiServer,
    node,
    owner_reference,
    parse_bool,
    pod,
    replicaset,
    service,
)
from tests.support import self_signed_certificate

CID_A = "a" * 64
CID_B = "b" * 64


def _populate(server: FakeApiServer) -> None:
    server.add("replicasets", replicaset("web-7d4b9c8f6", deployment="web"))
    server.add(
        "pods",
        pod(
            "web-7d4b9c8f6-x2x9k",
            uid="11111111-1111-1111-1111-111111111111",
            node="node-1",
            containers=[("app", CID_A)],
            owner=owner_reference("ReplicaSet", "web-7d4b9c8f6"),
            labels={"pod-template-hash": "7d4b9c8f6"},
        ),
    )
    server.add(
        "pods",
        pod("other", uid="22222222-2222-2222-2222-222222222222", node="node-2", containers=[("app", CID_B)]),
    )
    server.add("nodes", node("node-1"))
    server.add("nodes", node("node-2", "10.0.0.2"))
    server.add("services", service("web"))


async def test_initial_sync(
    api_server: FakeApiServer, kubeconfig: KubeConfigSource, sources: SourceRunner
) -> None:
    _populate(api_server)
    source = sources.start(kubeconfig)
    await eventually(source.synced.is_set)
    meta = source.store.container(CID_A)
    assert meta is not None
    assert meta.pod.owners == {"replicaset": "web-7d4b9c8f6", "deployment": "web"}
    assert source.store.container(CID_B) is not None
    assert source.store.counts == {"pods": 2, "containers": 2, "replicasets": 1}


def _web_pod(name: str, uid: str, cid: str, node_name: str = "node-1") -> dict:  # type: ignore[type-arg]
    return pod(name, uid=uid, node=node_name, containers=[("app", cid)])


async def test_only_list_and_watch_with_the_token(
    api_server: FakeApiServer, kubeconfig: KubeConfigSource, sources: SourceRunner
) -> None:
    _populate(api_server)
    source = sources.start(kubeconfig)
    await eventually(source.synced.is_set)
    await eventually(lambda: all(api_server.open_watches(r) == 1 for r in ("pods", "replicasets")))
    assert {r.verb for r in api_server.requests} == {"list", "watch"}
    assert {r.method for r in api_server.requests} == {"GET"}
    assert {r.token for r in api_server.requests} == {"fake-token"}
    assert {r.resource for r in api_server.requests} == {"pods", "replicasets"}
    assert {r.path for r in api_server.requests} == {"/api/v1/pods", "/apis/apps/v1/replicasets"}
    # Nodes and services exist, but nothing obi does reads them: neither listed nor watched.
    assert api_server.requests_for("nodes") == api_server.requests_for("services") == []
    assert api_server.open_watches("nodes") == api_server.open_watches("services") == 0
    for request in api_server.requests_for("pods", "watch"):
        assert parse_bool(request.query["allowWatchBookmarks"])


async def test_live_add_modify_delete(
    api_server: FakeApiServer, kubeconfig: KubeConfigSource, sources: SourceRunner
) -> None:
    source = sources.start(kubeconfig)
    await eventually(source.synced.is_set)
    seen: list[str] = []
    source.store.subscribe(lambda meta: seen.append(meta.pod.name))
    created = api_server.add("pods", _web_pod("late", "u-late", CID_A))
    await eventually(lambda: source.store.container(CID_A) is not None)
    created["metadata"]["labels"] = {"version": "2"}
    api_server.modify("pods", created)
    await eventually(
        lambda: (m := source.store.container(CID_A)) is not None and m.pod.labels == {"version": "2"}
    )
    api_server.delete("pods", "default", "late")
    await eventually(lambda: source.store.container(CID_A) is None)
    assert seen == ["late", "late"]
    assert len(api_server.requests_for("pods", "list")) == 1


async def test_bookmarks_advance_the_resource_version(
    api_server: FakeApiServer, kubeconfig: KubeConfigSource, sources: SourceRunner
) -> None:
    source = sources.start(kubeconfig)
    await eventually(source.synced.is_set)
    pods = source.informers[0]
    before = int(pods.resource_version)
    api_server.add("services", service("other"))  # moves the server's version, not the pods
    api_server.send_bookmarks()
    await eventually(lambda: int(pods.resource_version) == api_server.resource_version)
    assert int(pods.resource_version) > before
    assert source.stats.bookmarks >= 1


async def test_gone_as_watch_event_relists_without_losing_or_duplicating(
    api_server: FakeApiServer, kubeconfig: KubeConfigSource, sources: SourceRunner
) -> None:
    _populate(api_server)
    source = sources.start(kubeconfig)
    await eventually(source.synced.is_set)
    notified: list[str] = []
    source.store.subscribe(lambda meta: notified.append(meta.container_id))
    api_server.compact()
    api_server.expire_next_watch["pods"] = "event"
    api_server.delete("pods", "default", "other")
    api_server.add("pods", _web_pod("new", "u-new", "c" * 64))
    api_server.compact()  # the client's version is now too old
    api_server.drop_watches()
    await eventually(lambda: source.stats.relists >= 1 and source.store.container("c" * 64) is not None)
    assert source.store.container(CID_B) is None
    assert source.store.container(CID_A) is not None
    assert source.store.counts["pods"] == 2
    assert notified.count("c" * 64) == 1 and CID_A not in notified
    assert len(api_server.requests_for("pods", "list")) >= 2


async def test_gone_as_http_410_relists(
    api_server: FakeApiServer, kubeconfig: KubeConfigSource, sources: SourceRunner
) -> None:
    source = sources.start(kubeconfig)
    await eventually(source.synced.is_set)
    api_server.expire_next_watch["pods"] = "http"
    api_server.drop_watches()
    api_server.add("pods", _web_pod("after", "u-after", CID_A))
    await eventually(lambda: source.stats.relists >= 1 and source.store.container(CID_A) is not None)
    assert len(api_server.requests_for("pods", "list")) == 2


async def test_dropped_connection_reconnects_from_the_last_version(
    api_server: FakeApiServer, kubeconfig: KubeConfigSource, sources: SourceRunner
) -> None:
    source = sources.start(kubeconfig)
    await eventually(source.synced.is_set)
    await eventually(lambda: api_server.open_watches("pods") == 1)
    api_server.drop_watches()
    api_server.add("pods", _web_pod("during", "u-during", CID_A))
    await eventually(lambda: source.store.container(CID_A) is not None)
    assert source.stats.reconnects >= 1
    assert source.stats.relists == 0
    assert len(api_server.requests_for("pods", "list")) == 1  # resumed by watch, not re-listed
    assert len(api_server.requests_for("pods", "watch")) >= 2


async def test_server_gone_and_back_recovers_and_warns_once(
    api_server: FakeApiServer, kubeconfig: KubeConfigSource, sources: SourceRunner
) -> None:
    with structlog.testing.capture_logs() as logs:
        source = sources.start(kubeconfig)
        await eventually(source.synced.is_set)
        await api_server.stop()
        api_server.add("pods", _web_pod("while-away", "u-away", CID_A))
        await eventually(lambda: source.stats.api_errors >= 8)  # several failed retries, all informers
        await api_server.start()
        await eventually(lambda: source.store.container(CID_A) is not None)
    warnings = [entry for entry in logs if entry["event"] == "kube_api_unreachable"]
    assert len(warnings) == 1
    assert warnings[0]["component"] == "kube" and warnings[0]["log_level"] == "warning"
    assert any(entry["event"] == "kube_api_reachable" for entry in logs)
    assert "fake-token" not in repr(logs)


async def test_forbidden_replicasets_is_one_clear_error_and_pods_still_work(
    api_server: FakeApiServer, kubeconfig: KubeConfigSource, sources: SourceRunner
) -> None:
    api_server.forbidden.add("replicasets")
    _populate(api_server)
    with structlog.testing.capture_logs() as logs:
        source = sources.start(kubeconfig)
        await eventually(source.synced.is_set)
        await eventually(lambda: source.stats.forbidden >= 3)
    assert source.store.container(CID_A) is not None
    errors = [entry for entry in logs if entry["event"] == "kube_api_forbidden"]
    assert len(errors) == 1
    assert errors[0]["log_level"] == "error"
    assert errors[0]["message"] == (
        "cannot list replicasets.apps: add to the ClusterRole: "
        "- apiGroups: ['apps'] resources: ['replicasets'] verbs: ['list', 'watch']"
    )
    api_server.forbidden.clear()  # RBAC fixed: the informer recovers on its own
    await eventually(lambda: source.store.counts["replicasets"] == 1)


async def test_node_restriction_is_asked_of_the_server(
    api_server: FakeApiServer, kubeconfig: KubeConfigSource, sources: SourceRunner
) -> None:
    _populate(api_server)
    source = sources.start(kubeconfig, node_name="node-1")
    await eventually(source.synced.is_set)
    await eventually(lambda: api_server.open_watches("pods") == 1)
    pod_requests = api_server.requests_for("pods")
    assert pod_requests and all(r.query.get("fieldSelector") == "spec.nodeName=node-1" for r in pod_requests)
    assert all("fieldSelector" not in r.query for r in api_server.requests_for("replicasets"))
    assert {r.resource for r in api_server.requests} == {"pods", "replicasets"}
    assert source.store.container(CID_A) is not None
    assert source.store.container(CID_B) is None  # on node-2
    api_server.add("pods", _web_pod("elsewhere", "u-else", "e" * 64, node_name="node-2"))
    api_server.add("pods", _web_pod("here", "u-here", "f" * 64, node_name="node-1"))
    await eventually(lambda: source.store.container("f" * 64) is not None)
    assert source.store.container("e" * 64) is None


async def test_paginated_initial_list(api_server: FakeApiServer, kubeconfig: KubeConfigSource) -> None:
    for index in range(7):
        api_server.add("pods", _web_pod(f"p{index}", f"u{index}", f"{index}" * 64))
    source = KubeMetadataSource(kubeconfig, None, retry=FAST_RETRY, page_size=3, read_timeout_s=5)
    task = asyncio.create_task(source.run())
    try:
        await eventually(source.synced.is_set)
        assert source.store.counts["pods"] == 7
        assert len(api_server.requests_for("pods", "list")) == 3
    finally:
        await source.stop()
        await asyncio.wait_for(task, 5)


async def test_in_cluster_with_a_rotated_token(tmp_path: Path, sources: SourceRunner) -> None:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    cert, key = self_signed_certificate(account / "ca.crt", account / "server.key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = FakeApiServer(token="token-1", ssl_context=context)
    await server.start()
    try:
        (account / "token").write_text("token-1")
        environ = {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(server.port),
            "HOME": str(tmp_path),
        }
        config = kube_config_source("", environ, service_account_dir=str(account))
        assert config is not None and config.kind == "in-cluster"
        source = sources.start(config)
        await eventually(source.synced.is_set)
        # The kubelet rotates the projected token: a new file swapped in atomically.
        (account / "token.new").write_text("token-2")
        os.replace(account / "token.new", account / "token")
        server.accepted_tokens = {"token-2"}
        server.drop_watches()
        server.add("pods", _web_pod("rotated", "u-rot", CID_A))
        await eventually(lambda: source.store.container(CID_A) is not None)
        # The server now refuses token-1: the pod can only have come through token-2.
        assert server.requests_for("pods")[-1].token == "token-2"
        assert server.requests[0].token == "token-1"
    finally:
        await sources.stop_all()
        sources.running.clear()
        await server.stop()
