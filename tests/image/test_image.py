"""The container image, built for real (podman, on a debootstrapped Debian 12 base) and run
the way deploy/kubernetes deploys it, against a real server and an OTLP receiver.

Each run is read from the manifests: the unprivileged DaemonSet's securityContext (uid 0,
read-only root, `drop: ALL` plus its capability list), its volumes (the emptyDir at
/var/run/obi as a tmpfs, the hostPath /sys/fs/cgroup bind-mounted) and its environment.
Neither manifest sets a seccompProfile, so Kubernetes runs obi unconfined: podman's default
profile, unlike Kubernetes', refuses bpf() without CAP_SYS_ADMIN. Host networking stands
for the node's: the receiver listens on this machine's loopback.

- DaemonSet (daemonset-unprivileged.yaml): `--pid=host`; the server runs on the host.
- Sidecar (sidecar.yaml's environment, shareProcessNamespace): the server runs in a
  container of the same image, obi in its pid (and network) namespace, with the unprivileged
  DaemonSet's securityContext rather than the manifest's `privileged: true`.

Both select the server by its port (OTEL_EBPF_OPEN_PORT, the sidecar manifest's setting),
so that obi leaves alone the other listeners of this shared machine (among them this
test's receiver, whose spans would otherwise follow each export).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from obi import __version__
from obi.capabilities import effective_capabilities
from tests.e2e.test_python_app import FAST_EXPORT, attributes, curl
from tests.image import REPO, ContainerAgent, podman, podman_run_args, remove_containers
from tests.otlp_receiver import OtlpReceiver
from tests.support import free_port, start_process, stop_process, wait_for_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]  # the first test waits for the build

MANIFESTS = REPO / "deploy" / "kubernetes"
SERVERS = REPO / "tests" / "servers"
# The image is small when its bulk is Debian's python3 and obi's dependencies (README).
SIZE_BUDGET = 250_000_000
# Settings of the test harness, not of the manifests: JSON logs to follow, prompt exports.
HARNESS_ENV = {"OTEL_EBPF_LOG_FORMAT": "json", **FAST_EXPORT}


def workload(manifest: str, kind: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(the workload's metadata, its pod spec, its obi container) in a manifest of deploy/."""
    documents = yaml.safe_load_all((MANIFESTS / manifest).read_text())
    [found] = [d for d in documents if d and d["kind"] == kind]
    spec = found["spec"]["template"]["spec"]
    [container] = [c for c in spec["containers"] if c["name"] == "obi"]
    return found["metadata"], spec, container


def manifest_env(metadata: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would give it (downward API included)."""
    fields = {"metadata.namespace": metadata.get("namespace", "default"),
              "spec.nodeName": socket.gethostname()}
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def security_options(container: dict[str, Any]) -> list[str]:
    """podman's spelling of the container's securityContext."""
    context = container["securityContext"]
    assert not context.get("privileged")
    capabilities = context["capabilities"]
    options = [*(f"--cap-drop={c}" for c in capabilities["drop"]),
               *(f"--cap-add={c}" for c in capabilities["add"])]
    if context.get("readOnlyRootFilesystem"):
        # Only the root: podman's default tmpfs mounts on /run, /tmp, /var/tmp are not Kubernetes'.
        options += ["--read-only", "--read-only-tmpfs=false"]
    if "runAsUser" in context:
        options.append(f"--user={context['runAsUser']}")
    assert "seccompProfile" not in context  # Kubernetes' default: Unconfined
    return [*options, "--security-opt=seccomp=unconfined"]


def volume_options(spec: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """The container's volumes: emptyDir as a tmpfs, hostPath bind-mounted."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    options = []
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            options.append(f"--tmpfs={mount['mountPath']}")
        else:
            suffix = ":ro" if mount.get("readOnly") else ""
            options.append(f"--volume={volume['hostPath']['path']}:{mount['mountPath']}{suffix}")
    return options


def env_options(env: dict[str, str]) -> list[str]:
    return [f"--env={key}={value}" for key, value in sorted(env.items())]


def traffic(port: int) -> None:
    """Four requests, answers checked: the spans the receiver must get, no more."""
    base = f"http://127.0.0.1:{port}"
    assert curl(f"{base}/hello", f"{base}/factorial/5") == "hello\n120\n"
    assert curl("-X", "POST", "--data-binary", "hello world", f"{base}/echo") == "hello world"
    assert curl("-H", "Connection: close", f"{base}/status/404") == "status\n"


def expected_spans(port: int, service: str, pid: int) -> list[tuple[Any, ...]]:
    def span(method: str, path: str, route: str, status: int, request: int, response: int) -> tuple[Any, ...]:
        attrs = {"http.request.method": method, "http.response.status_code": status, "url.path": path,
                 "url.scheme": "http", "http.route": route, "server.address": "127.0.0.1",
                 "server.port": port, "client.address": "127.0.0.1", "network.protocol.version": "1.1",
                 "http.request.body.size": request, "http.response.body.size": response}
        return (f"{method} {route}", Span.SPAN_KIND_SERVER, Status.STATUS_CODE_UNSET, sorted(attrs.items()),
                service, pid)

    return sorted([span("GET", "/hello", "/hello", 200, 0, 6),
                   span("GET", "/factorial/5", "/factorial/*", 200, 0, 4),
                   span("POST", "/echo", "/echo", 200, 11, 11),
                   span("GET", "/status/404", "/status/*", 404, 0, 7)], key=str)


def received_spans(receiver: OtlpReceiver) -> list[tuple[Any, ...]]:
    return sorted(((span.name, span.kind, span.status.code, sorted(attributes(span).items()),
                    resource["service.name"], resource["process.pid"])
                   for resource, span in receiver.spans()), key=str)


def check_confined(pid: int, container: dict[str, Any]) -> None:
    """The running obi, seen from the host: exactly the manifest's capabilities, a read-only
    root and a tmpfs at /var/run/obi."""
    added = container["securityContext"]["capabilities"]["add"]
    assert effective_capabilities(f"/proc/{pid}/status") == set(added)
    mounts: dict[str, tuple[list[str], str]] = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields, _, fs = line.partition(" - ")
        mounts[fields.split()[4]] = (fields.split()[5].split(","), fs.split()[0])
    assert "ro" in mounts["/"][0]
    # /var/run is a link to /run in Debian: the emptyDir is mounted where it leads
    options, fs = mounts["/run/obi"]
    assert fs == "tmpfs" and "rw" in options


def check_clean_stop(agent: ContainerAgent) -> dict[str, Any]:
    """obi stopped on SIGTERM with exit code 0, its links gone, nothing failed or lost."""
    assert agent.stop() == 0
    errors = [e for e in agent.logs if e.get("level") in ("error", "critical") or e.get("event") == "raw"]
    assert not errors, errors
    stopped = agent.wait_log(lambda e: e.get("event") == "agent_stopped", 1)
    assert (stopped["spans_export_failed"], stopped["events_lost"]) == (0, 0), stopped
    return stopped


def test_image_is_small_and_carries_no_build_tools(obi_image: str) -> None:
    [inspected] = json.loads(podman("image", "inspect", obi_image).stdout)
    print(f"\n{obi_image}: {inspected['Size'] / 1e6:.1f} MB")
    assert inspected["Size"] < SIZE_BUDGET
    assert inspected["Config"]["Entrypoint"] == ["/opt/obi/bin/obi"]
    script = ("for tool in gcc cc clang pip pip3 python3-config; do command -v $tool; done; "
              "ls /usr/include 2>/dev/null; python3 --version; obi version")
    done = subprocess.run([*podman_run_args(f"obi-test-contents-{os.getpid()}", "--rm",
                                            "--read-only", "--entrypoint=sh",
                                            network="none"), obi_image, "-c", script],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(rf"Python 3\.11\.\d+\nobi {re.escape(__version__)}\n", done.stdout), done.stdout


@pytest.fixture
def host_app() -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    proc = start_process([sys.executable, str(SERVERS / "app.py"), str(port)], ready="ready",
                         env={"PATH": "/usr/bin:/bin", "OTEL_SERVICE_NAME": "image-daemonset-app"})
    yield proc, port
    stop_process(proc)


def test_daemonset_unprivileged_sees_a_host_server(obi_image: str,
                                                   host_app: tuple[subprocess.Popen[str], int]) -> None:
    app, port = host_app
    metadata, spec, container = workload("daemonset-unprivileged.yaml", "DaemonSet")
    assert spec["hostPID"] is True
    name = f"obi-test-daemonset-{os.getpid()}"
    try:
        with OtlpReceiver() as receiver:
            env = {**manifest_env(metadata, container), **HARNESS_ENV, "OTEL_EBPF_OPEN_PORT": str(port),
                   "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint}
            agent = ContainerAgent(name, [
                *podman_run_args(name, "--pid=host", *security_options(container),
                                 *volume_options(spec, container), *env_options(env)), obi_image])
            agent.start()
            check_confined(agent.agent_pid(), container)
            agent.wait_instrumented(app.pid, timeout=30)
            traffic(port)
            receiver.wait_for_spans(4, timeout=20)
            stopped = check_clean_stop(agent)
    finally:
        remove_containers(name)

    assert received_spans(receiver) == expected_spans(port, "image-daemonset-app", app.pid)
    assert stopped["spans"] == 4
    # Without tracefs (and no right to mount it) raw tracepoints, which need none of it.
    assert agent.wait_log(lambda e: e.get("event") == "agent_started", 1)["hooks"] == "raw_tracepoint"
    # The manifest's text printer too, one line per span on stdout.
    printed = sorted(re.findall(r" HTTP (\d+) (GET|POST) (\S+)\(", "\n".join(agent.stdout)))
    assert printed == [("200", "GET", "/factorial/5"), ("200", "GET", "/hello"), ("200", "POST", "/echo"),
                       ("404", "GET", "/status/404")], agent.stdout


def test_sidecar_shares_the_app_containers_pid_namespace(obi_image: str) -> None:
    _, spec, container = workload("sidecar.yaml", "Deployment")
    assert spec["shareProcessNamespace"] is True
    _, unprivileged_spec, unprivileged = workload("daemonset-unprivileged.yaml", "DaemonSet")
    port = free_port()
    app, obi = f"obi-test-app-{os.getpid()}", f"obi-test-sidecar-{os.getpid()}"
    try:
        # The application container: tests/servers/app.py under the image's Debian python3, pid 1.
        app_run = podman_run_args(app, "--detach", f"--volume={SERVERS}:/srv:ro", "--read-only",
                                  "--entrypoint=python3", "--env=OTEL_SERVICE_NAME=image-sidecar-app")
        started = subprocess.run([*app_run, obi_image, "/srv/app.py", str(port)], capture_output=True,
                                 text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        wait_for_port(port, timeout=30)
        with OtlpReceiver() as receiver:
            env = {**manifest_env({}, container), **HARNESS_ENV, "OTEL_EBPF_OPEN_PORT": str(port),
                   "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint}
            # The pod's shared pid namespace and network; the DaemonSet's emptyDir at /var/run/obi.
            run_dir = [o for o in volume_options(unprivileged_spec, unprivileged) if o.startswith("--tmpfs")]
            agent = ContainerAgent(obi, [
                *podman_run_args(obi, f"--pid=container:{app}", *security_options(unprivileged), *run_dir,
                                 *env_options(env), network=f"container:{app}"), obi_image])
            agent.start()
            check_confined(agent.agent_pid(), unprivileged)
            instrumented = agent.wait_log(lambda e: e.get("event") == "process_instrumented", 30)
            traffic(port)
            receiver.wait_for_spans(4, timeout=20)
            stopped = check_clean_stop(agent)
    finally:
        remove_containers(obi, app)

    # The app is pid 1 of the shared namespace: obi reports it as it sees it.
    assert instrumented["pid"] == 1
    assert received_spans(receiver) == expected_spans(port, "image-sidecar-app", 1)
    assert stopped["spans"] == 4 and stopped["unknown_process"] == 0
    # sidecar.yaml asks for Kubernetes metadata: without a cluster obi says so and goes on.
    assert env["OTEL_EBPF_KUBE_METADATA_ENABLE"] == "true"
    assert any(e.get("event") == "kubernetes_not_found" for e in agent.logs)


def test_manifests_mounts_are_mirrored() -> None:
    """What the runs above take from the DaemonSet manifest, spelled out once."""
    _, spec, container = workload("daemonset-unprivileged.yaml", "DaemonSet")
    assert volume_options(spec, container) == ["--tmpfs=/var/run/obi",
                                               "--volume=/sys/fs/cgroup:/sys/fs/cgroup"]
    guide = ("BPF", "SYS_PTRACE", "NET_RAW", "CHECKPOINT_RESTORE", "DAC_READ_SEARCH", "PERFMON")
    assert security_options(container) == [
        "--cap-drop=ALL", *(f"--cap-add={c}" for c in guide),
        "--read-only", "--read-only-tmpfs=false", "--user=0", "--security-opt=seccomp=unconfined"]
    assert Path("/sys/kernel/btf/vmlinux").exists()
