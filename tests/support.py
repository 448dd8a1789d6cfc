"""Helpers shared by kernel and end-to-end tests: ports, child processes."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence


def bpf_link_ids() -> set[int]:
    """Ids of every BPF link on the host (bpftool)."""
    out = subprocess.run(["bpftool", "-j", "link", "show"], check=True, capture_output=True, text=True).stdout
    return {int(link["id"]) for link in json.loads(out or "[]")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
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
        deadline = time.monotonic() + timeout
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
