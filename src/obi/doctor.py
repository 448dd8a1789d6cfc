"""`obi doctor`: what this kernel and this process allow, found by trying."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from obi.preflight import Preflight, gather_host_facts


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as err:
        return f"unknown ({err.strerror})"


def lockdown_mode() -> str:
    text = _read("/sys/kernel/security/lockdown")
    if text.startswith("unknown"):
        return "unknown (securityfs not mounted)"
    for word in text.split():
        if word.startswith("["):
            return word.strip("[]")
    return text


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = False


def _probe_prog_types() -> list[Check]:
    from obi.ebpf._libbpf import ffi, lib

    checks = []
    for label, const in (
        ("tracepoint", "BPF_PROG_TYPE_TRACEPOINT"),
        ("raw_tracepoint", "BPF_PROG_TYPE_RAW_TRACEPOINT"),
        ("kprobe/uprobe", "BPF_PROG_TYPE_KPROBE"),
        ("tracing (fentry, tp_btf)", "BPF_PROG_TYPE_TRACING"),
        ("socket_filter", "BPF_PROG_TYPE_SOCKET_FILTER"),
        ("sock_ops", "BPF_PROG_TYPE_SOCK_OPS"),
        ("sk_msg", "BPF_PROG_TYPE_SK_MSG"),
        ("cgroup_skb", "BPF_PROG_TYPE_CGROUP_SKB"),
        ("sched_cls (tc)", "BPF_PROG_TYPE_SCHED_CLS"),
    ):
        ret = lib.libbpf_probe_bpf_prog_type(getattr(lib, const), ffi.NULL)
        checks.append(Check(f"load {label} program", ret == 1,
                            "yes" if ret == 1 else ("no" if ret == 0 else os.strerror(-ret))))
    ret = lib.libbpf_probe_bpf_map_type(lib.BPF_MAP_TYPE_RINGBUF, ffi.NULL)
    checks.append(Check("BPF ring buffer", ret == 1, "yes" if ret == 1 else "no", required=True))
    return checks


def _probe_attach(hooks: str) -> Check:
    """Loads and attaches the HTTP capture with the given hooks, then detaches."""
    from obi.ebpf.http_tracer import HttpTracer, HttpTracerSettings

    try:
        with HttpTracer(HttpTracerSettings(syscall_hooks=hooks, ring_buffer_size=1 << 16)) as tracer:  # type: ignore[arg-type]
            detail = f"attached {tracer.collection.link_count} programs ({tracer.hooks_detail})"
        return Check(f"attach HTTP capture on {hooks}s", True, detail)
    except Exception as err:  # doctor reports every failure, whatever it is
        return Check(f"attach HTTP capture on {hooks}s", False, str(err))


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
        ("kernel", f"{platform.release()} ({platform.machine()})"),
        ("BTF", "yes (/sys/kernel/btf/vmlinux)" if Path("/sys/kernel/btf/vmlinux").exists() else "missing"),
        ("lockdown", lockdown_mode()),
        ("tracefs", tracefs),
        ("perf_event_paranoid", _read("/proc/sys/kernel/perf_event_paranoid")),
        ("unprivileged_bpf_disabled", _read("/proc/sys/kernel/unprivileged_bpf_disabled")),
        ("capabilities", ", ".join(sorted(host.capabilities)) or "none"),
        ("missing capabilities", ", ".join(missing) or "none"),
    ]
    width = max(len(k) for k, _ in facts)
    for key, value in facts:
        out.write(f"{key:<{width}}  {value}\n")
    write_feature_table(out, preflight)
    checks: list[Check] = [Check("BTF available", Path("/sys/kernel/btf/vmlinux").exists(),
                                 "needed for CO-RE", required=True)]
    try:
        checks += _probe_prog_types()
    except Exception as err:  # the CFFI module itself may fail to load
        checks.append(Check("libbpf", False, str(err), required=True))
    raw = probe("raw_tracepoint")
    classic = probe("tracepoint")
    checks += [raw, classic]
    out.write("\n")
    for check in checks:
        out.write(f"[{'ok' if check.ok else 'NO':>2}] {check.name}: {check.detail}\n")
    can_run = all(c.ok for c in checks if c.required) and (raw.ok or classic.ok)
    path = "syscall tracepoints" if classic.ok else "raw tracepoints" if raw.ok else "none"
    out.write(f"\ncapture path the agent would use: {path}\n")
    out.write("obi can run here\n" if can_run else "obi cannot run here\n")
    return 0 if can_run else 1
