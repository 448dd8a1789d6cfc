"""Keeps the set of instrumented processes current and reports its changes.

/proc is read whole at start and then only as a safety net (every
``full_scan_interval_s``). Between full scans discovery follows the kernel:
it notices when a process that is not traced calls listen() (``notice``),
and a cheap poll (one directory read of /proc every ``poll_interval_s``)
looks at the pids that appeared since the last one, ports included (a server
handed its socket by a parent, as systemd does, never calls listen()).
Exits and execs of traced processes come from the kernel too (the registry).
Like OBI, a selected process stays selected until it exits (a pid reused by a
new process, told by its start time, is a new process).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import structlog

from obi.discovery.criteria import KubeFacts, ProcessFacts, Selection
from obi.discovery.identity import build_identity
from obi.discovery.procfs import ProcfsScanner
from obi.traces.model import ServiceIdentity

OnChange = Callable[[list[ServiceIdentity], list[int]], Awaitable[None] | None]

# How often /proc's directory is read for new pids (what the kernel's notices missed).
DEFAULT_POLL_INTERVAL_S = 5.0
# How often every process is looked at again, whatever the notices said (a full scan of a
# host with 1,000 processes costs 45-90 ms of CPU: once a minute, a third of an idle
# agent's cost). A lost notice triggers one at once (rescan).
DEFAULT_FULL_SCAN_INTERVAL_S = 300.0
# Noticed pids wait this long, so that a burst of listens is read in one pass.
NOTICE_SETTLE_S = 0.05
# With Kubernetes selectors, a new process whose pod may not be known yet is looked at
# again on every poll for this long.
KUBE_SETTLE_S = 60.0


def descendants(root: int, facts: dict[int, ProcessFacts]) -> set[int]:
    """``root`` and every process below it in the parent tree."""
    children: dict[int, list[int]] = {}
    for pid, fact in facts.items():
        children.setdefault(fact.ppid, []).append(pid)
    found = {root}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


class ProcessWatcher:
    """Selects processes per a Selection and tells a callback about additions and exits.

    ``on_change(added, removed_pids)`` is first called with the initial set (even
    if empty), then whenever something changes. When a pid is reused, the same
    call can remove it and add the new process: apply removals first.
    """

    def __init__(
        self,
        selection: Selection,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        proc_root: str = "/proc",
        *,
        agent_pid: int | None = None,
        skip_agent_descendants: bool = True,
        hostname: str | None = None,
        kube_facts: Callable[[int, int], KubeFacts | None] | None = None,
        full_scan_interval_s: float = DEFAULT_FULL_SCAN_INTERVAL_S,
    ) -> None:
        """`kube_facts(pid, start_time)` tells the pod of a process, for k8s_* selectors."""
        self._selection = selection
        self._kube_facts = kube_facts if selection.needs_kube else None
        self._poll_interval_s = poll_interval_s
        self._full_scan_interval_s = full_scan_interval_s
        self._proc_root = proc_root
        self._agent_pid = os.getpid() if agent_pid is None else agent_pid
        self._skip_agent_descendants = skip_agent_descendants
        self._hostname = hostname
        self._scanner = ProcfsScanner(proc_root, read_ports=selection.needs_ports)
        # pid -> (start time, executable, command line); touched by the scan thread only.
        # An exec keeps the pid and start time but changes the executable or at least the
        # command line (python re-exec'ing python): to us it is a new process.
        self._selected: dict[int, tuple[int, str, bytes]] = {}
        # Processes the kernel traces already (children of traced ones): the next scan
        # records them as selected instead of deciding again.
        self._adopted: set[int] = set()
        self._lock = threading.Lock()  # _selected and _adopted: the scan thread and the loop
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # a notice, a rescan asked for, or stop
        self._noticed: set[int] = set()  # pids the kernel told about since the last pass
        self._full_due = False
        # touched by the scan thread only (one pass at a time)
        self._known: set[int] = set()  # the pids of /proc at the last pass
        self._family: set[int] = {self._agent_pid}  # the agent and its descendants
        self._young: dict[int, float] = {}  # unselected pids within KUBE_SETTLE_S of first sight
        self.full_scans = 0
        self.partial_scans = 0
        self._log = structlog.get_logger().bind(component="discovery")

    def adopt(self, identity: ServiceIdentity) -> None:
        """A process the kernel traces already (a traced process's child): selected as it is."""
        with self._lock:
            self._adopted.add(identity.pid)

    def forget(self, pid: int) -> None:
        """A process that is no longer instrumented (it exited, or exec'd into something unselected)."""
        with self._lock:
            self._selected.pop(pid, None)
            self._adopted.discard(pid)

    def evaluate(self, pid: int, exe_hint: str = "") -> ServiceIdentity | None:
        """Decides at once whether a process that just exec'd is selected, and marks it so.

        Listening ports are not looked at (a fresh executable listens on nothing yet),
        so this answers for executable, pid and Kubernetes criteria; a process that is
        already gone is judged by exe_hint (the path the kernel saw it exec).
        """
        if pid == self._agent_pid:
            return None
        facts = self._scanner.process(pid)
        if facts is None:
            facts = ProcessFacts(pid=pid, start_time=0, ppid=0, exe_path=exe_hint)
        elif not facts.exe_path:
            facts = replace(facts, exe_path=exe_hint)
        if self._kube_facts is not None:
            facts = replace(facts, kube=self._kube_facts(pid, facts.start_time))
        if not self._selection.matches(facts):
            return None
        if self._hostname is None:
            self._hostname = socket.gethostname()
        identity = build_identity(pid, proc_root=self._proc_root, exe_path=facts.exe_path,
                                  hostname=self._hostname, start_time=facts.start_time)
        if facts.start_time:
            with self._lock:
                self._selected[pid] = (facts.start_time, facts.exe_path, self._cmdline(pid))
        return identity

    def notice(self, pid: int) -> None:
        """The kernel saw pid (not traced) listen: look at it on the next pass, soon."""
        self._noticed.add(pid)
        self._wake.set()

    def rescan(self) -> None:
        """Look at every process again now (notices were lost)."""
        self._full_due = True
        self._wake.set()

    async def run(self, on_change: OnChange) -> None:
        """Scan until ``stop()``; callback errors propagate and end the watcher."""
        first = True
        loop = asyncio.get_running_loop()
        next_full = next_poll = loop.time()
        while not self._stopping.is_set():
            now = loop.time()
            self._wake.clear()
            noticed, self._noticed = self._noticed, set()
            full = self._full_due or now >= next_full
            poll = full or now >= next_poll
            if full:
                self._full_due = False
                next_full = now + self._full_scan_interval_s
            if poll:
                next_poll = now + self._poll_interval_s
            try:
                added, removed = await asyncio.to_thread(self._pass, full, poll, noticed)
            except Exception:
                self._log.exception("scan_failed")
                added, removed = [], []
            for pid in removed:
                self._log.info("process_removed", pid=pid)
            for identity in added:
                self._log.info(
                    "process_selected",
                    pid=identity.pid,
                    exe_path=identity.exe_path,
                    service_name=identity.service_name,
                    sdk_language=identity.sdk_language,
                )
            if first or added or removed:
                first = False
                result = on_change(added, removed)
                if inspect.isawaitable(result):
                    await result
            if self._stopping.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, min(next_poll, next_full) - loop.time()))
            if self._wake.is_set() and not self._stopping.is_set():
                await asyncio.sleep(NOTICE_SETTLE_S)

    async def stop(self) -> None:
        """Make ``run`` return after the scan under way, if any."""
        self._stopping.set()
        self._wake.set()

    def _cmdline(self, pid: int) -> bytes:
        """The raw command line; b"" when unreadable (gone, or a kernel thread)."""
        try:
            with open(f"{self._proc_root}/{pid}/cmdline", "rb") as f:
                return f.read(4096)
        except OSError:
            return b""

    def _pass(self, full: bool, poll: bool, noticed: set[int]) -> tuple[list[ServiceIdentity], list[int]]:
        """One pass (blocking; runs in a worker thread): the processes added and removed."""
        if self._hostname is None:
            self._hostname = socket.gethostname()
        if full:
            return self._full_scan()
        self.partial_scans += 1
        wanted = set(noticed)
        gone: set[int] = set()
        if poll:
            present = self._scanner.pids()
            wanted |= present - self._known
            gone = self._known - present
            self._known = present
            if self._young:
                now = time.monotonic()
                for pid, seen in list(self._young.items()):
                    if pid in gone or now - seen > KUBE_SETTLE_S:
                        del self._young[pid]
                    else:
                        wanted.add(pid)
        self._family -= gone
        with self._lock:
            removed = [pid for pid in gone if pid in self._selected]
            for pid in removed:
                self._selected.pop(pid, None)
                self._adopted.discard(pid)
        facts = self._scanner.scan(wanted) if wanted else {}
        for pid, fact in facts.items():
            if pid not in self._family and fact.ppid in self._family and self._skip_agent_descendants:
                self._family.add(pid)
        return self._select(facts), removed

    def _full_scan(self) -> tuple[list[ServiceIdentity], list[int]]:
        self.full_scans += 1
        # Only what was selected before the scan looked is judged by it: a process selected at
        # its exec while the scan ran (evaluate, from the kernel's event) may be missing from
        # the scan's listing, and is not gone for that (once in CI a short-lived redis-cli
        # was untraced a few milliseconds after its exec, and its spans were lost).
        with self._lock:
            before = dict(self._selected)
        self._known = self._scanner.pids()
        facts = self._scanner.scan()
        with self._lock:
            for pid in self._adopted:
                if pid in facts:
                    self._selected[pid] = (facts[pid].start_time, facts[pid].exe_path, self._cmdline(pid))
            self._adopted.clear()
            selected = {pid: entry for pid, entry in self._selected.items() if before.get(pid) == entry}
        stale = [
            pid
            for pid, (start_time, exe_path, cmdline) in selected.items()
            if pid not in facts or facts[pid].start_time != start_time
            or (facts[pid].exe_path and facts[pid].exe_path != exe_path)
            or self._cmdline(pid) != cmdline
        ]
        removed = []
        with self._lock:
            for pid in stale:
                if self._selected.get(pid) == selected[pid]:  # not selected again meanwhile
                    del self._selected[pid]
                    removed.append(pid)
        if self._skip_agent_descendants:
            self._family = descendants(self._agent_pid, facts)
        self._young = {pid: seen for pid, seen in self._young.items() if pid in facts}
        return self._select(facts), removed

    def _select(self, facts: dict[int, ProcessFacts]) -> list[ServiceIdentity]:
        """The processes of ``facts`` newly selected (and now marked so)."""
        skipped = self._family if self._skip_agent_descendants else {self._agent_pid}
        with self._lock:
            selected = set(self._selected)
        added: list[ServiceIdentity] = []
        kube_facts = self._kube_facts
        for pid, fact in facts.items():
            if pid in selected or pid in skipped:
                continue
            if kube_facts is not None:
                fact = replace(fact, kube=kube_facts(pid, fact.start_time))
            if not self._selection.matches(fact):
                if kube_facts is not None and fact.kube is None:
                    self._young.setdefault(pid, time.monotonic())
                continue
            self._young.pop(pid, None)
            with self._lock:
                if pid in self._selected:
                    continue  # evaluated on an exec meanwhile
                self._selected[pid] = (fact.start_time, fact.exe_path, self._cmdline(pid))
            added.append(
                build_identity(
                    pid,
                    proc_root=self._proc_root,
                    exe_path=fact.exe_path,
                    hostname=self._hostname,
                    start_time=fact.start_time,
                )
            )
        return added
