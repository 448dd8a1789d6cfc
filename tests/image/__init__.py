"""The container image (docker/Dockerfile) built with podman and run as the Kubernetes
manifests deploy it. Helpers other image tests reuse: build_image() (or the session fixture
`obi_image` of conftest.py), podman_run_args() and ContainerAgent."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from obi import __version__
from tests.e2e.agent import AgentProcess

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tools" / "image" / "build.py"
# What tools/image/build.py (and `make image`) tags by default.
IMAGE_TAG = f"localhost/obi:{__version__}"
# The debootstrapped Debian 12 base the image is built on (also a base for test containers).
BASE_IMAGE = "localhost/obi-base:bookworm"
# How podman runs containers on these machines (DESIGN.md, "Kernel facts"): runc, since crun
# refuses the hybrid cgroup layout, and limits that root without CAP_SYS_RESOURCE can set.
PODMAN_RUNTIME = ("--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
TOOLS = ("podman", "runc", "debootstrap")
BUILD_TIMEOUT = 3000.0


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def build_image(tag: str = IMAGE_TAG, timeout: float = BUILD_TIMEOUT) -> tuple[str, float]:
    """Builds the image from this checkout with tools/image/build.py (the base is made once and
    kept in podman); returns its tag and the seconds the build took. Raises AssertionError with
    the end of the build's output when it fails."""
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, str(BUILD_SCRIPT), "--tag", tag], capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"image build took more than {timeout:.0f}s") from exc
    assert done.returncode == 0, f"image build failed:\n{(done.stdout + done.stderr)[-4000:]}"
    return tag, time.monotonic() - start


def podman(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args[:3])} ...: {done.stderr[-2000:]}"
    return done


def podman_run_args(name: str, *options: str, network: str = "host") -> list[str]:
    """`podman run` of a named container, the way it works here; host networking by default
    (traffic stays on this machine's loopback, no bridge is made)."""
    return ["podman", "run", "--name", name, *PODMAN_RUNTIME, f"--network={network}", *options]


def remove_containers(*names: str) -> None:
    """Removes the containers (running or not), each in turn; missing ones are fine."""
    failed = []
    for name in names:
        done = subprocess.run(["podman", "rm", "--force", "--time=0", "--ignore", name], capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            failed.append(f"{name}: {done.stderr.strip()}")
    assert not failed, f"containers left behind: {failed}"


class ContainerAgent(AgentProcess):
    """obi as a container (`podman run` attached, not detached): its JSON logs and printer output
    come through podman, and the agent is the container's main process, seen from the host."""

    def __init__(self, name: str, run_args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        super().__init__(env or {}, command=run_args)
        self.name = name

    def agent_pid(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = podman("inspect", "--format", "{{.State.Pid}}", self.name, check=False)
            if done.returncode == 0 and int(done.stdout.strip() or 0) > 0:
                return int(done.stdout.strip())
            time.sleep(0.2)
        raise AssertionError(f"container {self.name} has no running process")
