"""Fixtures the end-to-end modules share."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port, self_signed_certificate, start_process, stop_process

SERVERS = Path(__file__).resolve().parents[1] / "servers"


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    """The behaviour server (plain HTTP/1.1) on a free port: what clients and proxies call."""
    port = free_port()
    proc = start_process([sys.executable, str(SERVERS / "behaviour_server.py"), str(port)], ready="ready")
    yield port
    stop_process(proc)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made by openssl."""
    out = tmp_path_factory.mktemp("tls")
    return self_signed_certificate(out / "cert.pem", out / "key.pem")
