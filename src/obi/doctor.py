"""`obi doctor`: what this kernel and this process allow, found by trying."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from obi.compiled import MODULES as COMPILED_MODULES
from obi.compiled import compiled_modules
from obi.preflight import (
    CGROUP_SKB_PROGRAM,
    KPROBE_PROGRAM,
    RAW_TRACEPOINT_PROGRAM,
    RING_BUFFER_MAP,
    SCHED_CLS_PROGRAM,
    SK_MSG_PROGRAM,
    SOCK_OPS_PROGRAM,
    SOCKET_FILTER_PROGRAM,
    TRACEPOINT_PROGRAM,
    TRACING_PROGRAM,
    Preflight,
    Probe,
    ProgramType,
    gather_host_facts,
    probe_map_type,
    probe_program_type,
)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = False


# The program types doctor tries to load, by the name it shows.
PROGRAM_TYPES: tuple[tuple[str, ProgramType], ...] = (
    ("tracepoint", TRACEPOINT_PROGRAM),
    ("raw_tracepoint", RAW_TRACEPOINT_PROGRAM),
    ("kprobe/uprobe", KPROBE_PROGRAM),
    ("tracing (fentry, tp_btf)", TRACING_PROGRAM),
    ("socket_filter", SOCKET_FILTER_PROGRAM),
    ("sock_ops", SOCK_OPS_PROGRAM),
    ("sk_msg", SK_MSG_PROGRAM),
    ("cgroup_skb", CGROUP_SKB_PROGRAM),
    ("sched_cls (tc)", SCHED_CLS_PROGRAM),
)


def _answer(probe: Probe) -> str:
    return "yes" if probe.ok else f"no ({os.strerror(probe.errno)})" if probe.errno else "no"


def _probe_prog_types() -> list[Check]:
    """The preflight's probes for every program type doctor lists, and for ring buffers."""
    checks = []
    for label, program in PROGRAM_TYPES:
        probe = probe_program_type(program)
        checks.append(Check(f"load {label} program", probe.ok, _answer(probe)))
    ring = probe_map_type(RING_BUFFER_MAP)
    checks.append(Check("BPF ring buffer", ring.ok, _answer(ring), required=True))
    return checks


# The syscall hook sets (obi.ebpf.capture.ALL_HOOKS) by the name doctor shows.
HOOK_LABELS = {"fentry": "fentry/fexit", "kprobe": "kprobes", "tracepoint": "tracepoints",
               "raw_tracepoint": "raw_tracepoints"}


def _probe_attach(hooks: str) -> Check:
    """Loads and attaches the TCP capture with the given hooks, then detaches."""
    from obi.ebpf.capture import Capture, CaptureSettings

    what = f"attach the TCP capture on {HOOK_LABELS[hooks]}"
    try:
        with Capture(CaptureSettings(syscall_hooks=hooks, ring_buffer_size=1 << 16,  # type: ignore[arg-type]
                                     max_exchanges=64, max_connections=256)) as capture:
            framing = "HTTP/1.x framing in the kernel" if capture.http_framing else (
                "no HTTP/1.x framing in the kernel (bpf_loop needs Linux 5.17)")
            detail = (f"attached {capture.collection.link_count} programs ({capture.hooks_detail}; "
                      f"{framing}); {capture.programs.describe()}")
        return Check(what, True, detail)
    except Exception as err:  # doctor reports every failure, whatever it is
        return Check(what, False, str(err))


def _setting(value: int | None) -> str:
    return "unknown" if value is None else str(value)


def write_feature_table(out: TextIO, preflight: Preflight) -> None:
    """The preflight's table: each feature, why it is off, the capability that would turn it on."""
    out.write("\nfeatures (as the agent's preflight finds them):\n")
    for feature in preflight.features:
        enable = f" -> grant {feature.enabled_by}" if feature.enabled_by else ""
        out.write(f"[{'ok' if feature.available else 'NO':>2}] {feature.name}: {feature.detail}{enable}\n")


def run_doctor(out: TextIO, probe: Callable[[str], Check] = _probe_attach) -> int:
    """Prints the report; returns 0 when the agent can run here, else 1."""
    preflight = Preflight.from_facts(gather_host_facts())
    host = preflight.facts
    missing = [m.capability for m in preflight.missing_capabilities if m.required]
    tracefs = "mounted" if host.tracefs_mounted else "not mounted"
    facts = [
        ("kernel", f"{host.kernel_release} ({platform.machine()})"),
        ("BTF", "yes (/sys/kernel/btf/vmlinux)" if Path("/sys/kernel/btf/vmlinux").exists() else "missing"),
        ("lockdown", "unknown (securityfs not mounted)" if host.lockdown == "unknown" else host.lockdown),
        ("tracefs", tracefs),
        ("perf_event_paranoid", _setting(host.perf_event_paranoid)),
        ("unprivileged_bpf_disabled", _setting(host.unprivileged_bpf_disabled)),
        ("capabilities", ", ".join(sorted(host.capabilities)) or "none"),
        ("missing capabilities", ", ".join(missing) or "none"),
        ("compiled modules", f"{len(compiled_modules())} of {len(COMPILED_MODULES)} (mypyc, per-event path)"),
    ]
    width = max(len(k) for k, _ in facts)
    for key, value in facts:
        out.write(f"{key:<{width}}  {value}\n")
    write_feature_table(out, preflight)
    checks: list[Check] = [Check("BTF available", Path("/sys/kernel/btf/vmlinux").exists(),
                                 "needed for CO-RE", required=True)]
    checks += _probe_prog_types()
    from obi.ebpf.capture import ALL_HOOKS, AUTO_HOOKS

    attached = {hooks: probe(hooks) for hooks in ALL_HOOKS}
    checks += attached.values()
    out.write("\n")
    for check in checks:
        out.write(f"[{'ok' if check.ok else 'NO':>2}] {check.name}: {check.detail}\n")
    chosen = next((hooks for hooks in AUTO_HOOKS if attached[hooks].ok), None)
    can_run = all(c.ok for c in checks if c.required) and chosen is not None
    path = f"{chosen} ({HOOK_LABELS[chosen]})" if chosen else "none"
    out.write(f"\nsyscall hooks the agent would use (ebpf.syscall_hooks: auto): {path}\n")
    out.write("obi can run here\n" if can_run else "obi cannot run here\n")
    return 0 if can_run else 1
