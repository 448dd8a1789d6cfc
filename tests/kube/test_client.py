"""Where the API server is: explicit kubeconfig, $KUBECONFIG, ~/.kube/config, in-cluster, or none."""

from __future__ import annotations

from pathlib import Path

from obi.kube.client import KubeConfigSource, ServiceAccountToken, kube_config_source


def _account(tmp_path: Path) -> Path:
    account = tmp_path / "sa"
    account.mkdir()
    (account / "token").write_text("t1")
    (account / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    return account


IN_CLUSTER = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def test_explicit_path_wins(tmp_path: Path) -> None:
    account = _account(tmp_path)
    environ = {**IN_CLUSTER, "HOME": str(tmp_path)}
    source = kube_config_source("/etc/obi/kubeconfig", environ, str(account))
    assert source == KubeConfigSource("kubeconfig", "/etc/obi/kubeconfig")


def test_kubeconfig_env_then_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text("{}")
    listed = tmp_path / "listed"
    listed.write_text("{}")
    environ = {"HOME": str(home), "KUBECONFIG": f"{tmp_path}/missing:{listed}"}
    assert kube_config_source("", environ, str(tmp_path / "none")) == KubeConfigSource(
        "kubeconfig", str(listed)
    )
    environ = {"HOME": str(home), "KUBECONFIG": str(tmp_path / "missing")}
    assert kube_config_source("", environ, str(tmp_path / "none")) == KubeConfigSource(
        "kubeconfig", str(home / ".kube" / "config")
    )


def test_in_cluster(tmp_path: Path) -> None:
    account = _account(tmp_path)
    source = kube_config_source("", {**IN_CLUSTER, "HOME": str(tmp_path)}, str(account))
    assert source == KubeConfigSource("in-cluster", str(account), "https://10.96.0.1:443")
    ipv6 = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443", "HOME": str(tmp_path)}
    source = kube_config_source("", ipv6, str(account))
    assert source is not None and source.host == "https://[fd00::1]:443"


def test_no_kubernetes_here(tmp_path: Path) -> None:
    assert kube_config_source("", {"HOME": str(tmp_path)}, str(tmp_path / "sa")) is None
    # Service variables without a token file (e.g. automountServiceAccountToken: false).
    assert kube_config_source("", {**IN_CLUSTER, "HOME": str(tmp_path)}, str(tmp_path / "sa")) is None


def test_token_is_reread_when_rotated(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("t1\n")
    token = ServiceAccountToken(str(path))
    assert token.current() == "t1"
    (tmp_path / "next").write_text("t2-longer")
    (tmp_path / "next").replace(path)
    assert token.current() == "t2-longer"
    path.unlink()
    assert token.current() == "t2-longer"  # keep the last good token while the file is swapped
