"""The /proc scanner: parsers, and incremental scans of a fake /proc tree."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from obi.discovery.procfs import (
    ProcfsScanner,
    netlink_tcp_listeners,
    parse_stat,
    parse_tcp_listeners,
    socket_inode,
)

TCP_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
)


def tcp_line(local: str, state: str, inode: int) -> str:
    return (
        f"   0: {local} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000"
        f"     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
    )


def stat_line(pid: int, comm: str, ppid: int, flags: int, start_time: int) -> str:
    fields = ["S", str(ppid), "1", "1", "0", "-1", str(flags)] + ["0"] * 12
    fields += [str(start_time)] + ["0"] * 30
    return f"{pid} ({comm}) " + " ".join(fields) + "\n"


def test_parse_stat_with_awkward_comm() -> None:
    stat = parse_stat(stat_line(42, "we (ird) name", 7, 0x400100, 123456))
    assert (stat.ppid, stat.start_time, stat.is_kernel_thread) == (7, 123456, False)
    assert parse_stat(stat_line(2, "kthreadd", 0, 0x00208040, 5)).is_kernel_thread


def test_parse_tcp_listeners() -> None:
    text = (
        TCP_HEADER
        + tcp_line("0100007F:1F90", "0A", 1001)  # 127.0.0.1:8080 LISTEN
        + tcp_line("0100007F:A1B2", "01", 1002)  # established
        + tcp_line("00000000:0050", "0A", 0)  # no inode (time-wait-like)
        + tcp_line("00000000000000000000000001000000:01BB", "0A", 1003)  # [::1]:443
        + "garbage line\n"
    )
    assert parse_tcp_listeners(text) == {1001: 8080, 1003: 443}


def test_socket_inode() -> None:
    assert socket_inode("socket:[12345]") == 12345
    assert socket_inode("pipe:[12345]") is None
    assert socket_inode("/dev/null") is None
    assert socket_inode("socket:[x]") is None


class FakeProc:
    """A /proc tree with just the files the scanner reads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.namespaces = root / "_ns"
        self.namespaces.mkdir(parents=True)

    def add(
        self,
        pid: int,
        exe: str | None,
        *,
        netns: str = "init",
        ppid: int = 1,
        start_time: int = 100,
        flags: int = 0x400100,
        sockets: dict[int, int] | None = None,
        listeners: dict[int, int] | None = None,
    ) -> None:
        proc = self.root / str(pid)
        if proc.exists():
            shutil.rmtree(proc)
        (proc / "fd").mkdir(parents=True)
        (proc / "ns").mkdir()
        (proc / "net").mkdir()
        (proc / "stat").write_text(stat_line(pid, "prog", ppid, flags, start_time))
        if exe is not None:
            (proc / "exe").symlink_to(exe)
        ns_file = self.namespaces / netns
        ns_file.touch()
        os.link(ns_file, proc / "ns" / "net")  # same inode for the same namespace
        for fd, inode in (sockets or {}).items():
            (proc / "fd" / str(fd)).symlink_to(f"socket:[{inode}]")
        (proc / "fd" / "0").symlink_to("/dev/null")
        self.set_listeners(pid, listeners or {})

    def set_listeners(self, pid: int, listeners: dict[int, int]) -> None:
        lines = "".join(tcp_line(f"00000000:{port:04X}", "0A", inode) for inode, port in listeners.items())
        (self.root / str(pid) / "net" / "tcp").write_text(TCP_HEADER + lines)
        (self.root / str(pid) / "net" / "tcp6").write_text(TCP_HEADER)


def test_scan_fake_tree(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    listeners = {501: 8080, 502: 9090}
    proc.add(10, "/srv/web", sockets={3: 501}, listeners=listeners)
    proc.add(11, "/srv/api (deleted)", sockets={3: 502, 4: 777}, listeners=listeners)
    proc.add(12, "/bin/sleep", listeners=listeners)
    proc.add(2, None, flags=0x00208040)  # kernel thread
    (tmp_path / "self").mkdir()  # non-pid entries are ignored

    facts = ProcfsScanner(str(tmp_path)).scan()

    assert sorted(facts) == [10, 11, 12]
    assert facts[10].listen_ports == {8080}
    assert facts[10].exe_path == "/srv/web"
    assert facts[11].listen_ports == {9090}
    assert facts[11].exe_path == "/srv/api"
    assert facts[12].listen_ports == frozenset()
    assert (facts[10].ppid, facts[10].start_time) == (1, 100)


def test_fds_are_reread_only_when_the_namespace_gains_listeners(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.add(10, "/srv/web", sockets={3: 501}, listeners={501: 8080})
    scanner = ProcfsScanner(str(tmp_path))
    assert scanner.scan()[10].listen_ports == {8080}

    # fds gone but listeners unchanged: cached fd scan is reused
    shutil.rmtree(tmp_path / "10" / "fd")
    (tmp_path / "10" / "fd").mkdir()
    assert scanner.scan()[10].listen_ports == {8080}

    # a listener closes: ports follow without an fd scan
    proc.set_listeners(10, {})
    assert scanner.scan()[10].listen_ports == frozenset()

    # a new listener appears in the namespace: fds are read again
    (tmp_path / "10" / "fd" / "5").symlink_to("socket:[601]")
    proc.set_listeners(10, {601: 7070})
    assert scanner.scan()[10].listen_ports == {7070}


def test_namespaces_are_separate(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.add(10, "/srv/a", netns="a", sockets={3: 501}, listeners={501: 8080})
    # same inode number in another namespace's table must not leak into "a"
    proc.add(20, "/srv/b", netns="b", sockets={3: 501}, listeners={})
    facts = ProcfsScanner(str(tmp_path)).scan()
    assert facts[10].listen_ports == {8080}
    assert facts[20].listen_ports == frozenset()


def test_reused_pid_is_a_new_process(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.add(10, "/srv/web", sockets={3: 501}, listeners={501: 8080})
    scanner = ProcfsScanner(str(tmp_path))
    assert scanner.scan()[10].start_time == 100

    proc.add(10, "/srv/other", start_time=200, sockets={4: 502}, listeners={502: 9090})
    facts = scanner.scan()
    assert facts[10].start_time == 200
    assert facts[10].exe_path == "/srv/other"
    assert facts[10].listen_ports == {9090}


def test_exited_process_disappears(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.add(10, "/srv/web")
    proc.add(11, "/srv/api")
    scanner = ProcfsScanner(str(tmp_path))
    assert sorted(scanner.scan()) == [10, 11]
    shutil.rmtree(tmp_path / "11")
    assert sorted(scanner.scan()) == [10]


def test_ports_not_read_when_not_needed(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path)
    proc.add(10, "/srv/web", sockets={3: 501}, listeners={501: 8080})
    facts = ProcfsScanner(str(tmp_path), read_ports=False).scan()
    assert facts[10].listen_ports == frozenset()
    assert facts[10].exe_path == "/srv/web"


def test_missing_proc_root(tmp_path: Path) -> None:
    assert ProcfsScanner(str(tmp_path / "nope")).scan() == {}


def test_real_proc_lists_this_process() -> None:
    facts = ProcfsScanner().scan()
    me = facts[os.getpid()]
    assert me.ppid == os.getppid()
    assert me.exe_path == os.path.realpath("/proc/self/exe")


def test_netlink_listeners_match_proc_net_tcp() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as v4,
        socket.create_server(("::1", 0), family=socket.AF_INET6) as v6,
    ):
        from_netlink = netlink_tcp_listeners()
        assert from_netlink is not None
        from_proc: dict[int, int] = {}
        for table in ("tcp", "tcp6"):
            from_proc.update(parse_tcp_listeners(Path(f"/proc/self/net/{table}").read_text()))
        for server in (v4, v6):
            inode = os.fstat(server.fileno()).st_ino
            assert from_netlink[inode] == server.getsockname()[1]
            assert from_proc[inode] == server.getsockname()[1]
