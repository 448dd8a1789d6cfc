"""The HTTP capture programs (bpf/http.bpf.c): load, attach, feed, drain."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import structlog

from obi.capabilities import effective_capabilities
from obi.ebpf._libbpf import BpfError, NotSupportedError, check, ffi, lib
from obi.ebpf.objects import BpfCollection, BpfObjectSpec, object_path, u32, u64
from obi.ebpf.ring import RingReader
from obi.ebpf.tracefs import TracefsMount, ensure_tracefs

SyscallHooks = Literal["auto", "tracepoint", "raw_tracepoint"]

EVENT_SIZE: int = ffi.sizeof("struct obi_http_event")
# Program name prefixes of the two sets of entry points in bpf/http.bpf.c.
PROGRAM_PREFIXES = {"tracepoint": "tp_", "raw_tracepoint": "raw_"}
INIT_PID_NS_INO = 0xEFFFFFFC  # the initial pid namespace's inode (PROC_PID_INIT_INO)
# Events per wakeup when ebpf.wakeup_len is unset; the drain timer takes the rest.
DEFAULT_WAKEUP_LEN = 64


@dataclass(frozen=True)
class HttpTracerSettings:
    syscall_hooks: SyscallHooks = "auto"
    request_capture_bytes: int = 512
    response_capture_bytes: int = 256
    wakeup_len: int = 0
    ring_buffer_size: int = 1 << 24
    max_processes: int = 4096
    max_connections: int = 65536


def _ring_buffers_supported() -> bool:
    """False only when the kernel lacks ring buffers; a lack of privilege is not that
    (libbpf's probe cannot tell them apart, so ask only when privileged)."""
    if not effective_capabilities() & {"BPF", "SYS_ADMIN"}:
        return True  # loading will fail with EPERM, which says what is wrong
    return bool(lib.libbpf_probe_bpf_map_type(lib.BPF_MAP_TYPE_RINGBUF, ffi.NULL) == 1)


def pid_namespace() -> tuple[int, int]:
    """(dev, inode) of obi's pid namespace, or (0, 0) for the initial one."""
    st = os.stat("/proc/self/ns/pid")
    if st.st_ino == INIT_PID_NS_INO:
        return 0, 0
    return st.st_dev, st.st_ino


def build_spec(settings: HttpTracerSettings, hooks: Literal["tracepoint", "raw_tracepoint"]) -> BpfObjectSpec:
    dev, ino = pid_namespace()
    wakeup_bytes = (settings.wakeup_len or DEFAULT_WAKEUP_LEN) * EVENT_SIZE
    return BpfObjectSpec(
        path=object_path("http"),
        rodata={
            "req_capture_len": u32(settings.request_capture_bytes),
            "resp_capture_len": u32(settings.response_capture_bytes),
            "wakeup_bytes": u64(wakeup_bytes),
            "pidns_dev": u64(dev),
            "pidns_ino": u64(ino),
        },
        max_entries={
            "events": settings.ring_buffer_size,
            "pid_filter": settings.max_processes,
            "conns": settings.max_connections,
        },
        program_prefixes=(PROGRAM_PREFIXES[hooks],),
    )


class HttpTracer:
    """The loaded and attached HTTP capture; owns its kernel objects."""

    def __init__(self, settings: HttpTracerSettings) -> None:
        self._log = structlog.get_logger().bind(component="ebpf")
        self._tracefs: TracefsMount | None = None
        hooks: Literal["tracepoint", "raw_tracepoint"]
        if settings.syscall_hooks == "raw_tracepoint":
            hooks, detail = "raw_tracepoint", "raw tracepoints requested"
        else:
            self._tracefs = ensure_tracefs()
            detail = self._tracefs.detail
            if self._tracefs.available:
                hooks = "tracepoint"
            elif settings.syscall_hooks == "tracepoint":
                raise BpfError(self._tracefs.errno,
                               "syscall tracepoints need tracefs, which is not mounted and could not be")
            else:
                hooks = "raw_tracepoint"
        self.hooks = hooks
        self.hooks_detail = detail
        if not _ring_buffers_supported():
            self._release_tracefs()
            raise NotSupportedError(errno.EOPNOTSUPP, "BPF ring buffers (Linux 5.8+)")
        self.collection = BpfCollection(build_spec(settings, hooks))
        try:
            self.collection.attach_all()
            self._pid_filter_fd = self.collection.map_fd("pid_filter")
            self._conns_fd = self.collection.map_fd("conns")
            self._counters_fd = self.collection.map_fd("counters")
            self.ring = RingReader(self.collection.map_fd("events"), EVENT_SIZE)
        except BaseException:
            self.collection.close()
            self._release_tracefs()
            raise
        self._key = ffi.new("uint32_t *")
        self._one = ffi.new("uint8_t *", 1)
        self._sweep_buf = ffi.new("uint8_t[]", EVENT_SIZE * 1024)
        self._log.info("http_capture_attached", hooks=hooks, detail=detail,
                       programs=self.collection.link_count)

    def add_pid(self, pid: int) -> None:
        self._key[0] = pid
        check(lib.bpf_map_update_elem(self._pid_filter_fd, self._key, self._one, 0), f"trace pid {pid}")

    def remove_pid(self, pid: int) -> None:
        self._key[0] = pid
        lib.bpf_map_delete_elem(self._pid_filter_fd, self._key)
        lib.obi_http_forget_pid(self._conns_fd, pid)

    def sweep_idle(self, now_ns: int, idle_ns: int) -> bytes:
        """Events of responses idle for idle_ns, taken out of the in-flight map."""
        n = check(lib.obi_http_sweep_idle(self._conns_fd, now_ns, idle_ns, self._sweep_buf, 1024),
                  "sweep idle connections")
        return bytes(ffi.buffer(self._sweep_buf, n * EVENT_SIZE))

    def counters(self) -> dict[str, int]:
        out = ffi.new("uint64_t[]", lib.OBI_COUNTER_MAX)
        check(lib.obi_read_percpu_counters(self._counters_fd, out, lib.OBI_COUNTER_MAX), "read counters")
        return {
            "events_lost": int(out[lib.OBI_COUNTER_EVENTS_LOST]),
            "events_sent": int(out[lib.OBI_COUNTER_EVENTS_SENT]),
            "conn_table_full": int(out[lib.OBI_COUNTER_CONN_TABLE_FULL]),
            "call_table_full": int(out[lib.OBI_COUNTER_CALL_TABLE_FULL]),
        }

    def _release_tracefs(self) -> None:
        if self._tracefs is not None:
            self._tracefs.release()

    def close(self) -> None:
        """Detaches and releases everything (idempotent)."""
        if hasattr(self, "ring"):
            self.ring.close()
        self.collection.close()
        self._release_tracefs()

    def __enter__(self) -> HttpTracer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
