"""Uprobes on the files instrumented processes map: found, attached once, detached.

A uprobe belongs to a file (device and inode), not to a process: each file is
attached once, whichever instrumented processes map it, and detached when the
last of them is gone. Files are opened through /proc/PID/root, so a library
inside a container (another mount namespace) is the one the process maps, and
held open while attaching, so the process may exit meanwhile.

What to attach to a file is an instrumenter's business: OpenSSL's functions in
a libssl or in an executable that links it (obi.ebpf.tls), a Go program's
net/http and runtime functions (obi.ebpf.goprobes). A process is scanned when
it is instrumented, a little later (the dynamic loader maps libraries after
exec; Python loads libssl at `import ssl`), and whenever the kernel sees it
start a TLS connection. A file stays attached for a grace time after its last
process is gone, so that short-lived processes started again and again (curl
in a loop, cron jobs) are caught from their first request.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from obi.ebpf._libbpf import BpfError
from obi.ebpf.uprobes import detach

# Seconds after a process is instrumented at which its maps are read again.
RESCAN_DELAYS_S = (0.05, 0.3, 2.0)
# How often a process found while the uprobe programs still load looks again.
PROGRAMS_WAIT_S = 0.05
# Seconds a gone process stays in pids_of() (the drain's tick is up to 1 s when idle).
PIDS_GRACE_S = 5.0
# Seconds a file stays attached after the last process that mapped it is gone.
DETACH_GRACE_S = 60.0
# Errors that say the process went away while its file was read: try again with another.
_GONE = frozenset({errno.ENOENT, errno.ESRCH})

FileKey = tuple[str, int]  # (device as /proc/PID/maps shows it, inode)


class ProgramSource(Protocol):
    """What instrumenters need of the loaded capture (a BpfCollection)."""

    def program_fd(self, name: str) -> int: ...

    def map_fd(self, name: str) -> int: ...


class NotMine(Exception):
    """The file is not of the instrumenter's kind (remembered: the file is not read again)."""


class Instrumenter(Protocol):
    """Attaches one family of uprobes to the files that have what it probes."""

    name: str
    attached_event: str  # the log event of an attach

    def candidate(self, path: str, exe: str | None) -> bool:
        """Worth reading? (`exe`: the process's executable, as it sees it)"""
        ...

    def attach(self, path: str, shown: str) -> tuple[list[int], str, object]:
        """Attaches to the file at `path` (`shown`: its path in the process); returns the
        links, a description for the log, and what `release` takes back. Raises NotMine,
        or BpfError / OSError / ValueError."""
        ...

    def release(self, token: object) -> None:
        """A file was detached: free what its attach took (`token`, from attach)."""
        ...


@dataclass
class AttachedFile:
    """One file with one instrumenter's uprobes on it."""

    path: str  # as the first process that mapped it sees it
    instrumenter: Instrumenter
    links: list[int]
    token: object
    pids: set[int] = field(default_factory=set)


@dataclass
class LibraryStats:
    files: int = 0  # files attached now
    attach_failures: int = 0


_DELETED = " (deleted)"


@dataclass(frozen=True)
class Mapping:
    key: FileKey
    path: str  # in the process's mount namespace
    span: str  # "start-end" of its first mapping (its /proc/PID/map_files entry)
    deleted: bool = False  # replaced or removed since it was mapped (a library upgraded under it)


def mapped_files(maps_text: str) -> list[Mapping]:
    """The distinct files of a /proc/PID/maps text (pure)."""
    seen: dict[FileKey, Mapping] = {}
    for line in maps_text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith("/"):
            continue
        try:
            key = (fields[3], int(fields[4]))
        except ValueError:
            continue
        if key[1] and key not in seen:
            path = fields[5]
            deleted = path.endswith(_DELETED)
            seen[key] = Mapping(key, path.removesuffix(_DELETED) if deleted else path, fields[0], deleted)
    return list(seen.values())


class UprobeFiles:
    """Keeps each instrumenter's uprobes on exactly the files the instrumented processes map."""

    def __init__(self, instrumenters: Iterable[Instrumenter], proc: Path = Path("/proc"),
                 schedule: Callable[[float, Callable[[], None]], object] | None = None,
                 ready: Callable[[], bool] = lambda: True) -> None:
        """`ready`: whether the programs can be attached yet (they load in the background
        while obi starts); a process scanned before is scanned again once they are."""
        self._instrumenters = tuple(instrumenters)
        self._ready = ready
        self._waiting: dict[int, Callable[[], None]] = {}  # pid -> track()'s `attached`
        self._proc = proc
        self._schedule = schedule
        self._files: dict[tuple[FileKey, str], AttachedFile] = {}
        self._skip: set[tuple[FileKey, str]] = set()  # not the instrumenter's kind, or failed (warned)
        self._by_pid: dict[int, set[tuple[FileKey, str]]] = {}
        # pid -> files attached per instrumenter, as live sets for whoever needs them
        self._pids: dict[str, set[int]] = {i.name: set() for i in self._instrumenters}
        self.stats = LibraryStats()
        self._log = structlog.get_logger().bind(component="uprobes")

    def pids_of(self, instrumenter: str) -> set[int]:
        """The processes that map a file `instrumenter` attached (kept up to date)."""
        return self._pids[instrumenter]

    # ---- the registry's observer ---------------------------------------------

    def track(self, pid: int, attached: Callable[[], None] | None = None) -> None:
        """A process is instrumented: attach what it maps now, and look again shortly.
        `attached` is called once its files were looked at: now, or when the programs are
        loaded (while obi starts)."""
        if attached is not None:
            self._waiting[pid] = attached
        self.scan(pid)
        for delay in RESCAN_DELAYS_S:
            self._later(delay, lambda: self._rescan(pid))

    def speaks_tls(self, pid: int) -> None:
        """The kernel saw pid start a TLS connection: its library may be new."""
        self.scan(pid)

    def forget(self, pid: int) -> None:
        gone_first = self._waiting.pop(pid, None)
        if gone_first is not None:
            gone_first()  # traced all along (a short-lived curl): said, even without its uprobes
        for item in self._by_pid.pop(pid, set()):
            attached = self._files.get(item)
            if attached is None:
                continue
            attached.pids.discard(pid)
            # pids_of() stays true a little longer: the records of its last exchanges (the
            # ring's, drained up to a second later) may come after discovery saw it go
            self._later(PIDS_GRACE_S, lambda name=item[1]: self._drop_pid(name, pid))  # type: ignore[misc]
            if not attached.pids:
                self._later(DETACH_GRACE_S, lambda item=item: self._expire(item))  # type: ignore[misc]

    def _drop_pid(self, instrumenter: str, pid: int) -> None:
        if pid not in self._by_pid:  # unless it is instrumented again (a reused pid)
            self._pids[instrumenter].discard(pid)

    def close(self) -> None:
        detach(self.take_links())

    def take_links(self) -> list[int]:
        """Forgets every attached file and returns their link fds, for the caller to close
        (at shutdown, from a thread: each uprobe detach waits for the kernel)."""
        links: list[int] = []
        for attached in self._files.values():
            links.extend(attached.links)
            attached.instrumenter.release(attached.token)
        self._files.clear()
        self._by_pid.clear()
        for pids in self._pids.values():
            pids.clear()
        self.stats.files = 0
        return links

    @property
    def attached_paths(self) -> list[str]:
        return [f.path for f in self._files.values()]

    # ---- internals -------------------------------------------------------------

    def _expire(self, item: tuple[FileKey, str]) -> None:
        attached = self._files.get(item)
        if attached is not None and not attached.pids:
            detach(attached.links)
            attached.instrumenter.release(attached.token)
            del self._files[item]
            self.stats.files = len(self._files)
            self._log.info("uprobes_detached", path=attached.path, kind=attached.instrumenter.name)

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
        """Reads pid's maps and attaches every file it maps that an instrumenter wants."""
        if not self._ready():
            self._by_pid.setdefault(pid, set())  # forget() stops the wait
            self._later(PROGRAMS_WAIT_S, lambda: self._rescan(pid))
            return
        base = self._proc / str(pid)
        try:
            maps = (base / "maps").read_text()
        except OSError:
            maps = ""  # gone already, or not readable (logged by discovery)
        try:
            exe: str | None = os.readlink(base / "exe")
        except OSError:
            exe = None
        items = self._by_pid.setdefault(pid, set())
        for mapping in mapped_files(maps):
            for instrumenter in self._instrumenters:
                item = (mapping.key, instrumenter.name)
                if item in items or item in self._skip or not instrumenter.candidate(mapping.path, exe):
                    continue
                attached = self._files.get(item) or self._attach(pid, mapping, instrumenter)
                if attached is not None:
                    attached.pids.add(pid)
                    items.add(item)
                    self._pids[instrumenter.name].add(pid)
        done = self._waiting.pop(pid, None)
        if done is not None:
            done()

    def _open(self, pid: int, mapping: Mapping) -> int:
        """The file as the process maps it: by its path in the process's mount namespace, or,
        when that path is gone or names another file now, by /proc/PID/map_files (which
        needs CAP_CHECKPOINT_RESTORE)."""
        if not mapping.deleted:
            fd = os.open(f"{self._proc}/{pid}/root{mapping.path}", os.O_RDONLY | os.O_CLOEXEC)
            st = os.fstat(fd)
            if st.st_ino == mapping.key[1] and f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}" == \
                    mapping.key[0]:
                return fd
            os.close(fd)
        return os.open(f"{self._proc}/{pid}/map_files/{mapping.span}", os.O_RDONLY | os.O_CLOEXEC)

    def _attach(self, pid: int, mapping: Mapping, instrumenter: Instrumenter) -> AttachedFile | None:
        item = (mapping.key, instrumenter.name)
        try:
            fd = self._open(pid, mapping)
        except OSError as err:
            if err.errno not in _GONE:
                self._skip.add(item)
                self._log.warning("uprobe_file_unreadable", pid=pid, path=mapping.path, error=str(err))
            return None
        try:
            # the kernel resolves /proc/self/fd/N to the file the process maps
            links, what, token = instrumenter.attach(f"/proc/self/fd/{fd}", mapping.path)
        except NotMine:
            self._skip.add(item)
            return None
        except Exception as err:
            self._skip.add(item)
            self.stats.attach_failures += 1
            expected = isinstance(err, (BpfError, OSError, ValueError))
            self._log.warning("uprobes_attach_failed", pid=pid, path=mapping.path, kind=instrumenter.name,
                              error=str(err) if expected else repr(err))
            return None
        finally:
            os.close(fd)
        attached = AttachedFile(mapping.path, instrumenter, links, token)
        self._files[item] = attached
        self.stats.files = len(self._files)
        self._log.info(instrumenter.attached_event, pid=pid, path=mapping.path, links=len(links), detail=what)
        return attached
