"""Where the Kubernetes API is and how to authenticate: in-cluster service account or kubeconfig."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.config import load_kube_config

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# Projected service-account tokens rotate (kubelet refreshes them at 80% of their life, about
# hourly); the file is re-read when it changes and at least this often.
TOKEN_REREAD_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class KubeConfigSource:
    """How to reach the API server: ``in-cluster`` (``path`` is the service-account directory,
    ``host`` the https URL) or ``kubeconfig`` (``path`` is the kubeconfig file)."""

    kind: Literal["in-cluster", "kubeconfig"]
    path: str
    host: str = ""


def _join_host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def kube_config_source(
    kubeconfig_path: str,
    environ: Mapping[str, str],
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
) -> KubeConfigSource | None:
    """The API server obi can reach, or None when there is no Kubernetes here.

    Order (OBI's): the explicit kubeconfig path, else $KUBECONFIG (its first existing
    file), else ~/.kube/config if it exists, else the in-cluster service account
    (KUBERNETES_SERVICE_HOST/PORT and a token file).
    """
    if kubeconfig_path:
        return KubeConfigSource("kubeconfig", kubeconfig_path)
    for candidate in environ.get("KUBECONFIG", "").split(os.pathsep):
        if candidate and os.path.isfile(candidate):
            return KubeConfigSource("kubeconfig", candidate)
    home = environ.get("HOME") or os.path.expanduser("~")
    default = os.path.join(home, ".kube", "config")
    if home and os.path.isfile(default):
        return KubeConfigSource("kubeconfig", default)
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if host and port and os.path.isfile(os.path.join(service_account_dir, "token")):
        return KubeConfigSource("in-cluster", service_account_dir, f"https://{_join_host_port(host, port)}")
    return None


@dataclass(slots=True)
class ServiceAccountToken:
    """The service-account token file, re-read when it changes (rotation) or every period."""

    path: str
    reread_seconds: float = TOKEN_REREAD_SECONDS
    _token: str = ""
    _stamp: tuple[int, int, int] = (0, 0, 0)
    _read_at: float = field(default=0.0)

    def current(self) -> str:
        """The token now in the file (cached while the file is unchanged)."""
        try:
            info = os.stat(self.path)
        except OSError:
            return self._token
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        now = time.monotonic()
        if stamp != self._stamp or not self._token or now - self._read_at >= self.reread_seconds:
            try:
                with open(self.path, encoding="utf-8") as token_file:
                    token = token_file.read().strip()
            except OSError:
                return self._token
            if token:
                self._token, self._stamp, self._read_at = token, stamp, now
        return self._token

    def refresh(self, configuration: Configuration) -> None:
        """kubernetes_asyncio's refresh_api_key_hook: called before every request."""
        token = self.current()
        if token:
            configuration.api_key["BearerToken"] = f"Bearer {token}"


async def new_api_client(source: KubeConfigSource) -> ApiClient:
    """A kubernetes_asyncio ApiClient for the source (close it with ``await client.close()``).

    Raises kubernetes_asyncio's ConfigException or OSError when the configuration is unusable.
    """
    configuration = Configuration()
    if source.kind == "kubeconfig":
        await load_kube_config(
            config_file=source.path, client_configuration=configuration, persist_config=False
        )
    else:
        ca_path = os.path.join(source.path, "ca.crt")
        if not os.path.isfile(ca_path):
            raise OSError(f"no CA certificate at {ca_path}")
        token = ServiceAccountToken(os.path.join(source.path, "token"))
        if not token.current():
            raise OSError(f"no service-account token in {token.path}")
        configuration.host = source.host
        configuration.ssl_ca_cert = ca_path
        token.refresh(configuration)
        configuration.refresh_api_key_hook = token.refresh
    return ApiClient(configuration=configuration)
