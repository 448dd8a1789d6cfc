"""What the capture loads, by what the kernel allows: a deterministic spec, no kernel objects."""

from __future__ import annotations

from pathlib import Path

from obi.ebpf.capture import PROPAGATION_PROGRAMS, UPROBE_PROGRAMS, CaptureSettings, build_spec, split_uprobes
from obi.ebpf.goprobes import GO_PROGRAMS
from obi.preflight import BPF_TRACE_UPROBE_MULTI, cgroup2_root


def test_uprobe_programs_load_only_when_uprobes_can_attach() -> None:
    spec = build_spec(CaptureSettings(), "raw_tracepoint", True, None)
    assert not any(p.startswith(("tls_", "go_")) for p in spec.program_prefixes)
    assert spec.attach_types == {}
    assert spec.manual_programs >= UPROBE_PROGRAMS  # never attached by section


def test_uprobe_multi_programs_are_loaded_for_that_attach_type() -> None:
    spec = build_spec(CaptureSettings(), "raw_tracepoint", True, "uprobe_multi")
    assert {"tls_", "go_"} <= set(spec.program_prefixes)
    assert spec.attach_types == dict.fromkeys(UPROBE_PROGRAMS, BPF_TRACE_UPROBE_MULTI)
    perf = build_spec(CaptureSettings(), "raw_tracepoint", True, "perf_event")
    assert {"tls_", "go_"} <= set(perf.program_prefixes) and perf.attach_types == {}


def test_without_attach_cookies_the_go_programs_are_left_out() -> None:
    spec = build_spec(CaptureSettings(), "tracepoint", True, "perf_event", go=False)
    assert "tls_" in spec.program_prefixes and "go_" not in spec.program_prefixes
    assert GO_PROGRAMS and all(p.startswith("go_") for p in GO_PROGRAMS)


def test_the_header_programs_and_their_sockhash_exist_only_with_header_propagation() -> None:
    off = build_spec(CaptureSettings(), "tracepoint", True)
    assert off.skipped_maps == {"msg_socks"}  # a sockhash needs CAP_NET_ADMIN: not created
    assert not any(p.startswith("propagation_") for p in off.program_prefixes)
    assert off.rodata["propagate_headers"] == b"\0\0\0\0"
    on = build_spec(CaptureSettings(propagate_headers=True), "tracepoint", True, headers=True)
    assert on.skipped_maps == frozenset() and "propagation_" in on.program_prefixes
    assert on.manual_programs >= PROPAGATION_PROGRAMS
    assert on.rodata["propagate_headers"] == b"\1\0\0\0"
    assert on.rodata["propagate_tcp"] == b"\0\0\0\0"
    tcp = build_spec(CaptureSettings(propagate_tcp=True), "tracepoint", True, tcp=True)
    assert tcp.skipped_maps == frozenset() and "propagation_" in tcp.program_prefixes
    assert (tcp.rodata["propagate_headers"], tcp.rodata["propagate_tcp"]) == (b"\0\0\0\0", b"\1\0\0\0")


def test_the_cgroup_v2_hierarchy_is_found_on_unified_and_hybrid_hosts(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n")
    assert cgroup2_root(str(mounts)) == "/sys/fs/cgroup"
    mounts.write_text("tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
                      "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    assert cgroup2_root(str(mounts)) == "/sys/fs/cgroup/unified"
    mounts.write_text("cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n")
    assert cgroup2_root(str(mounts)) is None
    assert cgroup2_root(str(tmp_path / "absent")) is None


def test_the_uprobe_programs_are_a_second_load_and_everything_else_the_first() -> None:
    spec = build_spec(CaptureSettings(propagate_headers=True), "tracepoint", True, "uprobe_multi",
                      headers=True)
    first, uprobes = split_uprobes(spec)
    assert uprobes is not None
    assert set(first.program_prefixes) == {"tp_", "common_", "sweep", "propagation_"}
    assert set(uprobes.program_prefixes) == {"tls_", "go_", "nginx_"}
    # one object, configured alike: the second load shares the first's maps (their sizes must match)
    assert (first.rodata, first.max_entries, first.skipped_maps) == (
        uprobes.rodata, uprobes.max_entries, uprobes.skipped_maps)
    assert first.attach_types == uprobes.attach_types
    without = build_spec(CaptureSettings(), "raw_tracepoint", True, None)
    assert split_uprobes(without) == (without, None)
