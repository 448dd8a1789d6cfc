"""End to end with Kubernetes metadata: the real agent, an app in real kubepods-shaped
cgroups (v1 and v2), the fake API server announcing its pod (ReplicaSet owned by a
Deployment) through a kubeconfig, curl, and an OTLP receiver."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.e2e.agent import AgentProcess
from tests.e2e.test_python_app import FAST_EXPORT, SERVERS, attributes, curl, latest_points
from tests.kube.fake_apiserver import FakeApiServer, node, owner_reference, pod, replicaset, service
from tests.otlp_receiver import OtlpReceiver
from tests.support import PodCgroup, free_port, start_process, stop_process

T = TypeVar("T")
CLUSTER = "e2e-cluster"
NODE = "node-1"


class ThreadedApiServer:
    """The fake API server on its own event loop in a thread, driven from sync tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = FakeApiServer(bookmark_interval=1.0)
        self.call(self.server.start())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def do(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()
        return self.call(run())

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class App:
    """tests/servers/app.py in a pod's cgroups; its Pod object as the API shows it."""

    def __init__(self, name: str, namespace: str = "shop", deployment: str | None = "cart",
                 labels: dict[str, str] | None = None, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.uid = str(uuid.uuid4())
        self.container_id = uuid.uuid4().hex + uuid.uuid4().hex
        self.cgroup = PodCgroup(self.uid, self.container_id).create()
        owner = None
        self.replicaset: dict[str, Any] | None = None
        if deployment:
            rs_name = f"{deployment}-7d9f8b"
            self.replicaset = replicaset(rs_name, namespace, deployment=deployment)
            owner = owner_reference("ReplicaSet", rs_name)
        self.pod = pod(name, namespace, uid=self.uid, node=NODE, containers=[("server", self.container_id)],
                       owner=owner, labels=labels or {}, env={"server": env or {}})
        self.proc = start_process(self.cgroup.wrap([sys.executable, str(SERVERS / "app.py"), str(self.port)]),
                                  ready="ready")

    def stop(self) -> None:
        stop_process(self.proc)
        self.cgroup.remove()


@pytest.fixture
def api() -> Iterator[ThreadedApiServer]:
    server = ThreadedApiServer()
    yield server
    server.close()


def announce(api: ThreadedApiServer, app: App) -> None:
    def add() -> None:
        if app.replicaset is not None:
            api.server.add("replicasets", app.replicaset)
        api.server.add("pods", app.pod)
    api.do(add)


def agent_env(api: ThreadedApiServer, tmp_path: Path, receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    kubeconfig = api.server.write_kubeconfig(str(tmp_path / "kubeconfig"))
    return {"OTEL_EBPF_KUBE_METADATA_ENABLE": "true", "KUBECONFIG": kubeconfig,
            "OTEL_EBPF_KUBE_CLUSTER_NAME": CLUSTER, "NODE_NAME": NODE, "KUBE_NAMESPACE": "obi",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
            "OTEL_EBPF_KUBE_INFORMERS_SYNC_TIMEOUT": "5s",
            "OTEL_EBPF_INTERNAL_METRICS_EXPORTER": "otel", **FAST_EXPORT, **extra}


def span_of(receiver: OtlpReceiver, path: str) -> tuple[dict[str, Any], Any]:
    return next((r, s) for r, s in receiver.spans() if attributes(s)["url.path"] == path)


def expected_k8s(app: App) -> dict[str, str]:
    return {
        "k8s.namespace.name": "shop", "k8s.pod.name": app.pod["metadata"]["name"],
        "k8s.container.name": "server", "k8s.pod.uid": app.uid, "k8s.pod.start_time": "2024-05-01T10:00:00Z",
        "k8s.node.name": NODE, "k8s.replicaset.name": "cart-7d9f8b", "k8s.deployment.name": "cart",
        "k8s.cluster.name": CLUSTER,
    }


def test_spans_and_metrics_carry_the_pod_metadata(api: ThreadedApiServer, tmp_path: Path) -> None:
    app = App("cart-7d9f8b-x2x9z")
    try:
        api.do(lambda: (api.server.add("nodes", node(NODE)),
                        api.server.add("services", service("cart", "shop"))))
        announce(api, app)
        with OtlpReceiver() as receiver, AgentProcess(agent_env(api, tmp_path, receiver,
                                                                OTEL_EBPF_OPEN_PORT=str(app.port))) as agent:
            agent.wait_instrumented(app.proc.pid)
            assert curl(f"http://127.0.0.1:{app.port}/hello") == "hello\n"
            receiver.wait_for_spans(1, timeout=15)
            receiver.wait_for(lambda: bool(latest_points(receiver, "http.server.request.duration")), 15)
            assert agent.stop() == 0
        resource, _ = span_of(receiver, "/hello")
        for key, value in expected_k8s(app).items():
            assert resource[key] == value, key
        for absent in ("k8s.statefulset.name", "k8s.daemonset.name"):
            assert absent not in resource
        # OBI's order: no OTEL_SERVICE_NAME, annotation or app.kubernetes.io/name label: the top owner.
        assert resource["service.name"] == "cart"
        assert resource["service.namespace"] == "shop"
        metric_resources = [r for r, _ in receiver.metric_points("http.server.request.duration")]
        assert metric_resources and all(r["k8s.deployment.name"] == "cart" for r in metric_resources)
        assert all(r["k8s.pod.uid"] == app.uid for r in metric_resources)
        # Only list and watch, only pods and replicasets (k8s.node.name came from the pod spec,
        # though the node and a service exist), and only this node's pods.
        requests = api.do(lambda: list(api.server.requests))
        assert {r.verb for r in requests} <= {"list", "watch"}
        assert {r.resource for r in requests} == {"pods", "replicasets"}
        assert all("spec.nodeName=node-1" in r.query.get("fieldSelector", "")
                   for r in requests if r.path.endswith("/pods"))
    finally:
        app.stop()


def test_pod_announced_after_its_first_requests(api: ThreadedApiServer, tmp_path: Path) -> None:
    app = App("cart-7d9f8b-late1", env={"OTEL_SERVICE_NAME": "cart-api"})
    try:
        with OtlpReceiver() as receiver, AgentProcess(agent_env(api, tmp_path, receiver,
                                                                OTEL_EBPF_OPEN_PORT=str(app.port))) as agent:
            agent.wait_instrumented(app.proc.pid)
            curl(f"http://127.0.0.1:{app.port}/hello")
            receiver.wait_for_spans(1, timeout=15)
            announce(api, app)
            agent.wait_log(lambda e: e.get("event") == "process_decorated"
                           and e.get("pid") == app.proc.pid, 15)
            curl(f"http://127.0.0.1:{app.port}/factorial/3")
            receiver.wait_for_spans(2, timeout=15)
            assert agent.stop() == 0
        before, _ = span_of(receiver, "/hello")
        after, _ = span_of(receiver, "/factorial/3")
        assert "k8s.pod.name" not in before
        assert before["service.name"] == "python3.11"
        for key, value in expected_k8s(app).items():
            assert after[key] == value, key
        # The container's OTEL_SERVICE_NAME in the pod spec comes first.
        assert after["service.name"] == "cart-api"
    finally:
        app.stop()


def test_api_server_away_then_back(api: ThreadedApiServer, tmp_path: Path) -> None:
    app = App("cart-7d9f8b-away1")
    try:
        announce(api, app)
        api.call(api.server.stop())
        with OtlpReceiver() as receiver:
            env = agent_env(api, tmp_path, receiver, OTEL_EBPF_OPEN_PORT=str(app.port),
                            OTEL_EBPF_KUBE_INFORMERS_SYNC_TIMEOUT="1s")
            with AgentProcess(env) as agent:
                agent.wait_instrumented(app.proc.pid, timeout=15)
                curl(f"http://127.0.0.1:{app.port}/hello")
                receiver.wait_for_spans(1, timeout=15)  # undecorated, but exported
                api.call(api.server.start())  # on the same port
                agent.wait_log(lambda e: e.get("event") == "process_decorated", 40)
                curl(f"http://127.0.0.1:{app.port}/factorial/2")
                receiver.wait_for_spans(2, timeout=15)
                assert agent.stop() == 0
                kube_warnings = [e["event"] for e in agent.logs
                                 if e.get("level") == "warning" and e.get("component") == "kube"]
        before, _ = span_of(receiver, "/hello")
        after, _ = span_of(receiver, "/factorial/2")
        assert "k8s.pod.name" not in before
        assert after["k8s.pod.name"] == "cart-7d9f8b-away1"
        # One warning for the outage, however many retries it took; the failures are counted.
        assert kube_warnings.count("kube_api_unreachable") == 1, kube_warnings
        errors = [getattr(p, "as_int", 0) for _, p in receiver.metric_points("obi.kube.api.errors")]
        assert errors and errors[-1] > 0
    finally:
        app.stop()


SELECTORS = """\
discovery:
  instrument:
    - k8s_namespace: shop
      k8s_pod_labels:
        app: "*"
    - k8s_owner_name: billing
  exclude_instrument:
    - k8s_pod_labels:
        obi: skip
"""


def test_selectors_by_namespace_labels_and_owner(api: ThreadedApiServer, tmp_path: Path) -> None:
    apps = {
        "labelled": App("web-1", labels={"app": "web"}, deployment=None),
        "excluded": App("web-2", labels={"app": "web", "obi": "skip"}, deployment=None),
        "unlabelled": App("web-3", deployment=None),
        "other-ns": App("web-4", namespace="other", labels={"app": "web"}, deployment=None),
        "owned": App("billing-5d-abcde", namespace="other", deployment="billing"),
        "system": App("coredns-1", namespace="kube-system", labels={"app": "dns"}, deployment="billing"),
    }
    try:
        for app in apps.values():
            announce(api, app)
        config = tmp_path / "obi.yml"
        config.write_text(SELECTORS)
        with OtlpReceiver() as receiver, AgentProcess(agent_env(
                api, tmp_path, receiver, OTEL_EBPF_CONFIG_PATH=str(config))) as agent:
            agent.wait_instrumented(apps["labelled"].proc.pid)
            agent.wait_instrumented(apps["owned"].proc.pid)
            time.sleep(1.5)  # three more discovery rounds: nothing else may be selected
            for app in apps.values():
                curl(f"http://127.0.0.1:{app.port}/hello")
            receiver.wait_for_spans(2, timeout=15)
            time.sleep(1.0)
            assert agent.stop() == 0
            instrumented = {e["pid"] for e in agent.logs if e.get("event") == "process_instrumented"}
        assert instrumented == {apps["labelled"].proc.pid, apps["owned"].proc.pid}
        pods = sorted(str(r["k8s.pod.name"]) for r, _ in receiver.spans())
        assert pods == ["billing-5d-abcde", "web-1"]
    finally:
        for app in apps.values():
            app.stop()
