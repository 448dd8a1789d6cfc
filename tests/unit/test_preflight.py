"""The preflight's feature table from injected facts: no root, no kernel."""

from __future__ import annotations

import errno
import re
import resource
from collections.abc import Mapping
from pathlib import Path

import pytest
import structlog

from obi.capabilities import REQUIRED_CAPABILITIES
from obi.preflight import (
    ARRAY_MAP,
    BPF_MEMORY,
    CGROUP_SKB_PROGRAM,
    KPROBE_PROGRAM,
    NEEDED_FOR,
    PROBE_MAP,
    PROBE_PACKET_SOCKET,
    PROBE_PERF_EVENT,
    PROBE_RAW_TRACEPOINT_PROG,
    PROBE_RINGBUF,
    PROBE_SOCK_OPS_PROG,
    PROBE_TRACEPOINT_PROG,
    PROBE_UPROBE,
    PROBE_UPROBE_MULTI,
    RAW_TRACEPOINT_PROGRAM,
    RAW_TRACEPOINTS,
    RING_BUFFER_MAP,
    SCHED_CLS_PROGRAM,
    SK_MSG_PROGRAM,
    SOCK_OPS,
    SOCK_OPS_PROGRAM,
    SOCKET_FILTER_PROGRAM,
    TRACEFS_MOUNT,
    TRACEPOINT_PROGRAM,
    TRACING_PROGRAM,
    UPROBES,
    Feature,
    HostFacts,
    Preflight,
    PreflightError,
    Probe,
    kernel_version_code,
    lockdown_mode,
)

UNPRIVILEGED = frozenset(REQUIRED_CAPABILITIES)
ALL_PROBES = (PROBE_MAP, PROBE_RINGBUF, PROBE_TRACEPOINT_PROG, PROBE_RAW_TRACEPOINT_PROG, PROBE_PERF_EVENT,
              PROBE_UPROBE, PROBE_UPROBE_MULTI, PROBE_PACKET_SOCKET, PROBE_SOCK_OPS_PROG)


def probes(failed: Mapping[str, int]) -> dict[str, Probe]:
    """Every probe succeeds except those named, which fail with the given errno."""
    return {name: Probe.failed(failed[name], name) if name in failed else Probe(True, 0, name)
            for name in ALL_PROBES}


def facts(capabilities: frozenset[str] = UNPRIVILEGED | {"SYS_ADMIN"}, release: str = "6.18.0",
          paranoid: int = 2, tracefs: bool = False, memlock: int = 8 << 20, raised: bool = False,
          failed: Mapping[str, int] | None = None, cgroup2: str | None = "/sys/fs/cgroup") -> HostFacts:
    """Facts of a host; the probes named in `failed` fail with the given errno."""
    return HostFacts(capabilities=capabilities, kernel_release=release, perf_event_paranoid=paranoid,
                     unprivileged_bpf_disabled=2, lockdown="integrity", memlock_limit=memlock,
                     memlock_raised=raised, tracefs_mounted=tracefs, cgroup2=cgroup2,
                     probes=probes(failed or {}))


def table(host: HostFacts) -> dict[str, Feature]:
    return {f.name: f for f in Preflight.from_facts(host).features}


def test_privileged_host_has_everything_and_nothing_missing() -> None:
    preflight = Preflight.from_facts(facts(UNPRIVILEGED | {"SYS_ADMIN", "NET_ADMIN"}))
    assert all(f.available for f in preflight.features), preflight.features
    assert preflight.missing_capabilities == ()
    preflight.enforce()


def test_unprivileged_list_before_uprobe_multi_turns_off_tracefs_mount_and_uprobes_naming_sys_admin() -> None:
    host = facts(UNPRIVILEGED, release="6.1.0", failed={PROBE_UPROBE: errno.EACCES,
                                                        PROBE_UPROBE_MULTI: errno.EOPNOTSUPP})
    rows = table(host)
    assert not rows[TRACEFS_MOUNT].available
    assert "no classic tracepoints (fentry or raw tracepoints instead)" in rows[TRACEFS_MOUNT].detail
    assert rows[TRACEFS_MOUNT].enabled_by == "CAP_SYS_ADMIN"
    assert not rows[UPROBES].available and rows[UPROBES].enabled_by == "CAP_SYS_ADMIN"
    assert "Permission denied: perf_uprobe_event_init checks capable(CAP_SYS_ADMIN)" in rows[UPROBES].detail
    assert "uprobe_multi links need only CAP_BPF and CAP_PERFMON, from Linux 6.6" in rows[UPROBES].detail
    assert rows[RAW_TRACEPOINTS].available
    assert all(rows[name].available for name in NEEDED_FOR.values())
    preflight = Preflight.from_facts(host)
    # Nothing required is missing: enforcing passes; SYS_ADMIN is named with what it would enable.
    preflight.enforce()
    missing = {m.capability: m for m in preflight.missing_capabilities}
    assert not missing["CAP_SYS_ADMIN"].required
    assert missing["CAP_SYS_ADMIN"].disables == (TRACEFS_MOUNT, UPROBES)


def test_uprobe_multi_links_give_uprobes_to_the_unprivileged_list() -> None:
    row = table(facts(UNPRIVILEGED, failed={PROBE_UPROBE: errno.EACCES}))[UPROBES]
    assert row.available and row.enabled_by is None
    assert row.detail.startswith("tried: uprobe_multi; uprobe: Permission denied (perf_uprobe_event_init")
    assert row.detail.endswith("): not needed")


def test_tracefs_already_mounted_needs_no_sys_admin() -> None:
    rows = table(facts(UNPRIVILEGED, tracefs=True))
    assert rows[TRACEFS_MOUNT].available and rows[TRACEFS_MOUNT].enabled_by is None


def test_uprobe_pmu_missing_is_not_a_capability_matter() -> None:
    row = table(facts(failed={PROBE_UPROBE: errno.ENOENT, PROBE_UPROBE_MULTI: errno.ENOENT}))[UPROBES]
    assert not row.available and row.enabled_by is None


@pytest.mark.parametrize("capability", REQUIRED_CAPABILITIES)
def test_each_missing_required_capability_names_its_feature(capability: str) -> None:
    # The probes fail the way the kernel refuses without the capability.
    by_capability: dict[str, dict[str, int]] = {
        "BPF": {PROBE_MAP: errno.EPERM, PROBE_RINGBUF: errno.EPERM, PROBE_TRACEPOINT_PROG: errno.EPERM,
                PROBE_RAW_TRACEPOINT_PROG: errno.EPERM},
        "PERFMON": {PROBE_TRACEPOINT_PROG: errno.EPERM, PROBE_RAW_TRACEPOINT_PROG: errno.EPERM,
                    PROBE_PERF_EVENT: errno.EACCES},
        "NET_RAW": {PROBE_PACKET_SOCKET: errno.EPERM},
    }
    refused = by_capability.get(capability, {})
    host = facts(UNPRIVILEGED - {capability}, failed=refused)
    preflight = Preflight.from_facts(host)
    row = {f.name: f for f in preflight.features}[NEEDED_FOR[capability]]
    assert not row.available
    assert row.enabled_by == f"CAP_{capability}"
    assert f"CAP_{capability} missing" in row.detail
    required = [m for m in preflight.missing_capabilities if m.required]
    assert [m.capability for m in required] == [f"CAP_{capability}"]
    assert NEEDED_FOR[capability] in required[0].disables
    assert required[0].message.startswith(f"CAP_{capability} is missing: ")
    with pytest.raises(PreflightError) as raised:
        preflight.enforce()
    assert str(raised.value) == f"missing capability CAP_{capability} (needed for: {NEEDED_FOR[capability]})"


def test_sys_admin_stands_in_for_bpf_perfmon_and_checkpoint_restore_only() -> None:
    host = facts(frozenset({"SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH", "NET_RAW"}))
    Preflight.from_facts(host).enforce()
    host = facts(frozenset({"SYS_ADMIN", "BPF", "PERFMON", "CHECKPOINT_RESTORE"}),
                 failed={PROBE_PACKET_SOCKET: errno.EPERM})
    with pytest.raises(PreflightError) as raised:
        Preflight.from_facts(host).enforce()
    assert str(raised.value).startswith(
        "missing capabilities CAP_SYS_PTRACE (needed for: reading other processes' executables")
    assert "CAP_DAC_READ_SEARCH" in str(raised.value) and "CAP_NET_RAW (needed for: socket filters)" in str(
        raised.value)
    assert "\n" not in str(raised.value)


def test_paranoid_3_without_sys_admin_is_named_as_the_cause() -> None:
    host = facts(UNPRIVILEGED, paranoid=3, release="6.1.0",
                 failed={PROBE_PERF_EVENT: errno.EACCES, PROBE_UPROBE: errno.EACCES,
                         PROBE_UPROBE_MULTI: errno.EOPNOTSUPP})
    rows = table(host)
    perf = rows[NEEDED_FOR["PERFMON"]]
    assert not perf.available and perf.enabled_by == "CAP_SYS_ADMIN"
    assert "kernel.perf_event_paranoid=3 (> 2)" in perf.detail
    assert "kernel.perf_event_paranoid=3" in rows[UPROBES].detail
    preflight = Preflight.from_facts(host)
    cause = preflight.explain(PermissionError(errno.EPERM, "load capture.bpf.o"))
    assert cause == "kernel.perf_event_paranoid=3 (> 2) allows perf events only with CAP_SYS_ADMIN"
    # Not the cause of other errors, nor when SYS_ADMIN is there.
    assert preflight.explain(OSError(errno.ENOENT, "x")) is None
    assert Preflight.from_facts(facts(UNPRIVILEGED | {"SYS_ADMIN"}, paranoid=3)).explain(
        PermissionError(errno.EPERM, "x")) is None


def test_paranoid_3_with_perf_events_working_is_not_blamed_in_the_table() -> None:
    # An upstream kernel treats 3 like 2: the probe says perf events work.
    assert table(facts(UNPRIVILEGED, paranoid=3))[NEEDED_FOR["PERFMON"]].available


def test_eperm_with_missing_bpf_names_the_capability() -> None:
    preflight = Preflight.from_facts(facts(UNPRIVILEGED - {"BPF"}, failed={PROBE_MAP: errno.EPERM}))
    assert preflight.explain(PermissionError(errno.EPERM, "load")) == (
        "missing capability CAP_BPF (needed for: BPF programs and maps)")
    # A missing capability unrelated to loading is not offered as the cause.
    assert Preflight.from_facts(facts(UNPRIVILEGED - {"NET_RAW"})).explain(
        PermissionError(errno.EPERM, "load")) is None


def test_old_kernel_memlock() -> None:
    low = table(facts(UNPRIVILEGED, release="5.10.0-28-amd64", memlock=64 << 10))[BPF_MEMORY]
    assert not low.available and low.enabled_by == "CAP_SYS_RESOURCE"
    assert "RLIMIT_MEMLOCK (64 KiB)" in low.detail and "LimitMEMLOCK=infinity" in low.detail
    raised = table(facts(UNPRIVILEGED | {"SYS_RESOURCE"}, release="5.4.0", memlock=resource.RLIM_INFINITY,
                         raised=True))[BPF_MEMORY]
    assert raised.available and "raised to unlimited by obi" in raised.detail
    new = table(facts(UNPRIVILEGED, release="5.11.0", memlock=64 << 10))[BPF_MEMORY]
    assert new.available and "5.11" in new.detail


def test_kernel_version_parsing() -> None:
    assert facts(release="6.18.44-fc-v657").kernel == (6, 18)
    assert facts(release="4.19.0").kernel == (4, 19)
    assert facts(release="weird").kernel == (0, 0)


def test_logs_a_short_summary_the_table_at_debug_and_one_warning_per_missing_capability() -> None:
    host = facts(UNPRIVILEGED - {"NET_RAW"}, failed={
        PROBE_PACKET_SOCKET: errno.EPERM, PROBE_UPROBE: errno.ENOENT, PROBE_UPROBE_MULTI: errno.ENOENT,
        PROBE_SOCK_OPS_PROG: errno.EPERM})
    with structlog.testing.capture_logs() as logs:
        Preflight.from_facts(host).log(structlog.get_logger().bind(component="preflight"))
    [summary] = [e for e in logs if e["event"] == "preflight"]
    assert summary == {
        "event": "preflight", "component": "preflight", "log_level": "info", "kernel": "6.18.0",
        "features_available": "7/11",
        "unavailable": {NEEDED_FOR["NET_RAW"]: "grant CAP_NET_RAW", SOCK_OPS: "grant CAP_NET_ADMIN",
                        TRACEFS_MOUNT: "grant CAP_SYS_ADMIN",
                        # no capability would help
                        UPROBES: "uprobe: No such file or directory; "
                                 "uprobe_multi: No such file or directory"},
    }
    assert len(str(summary)) < 400
    [detail] = [e for e in logs if e["event"] == "preflight_detail"]
    assert detail["log_level"] == "debug" and detail["lockdown"] == "integrity"
    assert "SYS_PTRACE" in detail["capabilities"] and "NET_RAW" not in detail["capabilities"]
    features = {row["feature"]: row for row in detail["features"]}
    assert len(features) == 11
    assert features[TRACEFS_MOUNT] == {"feature": TRACEFS_MOUNT, "available": False,
                                       "enabled_by": "CAP_SYS_ADMIN",
                                       "detail": features[TRACEFS_MOUNT]["detail"]}
    assert detail["missing_capabilities"] == ["CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
    warnings = {e["capability"]: e for e in logs if e["event"] == "capability_missing"}
    assert set(warnings) == {"CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"}
    assert all(e["log_level"] == "warning" for e in warnings.values())
    assert warnings["CAP_NET_RAW"]["required"] and warnings["CAP_NET_RAW"]["disables"] == ["socket filters"]
    assert warnings["CAP_NET_RAW"]["message"] == "CAP_NET_RAW is missing: socket filters disabled"
    assert warnings["CAP_SYS_ADMIN"]["disables"] == [TRACEFS_MOUNT]
    assert [e["event"] for e in logs] == ["preflight", "preflight_detail", *["capability_missing"] * 3]


def test_a_host_with_everything_logs_nothing_off() -> None:
    with structlog.testing.capture_logs() as logs:
        Preflight.from_facts(facts(UNPRIVILEGED | {"SYS_ADMIN", "NET_ADMIN"})).log(structlog.get_logger())
    assert logs[0]["features_available"] == "11/11" and logs[0]["unavailable"] == {}


def _uapi_enum(name: str) -> dict[str, int]:
    """The members of an enum of the kernel's UAPI header, by value (they are implicit there)."""
    text = Path("/usr/include/linux/bpf.h").read_text()
    body = text[text.index(f"enum {name} {{"):]
    body = re.sub(r"/\*.*?\*/", "", body[body.index("{") + 1:body.index("};")], flags=re.S)
    members = [m.strip() for m in body.split(",") if m.strip()]
    assert all("=" not in m for m in members), members
    return {member: value for value, member in enumerate(members)}


def test_program_and_map_type_numbers_are_the_kernel_headers() -> None:
    programs = _uapi_enum("bpf_prog_type")
    for program, name in ((SOCKET_FILTER_PROGRAM, "SOCKET_FILTER"), (KPROBE_PROGRAM, "KPROBE"),
                          (SCHED_CLS_PROGRAM, "SCHED_CLS"), (TRACEPOINT_PROGRAM, "TRACEPOINT"),
                          (CGROUP_SKB_PROGRAM, "CGROUP_SKB"), (SOCK_OPS_PROGRAM, "SOCK_OPS"),
                          (SK_MSG_PROGRAM, "SK_MSG"), (RAW_TRACEPOINT_PROGRAM, "RAW_TRACEPOINT"),
                          (TRACING_PROGRAM, "TRACING")):
        assert program.number == programs[f"BPF_PROG_TYPE_{name}"], name
    maps = _uapi_enum("bpf_map_type")
    assert ARRAY_MAP.number == maps["BPF_MAP_TYPE_ARRAY"]
    assert RING_BUFFER_MAP.number == maps["BPF_MAP_TYPE_RINGBUF"]
    assert TRACING_PROGRAM.expected_attach_type == _uapi_enum("bpf_attach_type")["BPF_TRACE_FENTRY"]


def test_kernel_version_code() -> None:
    assert kernel_version_code("6.1.0-18-amd64") == 0x060100
    assert kernel_version_code("4.19.312") == 0x0413FF  # the patch level saturates at 255
    assert kernel_version_code("6.18") == 0x061200
    assert kernel_version_code("weird") == 0


@pytest.mark.parametrize(("text", "mode"), [("none [integrity] confidentiality\n", "integrity"),
                                            ("[none] integrity confidentiality\n", "none")])
def test_lockdown_mode(tmp_path: Path, text: str, mode: str) -> None:
    (tmp_path / "lockdown").write_text(text)
    assert lockdown_mode(str(tmp_path / "lockdown")) == mode
    assert lockdown_mode(str(tmp_path / "missing")) == "unknown"


def test_context_propagation_needs_net_admin_and_a_cgroup_v2_hierarchy() -> None:
    granted = UNPRIVILEGED | {"NET_ADMIN"}
    assert table(facts(capabilities=granted))[SOCK_OPS].available
    assert "cgroup v2 at /sys/fs/cgroup" in table(facts(capabilities=granted))[SOCK_OPS].detail
    without = table(facts(capabilities=granted, cgroup2=None))[SOCK_OPS]
    assert not without.available and "no cgroup v2 hierarchy" in without.detail
    unprivileged = table(facts(capabilities=UNPRIVILEGED - {"NET_ADMIN"}))[SOCK_OPS]
    assert not unprivileged.available and unprivileged.enabled_by == "CAP_NET_ADMIN"
