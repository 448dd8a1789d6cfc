"""Throwaway Redis and Memcached servers on loopback for tests and benchmarks (Debian's)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support import free_port, start_process


def start_redis(root: Path, password: str | None = None) -> tuple[subprocess.Popen[str], int]:
    """redis-server on a free loopback port, no persistence; stop it with stop_process."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(root), "--daemonize", "no", "--loglevel", "warning"]
    if password is not None:
        argv += ["--requirepass", password]
    return start_process(argv, port=port), port


def start_memcached() -> tuple[subprocess.Popen[str], int]:
    """memcached on a free loopback port (TCP only, 64 MiB)."""
    port = free_port()
    argv = ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64", "-u", "root"]
    return start_process(argv, port=port), port
