"""What the capture loads, by what the kernel allows: a deterministic spec, no kernel objects."""

from __future__ import annotations

from obi.ebpf.capture import UPROBE_PROGRAMS, CaptureSettings, build_spec
from obi.ebpf.goprobes import GO_PROGRAMS
from obi.preflight import BPF_TRACE_UPROBE_MULTI


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
