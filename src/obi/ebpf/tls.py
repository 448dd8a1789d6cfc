"""TLS libraries of the instrumented processes: find them, attach the uprobes, detach.

OpenSSL (libssl 3 and 1.1, and the copy linked into Node.js) has one API for
plaintext: SSL_read / SSL_write and their _ex forms. The programs of
bpf/capture.bpf.c on those functions feed the plaintext into the same
exchanges as the syscalls' bytes; the ciphertext on the socket is skipped.

A uprobe belongs to a file (device and inode), not to a process: each file is
attached once, whichever instrumented processes map it, and detached when the
last of them is gone. Files are opened through /proc/PID/root, so a library
inside a container (another mount namespace) is the one the process maps.
A process is scanned when it is instrumented, a little later (the dynamic
loader maps libraries after exec; Python loads libssl at `import ssl`), and
whenever the kernel sees it start a TLS connection with no library attached.
A file stays attached for a grace time after its last process is gone, so
that short-lived processes started again and again (curl in a loop, cron
jobs) are caught from their first request, not from the scan after it.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from obi.ebpf._libbpf import BpfError
from obi.ebpf.elf import ElfError, ElfFile
from obi.ebpf.uprobes import UprobeAttacher, detach

# Function -> the program on its entry; every one but SSL_free also returns through tls_return.
OPENSSL_ENTRIES: tuple[tuple[str, str], ...] = (
    ("SSL_read", "tls_read_enter"),
    ("SSL_read_ex", "tls_read_ex_enter"),
    ("SSL_write", "tls_write_enter"),
    ("SSL_write_ex", "tls_write_ex_enter"),
    ("SSL_do_handshake", "tls_handshake_enter"),
    ("SSL_shutdown", "tls_handshake_enter"),
    ("SSL_free", "tls_free"),
)
OPENSSL_RETURN = "tls_return"
NO_RETURN = frozenset({"SSL_free"})
OPENSSL_FUNCTIONS = tuple(name for name, _ in OPENSSL_ENTRIES)
REQUIRED = frozenset({"SSL_read", "SSL_write"})  # without these a file is not an OpenSSL
# Seconds after a process is instrumented at which its maps are read again.
RESCAN_DELAYS_S = (0.05, 0.3, 2.0)
# Seconds a file stays attached after the last process that mapped it is gone.
DETACH_GRACE_S = 60.0
# Errors that say the process went away while its file was read: try again with another.
_GONE = frozenset({errno.ENOENT, errno.ESRCH})

FileKey = tuple[str, int]  # (device as /proc/PID/maps shows it, inode)


class ProgramSource(Protocol):
    def program_fd(self, name: str) -> int: ...


@dataclass
class AttachedFile:
    """One library (or executable) with the uprobes on it."""

    path: str  # as the first process that mapped it sees it
    links: list[int]
    pids: set[int] = field(default_factory=set)


@dataclass
class TlsStats:
    libraries: int = 0  # files attached now
    attach_failures: int = 0


@dataclass(frozen=True)
class Mapping:
    key: FileKey
    path: str  # in the process's mount namespace


def mapped_files(maps_text: str) -> list[Mapping]:
    """The distinct files of a /proc/PID/maps text (pure)."""
    seen: dict[FileKey, Mapping] = {}
    for line in maps_text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith("/") or fields[5].endswith(" (deleted)"):
            continue
        try:
            key = (fields[3], int(fields[4]))
        except ValueError:
            continue
        if key[1] and key not in seen:
            seen[key] = Mapping(key, fields[5])
    return list(seen.values())


def is_tls_candidate(path: str, exe: str | None) -> bool:
    """A file worth reading for OpenSSL's functions: a libssl, or the executable itself
    (Node.js and other binaries link OpenSSL statically)."""
    name = path.rsplit("/", 1)[-1]
    return name.startswith("libssl.so") or path == exe


class TlsProbes:
    """Keeps the OpenSSL uprobes on exactly the files the instrumented processes map."""

    def __init__(self, attacher: UprobeAttacher, programs: ProgramSource, proc: Path = Path("/proc"),
                 schedule: Callable[[float, Callable[[], None]], object] | None = None) -> None:
        self._attacher = attacher
        self._programs = programs
        self._proc = proc
        self._schedule = schedule
        self._files: dict[FileKey, AttachedFile] = {}
        self._not_tls: set[FileKey] = set()  # files read once and found without OpenSSL
        self._failed: set[FileKey] = set()  # files whose attach failed (warned once)
        self._by_pid: dict[int, set[FileKey]] = {}
        self.stats = TlsStats()
        self._log = structlog.get_logger().bind(component="tls")

    # ---- the registry's observer ---------------------------------------------

    def track(self, pid: int) -> None:
        """A process is instrumented: attach what it maps now, and look again shortly."""
        self.scan(pid)
        for delay in RESCAN_DELAYS_S:
            self._later(delay, lambda: self._rescan(pid))

    def speaks_tls(self, pid: int) -> None:
        """The kernel saw pid start a TLS connection: its library may be new."""
        self.scan(pid)

    def forget(self, pid: int) -> None:
        for key in self._by_pid.pop(pid, set()):
            attached = self._files.get(key)
            if attached is None:
                continue
            attached.pids.discard(pid)
            if not attached.pids:
                self._later(DETACH_GRACE_S, lambda key=key: self._expire(key))  # type: ignore[misc]

    def _expire(self, key: FileKey) -> None:
        attached = self._files.get(key)
        if attached is not None and not attached.pids:
            detach(attached.links)
            del self._files[key]
            self.stats.libraries = len(self._files)
            self._log.info("tls_library_detached", path=attached.path)

    def close(self) -> None:
        for attached in self._files.values():
            detach(attached.links)
        self._files.clear()
        self._by_pid.clear()
        self.stats.libraries = 0

    @property
    def attached_paths(self) -> list[str]:
        return [f.path for f in self._files.values()]

    # ---- internals -------------------------------------------------------------

    def _later(self, delay: float, call: Callable[[], None]) -> None:
        if self._schedule is not None:
            self._schedule(delay, call)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_later(delay, call)

    def _rescan(self, pid: int) -> None:
        if pid in self._by_pid:
            self.scan(pid)

    def scan(self, pid: int) -> None:
        """Reads pid's maps and attaches every OpenSSL file it maps that is not yet attached."""
        base = self._proc / str(pid)
        try:
            maps = (base / "maps").read_text()
        except OSError:
            return  # gone already, or not readable (logged by discovery)
        try:
            exe: str | None = os.readlink(base / "exe")
        except OSError:
            exe = None
        keys = self._by_pid.setdefault(pid, set())
        for mapping in mapped_files(maps):
            key = mapping.key
            if key in keys or key in self._not_tls or not is_tls_candidate(mapping.path, exe):
                continue
            attached = self._files.get(key)
            if attached is None and key not in self._failed:
                attached = self._attach(pid, mapping)
            if attached is not None:
                attached.pids.add(pid)
                keys.add(key)

    def _attach(self, pid: int, mapping: Mapping) -> AttachedFile | None:
        # The file as the process sees it (its mount namespace), held open while attaching,
        # so that the process may exit meanwhile: the kernel resolves /proc/self/fd/N.
        try:
            fd = os.open(f"{self._proc}/{pid}/root{mapping.path}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            if err.errno not in _GONE:
                self._failed.add(mapping.key)
                self._log.warning("tls_library_unreadable", pid=pid, path=mapping.path, error=str(err))
            return None
        try:
            return self._attach_file(pid, mapping, fd)
        finally:
            os.close(fd)

    def _attach_file(self, pid: int, mapping: Mapping, fd: int) -> AttachedFile | None:
        path = f"/proc/self/fd/{fd}"
        try:
            with ElfFile(path) as elf:
                offsets = elf.function_offsets(OPENSSL_FUNCTIONS)
        except (OSError, ElfError) as err:
            self._failed.add(mapping.key)
            self._log.warning("tls_library_unreadable", pid=pid, path=mapping.path, error=str(err))
            return None
        if not offsets.keys() >= REQUIRED:
            self._not_tls.add(mapping.key)
            return None
        links: list[int] = []
        try:
            by_program: dict[str, list[int]] = {}
            for function, program in OPENSSL_ENTRIES:
                if function in offsets:
                    by_program.setdefault(program, []).append(offsets[function])
            returns = [offsets[f] for f, _ in OPENSSL_ENTRIES if f in offsets and f not in NO_RETURN]
            for program, at in by_program.items():
                links += self._attacher.attach(self._programs.program_fd(program), path, at)
            links += self._attacher.attach(self._programs.program_fd(OPENSSL_RETURN), path, returns,
                                           retprobe=True)
        except BpfError as err:
            detach(links)
            self._failed.add(mapping.key)
            self.stats.attach_failures += 1
            self._log.warning("tls_attach_failed", pid=pid, path=mapping.path, error=str(err),
                              mode=self._attacher.kind)
            return None
        attached = AttachedFile(mapping.path, links)
        self._files[mapping.key] = attached
        self.stats.libraries = len(self._files)
        self._log.info("tls_library_attached", pid=pid, path=mapping.path, functions=sorted(offsets),
                       links=len(links), mode=self._attacher.kind)
        return attached
