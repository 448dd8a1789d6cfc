"""KubeMetadataStore: container index, owner chain, deletions, re-lists and change callbacks."""

from __future__ import annotations

from obi.kube.model import ContainerMeta
from obi.kube.store import KubeMetadataStore
from tests.kube.fake_apiserver import owner_reference, pod, replicaset

CID_APP = "a" * 64
CID_SIDECAR = "b" * 64
CID_INIT = "c" * 64
UID = "11111111-1111-1111-1111-111111111111"


def _web_pod(
    *, labels: dict[str, str] | None = None, containers: list[tuple[str, str]] | None = None
) -> dict:  # type: ignore[type-arg]
    return pod(
        "web-7d4b9c8f6-x2x9k",
        "shop",
        uid=UID,
        containers=containers or [("app", CID_APP), ("sidecar", CID_SIDECAR)],
        init_containers=[("migrate", CID_INIT)],
        owner=owner_reference("ReplicaSet", "web-7d4b9c8f6"),
        labels=labels if labels is not None else {"pod-template-hash": "7d4b9c8f6", "app": "web"},
        annotations={"team": "payments"},
        env={"app": {"OTEL_SERVICE_NAME": "checkout", "UNRELATED": "x"}},
        runtime="cri-o",
    )


def _recorder(store: KubeMetadataStore) -> list[ContainerMeta]:
    seen: list[ContainerMeta] = []
    store.subscribe(seen.append)
    return seen


def test_pod_containers_are_indexed_with_their_metadata() -> None:
    store = KubeMetadataStore()
    store.pod_event("ADDED", _web_pod())
    meta = store.container(CID_APP)
    assert meta is not None
    assert meta.container_name == "app"
    pod_meta = meta.pod
    assert (pod_meta.namespace, pod_meta.name, pod_meta.uid, pod_meta.node_name) == (
        "shop",
        "web-7d4b9c8f6-x2x9k",
        UID,
        "node-1",
    )
    assert pod_meta.start_time == "2024-05-01T10:00:00Z"
    assert pod_meta.annotations == {"team": "payments"}
    assert pod_meta.container_env == {"app": {"OTEL_SERVICE_NAME": "checkout"}}  # only plain OTEL_* values
    init = store.container(CID_INIT)
    assert init is not None and init.container_name == "migrate"
    sidecar = store.container(CID_SIDECAR)
    assert sidecar is not None and sidecar.container_name == "sidecar"
    assert store.container("containerd://" + CID_APP) is None  # the scheme is stripped when indexing


def test_deployment_from_the_replicaset_owner() -> None:
    store = KubeMetadataStore()
    store.replicaset_event("ADDED", replicaset("web-7d4b9c8f6", "shop", deployment="web"))
    store.pod_event("ADDED", _web_pod(labels={}))
    pod_meta = store.pod(UID)
    assert pod_meta is not None
    assert pod_meta.owners == {"replicaset": "web-7d4b9c8f6", "deployment": "web"}
    assert (pod_meta.top_owner_kind, pod_meta.top_owner_name) == ("Deployment", "web")


def test_replicaset_arriving_after_its_pod_renames_the_deployment_and_notifies() -> None:
    store = KubeMetadataStore()
    seen = _recorder(store)
    store.pod_event("ADDED", _web_pod(labels={}))  # no pod-template-hash: no guess possible
    meta = store.container(CID_APP)
    assert meta is not None and "deployment" not in meta.pod.owners
    assert meta.pod.top_owner_kind == "ReplicaSet"
    assert len(seen) == 3
    store.replicaset_event("ADDED", replicaset("web-7d4b9c8f6", "shop", deployment="web"))
    meta = store.container(CID_APP)
    assert meta is not None and meta.pod.owners["deployment"] == "web"
    assert {m.container_id for m in seen[3:]} == {CID_APP, CID_SIDECAR, CID_INIT}
    assert all(m.pod.top_owner_name == "web" for m in seen[3:])


def test_pod_template_hash_names_the_deployment_before_its_replicaset_arrives() -> None:
    store = KubeMetadataStore()
    seen = _recorder(store)
    store.pod_event("ADDED", _web_pod())
    meta = store.container(CID_APP)
    assert meta is not None and meta.pod.owners["deployment"] == "web"
    store.replicaset_event("ADDED", replicaset("web-7d4b9c8f6", "shop", deployment="web"))
    assert len(seen) == 3  # the ReplicaSet confirmed it: no change, no new notification


def test_replicaset_without_deployment() -> None:
    store = KubeMetadataStore()
    store.replicaset_event("ADDED", replicaset("web-7d4b9c8f6", "shop"))
    store.pod_event("ADDED", _web_pod())
    pod_meta = store.pod(UID)
    assert pod_meta is not None
    assert pod_meta.owners == {"replicaset": "web-7d4b9c8f6"}
    assert pod_meta.top_owner_kind == "ReplicaSet"


def test_other_owner_kinds() -> None:
    store = KubeMetadataStore()
    cases = {
        "StatefulSet": ({"statefulset": "db"}, ("StatefulSet", "db"), "db"),
        "DaemonSet": ({"daemonset": "agent"}, ("DaemonSet", "agent"), "agent"),
        "Job": ({"job": "backup-28519440", "cronjob": "backup"}, ("CronJob", "backup"), "backup-28519440"),
    }
    for index, (kind, (owners, top, owner_name)) in enumerate(cases.items()):
        api_version = "batch/v1" if kind == "Job" else "apps/v1"
        uid = f"uid-{index}"
        store.pod_event(
            "ADDED",
            pod(
                f"p{index}",
                uid=uid,
                containers=[("c", f"{index}" * 64)],
                owner=owner_reference(kind, owner_name, api_version),
            ),
        )
        pod_meta = store.pod(uid)
        assert pod_meta is not None
        assert pod_meta.owners == owners
        assert (pod_meta.top_owner_kind, pod_meta.top_owner_name) == top


def test_job_not_from_a_cronjob_and_unowned_pod() -> None:
    store = KubeMetadataStore()
    store.pod_event("ADDED", pod("m", uid="u1", owner=owner_reference("Job", "db-migrate", "batch/v1")))
    store.pod_event("ADDED", pod("debug", uid="u2"))
    job_pod, bare_pod = store.pod("u1"), store.pod("u2")
    assert job_pod is not None and job_pod.owners == {"job": "db-migrate"}
    assert (job_pod.top_owner_kind, job_pod.top_owner_name) == ("Job", "db-migrate")
    assert bare_pod is not None and bare_pod.owners == {}
    assert (bare_pod.top_owner_kind, bare_pod.top_owner_name) == ("Pod", "debug")


def test_updates_notify_only_on_change() -> None:
    store = KubeMetadataStore()
    seen = _recorder(store)
    store.pod_event("ADDED", _web_pod())
    store.pod_event("MODIFIED", _web_pod())
    assert len(seen) == 3
    changed = _web_pod()
    changed["metadata"]["labels"]["version"] = "2"
    store.pod_event("MODIFIED", changed)
    assert len(seen) == 6
    meta = store.container(CID_APP)
    assert meta is not None and meta.pod.labels["version"] == "2"


def test_restarted_container_replaces_its_old_id() -> None:
    store = KubeMetadataStore()
    store.pod_event("ADDED", _web_pod(containers=[("app", CID_APP)]))
    store.pod_event("MODIFIED", _web_pod(containers=[("app", "d" * 64)]))
    assert store.container(CID_APP) is None
    assert store.container("d" * 64) is not None


def test_deleted_pod_leaves_the_index() -> None:
    store = KubeMetadataStore()
    store.pod_event("ADDED", _web_pod())
    store.pod_event("DELETED", _web_pod())
    assert store.container(CID_APP) is None and store.container(CID_INIT) is None
    assert store.pod(UID) is None
    assert store.counts["containers"] == 0


def test_relist_removes_what_is_gone_and_keeps_the_rest_quiet() -> None:
    store = KubeMetadataStore()
    store.pods_listed([_web_pod(), pod("old", uid="u-old", containers=[("c", "e" * 64)])])
    seen = _recorder(store)
    store.pods_listed([_web_pod()])
    assert store.container("e" * 64) is None
    assert store.container(CID_APP) is not None
    assert seen == []  # nothing changed for the pod still there


def test_listener_errors_do_not_break_the_store() -> None:
    store = KubeMetadataStore()

    def broken(meta: ContainerMeta) -> None:
        raise RuntimeError("listener bug")

    store.subscribe(broken)
    seen = _recorder(store)
    store.pod_event("ADDED", _web_pod())
    assert len(seen) == 3


def test_unsubscribe() -> None:
    store = KubeMetadataStore()
    seen: list[ContainerMeta] = []
    unsubscribe = store.subscribe(seen.append)
    unsubscribe()
    store.pod_event("ADDED", _web_pod())
    assert seen == []


def test_replicaset_relist_drops_vanished_replicasets() -> None:
    store = KubeMetadataStore()
    store.replicasets_listed([replicaset("web-7d4b9c8f6", "shop", deployment="web")])
    store.pod_event("ADDED", _web_pod(labels={}))
    store.replicasets_listed([])
    pod_meta = store.pod(UID)
    assert pod_meta is not None and "deployment" not in pod_meta.owners
