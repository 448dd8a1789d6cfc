"""The instrumented processes: who each pid is, and what the kernel traces.

Two sources feed it. The /proc watcher reports processes that match the
selection and processes that went away. The kernel reports, in order with
the exchanges in the ring buffer, what it did on its own: a traced process
forked (the child is traced from its first instruction and is its parent's
service), a process exec'd (traced provisionally when exec tracing is on, or
traced before: user space decides now whether it stays), a traced process
exited, a process not traced called listen() (the watcher looks at it now).
Every span's service comes from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from obi.discovery.watcher import ProcessWatcher
from obi.ebpf._libbpf import lib
from obi.traces.model import ServiceIdentity

# How long a process's identity outlives it, for its last records in flight.
EXITED_IDENTITY_GRACE_S = 10.0


class PidFilter(Protocol):
    """The kernel's set of traced processes."""

    def add_pid(self, pid: int) -> bool: ...

    def remove_pid(self, pid: int) -> None: ...


class IdentityObserver(Protocol):
    """Told about every identity that starts or stops being used (Kubernetes decoration)."""

    def track(self, identity: ServiceIdentity) -> None: ...

    def forget(self, pid: int) -> None: ...


class LibraryObserver(Protocol):
    """Told which processes are instrumented, to keep uprobes on the libraries they map."""

    def track(self, pid: int, attached: Callable[[], None] | None = None) -> None:
        """`attached` is called once the process's libraries were looked at."""

    def forget(self, pid: int) -> None: ...

    def speaks_tls(self, pid: int) -> None: ...


@dataclass
class RegistryStats:
    pid_filter_full: int = 0  # processes selected but not traced: the kernel's table is full
    exec_dropped: int = 0  # traced processes that exec'd into something not selected


class ProcessRegistry:
    """pid -> ServiceIdentity for every instrumented process, kept in step with the kernel."""

    def __init__(self, kernel: PidFilter, watcher: ProcessWatcher,
                 prepare: Callable[[ServiceIdentity], None] = lambda identity: None,
                 observer: IdentityObserver | None = None, libraries: LibraryObserver | None = None) -> None:
        """`prepare` adjusts a new identity (obi's own service name overrides) before use."""
        self._libraries = libraries
        self._kernel = kernel
        self._watcher = watcher
        self._prepare = prepare
        self._observer = observer
        self._identities: dict[int, ServiceIdentity] = {}
        self._exited: dict[int, float] = {}
        self._full_warned = False
        self.stats = RegistryStats()
        self._log = structlog.get_logger().bind(component="discovery")

    def identity_for(self, pid: int) -> ServiceIdentity | None:
        return self._identities.get(pid)

    @property
    def instrumented(self) -> int:
        return len(self._identities) - len(self._exited)

    def instrumented_by_name(self) -> dict[str, int]:
        """Processes instrumented now, by executable name (obi_instrumented_processes)."""
        counts: dict[str, int] = {}
        for pid, identity in self._identities.items():
            if pid not in self._exited:
                name = identity.exe_path.rsplit("/", 1)[-1]
                counts[name] = counts.get(name, 0) + 1
        return counts

    # ---- from the /proc watcher ---------------------------------------------

    def on_watcher_change(self, added: list[ServiceIdentity], removed: list[int]) -> None:
        now = time.monotonic()
        for pid in removed:
            self._kernel.remove_pid(pid)
            self._gone(pid, now)
            self._log.info("process_forgotten", pid=pid)
        for identity in added:
            self._instrument(identity)
        self._expire(now)

    # ---- from the kernel, in ring order --------------------------------------

    def on_kernel_event(self, event: int, pid: int, parent: int, path: str) -> None:
        now = time.monotonic()
        if event == lib.OBI_PROCESS_FORK:
            origin = self._identities.get(parent)
            if origin is None:
                # a child of a process traced only until user space decided (exec tracing):
                # nobody selected it, so the kernel stops tracing it too
                self._kernel.remove_pid(pid)
                return
            if pid in self._identities and pid not in self._exited:
                return
            child = replace(origin, pid=pid, instance_id=_instance_id(origin.instance_id, pid),
                            attributes=dict(origin.attributes))
            self._use(child)
            self._watcher.adopt(child)
            self._log.debug("process_inherited", pid=pid, parent=parent, service=child.service_name)
        elif event == lib.OBI_PROCESS_EXEC:
            identity = self._watcher.evaluate(pid, path)
            if identity is not None:
                self._instrument(identity)
            elif parent == 1 or pid in self._identities:
                # provisional (parent == 1) or traced before: what it became is not selected
                if pid in self._identities:
                    self.stats.exec_dropped += 1
                    self._log.info("process_forgotten", pid=pid, reason="exec", exe=path)
                self._kernel.remove_pid(pid)
                self._watcher.forget(pid)
                self._gone(pid, now)
                # judged without its ports: a listening socket kept across the exec (a server
                # re-exec'ing itself) selects it again, once the watcher has read them
                self._watcher.notice(pid)
        elif event == lib.OBI_PROCESS_LISTEN:
            self._watcher.notice(pid)
            return
        elif event == lib.OBI_PROCESS_TLS:
            if self._libraries is not None and pid in self._identities and pid not in self._exited:
                self._libraries.speaks_tls(pid)
        elif event == lib.OBI_PROCESS_EXIT:
            if pid in self._identities and pid not in self._exited:
                self._log.info("process_forgotten", pid=pid, reason="exit")
            self._watcher.forget(pid)
            self._gone(pid, now)
        self._expire(now)

    # ---- internals -------------------------------------------------------------

    def _instrument(self, identity: ServiceIdentity) -> None:
        known = self._identities.get(identity.pid)
        same_start = known is not None and (known.start_time == identity.start_time
                                            or not known.start_time or not identity.start_time)
        if known is not None and same_start and identity.pid not in self._exited \
                and known.exe_path == identity.exe_path:
            return  # the same process, found by both the kernel's exec event and a /proc scan
        if not self._kernel.add_pid(identity.pid):
            self.stats.pid_filter_full += 1
            if not self._full_warned:
                self._full_warned = True
                self._log.warning("pid_filter_full", pid=identity.pid,
                                  hint="raise ebpf.pid_filter_max (OTEL_EBPF_BPF_PID_FILTER_MAX); "
                                  "processes already traced stay traced")
            return
        # traced from now; said once its uprobes are on too (while obi starts, their programs
        # are still loading: a second or so later)
        self._use(identity, lambda: self._log.info("process_instrumented", pid=identity.pid,
                                                   service=identity.service_name, exe=identity.exe_path))

    def _use(self, identity: ServiceIdentity, attached: Callable[[], None] | None = None) -> None:
        self._prepare(identity)
        if self._observer is not None:
            self._observer.track(identity)
        self._exited.pop(identity.pid, None)
        self._identities[identity.pid] = identity
        if self._libraries is not None:
            self._libraries.track(identity.pid, attached)
        elif attached is not None:
            attached()

    def _gone(self, pid: int, now: float) -> None:
        if pid in self._identities and pid not in self._exited:
            if self._observer is not None:
                self._observer.forget(pid)
            if self._libraries is not None:
                self._libraries.forget(pid)
            self._exited[pid] = now

    def _expire(self, now: float) -> None:
        if not self._exited:
            return
        for pid, gone_at in list(self._exited.items()):
            if now - gone_at > EXITED_IDENTITY_GRACE_S:
                del self._exited[pid]
                self._identities.pop(pid, None)


def _instance_id(parent_instance: str, pid: int) -> str:
    """A child's service.instance.id in the parent's `<host>:<pid>` form."""
    host, sep, _ = parent_instance.rpartition(":")
    return f"{host}:{pid}" if sep else str(pid)
