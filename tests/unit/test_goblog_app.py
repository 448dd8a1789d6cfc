"""The goblog test app (tests/apps/goblog), built with both Go toolchains, stripped and not,
answers as specified over HTTPS with HTTP/1.1 and HTTP/2, and reaches its backend with its
own net/http client. No agent: this checks the app the end-to-end tests rely on."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.golang
from tests.golang import GOAPPS, build_go, go_command
from tests.support import free_port, self_signed_certificate, start_process, stop_process

TESTS = Path(__file__).resolve().parents[1]
GOBLOG = TESTS / "apps" / "goblog" / "main.go"
BEHAVIOUR_SERVER = TESTS / "servers" / "behaviour_server.py"
GO_VERSIONS = {"debian": "go1.19.", "current": "go1."}

VARIANTS = [(toolchain, stripped) for toolchain in ("debian", "current") for stripped in (True, False)]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("goblog-tls")
    return self_signed_certificate(out / "cert.pem", out / "key.pem")


@pytest.fixture(scope="module")
def backend() -> Iterator[int]:
    port = free_port()
    proc = start_process([sys.executable, str(BEHAVIOUR_SERVER), str(port)], ready="ready")
    yield port
    stop_process(proc)


def curl(url: str, *args: str) -> tuple[int, str, str]:
    """(status, body, HTTP version as curl reports it: "1.1" or "2")."""
    argv = ["curl", "-sS", "-k", "--max-time", "10", *args, "-w", "\n%{http_code} %{http_version}", url]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=20).stdout
    body, _, tail = out.rpartition("\n")
    status, version = tail.split()
    return int(status), body, version


def has_symbols(binary: Path) -> bool:
    sections = subprocess.run(["readelf", "-S", "-W", str(binary)], check=True, capture_output=True,
                              text=True).stdout
    return " .symtab " in sections


@pytest.mark.parametrize(("toolchain", "stripped"), VARIANTS,
                         ids=[f"{t}-{'stripped' if s else 'full'}" for t, s in VARIANTS])
def test_goblog_serves_http1_and_http2(toolchain: str, stripped: bool, certificate: tuple[Path, Path],
                                       backend: int) -> None:
    binary = build_go(GOBLOG, toolchain, stripped, "goblog")
    assert binary == GOAPPS / f"{toolchain}-{'stripped' if stripped else 'full'}" / "goblog"
    assert binary.name == "goblog"  # what the agent's executable glob */goblog selects
    assert has_symbols(binary) is not stripped
    built_by = subprocess.run([str(go_command(toolchain)), "version", str(binary)], check=True,
                              capture_output=True, text=True).stdout
    assert built_by.startswith(f"{binary}: {GO_VERSIONS[toolchain]}"), built_by
    mtime = binary.stat().st_mtime_ns
    assert build_go(GOBLOG, toolchain, stripped, "goblog").stat().st_mtime_ns == mtime  # cached

    cert, key = certificate
    port = free_port()
    proc = start_process([str(binary), "-listen", f"127.0.0.1:{port}", "-cert", str(cert), "-key", str(key),
                          "-backend", f"http://127.0.0.1:{backend}"], ready="ready", port=port)
    try:
        base = f"https://127.0.0.1:{port}"
        for flag, version in (("--http1.1", "1.1"), ("--http2", "2")):
            status, body, got = curl(f"{base}/", flag)
            assert (status, got) == (200, version)
            assert "<h1>goblog</h1>" in body
            assert curl(f"{base}/posts/7", flag) == (200, "post 7", version)
            assert curl(f"{base}/missing", flag) == (404, "404 page not found\n", version)
            assert curl(f"{base}/posts/seven", flag)[0] == 404
            assert curl(f"{base}/api/backend", flag) == (200, "ok\n", version)
            assert curl(f"{base}/slow", flag) == (200, "slow\n", version)
        assert proc.poll() is None
    finally:
        stop_process(proc)


def test_an_unreachable_backend_is_a_502(certificate: tuple[Path, Path]) -> None:
    """A backend that does not answer: goblog says 502, with its own client's error."""
    binary = build_go(GOBLOG, "current", True, "goblog")
    cert, key = certificate
    port, dead = free_port(), free_port()
    proc = start_process([str(binary), "-listen", f"127.0.0.1:{port}", "-cert", str(cert), "-key", str(key),
                          "-backend", f"http://127.0.0.1:{dead}"], ready="ready", port=port)
    try:
        status, body, _ = curl(f"https://127.0.0.1:{port}/api/backend", "--http1.1")
        assert status == 502 and "connection refused" in body, body
    finally:
        stop_process(proc)


def test_a_missing_toolchain_fails_with_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    monkeypatch.setattr(tests.golang, "go_toolchains", lambda: {"debian": tmp_path / "go"})
    with pytest.raises(pytest.fail.Exception, match=r"'debian' missing: no executable .*golang-go"):
        build_go(GOBLOG, "debian", True, "goblog")
