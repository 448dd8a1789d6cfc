"""TLS libraries the agent cannot reach by their path on the host.

A uprobe belongs to a file (device and inode). The file a process maps is the one
its own mount namespace shows at the path in /proc/PID/maps: a container's libssl
has the same path as the host's and is another file. The agent must attach the
file the process maps (through /proc/PID/root), or its uprobes never fire.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_python_app import SERVERS
from tests.e2e.test_tls import CURL_CALLS, HOST_LIBSSL, check_server_spans, serve_curl_calls, tls_env
from tests.support import free_port, start_process, stop_process


def maps_device(st_dev: int) -> str:
    """A device number as /proc/PID/maps writes it (hex major:minor)."""
    return f"{os.major(st_dev):02x}:{os.minor(st_dev):02x}"


def mapped_libssl(pid: int) -> set[tuple[str, str, int]]:
    """(path, device, inode) of every libssl the process maps."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and "libssl.so" in fields[5]:
            found.add((fields[5], fields[3], int(fields[4])))
    return found


def tls_attached(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in logs if e.get("event") == "tls_library_attached"]


@pytest.fixture
def libssl_copy(tmp_path: Path) -> Path:
    """A byte-for-byte copy of the host's libssl: the same code, another inode."""
    copy = tmp_path / "libssl.so.3"
    shutil.copyfile(HOST_LIBSSL, copy)
    assert copy.stat().st_ino != HOST_LIBSSL.stat().st_ino
    return copy


@pytest.fixture
def namespaced_server(libssl_copy: Path,
                      certificate: tuple[Path, Path]) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """The TLS behaviour server in a private mount namespace where the copy is bind-mounted
    over the host's libssl (unshare and sh exec: the pid is the server's)."""
    port = free_port()
    script = f'mount --bind {libssl_copy} {HOST_LIBSSL} && exec "$@"'
    proc = start_process(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
                          sys.executable, str(SERVERS / "behaviour_server.py"), str(port)],
                         ready="ready", env=tls_env(certificate))
    yield proc, port
    stop_process(proc)


def test_a_library_inside_another_mount_namespace_is_attached_through_proc(
        namespaced_server: tuple[subprocess.Popen[str], int], libssl_copy: Path) -> None:
    proc, port = namespaced_server
    # The server maps the copy under the host's path; the host's path is still the host's file.
    assert os.readlink(f"/proc/{proc.pid}/exe") == os.path.realpath(sys.executable)
    assert os.stat(f"/proc/{proc.pid}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
    copy = libssl_copy.stat()
    assert mapped_libssl(proc.pid) == {(str(HOST_LIBSSL), maps_device(copy.st_dev), copy.st_ino)}
    assert HOST_LIBSSL.stat().st_ino != copy.st_ino

    receiver, agent, last = serve_curl_calls(proc.pid, port, OTEL_EBPF_OPEN_PORT=str(port))

    # One file attached, the server's: by the path it has in the server's namespace. The
    # host's libssl (curl maps it, uninstrumented) is not; the spans below come from uprobes
    # on the copy, the only file whose code the server runs.
    [attached] = tls_attached(agent.logs)
    assert (attached["pid"], attached["path"]) == (proc.pid, str(HOST_LIBSSL)), attached
    check_server_spans(receiver, port, proc.pid)
    assert (last["spans"], last["unknown_protocol"], last["parse_errors"]) == (len(CURL_CALLS), 0, 0)
    assert last["tls_exchanges"] == len(CURL_CALLS) and last["tls_unbound"] == 0


def test_a_library_deleted_after_it_was_mapped_is_still_attached(
        libssl_copy: Path, certificate: tuple[Path, Path]) -> None:
    """A libssl replaced under a running server (a package upgrade renames the new file over
    it): the process still runs the old file's code, which no path reaches any more; maps
    says "(deleted)". Its uprobes must go on that file, not on whatever the path is now."""
    port = free_port()
    proc = start_process([sys.executable, str(SERVERS / "behaviour_server.py"), str(port)], ready="ready",
                         env={**tls_env(certificate), "LD_LIBRARY_PATH": str(libssl_copy.parent)})
    try:
        copy = libssl_copy.stat()
        libssl_copy.unlink()
        deleted = (f"{libssl_copy} (deleted)", maps_device(copy.st_dev), copy.st_ino)
        assert mapped_libssl(proc.pid) == {deleted}
        receiver, agent, last = serve_curl_calls(proc.pid, port, OTEL_EBPF_OPEN_PORT=str(port))
    finally:
        stop_process(proc)
    [attached] = tls_attached(agent.logs)
    assert attached["pid"] == proc.pid, attached
    check_server_spans(receiver, port, proc.pid)
    assert (last["spans"], last["unknown_protocol"], last["parse_errors"]) == (len(CURL_CALLS), 0, 0)
    assert last["tls_exchanges"] == len(CURL_CALLS) and last["tls_unbound"] == 0
