"""Start-up preflight: capabilities, kernel settings and features found by trying.

`gather_host_facts()` reads the capabilities and kernel settings and tries the
kernel features obi relies on (map create, program load, perf events, uprobe
perf events, packet sockets), closing everything it creates. `Preflight`
turns those facts into a table of features: available or not, why not, and
which capability would turn each on. The table logic is pure, so it is
tested with injected facts.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
import resource
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from obi.capabilities import REQUIRED_CAPABILITIES, effective_capabilities

# The kernel accepts CAP_SYS_ADMIN in place of these (bpf_capable, perfmon_capable,
# checkpoint_restore_ns_capable).
COVERED_BY_SYS_ADMIN = frozenset({"BPF", "PERFMON", "CHECKPOINT_RESTORE"})
# What each required capability is for; the names of the matching rows of the table.
NEEDED_FOR: Mapping[str, str] = {
    "BPF": "BPF programs and maps",
    "PERFMON": "perf events and tracepoints",
    "SYS_PTRACE": "reading other processes' executables and namespaces",
    "DAC_READ_SEARCH": "opening other processes' ELF files and /proc files",
    "CHECKPOINT_RESTORE": "/proc/PID/map_files of other processes",
    "NET_RAW": "socket filters",
}
RAW_TRACEPOINTS = "raw tracepoints"
TRACEFS_MOUNT = "tracefs mount"
UPROBES = "uprobes"
SOCK_OPS = "sock_ops and sk_msg (context propagation)"
BPF_MEMORY = "BPF memory (RLIMIT_MEMLOCK)"
# Linux 5.11 charges BPF memory to the memory cgroup instead of RLIMIT_MEMLOCK.
MEMCG_ACCOUNTING_KERNEL = (5, 11)

# Names of the probes: what was tried.
PROBE_MAP = "bpf_map"
PROBE_RINGBUF = "ring_buffer"
PROBE_TRACEPOINT_PROG = "tracepoint_program"
PROBE_RAW_TRACEPOINT_PROG = "raw_tracepoint_program"
PROBE_PERF_EVENT = "perf_event"
PROBE_UPROBE = "uprobe"
PROBE_UPROBE_MULTI = "uprobe_multi"
PROBE_PACKET_SOCKET = "packet_socket"
PROBE_SOCK_OPS_PROG = "sock_ops_program"

# (bpf, perf_event_open) syscall numbers by machine.
_SYSCALLS: Mapping[str, tuple[int, int]] = {"x86_64": (321, 298), "aarch64": (280, 241)}
_BPF_MAP_CREATE, _BPF_PROG_LOAD, _BPF_LINK_CREATE = 0, 5, 28
BPF_TRACE_UPROBE_MULTI = 48  # enum bpf_attach_type (Linux 6.6+)
_BPF_F_UPROBE_MULTI_RETURN = 1
# BPF_LINK_CREATE for uprobe_multi: prog_fd, target_fd, attach_type, flags, then path,
# offsets, ref_ctr_offsets, cookies, cnt, flags, pid.
_UPROBE_MULTI_ATTR = struct.Struct("=IIIIQQQQIII")
_BPF_ATTR_SIZE = 128
# union bpf_attr for BPF_PROG_LOAD up to attach_btf_id (include/uapi/linux/bpf.h): prog_type,
# insn_cnt, insns, license, log_level, log_size, log_buf, kern_version, prog_flags, prog_name,
# prog_ifindex, expected_attach_type, prog_btf_fd, func_info_rec_size, func_info, func_info_cnt,
# line_info_rec_size, line_info, line_info_cnt, attach_btf_id.
_PROG_LOAD_ATTR = struct.Struct("=IIQQIIQII16sIIIIQIIQII")
# r0 = 0; exit
_TRIVIAL_PROGRAM = struct.pack("=BBhi", 0xB7, 0, 0, 0) + struct.pack("=BBhi", 0x95, 0, 0, 0)
_VERIFIER_LOG_SIZE = 4096
_PERF_TYPE_SOFTWARE, _PERF_COUNT_SW_DUMMY = 1, 9
_PERF_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5
_PERF_FLAG_FD_CLOEXEC = 8
_UPROBE_PMU_TYPE = Path("/sys/bus/event_source/devices/uprobe/type")


@dataclass(frozen=True)
class ProgramType:
    """A BPF program type (enum bpf_prog_type) and what a trivial program of it needs to load.

    Probed the way libbpf's ``libbpf_probe_bpf_prog_type`` does, but keeping the errno.
    """

    what: str
    number: int
    expected_attach_type: int = 0
    attach_btf_id: int = 0
    # A program that needs a real attach target: on a kernel that has the type, loading fails
    # with this errno and verifier message (libbpf's probe for tracing programs).
    supported_if: tuple[int, str] | None = None
    needs_kernel_version: bool = False  # kprobe programs before Linux 5.0


@dataclass(frozen=True)
class MapType:
    """A BPF map type (enum bpf_map_type) and the sizes a map of it is created with to try it."""

    what: str
    number: int
    key_size: int = 0
    value_size: int = 0
    max_entries: int = 0  # 0: one page (ring buffers are sized in pages)


# Numbers from include/uapi/linux/bpf.h (a stable ABI; a unit test reads them from the header).
SOCKET_FILTER_PROGRAM = ProgramType("socket filter program", 1)
KPROBE_PROGRAM = ProgramType("kprobe program", 2, needs_kernel_version=True)
SCHED_CLS_PROGRAM = ProgramType("sched_cls program", 3)
TRACEPOINT_PROGRAM = ProgramType("tracepoint program", 5)
CGROUP_SKB_PROGRAM = ProgramType("cgroup_skb program", 8)
SOCK_OPS_PROGRAM = ProgramType("sock_ops program", 13)
SK_MSG_PROGRAM = ProgramType("sk_msg program", 16)
RAW_TRACEPOINT_PROGRAM = ProgramType("raw tracepoint program", 17)
BPF_TRACE_FENTRY = 24  # enum bpf_attach_type
TRACING_PROGRAM = ProgramType("tracing (fentry) program", 26, expected_attach_type=BPF_TRACE_FENTRY,
                              attach_btf_id=1,
                              supported_if=(errno.EINVAL, "attach_btf_id 1 is not a function"))
ARRAY_MAP = MapType("array map", 2, key_size=4, value_size=4, max_entries=1)
RING_BUFFER_MAP = MapType("ring buffer", 27)


def cap_name(capability: str) -> str:
    return f"CAP_{capability}"


@dataclass(frozen=True)
class Probe:
    """The outcome of trying one kernel feature."""

    ok: bool
    errno: int = 0
    detail: str = ""

    @classmethod
    def failed(cls, err: int, what: str) -> Probe:
        return cls(False, err, f"{what}: {os.strerror(err)}")


@dataclass(frozen=True)
class HostFacts:
    """What the preflight found: capabilities, kernel settings, probe outcomes."""

    capabilities: frozenset[str]
    kernel_release: str
    perf_event_paranoid: int | None = None
    unprivileged_bpf_disabled: int | None = None
    lockdown: str = "unknown"
    memlock_limit: int = resource.RLIM_INFINITY  # soft limit in bytes
    memlock_raised: bool = False
    tracefs_mounted: bool = False
    cgroup2: str | None = None  # where the cgroup v2 hierarchy is mounted
    probes: Mapping[str, Probe] = field(default_factory=dict)

    @property
    def kernel(self) -> tuple[int, int]:
        found = re.match(r"(\d+)\.(\d+)", self.kernel_release)
        return (int(found[1]), int(found[2])) if found else (0, 0)

    def has(self, capability: str) -> bool:
        """Whether the kernel grants what `capability` guards (SYS_ADMIN stands in for some)."""
        return capability in self.capabilities or (
            capability in COVERED_BY_SYS_ADMIN and "SYS_ADMIN" in self.capabilities)

    def probe(self, name: str) -> Probe:
        return self.probes.get(name, Probe(False, 0, f"{name} not tried"))

    @property
    def paranoid_blocks_perf(self) -> bool:
        """perf_event_paranoid > 2 (Debian, Android) allows perf events only with CAP_SYS_ADMIN."""
        return (self.perf_event_paranoid or 0) > 2 and "SYS_ADMIN" not in self.capabilities


@dataclass(frozen=True)
class Feature:
    """One row of the table: available or not, why, and what would turn it on."""

    name: str
    available: bool
    detail: str
    enabled_by: str | None = None  # the capability (CAP_...) that would enable it, when off

    def as_log(self) -> dict[str, Any]:
        return {"feature": self.name, "available": self.available, "detail": self.detail,
                "enabled_by": self.enabled_by}


@dataclass(frozen=True)
class MissingCapability:
    capability: str  # CAP_...
    required: bool
    disables: tuple[str, ...]

    @property
    def message(self) -> str:
        return f"{self.capability} is missing: {', '.join(self.disables)} disabled"


def _naming(missing: list[str]) -> str:
    """`missing capability CAP_X (needed for: ...)`, one line however many."""
    what = ", ".join(f"{c} (needed for: {NEEDED_FOR[c.removeprefix('CAP_')]})" for c in missing)
    return f"missing capabilit{'y' if len(missing) == 1 else 'ies'} {what}"


class PreflightError(Exception):
    """A required capability is missing and enforce_sys_caps is on."""


def _paranoid_cause(facts: HostFacts) -> str:
    return (f"kernel.perf_event_paranoid={facts.perf_event_paranoid} (> 2) allows perf events "
            "only with CAP_SYS_ADMIN")


def _refusal(facts: HostFacts, name: str, probe: Probe, capabilities: tuple[str, ...],
             paranoid_applies: bool = False) -> Feature:
    """The row of a feature whose probe failed: the cause and the capability that would help."""
    if paranoid_applies and facts.paranoid_blocks_perf:
        return Feature(name, False, f"{probe.detail}: {_paranoid_cause(facts)}", cap_name("SYS_ADMIN"))
    for capability in capabilities:
        if not facts.has(capability):
            return Feature(name, False, f"{probe.detail}: {cap_name(capability)} missing",
                           cap_name(capability))
    return Feature(name, False, probe.detail)


def _tried(facts: HostFacts, name: str, probes: tuple[str, ...], capabilities: tuple[str, ...],
           paranoid_applies: bool = False) -> Feature:
    for probe_name in probes:
        probe = facts.probe(probe_name)
        if not probe.ok:
            return _refusal(facts, name, probe, capabilities, paranoid_applies)
    return Feature(name, True, "tried: " + ", ".join(facts.probe(p).detail or p for p in probes))


def _by_capability(facts: HostFacts, capability: str, what: str) -> Feature:
    name = NEEDED_FOR[capability]
    if facts.has(capability):
        return Feature(name, True, f"{cap_name(capability)}: {what}")
    return Feature(name, False, f"{cap_name(capability)} missing: {what} is refused",
                   cap_name(capability))


def _tracefs(facts: HostFacts) -> Feature:
    if facts.tracefs_mounted:
        return Feature(TRACEFS_MOUNT, True, "tracefs already mounted: classic tracepoints")
    if "SYS_ADMIN" in facts.capabilities:
        return Feature(TRACEFS_MOUNT, True, "tracefs not mounted; obi mounts it (CAP_SYS_ADMIN)")
    return Feature(TRACEFS_MOUNT, False,
                   "tracefs not mounted and mounting needs CAP_SYS_ADMIN: no classic tracepoints "
                   "(fentry or raw tracepoints instead)",
                   cap_name("SYS_ADMIN"))


# Why a uprobe perf event is refused without CAP_SYS_ADMIN although CAP_PERFMON is granted.
PERF_UPROBE_CAUSE = ("perf_uprobe_event_init checks capable(CAP_SYS_ADMIN) (Linux 5.8 accepted "
                     "CAP_PERFMON; \"perf: Revert to requiring CAP_SYS_ADMIN for uprobes\", 2025, "
                     "took it back, stable kernels included)")


def _uprobes(facts: HostFacts) -> Feature:
    """TLS and Go uprobes: a uprobe_multi link (Linux 6.6+) needs CAP_BPF and CAP_PERFMON only;
    the older uprobe perf events need CAP_SYS_ADMIN on current kernels."""
    multi = facts.probe(PROBE_UPROBE_MULTI)
    probe = facts.probe(PROBE_UPROBE)
    if multi.ok:
        perf = "" if probe.ok else f"; {probe.detail}" + (
            f" ({PERF_UPROBE_CAUSE}): not needed" if probe.errno == errno.EACCES else "")
        return Feature(UPROBES, True, f"tried: {multi.detail}{perf}")
    if probe.ok:
        return Feature(UPROBES, True, f"tried: {probe.detail} ({multi.detail})")
    if probe.errno in (errno.EACCES, errno.EPERM):
        if facts.paranoid_blocks_perf:
            return Feature(UPROBES, False, f"{probe.detail}: {_paranoid_cause(facts)}",
                           cap_name("SYS_ADMIN"))
        if "SYS_ADMIN" not in facts.capabilities:
            return Feature(UPROBES, False, f"{probe.detail}: {PERF_UPROBE_CAUSE}; {multi.detail} "
                           "(uprobe_multi links need only CAP_BPF and CAP_PERFMON, from Linux 6.6)",
                           cap_name("SYS_ADMIN"))
    return Feature(UPROBES, False, f"{probe.detail}; {multi.detail}")


def _context_propagation(facts: HostFacts) -> Feature:
    """traceparent headers (ebpf.context_propagation): sock_ops on the cgroup v2 hierarchy and
    an sk_msg verdict on a sockhash, both needing CAP_NET_ADMIN."""
    feature = _tried(facts, SOCK_OPS, (PROBE_SOCK_OPS_PROG,), ("NET_ADMIN", "BPF"))
    if not feature.available:
        return feature
    if not facts.has("NET_ADMIN"):
        return Feature(SOCK_OPS, False, "CAP_NET_ADMIN missing: a sockhash and a cgroup attachment "
                       "are refused", cap_name("NET_ADMIN"))
    if facts.cgroup2 is None:
        return Feature(SOCK_OPS, False, "no cgroup v2 hierarchy is mounted: nothing to attach sock_ops to")
    return Feature(SOCK_OPS, True, f"{feature.detail}; cgroup v2 at {facts.cgroup2}")


def _bpf_memory(facts: HostFacts) -> Feature:
    if facts.kernel >= MEMCG_ACCOUNTING_KERNEL:
        return Feature(BPF_MEMORY, True, "charged to the memory cgroup (Linux 5.11+)")
    if facts.memlock_limit == resource.RLIM_INFINITY:
        raised = "raised to unlimited by obi" if facts.memlock_raised else "unlimited"
        return Feature(BPF_MEMORY, True, f"Linux < 5.11 charges RLIMIT_MEMLOCK: {raised}")
    return Feature(BPF_MEMORY, False,
                   f"Linux < 5.11 charges BPF memory to RLIMIT_MEMLOCK ({facts.memlock_limit // 1024} KiB); "
                   "raise it (ulimit -l unlimited, LimitMEMLOCK=infinity) or grant CAP_SYS_RESOURCE",
                   cap_name("SYS_RESOURCE"))


def feature_table(facts: HostFacts) -> tuple[Feature, ...]:
    """Every feature obi uses: available?, why not, which capability would enable it."""
    return (
        _tried(facts, NEEDED_FOR["BPF"], (PROBE_MAP, PROBE_RINGBUF), ("BPF",)),
        _tried(facts, NEEDED_FOR["PERFMON"], (PROBE_TRACEPOINT_PROG, PROBE_PERF_EVENT), ("PERFMON", "BPF"),
               paranoid_applies=True),
        _tried(facts, RAW_TRACEPOINTS, (PROBE_RAW_TRACEPOINT_PROG,), ("PERFMON", "BPF")),
        _by_capability(facts, "SYS_PTRACE", "/proc/PID/exe, /proc/PID/ns/* of other processes"),
        _by_capability(facts, "DAC_READ_SEARCH", "reading files and /proc entries of other users"),
        _by_capability(facts, "CHECKPOINT_RESTORE", "/proc/PID/map_files"),
        _tried(facts, NEEDED_FOR["NET_RAW"], (PROBE_PACKET_SOCKET,), ("NET_RAW",)),
        _context_propagation(facts),
        _tracefs(facts),
        _uprobes(facts),
        _bpf_memory(facts),
    )


@dataclass(frozen=True)
class Preflight:
    """The facts of this host and the feature table derived from them."""

    facts: HostFacts
    features: tuple[Feature, ...]

    @classmethod
    def from_facts(cls, facts: HostFacts) -> Preflight:
        return cls(facts, feature_table(facts))

    @property
    def missing_capabilities(self) -> tuple[MissingCapability, ...]:
        """Required capabilities not granted, then others whose absence turns a feature off."""
        missing = []
        for capability in REQUIRED_CAPABILITIES:
            if not self.facts.has(capability):
                name = cap_name(capability)
                off = tuple(f.name for f in self.features if f.enabled_by == name)
                missing.append(MissingCapability(name, True, off or (NEEDED_FOR[capability],)))
        required = {m.capability for m in missing}
        optional: dict[str, list[str]] = {}
        for feature in self.features:
            if feature.enabled_by and feature.enabled_by not in required:
                optional.setdefault(feature.enabled_by, []).append(feature.name)
        return (*missing, *(MissingCapability(c, False, tuple(f)) for c, f in optional.items()))

    def enforce(self) -> None:
        """Raises PreflightError naming every missing required capability (enforce_sys_caps)."""
        missing = [m.capability for m in self.missing_capabilities if m.required]
        if missing:
            raise PreflightError(_naming(missing))

    def explain(self, err: OSError) -> str | None:
        """The likely cause of a kernel refusal (EPERM/EACCES) while loading, if the facts show one."""
        if err.errno not in (errno.EPERM, errno.EACCES):
            return None
        loading = [m.capability for m in self.missing_capabilities
                   if m.required and m.capability in (cap_name("BPF"), cap_name("PERFMON"))]
        causes = [_naming(loading)] if loading else []
        if self.facts.paranoid_blocks_perf:
            causes.append(_paranoid_cause(self.facts))
        return "; ".join(causes) or None

    @property
    def unavailable(self) -> dict[str, str]:
        """Each feature that is off: the capability to grant, or why not when none would help."""
        return {f.name: f"grant {f.enabled_by}" if f.enabled_by else f.detail
                for f in self.features if not f.available}

    def log(self, log: Any) -> None:
        """A short `preflight` line at info (what is off and what would turn it on), every fact
        and the whole table as `preflight_detail` at debug, then one warning per missing capability."""
        facts = self.facts
        unavailable = self.unavailable
        log.info("preflight", kernel=facts.kernel_release,
                 features_available=f"{len(self.features) - len(unavailable)}/{len(self.features)}",
                 unavailable=unavailable)
        memlock = None if facts.memlock_limit == resource.RLIM_INFINITY else facts.memlock_limit
        log.debug("preflight_detail", capabilities=sorted(facts.capabilities),
                  perf_event_paranoid=facts.perf_event_paranoid,
                  unprivileged_bpf_disabled=facts.unprivileged_bpf_disabled, lockdown=facts.lockdown,
                  memlock_limit=memlock,
                  tracefs_mounted=facts.tracefs_mounted,
                  features=[f.as_log() for f in self.features],
                  missing_capabilities=[m.capability for m in self.missing_capabilities])
        for missing in self.missing_capabilities:
            log.warning("capability_missing", capability=missing.capability, required=missing.required,
                 disables=list(missing.disables), message=missing.message)


# ---- gathering (touches the kernel) ---------------------------------------------


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def lockdown_mode(path: str = "/sys/kernel/security/lockdown") -> str:
    """The active kernel lockdown mode, or "unknown" when securityfs is not readable."""
    try:
        text = Path(path).read_text()
    except OSError:
        return "unknown"
    found = re.search(r"\[(\w+)\]", text)
    return found[1] if found else text.strip()


def cgroup2_root(mounts: str = "/proc/self/mounts") -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on
    hybrid hosts), or None: every process is in it, whatever v1 hierarchies there are too."""
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    found = [fields[1] for fields in (line.split() for line in lines)
             if len(fields) > 2 and fields[2] == "cgroup2"]
    return min(found, key=len) if found else None


def tracefs_mounted() -> bool:
    from obi.ebpf.tracefs import syscall_events_dir

    return syscall_events_dir() is not None


class _Syscalls:
    """bpf(2) and perf_event_open(2) through libc's syscall(); every fd made is closed."""

    def __init__(self) -> None:
        numbers = _SYSCALLS.get(platform.machine())
        if numbers is None:
            raise OSError(errno.ENOSYS, f"no syscall numbers for {platform.machine()}")
        self.bpf_nr, self.perf_nr = numbers
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long

    def _call(self, *args: Any) -> int:
        fd = int(self.libc.syscall(*args))
        if fd < 0:
            return -ctypes.get_errno()
        os.close(fd)
        return 0

    def bpf(self, cmd: int, attr: bytes) -> int:
        return self._call(*self._bpf_args(cmd, attr))

    def bpf_fd(self, cmd: int, attr: bytes) -> int:
        """bpf(2) returning the fd it made (the caller closes it), or -errno."""
        fd = int(self.libc.syscall(*self._bpf_args(cmd, attr)))
        return fd if fd >= 0 else -ctypes.get_errno()

    def _bpf_args(self, cmd: int, attr: bytes) -> tuple[Any, ...]:
        buf = ctypes.create_string_buffer(attr, _BPF_ATTR_SIZE)
        return ctypes.c_long(self.bpf_nr), ctypes.c_long(cmd), buf, ctypes.c_long(_BPF_ATTR_SIZE)

    def perf_event_open(self, attr: bytes, pid: int, cpu: int) -> int:
        buf = ctypes.create_string_buffer(attr, _PERF_ATTR_SIZE)
        return self._call(ctypes.c_long(self.perf_nr), buf, ctypes.c_long(pid), ctypes.c_long(cpu),
                          ctypes.c_long(-1), ctypes.c_long(_PERF_FLAG_FD_CLOEXEC))


def _outcome(ret: int, what: str) -> Probe:
    return Probe(True, 0, what) if ret == 0 else Probe.failed(-ret, what)


def _probe_map(calls: _Syscalls, map_type: MapType) -> Probe:
    entries = map_type.max_entries or os.sysconf("SC_PAGE_SIZE")
    attr = struct.pack("=IIII", map_type.number, map_type.key_size, map_type.value_size, entries)
    return _outcome(calls.bpf(_BPF_MAP_CREATE, attr), map_type.what)


def kernel_version_code(release: str) -> int:
    """LINUX_VERSION_CODE of a release string ("6.1.0-18-amd64" -> 0x060100), as libbpf computes it."""
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not found:
        return 0
    major, minor, patch = (int(part or 0) for part in found.groups())
    return major << 16 | minor << 8 | min(patch, 255)


def _probe_program(calls: _Syscalls, program: ProgramType) -> Probe:
    insns = ctypes.create_string_buffer(_TRIVIAL_PROGRAM, len(_TRIVIAL_PROGRAM))
    gpl = ctypes.create_string_buffer(b"GPL")
    # The verifier log only when its message tells (the kernel refuses a buffer without a level).
    log = ctypes.create_string_buffer(_VERIFIER_LOG_SIZE) if program.supported_if else None
    log_level, log_size, log_buf = (1, len(log), ctypes.addressof(log)) if log else (0, 0, 0)
    kern_version = kernel_version_code(platform.release()) if program.needs_kernel_version else 0
    attr = _PROG_LOAD_ATTR.pack(
        program.number, len(_TRIVIAL_PROGRAM) // 8, ctypes.addressof(insns), ctypes.addressof(gpl),
        log_level, log_size, log_buf, kern_version, 0, b"", 0, program.expected_attach_type,
        0, 0, 0, 0, 0, 0, 0, program.attach_btf_id)
    ret = calls.bpf(_BPF_PROG_LOAD, attr)
    if program.supported_if is not None and log is not None and ret < 0:
        expected_errno, message = program.supported_if
        if -ret == expected_errno and message.encode() in log.value:
            return Probe(True, 0, program.what)
    return _outcome(ret, program.what)


def _with_syscalls(probe: Callable[[_Syscalls], Probe]) -> Probe:
    try:
        calls = _Syscalls()
    except OSError as err:
        return Probe(False, err.errno or errno.ENOSYS, str(err))
    return probe(calls)


def probe_program_type(program: ProgramType) -> Probe:
    """Whether a trivial program of this type loads here (kernel and privileges); never raises."""
    return _with_syscalls(lambda calls: _probe_program(calls, program))


def probe_map_type(map_type: MapType) -> Probe:
    """Whether a map of this type can be created here (kernel and privileges); never raises."""
    return _with_syscalls(lambda calls: _probe_map(calls, map_type))


def _perf_attr(pmu: int, config: int, config1: int = 0, config2: int = 0) -> bytes:
    """perf_event_attr (VER5), created disabled so nothing is armed while it exists."""
    head = struct.pack("=IIQQQQQII", pmu, _PERF_ATTR_SIZE, config, 0, 0, 0, 1, 0, 0)
    return (head + struct.pack("=QQ", config1, config2)).ljust(_PERF_ATTR_SIZE, b"\0")


def uprobe_target() -> tuple[str, int]:
    """(file, offset) of libc's getpid as mapped in this process: a harmless place for a uprobe."""
    libc = ctypes.CDLL(None)
    address = ctypes.cast(libc.getpid, ctypes.c_void_p).value or 0
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end and len(fields) == 6 and fields[5].startswith("/"):
            return fields[5], address - start + int(fields[2], 16)
    raise OSError(errno.ENOENT, "getpid is not in a mapped file")


def _probe_uprobe(calls: _Syscalls) -> Probe:
    try:
        pmu = int(_UPROBE_PMU_TYPE.read_text())
    except (OSError, ValueError):
        return Probe(False, errno.ENOENT, f"no uprobe PMU ({_UPROBE_PMU_TYPE} missing)")
    try:
        path, offset = uprobe_target()
    except OSError as err:
        return Probe(False, err.errno or errno.ENOENT, f"no uprobe target: {err.strerror}")
    name = ctypes.create_string_buffer(path.encode())
    attr = _perf_attr(pmu, 0, ctypes.addressof(name), offset)
    # All processes on cpu 0, as libbpf attaches uprobes.
    return _outcome(calls.perf_event_open(attr, -1, 0), f"uprobe perf event on {Path(path).name}")


def _probe_uprobe_multi(calls: _Syscalls) -> Probe:
    """A trivial uprobe program on libc's getpid through a uprobe_multi link, detached at once."""
    what = "uprobe_multi link"
    insns = ctypes.create_string_buffer(_TRIVIAL_PROGRAM, len(_TRIVIAL_PROGRAM))
    gpl = ctypes.create_string_buffer(b"GPL")
    attr = _PROG_LOAD_ATTR.pack(KPROBE_PROGRAM.number, len(_TRIVIAL_PROGRAM) // 8, ctypes.addressof(insns),
                                ctypes.addressof(gpl), 0, 0, 0, 0, 0, b"", 0, BPF_TRACE_UPROBE_MULTI,
                                0, 0, 0, 0, 0, 0, 0, 0)
    prog = calls.bpf_fd(_BPF_PROG_LOAD, attr)
    if prog < 0:
        return Probe.failed(-prog, f"{what} (program load)")
    try:
        path, offset = uprobe_target()
        name = ctypes.create_string_buffer(path.encode())
        offsets = (ctypes.c_uint64 * 1)(offset)
        link = _UPROBE_MULTI_ATTR.pack(prog, 0, BPF_TRACE_UPROBE_MULTI, 0, ctypes.addressof(name),
                                       ctypes.addressof(offsets), 0, 0, 1, 0, 0)
        ret = calls.bpf(_BPF_LINK_CREATE, link)
    except OSError as err:
        return Probe(False, err.errno or errno.ENOENT, f"no uprobe target: {err.strerror}")
    finally:
        os.close(prog)
    if ret == -errno.EINVAL:
        return Probe(False, errno.EOPNOTSUPP, f"{what}: not in this kernel (Linux 6.6+)")
    return _outcome(ret, f"{what} on {Path(path).name}")


def probe_uprobe_modes() -> tuple[Probe, Probe]:
    """(uprobe_multi link, uprobe perf event): how uprobes can be attached here."""
    return _with_syscalls(_probe_uprobe_multi), _with_syscalls(_probe_uprobe)


def _probe_packet_socket() -> Probe:
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except OSError as err:
        return Probe.failed(err.errno or errno.EPERM, "AF_PACKET raw socket")
    return Probe(True, 0, "AF_PACKET raw socket")


def run_probes() -> dict[str, Probe]:
    """Tries each kernel feature once; never raises."""
    return {
        PROBE_PACKET_SOCKET: _probe_packet_socket(),
        PROBE_MAP: probe_map_type(ARRAY_MAP),
        PROBE_RINGBUF: probe_map_type(RING_BUFFER_MAP),
        PROBE_TRACEPOINT_PROG: probe_program_type(TRACEPOINT_PROGRAM),
        PROBE_RAW_TRACEPOINT_PROG: probe_program_type(RAW_TRACEPOINT_PROGRAM),
        PROBE_SOCK_OPS_PROG: probe_program_type(SOCK_OPS_PROGRAM),
        PROBE_PERF_EVENT: _with_syscalls(lambda calls: _outcome(
            calls.perf_event_open(_perf_attr(_PERF_TYPE_SOFTWARE, _PERF_COUNT_SW_DUMMY), -1, 0),
            "system-wide perf event")),
        PROBE_UPROBE: _with_syscalls(_probe_uprobe),
        PROBE_UPROBE_MULTI: _with_syscalls(_probe_uprobe_multi),
    }


def raise_memlock(kernel: tuple[int, int], capabilities: frozenset[str]) -> bool:
    """Before Linux 5.11 BPF memory counts against RLIMIT_MEMLOCK: lift it when allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if kernel >= MEMCG_ACCOUNTING_KERNEL or soft == resource.RLIM_INFINITY:
        return False
    if hard != resource.RLIM_INFINITY and "SYS_RESOURCE" not in capabilities:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (OSError, ValueError):
        return False
    return True


def gather_host_facts() -> HostFacts:
    """Reads capabilities and kernel settings, lifts RLIMIT_MEMLOCK if needed, runs the probes."""
    capabilities = frozenset(effective_capabilities())
    release = platform.release()
    facts = HostFacts(capabilities, release)
    raised = raise_memlock(facts.kernel, capabilities)
    return HostFacts(
        capabilities=capabilities,
        kernel_release=release,
        perf_event_paranoid=_read_int("/proc/sys/kernel/perf_event_paranoid"),
        unprivileged_bpf_disabled=_read_int("/proc/sys/kernel/unprivileged_bpf_disabled"),
        lockdown=lockdown_mode(),
        memlock_limit=resource.getrlimit(resource.RLIMIT_MEMLOCK)[0],
        memlock_raised=raised,
        tracefs_mounted=tracefs_mounted(),
        cgroup2=cgroup2_root(),
        probes=run_probes(),
    )


def run_preflight() -> Preflight:
    """Gathers the facts and logs them once (component=preflight): a summary, the detail at debug."""
    preflight = Preflight.from_facts(gather_host_facts())
    preflight.log(structlog.get_logger().bind(component="preflight"))
    return preflight
