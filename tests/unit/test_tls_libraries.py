"""Finding OpenSSL in files and keeping uprobes on exactly the files instrumented processes map."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from obi.ebpf.elf import ElfError, ElfFile
from obi.ebpf.libraries import DETACH_GRACE_S, PIDS_GRACE_S, PROGRAMS_WAIT_S, UprobeFiles, mapped_files
from obi.ebpf.tls import OPENSSL_FUNCTIONS, OPENSSL_RETURN, OpenSsl, is_tls_candidate

LIBSSL = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")
_ST = os.stat(LIBSSL)
DEV = f"{os.major(_ST.st_dev):02x}:{os.minor(_ST.st_dev):02x}"  # as /proc/PID/maps shows it

MAPS = f"""\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 100 /usr/bin/python3.11
55d0c0a01000-55d0c0a02000 r-xp 00001000 08:01 100 /usr/bin/python3.11
7f00000000-7f00001000 r--p 00000000 {DEV} {_ST.st_ino} {LIBSSL}
7f00001000-7f00002000 r-xp 00001000 {DEV} {_ST.st_ino} {LIBSSL}
7f00003000-7f00004000 rw-p 00000000 00:00 0
7f00005000-7f00006000 r-xp 00000000 08:01 300 /usr/lib/libgone.so (deleted)
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
"""


def test_mapped_files_are_distinct_real_files() -> None:
    files = mapped_files(MAPS)
    assert [(m.key, m.path, m.span, m.deleted) for m in files] == [
        (("08:01", 100), "/usr/bin/python3.11", "55d0c0a00000-55d0c0a01000", False),
        ((DEV, _ST.st_ino), str(LIBSSL), "7f00000000-7f00001000", False),
        (("08:01", 300), "/usr/lib/libgone.so", "7f00005000-7f00006000", True)]


def test_candidates_are_libssl_and_the_executable() -> None:
    assert is_tls_candidate("/usr/lib/x86_64-linux-gnu/libssl.so.3", "/usr/bin/python3")
    assert is_tls_candidate("/opt/lib/libssl.so.1.1", None)
    assert is_tls_candidate("/usr/bin/node", "/usr/bin/node")
    assert not is_tls_candidate("/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "/usr/bin/node")
    # as a Python wheel bundles it (auditwheel renames it): psycopg-binary's
    assert is_tls_candidate("/venv/site-packages/psycopg_binary.libs/libssl-6a9b88ec.so.3", "/usr/bin/python")
    assert not is_tls_candidate("/venv/site-packages/psycopg_binary.libs/libcrypto-3a0647ea.so.3", None)


def nm_offsets(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """What binutils says: symbol addresses (nm) turned into file offsets (readelf's PT_LOADs)."""
    loads = []
    for line in subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == "LOAD":
            loads.append((int(fields[2], 16), int(fields[4], 16), int(fields[1], 16)))
    out = {}
    for line in subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        value, _, name = line.split()
        name = re.sub(r"@.*", "", name)
        if name in names:
            address = int(value, 16)
            out[name] = next(address - vaddr + offset for vaddr, size, offset in loads
                             if vaddr <= address < vaddr + size)
    return out


def test_function_offsets_agree_with_binutils() -> None:
    with ElfFile(LIBSSL) as elf:
        found = elf.function_offsets([*OPENSSL_FUNCTIONS, "no_such_function"])
    assert found == nm_offsets(LIBSSL, OPENSSL_FUNCTIONS)
    assert set(found) == set(OPENSSL_FUNCTIONS)


def test_not_elf_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "text").write_text("hello")
    with pytest.raises(ElfError, match="not an ELF file"):
        ElfFile(tmp_path / "text")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ElfError, match="empty"):
        ElfFile(tmp_path / "empty")


class FakeAttacher:
    kind = "uprobe_multi"

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, bool]] = []
        self.open: set[int] = set()

    def attach(self, prog_fd: int, path: str, offsets: list[int], retprobe: bool = False,
               cookie: int = 0) -> list[int]:
        assert os.path.exists(path)
        self.calls.append((prog_fd, len(offsets), retprobe))
        fd = os.open("/dev/null", os.O_RDONLY)  # a real fd: detach closes it
        self.open.add(fd)
        return [fd]


class Programs:
    def map_fd(self, name: str) -> int:
        raise AssertionError(name)

    def program_fd(self, name: str) -> int:
        return 1000 + sorted({"tls_read_enter", "tls_read_ex_enter", "tls_write_enter", "tls_write_ex_enter",
                              "tls_handshake_enter", "tls_return", "tls_free"}).index(name)


def fake_proc(tmp_path: Path, pid: int, maps: str, exe: str = "/usr/bin/python3.11") -> None:
    base = tmp_path / str(pid)
    base.mkdir()
    (base / "maps").write_text(maps)
    (base / "root").symlink_to("/")
    (base / "exe").symlink_to(exe)


def test_a_library_is_attached_once_for_every_process_and_detached_after_the_last(tmp_path: Path) -> None:
    later: list[tuple[float, Callable[[], None]]] = []
    attacher = FakeAttacher()
    probes = UprobeFiles([OpenSsl(attacher, Programs())], proc=tmp_path,  # type: ignore[arg-type]
                         schedule=lambda delay, call: later.append((delay, call)))
    fake_proc(tmp_path, 10, MAPS)
    fake_proc(tmp_path, 11, MAPS)
    probes.track(10)
    # one link per entry program (SSL_do_handshake and SSL_shutdown share one); the returns of
    # SSL_read and SSL_write on instructions before their RET, the others as uretprobes
    assert len(attacher.calls) == 8
    returns = sorted(c for c in attacher.calls if c[0] == Programs().program_fd(OPENSSL_RETURN))
    assert returns == [(Programs().program_fd(OPENSSL_RETURN), 2, False),
                       (Programs().program_fd(OPENSSL_RETURN), 4, True)]
    assert probes.attached_paths == [str(LIBSSL)]
    assert probes.pids_of("openssl") == {10}
    probes.track(11)
    assert len(attacher.calls) == 8  # the same file: nothing more
    probes.forget(10)
    probes.forget(11)
    assert probes.pids_of("openssl") == {10, 11}  # a while longer: their last records may be in the ring
    for delay, call in later:
        if delay == PIDS_GRACE_S:
            call()
    assert probes.pids_of("openssl") == set()
    grace = [call for delay, call in later if delay == DETACH_GRACE_S]
    assert len(grace) == 1 and probes.stats.files == 1  # after the last one only
    fake_proc(tmp_path, 12, MAPS)
    probes.track(12)  # a new process within the grace time keeps the file
    for call in grace:
        call()
    assert probes.stats.files == 1
    probes.forget(12)
    for delay, call in later:
        if delay == DETACH_GRACE_S:
            call()
    assert probes.stats.files == 0 and probes.attached_paths == []
    for fd in attacher.open:
        with pytest.raises(OSError):
            os.fstat(fd)  # closed: detached


def test_executables_without_openssl_are_read_once_and_gone_processes_are_no_failure(tmp_path: Path) -> None:
    attacher = FakeAttacher()
    probes = UprobeFiles([OpenSsl(attacher, Programs())], proc=tmp_path,  # type: ignore[arg-type]
                         schedule=lambda d, c: None)
    exe_only = "55d0c0a00000-55d0c0a01000 r-xp 00000000 08:01 100 /usr/bin/ls\n"
    fake_proc(tmp_path, 20, exe_only, exe="/usr/bin/ls")
    probes.track(20)
    assert attacher.calls == [] and probes.stats.attach_failures == 0
    # a process gone between reading its maps and opening its file: tried again with the next one
    (tmp_path / "21").mkdir()
    (tmp_path / "21" / "maps").write_text(MAPS)
    probes.track(21)
    assert attacher.calls == []
    fake_proc(tmp_path, 22, MAPS)
    probes.track(22)
    assert len(attacher.calls) == 8
    probes.close()


def test_a_process_found_while_the_programs_load_is_attached_and_told_once_they_are(tmp_path: Path) -> None:
    later: list[tuple[float, Callable[[], None]]] = []
    attacher = FakeAttacher()
    loaded = False
    probes = UprobeFiles([OpenSsl(attacher, Programs())], proc=tmp_path,  # type: ignore[arg-type]
                         schedule=lambda delay, call: later.append((delay, call)), ready=lambda: loaded)
    fake_proc(tmp_path, 30, MAPS)
    fake_proc(tmp_path, 31, MAPS)
    told: list[int] = []
    probes.track(30, lambda: told.append(30))
    probes.track(31, lambda: told.append(31))
    probes.forget(31)  # gone before the programs were there: told as it goes (it was traced)
    assert attacher.calls == [] and told == [31]
    told.clear()
    waits = [call for delay, call in later if delay == PROGRAMS_WAIT_S]
    for call in waits:
        call()  # still loading: each waits again
    assert attacher.calls == [] and told == []
    loaded = True
    for delay, call in list(later):
        if delay == PROGRAMS_WAIT_S:
            call()
    assert len(attacher.calls) == 8 and probes.pids_of("openssl") == {30}
    assert told == [30]
    probes.track(32, lambda: told.append(32))  # no such process: told at once, nothing attached
    assert told == [30, 32]
    probes.close()
