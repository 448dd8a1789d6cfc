"""The TCP conversation capture (bpf/capture.bpf.c): load, attach, feed, sweep, drain."""

from __future__ import annotations

import errno
import os
import platform
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Literal

import structlog

from obi.capabilities import effective_capabilities
from obi.ebpf._libbpf import BpfError, NotSupportedError, check, ffi, lib
from obi.ebpf.goprobes import GO_PROGRAMS
from obi.ebpf.nginx import NGINX_PROGRAMS
from obi.ebpf.objects import BpfCollection, BpfObjectSpec, MapStats, object_path, u32, u64
from obi.ebpf.records import EXCHANGE_SIZE
from obi.ebpf.ring import RingReader
from obi.ebpf.tracefs import TracefsMount, ensure_tracefs
from obi.ebpf.uprobes import UprobeAttacher, UprobeMode, choose_uprobe_mode
from obi.preflight import BPF_TRACE_UPROBE_MULTI, cgroup2_root

SyscallHooks = Literal["auto", "fentry", "kprobe", "tracepoint", "raw_tracepoint"]
HookSet = Literal["fentry", "kprobe", "tracepoint", "raw_tracepoint"]

# The largest record: an exchange with both captures full (bpf/capture.bpf.c DATA_OFF_MAX).
MAX_RECORD_SIZE: int = EXCHANGE_SIZE + lib.OBI_REQ_CAPTURE_MAX + lib.OBI_RESP_CAPTURE_MAX
# Program name prefixes of the four sets of syscall entry points; the rest load with any.
PROGRAM_PREFIXES = {"fentry": "fx_", "kprobe": "kp_", "tracepoint": "tp_", "raw_tracepoint": "raw_"}
# Every hook set, and the order "auto" tries them in, cheapest first per request (bench/hooks.py
# in Debian's 6.1, BPF time per request against raw tracepoints: fentry 0.33, classic tracepoints
# 1.1, kprobes 1.2; here, classic tracepoints 0.9: the two tracepoint sets are within noise of
# each other; README, "Kernels"). Each is tried only where its probe says the kernel has it, and
# a set that fails to load or attach gives way to the next. Kprobes (a kretprobe per call) cost
# more than the tracepoints every kernel has: only when asked.
ALL_HOOKS: tuple[HookSet, ...] = ("fentry", "kprobe", "tracepoint", "raw_tracepoint")
AUTO_HOOKS: tuple[HookSet, ...] = ("fentry", "tracepoint", "raw_tracepoint")
# The syscall functions' prefix per architecture (the syscall wrappers, Linux 4.17+).
SYSCALL_FUNCTION_PREFIX = {"x86_64": "__x64_sys_", "aarch64": "__arm64_sys_"}
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe/type")
COMMON_PREFIXES = ("common_", "sweep")
# Programs attached by hand (tp_exit, once per syscall) or run by user space (the sweep).
MANUAL_PROGRAMS = frozenset({"tp_exit", "sweep"})
# The uprobe programs (bpf/capture.bpf.c), attached per file by obi.ebpf.libraries: OpenSSL's
# (obi.ebpf.tls) and Go's (obi.ebpf.goprobes).
UPROBE_PREFIXES = ("tls_", "go_", "nginx_")
UPROBE_PROGRAMS = frozenset({"tls_read_enter", "tls_read_ex_enter", "tls_write_enter", "tls_write_ex_enter",
                             "tls_handshake_enter", "tls_return", "tls_free"}) | GO_PROGRAMS | NGINX_PROGRAMS
# The header propagation programs: a cgroup sock_ops program and an sk_msg verdict.
PROPAGATION_PREFIX = "propagation_"
PROPAGATION_PROGRAMS = frozenset({"propagation_sockops", "propagation_msg"})
INIT_PID_NS_INO = 0xEFFFFFFC  # the initial pid namespace's inode (PROC_PID_INIT_INO)
# The kernel ring's bytes (ebpf.ring_buffer_size). Its data pages are mapped twice into obi
# (a record that wraps reads in one piece), so they count twice in obi's RSS: 8 MiB is 16 MiB
# of RSS. At 34k requests/s for 30 s here nothing was lost with 4 MiB (bench/http_bench.py
# --agent-env); 8 MiB keeps room for larger records and longer stalls of the reader.
DEFAULT_RING_BUFFER_SIZE = 8 << 20
# Events per wakeup when ebpf.wakeup_len is unset; the drain timer takes the rest.
DEFAULT_WAKEUP_LEN = 64
# A typical record's size, to turn OBI's wakeup_len (in events) into the bytes the kernel counts.
TYPICAL_RECORD_SIZE = 512


@dataclass(frozen=True)
class CaptureSettings:
    syscall_hooks: SyscallHooks = "auto"
    request_capture_bytes: int = 4096
    response_capture_bytes: int = 512
    wakeup_len: int = 0
    ring_buffer_size: int = DEFAULT_RING_BUFFER_SIZE
    max_processes: int = 4096  # pid filter entries
    max_connections: int = 65536  # tracked connections (and syscalls in flight)
    max_exchanges: int = 2048  # exchanges in flight, each with its capture buffer
    trace_execs: bool = False  # trace every exec'd process until user space decides
    notice_processes: bool = False  # report listen() by processes not traced
    uprobes: bool = True  # load the TLS and Go uprobes (when this kernel lets obi attach uprobes)
    # how to attach them: "auto" (uprobe_multi links where they work, else perf events), or one
    # of the two (tests, and kernels where the first one found is not the one wanted)
    uprobe_mode: Literal["auto", "uprobe_multi", "perf_event"] = "auto"
    # add a traceparent header to the outgoing HTTP/1 requests of traced processes
    propagate_headers: bool = False
    # put the context in a TCP option of each request's first packet (TLS included)
    propagate_tcp: bool = False


def _privileged() -> bool:
    """libbpf's probes cannot tell a kernel's lack from a lack of privilege: ask only with it."""
    return bool(effective_capabilities() & {"BPF", "SYS_ADMIN"})


def _ring_buffers_supported() -> bool:
    """False only when the kernel lacks ring buffers; a lack of privilege is not that
    (libbpf's probe cannot tell them apart, so ask only when privileged)."""
    if not effective_capabilities() & {"BPF", "SYS_ADMIN"}:
        return True  # loading will fail with EPERM, which says what is wrong
    return bool(lib.libbpf_probe_bpf_map_type(lib.BPF_MAP_TYPE_RINGBUF, ffi.NULL) == 1)


def _atomics_supported() -> bool:
    """False only when the verifier refuses atomic or/and/cmpxchg (before Linux 5.12); asked
    only when privileged, as for ring buffers."""
    if not effective_capabilities() & {"BPF", "SYS_ADMIN"}:
        return True
    return bool(lib.obi_probe_atomics() != -errno.EINVAL)


def bpf_loop_supported() -> bool:
    """Whether raw tracepoint programs may call bpf_loop (Linux 5.17+): HTTP/1.x framing."""
    return bool(lib.libbpf_probe_bpf_helper(lib.BPF_PROG_TYPE_RAW_TRACEPOINT, lib.BPF_FUNC_loop,
                                            ffi.NULL) == 1)


def fentry_blocker() -> BpfError | None:
    """Why fentry/fexit cannot hook the syscall functions here (None: they can), found by
    loading and attaching a program that does nothing on one of them."""
    prefix = SYSCALL_FUNCTION_PREFIX.get(platform.machine())
    if prefix is None:
        return BpfError(errno.EOPNOTSUPP, f"fentry hooks: no syscall function names for {platform.machine()}")
    ret = lib.obi_probe_fentry(f"{prefix}read".encode())
    return None if ret == 0 else BpfError(-ret, f"fentry hooks: a trial fentry program on {prefix}read")


def kprobe_blocker() -> BpfError | None:
    """Why kprobes cannot hook the syscall functions here (None: they may; the load says)."""
    if platform.machine() not in SYSCALL_FUNCTION_PREFIX:
        return BpfError(errno.EOPNOTSUPP, f"kprobe hooks: no syscall function names for {platform.machine()}")
    if not KPROBE_PMU.exists():
        return BpfError(errno.ENOENT, f"kprobe hooks: no kprobe PMU, a kernel without CONFIG_KPROBES "
                                      f"({KPROBE_PMU})")
    return None


def pid_namespace() -> tuple[int, int]:
    """(dev, inode) of obi's pid namespace, or (0, 0) for the initial one."""
    st = os.stat("/proc/self/ns/pid")
    if st.st_ino == INIT_PID_NS_INO:
        return 0, 0
    return st.st_dev, st.st_ino


def attach_cookie_supported() -> bool:
    """Whether uprobe programs may call bpf_get_attach_cookie (Linux 5.15+): the Go programs
    find their binary's struct offsets with it."""
    return bool(lib.libbpf_probe_bpf_helper(lib.BPF_PROG_TYPE_KPROBE, lib.BPF_FUNC_get_attach_cookie,
                                            ffi.NULL) == 1)


def propagation_blocker(cgroup2: str | None, bpf_loop: bool) -> str | None:
    """Why the propagation programs cannot run here (None: they can): they attach to the
    cgroup v2 hierarchy (`cgroup2`), a sockhash and a cgroup attachment need CAP_NET_ADMIN,
    and they scan requests with bpf_loop."""
    if cgroup2 is None:
        return "no cgroup v2 hierarchy is mounted"
    if "NET_ADMIN" not in effective_capabilities():
        return "CAP_NET_ADMIN is missing"
    if not bpf_loop:
        return "the kernel lacks bpf_loop (Linux 5.17+)"
    return None


def build_spec(settings: CaptureSettings, hooks: HookSet, use_bpf_loop: bool,
               uprobes: str | None = None, go: bool = True, headers: bool = False,
               tcp: bool = False) -> BpfObjectSpec:
    """What to load for these settings (`uprobes`: how the uprobe programs will attach, None:
    not at all; `go`: the Go ones too; `headers`, `tcp`: the propagation programs, adding
    headers, TCP options); deterministic, no kernel objects."""
    prefixes = tuple(p for p in UPROBE_PREFIXES if go or p != "go_") if uprobes else ()
    if headers or tcp:
        prefixes += (PROPAGATION_PREFIX,)
    dev, ino = pid_namespace()
    wakeup_bytes = (settings.wakeup_len or DEFAULT_WAKEUP_LEN) * TYPICAL_RECORD_SIZE
    return BpfObjectSpec(
        path=object_path("capture"),
        rodata={
            "req_capture_len": u32(settings.request_capture_bytes),
            "resp_capture_len": u32(settings.response_capture_bytes),
            "wakeup_bytes": u64(wakeup_bytes),
            "pidns_dev": u64(dev),
            "pidns_ino": u64(ino),
            "trace_execs": u32(int(settings.trace_execs)),
            "notice_processes": u32(int(settings.notice_processes)),
            "use_bpf_loop": u32(int(use_bpf_loop)),
            "propagate_headers": u32(int(headers)),
            "propagate_tcp": u32(int(tcp)),
            "slot_count": u32(settings.max_exchanges),
        },
        max_entries={
            "events": settings.ring_buffer_size,
            "pid_filter": settings.max_processes,
            "fds": settings.max_connections,
            "conns": settings.max_connections,
            "pending_calls": settings.max_connections,
            "slots": settings.max_exchanges,
            "free_slots": settings.max_exchanges,
            "busy_words": (settings.max_exchanges + 63) // 64,
            "tls_socks": settings.max_connections,
        },
        program_prefixes=(PROGRAM_PREFIXES[hooks], *COMMON_PREFIXES, *prefixes),
        manual_programs=MANUAL_PROGRAMS | UPROBE_PROGRAMS | PROPAGATION_PROGRAMS,
        skipped_maps=frozenset() if headers or tcp else frozenset({"msg_socks"}),
        attach_types=(dict.fromkeys(UPROBE_PROGRAMS, BPF_TRACE_UPROBE_MULTI) if uprobes == "uprobe_multi"
                      else {}),
    )


def split_uprobes(spec: BpfObjectSpec) -> tuple[BpfObjectSpec, BpfObjectSpec | None]:
    """The spec's programs in two loads: what runs from the start (syscalls, processes, the
    sweep, propagation), and the uprobe programs, loaded after it with its maps (None: no
    uprobes). Verifying the uprobe programs takes most of the load (about 1 s of 1.4 s
    here), and nothing needs them before a process with a TLS library or a Go binary is found."""
    uprobes = tuple(p for p in spec.program_prefixes if p in UPROBE_PREFIXES)
    if not uprobes:
        return spec, None
    first = replace(spec, program_prefixes=tuple(p for p in spec.program_prefixes if p not in uprobes))
    return first, replace(spec, program_prefixes=uprobes)


class CapturePrograms:
    """The capture's programs and maps as the uprobe instrumenters use them: the uprobe programs
    come from a second load, under way in a thread when the capture starts (`ready`)."""

    def __init__(self, collection: BpfCollection, uprobe_spec: BpfObjectSpec | None) -> None:
        self._collection = collection
        self._log = structlog.get_logger().bind(component="ebpf")
        self._uprobes: Future[BpfCollection] = Future()
        if uprobe_spec is None:
            self._uprobes.set_exception(KeyError("uprobes are off: no uprobe programs"))
            return
        threading.Thread(target=self._load, args=(uprobe_spec,), name="obi-uprobe-load", daemon=True).start()

    def _load(self, spec: BpfObjectSpec) -> None:
        started = time.monotonic()
        try:
            loaded = BpfCollection(spec, maps_of=self._collection)
        except BaseException as err:  # handed to whoever asks for a program
            self._log.error("uprobe_programs_not_loaded", error=str(err),
                            effect="no TLS plaintext, no Go and no nginx uprobes")
            self._uprobes.set_exception(err)
            return
        # said before it is handed over: close() may release it the moment it is
        self._log.info("uprobe_programs_loaded", programs=len(loaded.loaded_programs()),
                       load_s=round(time.monotonic() - started, 3))
        self._uprobes.set_result(loaded)

    def describe(self) -> str:
        """Waits for the uprobe programs' load; what came of it (for obi doctor)."""
        try:
            return f"{len(self._uprobes.result().loaded_programs())} uprobe programs loaded"
        except KeyError as err:
            return str(err.args[0])
        except BaseException as err:  # what the load raised
            return f"uprobe programs not loaded: {err}"

    def ready(self) -> bool:
        """Whether program_fd answers without waiting for the uprobe programs' load."""
        return self._uprobes.done()

    def program_fd(self, name: str) -> int:
        """A program's fd (an uprobe program's waits for its load; raises if it failed)."""
        if name.startswith(UPROBE_PREFIXES):
            return self._uprobes.result().program_fd(name)
        return self._collection.program_fd(name)

    def map_fd(self, name: str) -> int:
        return self._collection.map_fd(name)

    def close(self) -> None:
        """Releases the uprobe programs once their load is over (their links are the
        instrumenters': detached before)."""
        try:
            self._uprobes.result()
        except BaseException:  # nothing was loaded
            return
        self._uprobes.result().close()


# Names of the kernel counters (struct slots of bpf/capture.h), as internal metrics read them.
COUNTER_NAMES: dict[str, int] = {
    "events_lost": lib.OBI_COUNTER_EVENTS_LOST,
    "exchanges": lib.OBI_COUNTER_EXCHANGES,
    "conn_table_full": lib.OBI_COUNTER_CONN_TABLE_FULL,
    "call_table_full": lib.OBI_COUNTER_CALL_TABLE_FULL,
    "slots_full": lib.OBI_COUNTER_SLOTS_FULL,
    "pid_filter_full": lib.OBI_COUNTER_PID_FILTER_FULL,
    "orphan_responses": lib.OBI_COUNTER_ORPHAN_BYTES,
    "tls_skipped": lib.OBI_COUNTER_TLS_SKIPPED,
    "process_events_lost": lib.OBI_COUNTER_PROCESS_EVENTS_LOST,
    "tls_unbound": lib.OBI_COUNTER_TLS_UNBOUND,
    "tls_exchanges": lib.OBI_COUNTER_TLS_EXCHANGES,
    "traceparent_added": lib.OBI_COUNTER_TRACEPARENT_ADDED,
    "traceparent_skipped": lib.OBI_COUNTER_TRACEPARENT_SKIPPED,
    "tcp_context_sent": lib.OBI_COUNTER_TCP_CONTEXT_SENT,
    "tcp_context_received": lib.OBI_COUNTER_TCP_CONTEXT_RECEIVED,
    "h2_lost": lib.OBI_COUNTER_H2_LOST,
}


class Capture:
    """The loaded and attached capture; owns its kernel objects."""

    collection: BpfCollection
    hooks: HookSet  # the syscall hook set attached
    hooks_detail: str

    def __init__(self, settings: CaptureSettings) -> None:
        self._log = structlog.get_logger().bind(component="ebpf")
        self.settings = settings
        self._maps_lock = threading.Lock()  # a map walk (map_stats, from a thread) against close()
        self._closed = False
        self._tracefs: TracefsMount | None = None
        if not _ring_buffers_supported():
            raise NotSupportedError(errno.EOPNOTSUPP, "BPF ring buffers (Linux 5.8+)")
        if not _atomics_supported():
            raise NotSupportedError(errno.EOPNOTSUPP, "BPF atomic or, and and cmpxchg (Linux 5.12+)")
        self.http_framing = bpf_loop_supported()
        self.uprobe_mode = choose_uprobe_mode(settings.uprobe_mode) if settings.uprobes else UprobeMode(
            None, "uprobes off")
        self.uprobes: UprobeAttacher | None = None
        # Go's programs need bpf_get_attach_cookie; without it they are left out (Go: no spans)
        self.go = self.uprobe_mode.kind is not None and (not _privileged() or attach_cookie_supported())
        # context on the wire: "headers", "tcp", "headers+tcp", or why not
        wanted = "+".join(w for w, on in (("headers", settings.propagate_headers),
                                          ("tcp", settings.propagate_tcp)) if on)
        self.propagation = wanted or "off (ebpf.context_propagation)"
        self._cgroup2 = cgroup2_root() if wanted else None
        blocker = propagation_blocker(self._cgroup2, self.http_framing) if wanted else None
        if blocker:
            self.propagation = f"off: {blocker}"
        on = bool(wanted) and not blocker
        self._headers = on and settings.propagate_headers
        self._tcp = on and settings.propagate_tcp
        # the hook sets passed over, and why ("fentry: ..."), for the log and obi doctor
        self.hooks_skipped: list[str] = []
        uprobe_spec = self._attach_first_hooks(settings)
        try:
            if on:
                self._attach_propagation()
            self._pid_filter_fd = self.collection.map_fd("pid_filter")
            self._counters_fd = self.collection.map_fd("counters")
            self._sweep_ctl_fd = self.collection.map_fd("sweep_ctl")
            self._sweep_fd = self.collection.program_fd("sweep")
            self.ring = RingReader(self.collection.map_fd("events"), MAX_RECORD_SIZE)
            if self.uprobe_mode.kind is not None:
                self.uprobes = UprobeAttacher(self.uprobe_mode.kind)
            # the uprobe programs load in the background from here (their maps are these)
            self.programs = CapturePrograms(self.collection, uprobe_spec)
        except BaseException:
            self.collection.close()
            self._release_tracefs()
            raise
        self._pid_key = ffi.new("uint32_t *")
        self._pid_info = ffi.new("struct obi_pid_info *")
        self._zero = ffi.new("uint32_t *", 0)
        self._ctl = ffi.new("struct obi_sweep_ctl *")
        self._rand = random.Random()
        self._log.info("capture_attached", hooks=self.hooks, detail=self.hooks_detail,
                       passed_over="; ".join(self.hooks_skipped) or "none",
                       programs=self.collection.link_count,
                       http_framing="kernel" if self.http_framing else "off (no bpf_loop before Linux 5.17)",
                       uprobes=self.uprobe_mode.detail if self.uprobe_mode.kind
                       else f"off (no TLS plaintext, no Go): {self.uprobe_mode.detail}",
                       go="on" if self.go else "off (bpf_get_attach_cookie needs Linux 5.15)"
                       if self.uprobe_mode.kind else "off", context_propagation=self.propagation)
        if wanted and self.propagation != wanted:
            self._log.warning("context_propagation_unavailable", wanted=wanted,
                              reason=self.propagation.removeprefix("off: "),
                              effect="outgoing requests carry no trace context; calls between traced "
                                     "processes on this host are still linked")
        if "headers" in self.propagation:
            self._log.info("context_propagation_http2", traceparent="not added",
                           reason="HTTP/2 and gRPC header blocks are HPACK-encoded: the sk_msg program "
                                  "cannot grow one in place, and kernel lockdown forbids writing into "
                                  "the application's memory",
                           effect="HTTP/2 and gRPC requests carry no traceparent from obi; one the "
                                  "application sends is continued")

    def _hook_candidates(self, wanted: SyscallHooks) -> list[tuple[HookSet, str]]:
        """The hook sets to try, in order, each with why it is tried; the ones "auto" passes
        over go to hooks_skipped. A set asked for by name is the only candidate."""
        order: tuple[HookSet, ...] = AUTO_HOOKS if wanted == "auto" else (wanted,)
        candidates: list[tuple[HookSet, str]] = []
        for hooks in order:
            if hooks == "raw_tracepoint":
                candidates.append((hooks, "raw tracepoints requested (ebpf.syscall_hooks)"
                                   if wanted == hooks else "raw tracepoints (need nothing)"))
                continue
            if hooks == "tracepoint":
                # mounted only when it is tried: tracefs is needed by this set alone
                candidates.append((hooks, "tracefs"))
                continue
            blocker = fentry_blocker() if hooks == "fentry" else kprobe_blocker()
            if blocker is None:
                candidates.append((hooks, f"{hooks} on the syscall functions"))
            elif wanted == hooks:
                raise blocker
            else:
                self.hooks_skipped.append(str(blocker))
        return candidates

    def _attach_first_hooks(self, settings: CaptureSettings) -> BpfObjectSpec | None:
        """Loads and attaches the first hook set of _hook_candidates that this kernel takes;
        returns the uprobe programs' spec (loaded later)."""
        candidates = self._hook_candidates(settings.syscall_hooks)
        for index, (hooks, detail) in enumerate(candidates):
            last = index == len(candidates) - 1
            if hooks == "tracepoint":
                self._tracefs = ensure_tracefs()
                detail = self._tracefs.detail
                if not self._tracefs.available:
                    self._release_tracefs()
                    if settings.syscall_hooks == "tracepoint":
                        raise BpfError(self._tracefs.errno, "syscall tracepoints need tracefs, "
                                                            "which is not mounted and could not be")
                    self.hooks_skipped.append(f"tracepoint hooks: {detail}")
                    continue
            first, uprobe_spec = split_uprobes(build_spec(settings, hooks, self.http_framing,
                                                          self.uprobe_mode.kind, self.go,
                                                          self._headers, self._tcp))
            try:
                self._load_and_attach(first, hooks)
            except BpfError as err:
                self._release_tracefs()
                if last or settings.syscall_hooks != "auto":
                    raise
                self._log.warning("syscall_hooks_fallback", hooks=hooks, error=str(err),
                                  next=candidates[index + 1][0])
                self.hooks_skipped.append(f"{hooks} hooks: {err}")
                continue
            self.hooks = hooks
            self.hooks_detail = detail
            return uprobe_spec
        raise AssertionError("raw tracepoints are always a candidate of auto")

    def _load_and_attach(self, spec: BpfObjectSpec, hooks: HookSet) -> None:
        """Loads spec as self.collection, fills its free slots and attaches its programs;
        on failure nothing of it is left."""
        self.collection = BpfCollection(spec)
        try:
            max_exchanges = self.settings.max_exchanges
            filled = check(lib.obi_fill_queue(self.collection.map_fd("free_slots"), max_exchanges),
                           "fill the free exchange slots")
            if filled != max_exchanges:
                raise BpfError(errno.ENOSPC, f"free exchange slots: {filled} of {max_exchanges}")
            self.collection.attach_all()
            if hooks == "tracepoint":
                self._attach_syscall_exits()
        except BaseException:
            self.collection.close()
            raise

    def _attach_propagation(self) -> None:
        """The sock_ops program on the cgroup v2 root (a link: gone with obi, even killed), and the
        sk_msg verdict on the sockhash it fills (held by the map, which goes with obi)."""
        try:
            self.collection.attach_cgroup("propagation_sockops", self._cgroup2 or "/sys/fs/cgroup")
            self.collection.attach_to_map("propagation_msg", "msg_socks", lib.BPF_SK_MSG_VERDICT)
        except BpfError as err:
            self.propagation = f"off: {err}"

    def _attach_syscall_exits(self) -> None:
        """tp_exit on sys_exit_<name> for every tp_enter_<name> loaded."""
        for name, section in self.collection.section_names().items():
            if name.startswith("tp_enter_") and section.startswith("tracepoint/syscalls/sys_enter_"):
                syscall = section.removeprefix("tracepoint/syscalls/sys_enter_")
                if name in ("tp_enter_close", "tp_enter_close_range", "tp_enter_shutdown"):
                    continue  # their exit changes nothing
                self.collection.attach_tracepoint("tp_exit", "syscalls", f"sys_exit_{syscall}")

    def add_pid(self, pid: int) -> bool:
        """Traces pid (selected by user space). False when the pid filter is full.

        A pid the kernel already traces (a child of a traced process) keeps its
        generation, so the connections it has stay tracked.
        """
        self._pid_key[0] = pid
        info = self._pid_info
        if lib.bpf_map_lookup_elem(self._pid_filter_fd, self._pid_key, info) != 0:
            ffi.memmove(info, b"\0" * ffi.sizeof(info[0]), ffi.sizeof(info[0]))
            info.gen = self._rand.getrandbits(32)
        info.flags = (info.flags & ~lib.OBI_PID_PROVISIONAL) | lib.OBI_PID_SELECTED
        ret = lib.bpf_map_update_elem(self._pid_filter_fd, self._pid_key, info, 0)
        if ret == -errno.E2BIG or ret == -errno.ENOSPC:
            return False
        check(ret, f"trace pid {pid}")
        return True

    def remove_pid(self, pid: int) -> None:
        """Stops tracing pid; its connections are forgotten as their sockets close."""
        self._pid_key[0] = pid
        lib.bpf_map_delete_elem(self._pid_filter_fd, self._pid_key)

    def sweep(self, idle_ns: int, request_timeout_ns: int, flush: bool = False) -> None:
        """Runs the kernel sweep once: exchanges over without an event to end them go to the ring."""
        ctl = self._ctl
        ctl.idle_ns = idle_ns
        ctl.request_timeout_ns = request_timeout_ns
        ctl.flush = int(flush)
        # the cursor (kernels without bpf_loop) is the kernel's: keep it
        current = ffi.new("struct obi_sweep_ctl *")
        if lib.bpf_map_lookup_elem(self._sweep_ctl_fd, self._zero, current) == 0:
            ctl.cursor = current.cursor
        check(lib.bpf_map_update_elem(self._sweep_ctl_fd, self._zero, ctl, 0), "set the sweep")
        check(lib.obi_run_program(self._sweep_fd), "run the sweep")

    def map_stats(self) -> list[MapStats]:
        """The capture's maps and their entries now (walks hash maps: call from a thread;
        close() waits for a walk under way, and after it there is nothing to walk)."""
        with self._maps_lock:
            return [] if self._closed else self.collection.map_stats()

    def counters(self) -> dict[str, int]:
        out = ffi.new("uint64_t[]", lib.OBI_COUNTER_MAX)
        check(lib.obi_read_percpu_counters(self._counters_fd, out, lib.OBI_COUNTER_MAX), "read counters")
        return {name: int(out[slot]) for name, slot in COUNTER_NAMES.items()}

    def _release_tracefs(self) -> None:
        if self._tracefs is not None:
            self._tracefs.release()

    def detach(self) -> None:
        """Detaches the programs; the ring and the maps stay readable until close()."""
        self.collection.detach()

    def close(self) -> None:
        """Detaches and releases everything (idempotent)."""
        with self._maps_lock:
            self._closed = True
        if hasattr(self, "ring"):
            self.ring.close()
        if hasattr(self, "programs"):
            self.programs.close()
        self.collection.close()
        self._release_tracefs()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
