"""ProcessRegistry: identities from /proc discovery and from the kernel's process events."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import structlog

from obi.discovery.criteria import Selection, Selector
from obi.discovery.registry import EXITED_IDENTITY_GRACE_S, ProcessRegistry
from obi.discovery.watcher import ProcessWatcher
from obi.ebpf._libbpf import lib
from obi.traces.model import ServiceIdentity


class Kernel:
    """The pid filter, with room for `capacity` processes."""

    def __init__(self, capacity: int = 100) -> None:
        self.pids: set[int] = set()
        self.capacity = capacity

    def add_pid(self, pid: int) -> bool:
        if pid not in self.pids and len(self.pids) >= self.capacity:
            return False
        self.pids.add(pid)
        return True

    def remove_pid(self, pid: int) -> None:
        self.pids.discard(pid)


class Observer:
    def __init__(self) -> None:
        self.tracked: list[int] = []
        self.forgotten: list[int] = []

    def track(self, identity: ServiceIdentity) -> None:
        self.tracked.append(identity.pid)

    def forget(self, pid: int) -> None:
        self.forgotten.append(pid)


def identity(pid: int, name: str = "shop") -> ServiceIdentity:
    return ServiceIdentity(pid=pid, exe_path="/srv/shop", service_name=name, instance_id=f"host:{pid}",
                           attributes={"host.name": "host"})


def registry(selection: Selection | None = None, capacity: int = 100,
             proc_root: str = "/proc") -> tuple[ProcessRegistry, Kernel, Observer]:
    kernel, observer = Kernel(capacity), Observer()
    watcher = ProcessWatcher(selection or Selection(), proc_root=proc_root)
    prepared: list[int] = []

    def prepare(found: ServiceIdentity) -> None:
        prepared.append(found.pid)
        found.attributes.setdefault("deployment.environment", "test")

    return ProcessRegistry(kernel, watcher, prepare=prepare, observer=observer), kernel, observer


def test_a_fork_of_a_traced_process_is_its_parent_s_service() -> None:
    reg, kernel, observer = registry()
    reg.on_watcher_change([identity(10)], [])
    reg.on_kernel_event(lib.OBI_PROCESS_FORK, 11, 10, "")
    child = reg.identity_for(11)
    assert child is not None and child is not reg.identity_for(10)
    assert (child.pid, child.service_name, child.instance_id) == (11, "shop", "host:11")
    assert child.attributes["deployment.environment"] == "test"
    assert observer.tracked == [10, 11]
    assert kernel.pids == {10}  # the kernel traces the child already: nothing to add
    # a fork of a process nobody selected (traced at exec until decided): not traced either
    kernel.pids.add(21)
    reg.on_kernel_event(lib.OBI_PROCESS_FORK, 21, 20, "")
    assert reg.identity_for(21) is None and 21 not in kernel.pids


def test_an_exit_keeps_the_identity_for_a_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    reg, _, observer = registry()
    reg.on_watcher_change([identity(10)], [])
    reg.on_kernel_event(lib.OBI_PROCESS_EXIT, 10, 0, "")
    assert reg.identity_for(10) is not None  # its last records may still be in the ring
    assert observer.forgotten == [10]
    later = time.monotonic() + EXITED_IDENTITY_GRACE_S + 1
    monkeypatch.setattr(time, "monotonic", lambda: later)
    reg.on_kernel_event(lib.OBI_PROCESS_EXIT, 99, 0, "")
    assert reg.identity_for(10) is None


def test_exec_decides_at_once_by_executable(tmp_path: Path) -> None:
    selection = Selection(include=(Selector(exe_path="*/curl"),))
    reg, kernel, _ = registry(selection)
    # a provisional exec (parent 1) of a process already gone: judged by the path the kernel saw
    kernel.pids.add(4000001)
    reg.on_kernel_event(lib.OBI_PROCESS_EXEC, 4000001, 1, "/usr/bin/curl")
    found = reg.identity_for(4000001)
    assert found is not None and found.service_name == "curl"
    kernel.pids.add(4000002)
    reg.on_kernel_event(lib.OBI_PROCESS_EXEC, 4000002, 1, "/usr/bin/wget")
    assert reg.identity_for(4000002) is None and 4000002 not in kernel.pids


def test_a_traced_process_that_execs_into_something_unselected_is_dropped() -> None:
    selection = Selection(include=(Selector(exe_path=sys.executable),))
    reg, kernel, _ = registry(selection)
    me = identity(os.getpid())
    reg.on_watcher_change([me], [])
    reg.on_kernel_event(lib.OBI_PROCESS_FORK, 4000003, os.getpid(), "")
    reg.on_kernel_event(lib.OBI_PROCESS_EXEC, 4000003, 0, "/bin/ls")
    assert 4000003 not in kernel.pids
    assert reg.stats.exec_dropped == 1


def test_a_full_pid_filter_is_said_once_and_counted() -> None:
    reg, kernel, _ = registry(capacity=1)
    with structlog.testing.capture_logs() as logs:
        reg.on_watcher_change([identity(1), identity(2), identity(3)], [])
    assert kernel.pids == {1}
    assert reg.identity_for(2) is None and reg.stats.pid_filter_full == 2
    assert [e["event"] for e in logs].count("pid_filter_full") == 1
    assert reg.identity_for(1) is not None  # what is traced stays traced


def test_the_same_process_found_twice_is_instrumented_once() -> None:
    reg, _, observer = registry()
    reg.on_watcher_change([identity(5)], [])
    reg.on_watcher_change([identity(5)], [])
    assert observer.tracked == [5]


def test_a_listen_the_kernel_noticed_is_passed_to_the_watcher() -> None:
    noticed: list[int] = []

    class Noticing(ProcessWatcher):
        def notice(self, pid: int) -> None:
            noticed.append(pid)

    kernel, watcher = Kernel(100), Noticing(Selection())
    reg = ProcessRegistry(kernel, watcher)
    reg.on_kernel_event(lib.OBI_PROCESS_LISTEN, 31, 0, "")
    reg.on_kernel_event(lib.OBI_PROCESS_LISTEN, 32, 0, "")
    assert noticed == [31, 32]
    assert kernel.pids == set() and reg.identity_for(31) is None  # the watcher decides, later
