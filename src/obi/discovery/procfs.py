"""Incremental /proc scanner: processes, executables and listening TCP ports.

Listening sockets are read once per network namespace per scan (sock_diag
netlink for the agent's own namespace, /proc/PID/net/tcp{,6} for the others);
a process's file descriptors are only read again when it is new or when its
namespace gained listening sockets since its last fd scan, so a steady host
costs a stat read, an exe readlink and a namespace stat per process.
Processes that vanish or deny access mid-scan are skipped silently.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from obi.discovery.criteria import ProcessFacts

_PF_KTHREAD = 0x00200000  # include/linux/sched.h
_TCP_LISTEN = "0A"  # include/net/tcp_states.h TCP_LISTEN, as printed by /proc/net/tcp
_SOCKET_PREFIX = "socket:["
_DELETED_SUFFIX = " (deleted)"

# linux/sock_diag.h, linux/inet_diag.h, linux/netlink.h
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLMSG_HEADER = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_INET_DIAG_REQ_V2 = struct.Struct("=BBBxI48x")  # family, protocol, ext, states, sockid
_DIAG_SPORT = struct.Struct("!H")  # inet_diag_msg.id.idiag_sport, at offset 4
_DIAG_INODE = struct.Struct("=I")  # inet_diag_msg.idiag_inode, at offset 68
_DIAG_MSG_LEN = 72


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The /proc/PID/stat fields discovery uses."""

    ppid: int
    flags: int
    start_time: int

    @property
    def is_kernel_thread(self) -> bool:
        return bool(self.flags & _PF_KTHREAD)


def parse_stat(text: str) -> ProcStat:
    """Parse /proc/PID/stat; ``comm`` may hold spaces and parentheses. Raises ValueError."""
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): field N is rest[N - 3]
    return ProcStat(ppid=int(rest[1]), flags=int(rest[6]), start_time=int(rest[19]))


def parse_tcp_listeners(text: str) -> dict[int, int]:
    """Socket inode -> local port of every LISTEN socket in a /proc/net/tcp{,6} table."""
    listeners: dict[int, int] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _TCP_LISTEN:
            continue
        try:
            port = int(fields[1].rpartition(":")[2], 16)
            inode = int(fields[9])
        except ValueError:
            continue
        if inode:
            listeners[inode] = port
    return listeners


def netlink_tcp_listeners() -> dict[int, int] | None:
    """Socket inode -> port of every LISTEN TCP socket in this process's network namespace.

    Asks sock_diag for listening sockets only, which skips the walk of every
    established-hash bucket that reading /proc/net/tcp costs. None when
    netlink is unavailable.
    """
    listeners: dict[int, int] = {}
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as sock:
            sock.settimeout(1.0)
            for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
                request = _INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 0, 1 << 10)
                header = _NLMSG_HEADER.pack(
                    _NLMSG_HEADER.size + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, seq, 0
                )
                sock.sendto(header + request, (0, 0))
                if not _read_diag_dump(sock, seq, listeners):
                    return None
    except OSError:
        return None
    return listeners


def _read_diag_dump(sock: socket.socket, seq: int, listeners: dict[int, int]) -> bool:
    """Collect one sock_diag dump into ``listeners``; False on a netlink error."""
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + _NLMSG_HEADER.size <= len(data):
            length, kind, _, msg_seq, _ = _NLMSG_HEADER.unpack_from(data, offset)
            if length < _NLMSG_HEADER.size:
                return False
            body = offset + _NLMSG_HEADER.size
            if msg_seq == seq:
                if kind == _NLMSG_DONE:
                    return True
                if kind == _NLMSG_ERROR:
                    return False
                if kind == _SOCK_DIAG_BY_FAMILY and length - _NLMSG_HEADER.size >= _DIAG_MSG_LEN:
                    (port,) = _DIAG_SPORT.unpack_from(data, body + 4)
                    (inode,) = _DIAG_INODE.unpack_from(data, body + 68)
                    if inode:
                        listeners[inode] = port
            offset += (length + 3) & ~3


def socket_inode(link: str) -> int | None:
    """The inode of an fd link target ``socket:[12345]``, else None."""
    if link.startswith(_SOCKET_PREFIX) and link.endswith("]"):
        try:
            return int(link[len(_SOCKET_PREFIX) : -1])
        except ValueError:
            return None
    return None


@dataclass(slots=True)
class _Namespace:
    listeners: dict[int, int] = field(default_factory=dict)  # inode -> port
    inodes: frozenset[int] = frozenset()


@dataclass(slots=True)
class _Process:
    start_time: int
    sockets: frozenset[int] = frozenset()  # listening inodes held at the last fd scan
    seen_inodes: frozenset[int] | None = None  # namespace listeners at the last fd scan


class ProcfsScanner:
    """Reads the process table; keeps per-process caches between scans.

    Not thread-safe: call ``scan`` from one thread at a time.
    """

    def __init__(
        self, proc_root: str = "/proc", *, read_ports: bool = True, use_netlink: bool | None = None
    ) -> None:
        self._root = proc_root
        self._read_ports = read_ports
        # sock_diag answers for our own namespace only, and only on the real /proc
        self._use_netlink = proc_root == "/proc" if use_netlink is None else use_netlink
        self._own_netns = self._netns_of("self") if self._use_netlink else None
        self._processes: dict[int, _Process] = {}

    def scan(self, pids: Iterable[int] | None = None) -> dict[int, ProcessFacts]:
        """Every live user-space process by pid, or those of ``pids`` that live."""
        pids = None if pids is None else list(pids)
        stats: dict[int, ProcStat] = {}
        for name in self._list_pids() if pids is None else pids:
            stat = self._read_stat(name)
            if stat is not None and not stat.is_kernel_thread:
                stats[name] = stat

        for pid in list(self._processes) if pids is None else [p for p in pids if p in self._processes]:
            state = self._processes[pid]
            stat = stats.get(pid)
            if stat is None or stat.start_time != state.start_time:
                del self._processes[pid]

        by_namespace: dict[int, list[int]] = {}
        for pid, stat in stats.items():
            if pid not in self._processes:
                self._processes[pid] = _Process(stat.start_time)
            if self._read_ports:
                netns = self._netns(pid)
                if netns is not None:
                    by_namespace.setdefault(netns, []).append(pid)

        ports: dict[int, frozenset[int]] = {}
        for netns, pids in by_namespace.items():
            namespace = self._read_namespace(netns, pids)
            for pid in pids:
                ports[pid] = self._listen_ports(pid, namespace)

        return {
            pid: ProcessFacts(
                pid=pid,
                start_time=stat.start_time,
                ppid=stat.ppid,
                # read every scan: exec() changes the executable of a running pid
                exe_path=self._read_exe(pid),
                listen_ports=ports.get(pid, frozenset()),
            )
            for pid, stat in stats.items()
        }

    def process(self, pid: int) -> ProcessFacts | None:
        """One process without its ports (None when it is gone); safe from any thread."""
        stat = self._read_stat(pid)
        if stat is None or stat.is_kernel_thread:
            return None
        return ProcessFacts(pid=pid, start_time=stat.start_time, ppid=stat.ppid, exe_path=self._read_exe(pid))

    def pids(self) -> set[int]:
        """The pids in /proc (one directory read: kernel threads included)."""
        return set(self._list_pids())

    def _list_pids(self) -> list[int]:
        try:
            names = os.listdir(self._root)
        except OSError:
            return []
        return [int(name) for name in names if name.isdigit()]

    def _read_stat(self, pid: int) -> ProcStat | None:
        # raw os.read: a buffered text file costs three times as much, for every pid every scan
        try:
            fd = os.open(f"{self._root}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return parse_stat(os.read(fd, 4096).decode("utf-8", "replace"))
        except (OSError, ValueError, IndexError):
            return None
        finally:
            os.close(fd)

    def _read_exe(self, pid: int) -> str:
        try:
            path = os.readlink(f"{self._root}/{pid}/exe")
        except OSError:
            return ""
        return path.removesuffix(_DELETED_SUFFIX)

    def _netns(self, pid: int) -> int | None:
        return self._netns_of(str(pid))

    def _netns_of(self, name: str) -> int | None:
        try:
            return os.stat(f"{self._root}/{name}/ns/net").st_ino
        except OSError:
            return None

    def _read_namespace(self, netns: int, pids: list[int]) -> _Namespace:
        """The listening sockets of a namespace, read through the first pid that allows it."""
        if netns == self._own_netns:
            found = netlink_tcp_listeners()
            if found is not None:
                return _Namespace(found, frozenset(found))
        for pid in pids:
            listeners: dict[int, int] = {}
            try:
                for table in ("tcp", "tcp6"):
                    path = f"{self._root}/{pid}/net/{table}"
                    try:
                        with open(path, encoding="ascii", errors="replace") as f:
                            listeners.update(parse_tcp_listeners(f.read()))
                    except FileNotFoundError:
                        if table == "tcp":
                            raise
            except OSError:
                continue
            return _Namespace(listeners, frozenset(listeners))
        return _Namespace()

    def _listen_ports(self, pid: int, namespace: _Namespace) -> frozenset[int]:
        state = self._processes[pid]
        if state.seen_inodes is None or not namespace.inodes <= state.seen_inodes:
            state.sockets = self._read_socket_fds(pid, namespace.inodes)
            state.seen_inodes = namespace.inodes
        listeners = namespace.listeners
        return frozenset(listeners[inode] for inode in state.sockets if inode in listeners)

    def _read_socket_fds(self, pid: int, wanted: frozenset[int]) -> frozenset[int]:
        """The inodes among ``wanted`` that the process holds an fd on."""
        if not wanted:
            return frozenset()
        found: set[int] = set()
        try:
            with os.scandir(f"{self._root}/{pid}/fd") as entries:
                for entry in entries:
                    try:
                        inode = socket_inode(os.readlink(entry.path))
                    except OSError:
                        continue
                    if inode is not None and inode in wanted:
                        found.add(inode)
        except OSError:
            pass
        return frozenset(found)
