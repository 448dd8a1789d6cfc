"""Helpers shared by the tests: ports, child processes, certificates."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

# The tests' waits are for this machine. In a kernel matrix guest (tests/matrix/vm.py sets
# OBI_VM_KERNEL) QEMU emulates the CPU and Python runs about ten times slower: the waits stretch.
TIME_SCALE = 10.0 if os.environ.get("OBI_VM_KERNEL") else 1.0


def bpf_link_ids() -> set[int]:
    """Ids of every BPF link on the host (bpftool)."""
    out = subprocess.run(["bpftool", "-j", "link", "show"], check=True, capture_output=True, text=True).stdout
    return {int(link["id"]) for link in json.loads(out or "[]")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout * TIME_SCALE
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def start_process(argv: Sequence[str], ready: str | None = None, port: int | None = None,
                  env: Mapping[str, str] | None = None, timeout: float = 10.0) -> subprocess.Popen[str]:
    """Starts a child; waits for a line containing `ready` on stdout, or for `port`."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE if ready else subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True,
                            env=dict(env) if env is not None else None)
    if ready is not None:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout * TIME_SCALE
        while time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 0.1)[0]:
                line = proc.stdout.readline()
                if ready in line:
                    break
                if not line and proc.poll() is not None:
                    raise RuntimeError(f"{argv[0]} exited with {proc.returncode} before it was ready")
        else:
            stop_process(proc)
            raise TimeoutError(f"{argv} not ready after {timeout}s")
    if port is not None:
        wait_for_port(port, timeout)
    return proc


def stop_process(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Stops a child we started, by pid; kills it if it does not go in time."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


class PodCgroup:
    """Real cgroups shaped like a kubelet's for one container, in cgroup v2 (the
    unified mount, systemd-style slices) and v1 (the pids hierarchy, cgroupfs
    style), so /proc/PID/cgroup of a process started in them reads as in a pod."""

    V2_ROOT = Path("/sys/fs/cgroup/unified")
    V1_ROOT = Path("/sys/fs/cgroup/pids")

    def __init__(self, pod_uid: str, container_id: str, qos: str = "besteffort",
                 versions: tuple[str, ...] = ("v2", "v1")) -> None:
        slice_uid = pod_uid.replace("-", "_")
        chains = {
            "v2": (self.V2_ROOT, ["kubepods.slice", f"kubepods-{qos}.slice",
                                  f"kubepods-{qos}-pod{slice_uid}.slice",
                                  f"cri-containerd-{container_id}.scope"]),
            "v1": (self.V1_ROOT, ["kubepods", qos, f"pod{pod_uid}", container_id]),
        }
        self._chains = [chains[v] for v in versions]
        self.leaves = [root.joinpath(*parts) for root, parts in self._chains]

    def create(self) -> PodCgroup:
        for root, parts in self._chains:
            root.joinpath(*parts).mkdir(parents=True, exist_ok=True)
        return self

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """argv run inside the pod's cgroups from its first instruction."""
        moves = " && ".join(f"echo $$ > {leaf}/cgroup.procs" for leaf in self.leaves)
        script = f'{moves} && exec "$@"'
        return ["sh", "-c", script, "sh", *argv]

    def remove(self) -> None:
        """Removes this container's cgroups and every kubepods ancestor left empty
        (another pod of the same test may still use a shared parent: then it stays)."""
        for root, parts in self._chains:
            paths = [root.joinpath(*parts[: i + 1]) for i in range(len(parts))]
            leaf, *ancestors = reversed(paths)
            for _ in range(50):  # the leaf empties as soon as its processes are reaped
                try:
                    leaf.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
            for path in ancestors:
                try:
                    path.rmdir()
                except OSError:
                    break  # not empty (or gone): its other children own it


def self_signed_certificate(cert: Path, key: Path) -> tuple[Path, Path]:
    """Writes a self-signed certificate for 127.0.0.1, valid one day, and its key (PEM)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)
    return cert, key


def kernel_hook_sets() -> list[str]:
    """The syscall hook sets this kernel and this process allow (in ALL_HOOKS's order):
    tracepoints and raw tracepoints everywhere here, fentry/fexit and kprobes where the
    kernel has them (the 6.1 guest of tests/matrix). Kernel tests run once per set."""
    from obi.ebpf.capture import ALL_HOOKS, fentry_blocker, kprobe_blocker

    blocked = {"fentry": fentry_blocker() is not None, "kprobe": kprobe_blocker() is not None}
    return [hooks for hooks in ALL_HOOKS if not blocked.get(hooks, False)]
