"""k8s_* discovery selectors against the pod a process runs in."""

from __future__ import annotations

from pathlib import Path

from obi.config import load_config
from obi.discovery.criteria import KubeCriteria, KubeFacts, ProcessFacts, Selector
from obi.discovery.selection import selection_from_config

SHOP = KubeFacts(namespace="shop", pod_name="cart-7d9f-abcde", container_name="cart",
                 owners={"replicaset": "cart-7d9f", "deployment": "cart"},
                 labels={"app": "cart", "tier": "backend"}, annotations={"team": "payments"})
SYSTEM = KubeFacts(namespace="kube-system", pod_name="coredns-1", container_name="coredns",
                   owners={"replicaset": "coredns-5d", "deployment": "coredns"}, labels={}, annotations={})


def facts(kube: KubeFacts | None, ports: tuple[int, ...] = (8080,)) -> ProcessFacts:
    return ProcessFacts(pid=10, start_time=1, ppid=1, exe_path="/app/server", listen_ports=frozenset(ports),
                        kube=kube)


def test_every_field_of_an_entry_must_match() -> None:
    criteria = KubeCriteria(namespace="shop", deployment_name="car*", pod_labels=(("tier", "back*"),))
    assert criteria.matches(SHOP)
    assert not criteria.matches(SYSTEM)
    assert not criteria.matches(None)
    assert not KubeCriteria(pod_labels=(("tier", "front*"),)).matches(SHOP)
    assert not KubeCriteria(pod_labels=(("missing", "*"),)).matches(SHOP)
    assert KubeCriteria(pod_annotations=(("team", "pay*"),)).matches(SHOP)
    assert KubeCriteria(owner_name="cart-7d9f").matches(SHOP)  # any owner
    assert KubeCriteria(owner_name="cart").matches(SHOP)
    assert not KubeCriteria(statefulset_name="*").matches(SHOP)
    assert KubeCriteria(container_name="cart", pod_name="cart-*").matches(SHOP)
    # Combined with process criteria in one entry.
    entry = Selector(open_ports=((8080, 8080),), kube=KubeCriteria(namespace="shop"))
    assert entry.matches(facts(SHOP))
    assert not entry.matches(facts(SHOP, ports=(9090,)))
    assert not entry.matches(facts(None))


def test_config_entries_include_and_exclude_by_kubernetes_attributes(tmp_path: Path) -> None:
    path = tmp_path / "obi.yml"
    path.write_text("""\
discovery:
  instrument:
    - k8s_namespace: shop
      k8s_pod_labels:
        app: "*"
    - k8s_owner_name: coredns
  exclude_instrument:
    - k8s_pod_annotations:
        team: payments
""")
    config = load_config(str(path), {})
    selection = selection_from_config(config, kube_enabled=True)
    assert selection.needs_kube
    assert not selection.matches(facts(SHOP))  # excluded by annotation
    other = KubeFacts(namespace="shop", pod_name="web-1", container_name="web", owners={},
                      labels={"app": "web"}, annotations={})
    assert selection.matches(facts(other))
    # OBI's default exclusions keep kube-system out even though an entry selects coredns.
    assert not selection.matches(facts(SYSTEM))
    assert not selection.matches(facts(None))
    # Without Kubernetes metadata the k8s-only entries are dropped (they could never match).
    without = selection_from_config(config)
    assert without.include == () and not without.needs_kube
