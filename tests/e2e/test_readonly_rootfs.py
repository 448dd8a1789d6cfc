"""The container image's promise without a Docker engine: obi built as a wheel,
installed into a fresh virtual environment, runs on a read-only root file
system with the image's environment (docker/Dockerfile) and only /var/run/obi
writable, and still delivers the exact span of a real request.

The read-only root is a private mount namespace (unshare) in which every mount
except /proc and /var/run/obi is remounted read-only, /sys and /proc/sys included
(as in an unprivileged container, or systemd's ProtectKernelTunables=); the
host's mounts are untouched.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.agent import AgentProcess
from tests.e2e.test_python_app import FAST_EXPORT, attributes, curl
from tests.otlp_receiver import OtlpReceiver
from tests.support import free_port, start_process, stop_process

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
SERVERS = REPO / "tests" / "servers"
# What the wheel is built from: the files docker/Dockerfile copies into its build stage.
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "bpf", "csrc", "vmlinux", "src")
BUILD_LEFTOVERS = ("__pycache__", "*.so", "*.o", "*.egg-info", "_libbpf_cffi.c")

# Inside `unshare --mount --propagation private`: an empty tmpfs over /run (this
# namespace only) holding the writable /run/obi (= /var/run/obi), then /proc/sys and
# every other read-write mount outside /proc remounted read-only. Before starting
# obi the script proves the root really is read-only and /var/run/obi writable.
READONLY_ROOT_SCRIPT = r"""
set -eu
mount -t tmpfs -o mode=0755 obi-test-run /run
mkdir /run/obi
mount --bind "$OBI_TEST_RUN_DIR" /run/obi
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
awk '{print $5, $6}' /proc/self/mountinfo | sort -u | while read -r mnt opts; do
    # mounts under /run (say /run/netns, left by ip netns or podman) are hidden by the tmpfs
    case "$mnt" in /proc|/proc/*|/run/*) continue ;; esac
    case "$opts" in rw*) mount -o remount,bind,ro "$mnt" ;; esac
done
for dir in / /tmp /var/tmp /root /run /etc /sys/fs/cgroup "$OBI_TEST_VENV"; do
    if (: > "$dir/.obi-ro-probe") 2>/dev/null; then
        rm -f "$dir/.obi-ro-probe"; echo "obi test: $dir is writable" >&2; exit 97
    fi
done
: > /var/run/obi/.obi-rw-probe && rm /var/run/obi/.obi-rw-probe
exec "$OBI_TEST_VENV/bin/obi"
"""


def runtime_environment(dockerfile: Path) -> dict[str, str]:
    """The ENV of the Dockerfile's last stage (the runtime image), as a dict."""
    text = dockerfile.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        words = line.split(maxsplit=1)
        if not words:
            continue
        if words[0].upper() == "FROM":
            env = {}
        elif words[0].upper() == "ENV" and len(words) == 2:
            for item in shlex.split(words[1]):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def runtime_apt_packages(dockerfile: Path) -> set[str]:
    """The Debian packages apt-get installs in the Dockerfile's last stage."""
    text = dockerfile.read_text().replace("\\\n", " ")
    stage = text.rsplit("\nFROM ", 1)[1]
    packages: set[str] = set()
    for command in stage.split("&&"):
        words = command.split()
        if "apt-get" in words and "install" in words:
            packages |= {w for w in words[words.index("install") + 1:] if not w.startswith("-")}
    return packages


def debian_package(library: Path) -> str:
    """The Debian package owning a shared library (dpkg knows one spelling of merged /usr)."""
    resolved = library.resolve()
    for candidate in (library, resolved, Path("/usr", *library.parts[1:]),
                      Path("/", *resolved.parts[2:]) if resolved.parts[1] == "usr" else resolved):
        found = subprocess.run(["dpkg", "-S", str(candidate)], capture_output=True, text=True)
        if found.returncode == 0:
            return found.stdout.split(":")[0]
    raise AssertionError(f"no Debian package owns {library}")


def build(argv: list[str], timeout: float) -> None:
    """Runs one build step; on failure, the assertion carries its stderr."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv[:4]} failed:\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment with obi installed from a wheel built from this checkout."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns(*BUILD_LEFTOVERS))
        else:
            shutil.copy2(path, source / name)
    wheels = root / "wheels"
    build([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
           "-w", str(wheels), str(source)], timeout=120)
    (wheel,) = wheels.glob("obi-*.whl")
    venv = root / "venv"
    build([sys.executable, "-m", "venv", str(venv)], timeout=120)
    build([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], timeout=240)
    yield venv


def test_wheel_carries_the_bpf_objects_and_needs_only_the_image_libraries(wheel_venv: Path) -> None:
    """The installed wheel has its BPF objects, and its native module links only
    against libraries the runtime stage installs (or the base image's libc)."""
    site = next((wheel_venv / "lib").glob("python3*/site-packages"))
    assert sorted(p.name for p in (site / "obi" / "ebpf").glob("*.bpf.o")) == ["capture.bpf.o"]
    assert not (site / "_cffi_src").exists(), "the CFFI build script must not ship"
    (module,) = (site / "obi" / "ebpf").glob("_libbpf_cffi*.so")
    # Every shared library it loads, transitively, as the dynamic loader resolves them here.
    linked = subprocess.run(["ldd", str(module)], check=True, capture_output=True, text=True).stdout
    libraries = [line.split("=>")[1].split("(")[0].strip() for line in linked.splitlines() if "=>" in line]
    owners = {debian_package(Path(library)) for library in libraries}
    assert owners <= runtime_apt_packages(DOCKERFILE) | {"libc6"}, (libraries, owners)
    assert {"libbpf1", "libelf1", "zlib1g"} <= runtime_apt_packages(DOCKERFILE)
    env = runtime_environment(DOCKERFILE)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["TMPDIR"] == env["HOME"] == "/var/run/obi"


def host_mounts() -> list[tuple[str, str]]:
    """(mount point, options) of this test's mount namespace: the host's."""
    return sorted((f.split()[4], f.split()[5]) for f in Path("/proc/self/mountinfo").read_text().splitlines())


class ReadOnlyRootAgent(AgentProcess):
    """The venv's `obi` exec'ed by a shell inside unshare: the started pid is the agent."""

    def agent_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def test_spans_arrive_from_a_read_only_root(wheel_venv: Path, tmp_path: Path) -> None:
    mounts_before = host_mounts()
    run_dir = tmp_path / "var-run-obi"
    run_dir.mkdir()
    port = free_port()
    app = start_process([sys.executable, str(SERVERS / "app.py"), str(port)], ready="ready",
                        env={"PATH": "/usr/bin:/bin", "OTEL_SERVICE_NAME": "ro-app"})
    try:
        with OtlpReceiver() as receiver:
            env = {
                **runtime_environment(DOCKERFILE),
                "OTEL_EBPF_OPEN_PORT": str(port),
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                **FAST_EXPORT,
                "OBI_TEST_VENV": str(wheel_venv),
                "OBI_TEST_RUN_DIR": str(run_dir),
            }
            agent = ReadOnlyRootAgent(env, command=[
                "unshare", "--mount", "--propagation", "private", "sh", "-c", READONLY_ROOT_SCRIPT])
            agent.env.pop("PYTHONPATH", None)
            agent.env.pop("VIRTUAL_ENV", None)
            with agent:
                # The venv's console script, not this checkout's sources.
                assert str(wheel_venv / "bin" / "obi").encode() in Path(
                    f"/proc/{agent.agent_pid()}/cmdline").read_bytes().split(b"\0")
                agent.wait_instrumented(app.pid)
                assert curl(f"http://127.0.0.1:{port}/factorial/5") == "120\n"
                receiver.wait_for_spans(1, timeout=15)
                assert agent.stop() == 0
            stopped = agent.wait_log(lambda e: e.get("event") == "agent_stopped", 1)
    finally:
        stop_process(app)

    errors = [e for e in agent.logs if e.get("level") in ("error", "critical") or e.get("event") == "raw"]
    assert not errors, errors
    assert stopped["spans_export_failed"] == 0
    ((resource, span),) = receiver.spans()
    assert resource["service.name"] == "ro-app"
    assert resource["process.pid"] == app.pid
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.name == "GET /factorial/*"
    assert attributes(span) == {
        "http.request.method": "GET", "http.response.status_code": 200, "url.path": "/factorial/5",
        "url.scheme": "http", "http.route": "/factorial/*", "server.address": "127.0.0.1",
        "server.port": port, "client.address": "127.0.0.1", "network.protocol.version": "1.1",
        "http.request.body.size": 0, "http.response.body.size": 4,
    }
    # obi wrote nothing, not even in its one writable directory; the host's mounts are as they were.
    assert list(run_dir.iterdir()) == []
    # (Compared mount by mount: other tests on this machine may mount tracefs meanwhile.)
    after = dict(host_mounts())
    assert [(m, o) for m, o in mounts_before if after.get(m, o) != o] == []
