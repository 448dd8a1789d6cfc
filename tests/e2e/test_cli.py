"""The command line as a user meets it: version, doctor, configuration errors, tracefs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from obi import __version__
from obi.ebpf.capture import AUTO_HOOKS
from tests.e2e.agent import AgentProcess
from tests.e2e.test_python_app import SERVERS, curl
from tests.support import free_port, kernel_hook_sets, start_process, stop_process


def obi(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-m", "obi.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**base, **(env or {})})


def tracefs_mounted() -> bool:
    return any(line.split()[2] == "tracefs" for line in Path("/proc/self/mounts").read_text().splitlines())


def test_version() -> None:
    done = obi("version")
    assert done.returncode == 0 and done.stdout == f"obi {__version__}\n"


def test_doctor_reports_this_kernel_and_passes() -> None:
    done = obi("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for line in ("kernel ", "BTF ", "lockdown ", "tracefs ", "perf_event_paranoid ", "capabilities "):
        assert line in out
    assert "[ok] attach the TCP capture on raw_tracepoints" in out
    assert "[ok] attach the TCP capture on tracepoints" in out
    labels = {"fentry": "fentry/fexit", "kprobe": "kprobes"}
    for hooks, label in labels.items():
        ok = "ok" if hooks in kernel_hook_sets() else "NO"
        assert f"[{ok}] attach the TCP capture on {label}" in out
    chosen = next(hooks for hooks in AUTO_HOOKS if hooks in kernel_hook_sets())
    assert f"syscall hooks the agent would use (ebpf.syscall_hooks: auto): {chosen} (" in out
    assert "[ok] BPF ring buffer" in out
    assert out.rstrip().endswith("obi can run here")


def test_bad_configuration_is_one_line_and_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "obi.yml"
    bad.write_text("otel_traces_export:\n  sampler:\n    name: sometimes\n")
    cases = [
        (("--config", str(bad)), {}, f"obi: config file {bad}: otel_traces_export.sampler.name"),
        ((), {"OTEL_EBPF_OPEN_PORT": "90-80"}, "obi: environment variable OTEL_EBPF_OPEN_PORT"),
        ((), {"OTEL_EBPF_CONFIG_PATH": str(tmp_path / "missing.yml")}, "cannot read"),
        ((), {"OTEL_EBPF_OPEN_PORT": "80", "OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://x"},
         "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ]
    for args, env, expected in cases:
        done = obi(*args, env=env)
        assert done.returncode == 1, (args, env, done.stderr)
        assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_tracefs_is_left_as_it_was_found() -> None:
    before = tracefs_mounted()
    agent = AgentProcess({"OTEL_EBPF_OPEN_PORT": str(free_port()),
                          "OTEL_EBPF_BPF_SYSCALL_HOOKS": "tracepoint"}).start()
    started = agent.wait_log(lambda e: e.get("event") == "capture_attached", 5)
    assert started["hooks"] == "tracepoint"
    assert agent.stop() == 0
    assert tracefs_mounted() == before


def test_auto_takes_the_first_hook_set_this_kernel_allows_and_says_what_it_passed_over() -> None:
    expected = next(hooks for hooks in AUTO_HOOKS if hooks in kernel_hook_sets())
    agent = AgentProcess({"OTEL_EBPF_OPEN_PORT": str(free_port())}).start()
    started = agent.wait_log(lambda e: e.get("event") == "capture_attached", 5)
    assert agent.stop() == 0
    assert started["hooks"] == expected
    passed_over = started["passed_over"]
    for hooks in AUTO_HOOKS[:AUTO_HOOKS.index(expected)]:
        assert f"{hooks} hooks: " in passed_over
    assert "kprobe" not in passed_over  # kprobes only when asked: they cost more than tracepoints
    if expected == "tracepoint":  # this machine: no fentry
        assert "fentry hooks: a trial fentry program on __x64_sys_read: " in passed_over


def test_raw_tracepoints_when_asked() -> None:
    agent = AgentProcess({"OTEL_EBPF_OPEN_PORT": str(free_port()),
                          "OTEL_EBPF_BPF_SYSCALL_HOOKS": "raw_tracepoint"}).start()
    started = agent.wait_log(lambda e: e.get("event") == "capture_attached", 5)
    # sys_enter and sys_exit, plus fork, exec, exit and TCP state changes
    assert started["hooks"] == "raw_tracepoint" and started["programs"] == 6
    assert agent.stop() == 0


def test_without_privileges_doctor_and_agent_say_why() -> None:
    no_caps = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    doctor = subprocess.run([*no_caps, sys.executable, "-m", "obi.cli", "doctor"], capture_output=True,
                            text=True, timeout=60, env=base)
    assert doctor.returncode == 1
    assert "[NO] BPF ring buffer" in doctor.stdout
    refused = "[NO] attach the TCP capture on raw_tracepoints: load capture.bpf.o: Operation not permitted"
    assert refused in doctor.stdout
    assert doctor.stdout.rstrip().endswith("obi cannot run here")
    env = {**base, "OTEL_EBPF_OPEN_PORT": "80", "OTEL_EBPF_LOG_LEVEL": "ERROR"}
    agent = subprocess.run([*no_caps, sys.executable, "-m", "obi.cli"], capture_output=True, text=True,
                           timeout=60, env=env)
    assert agent.returncode == 1
    assert ("obi: load capture.bpf.o: Operation not permitted: missing capabilities CAP_BPF (needed for: "
            "BPF programs and maps), CAP_PERFMON (needed for: perf events and tracepoints) (`obi doctor` "
            "shows what this host allows)\n") in agent.stderr
    assert "Traceback" not in agent.stderr


def test_no_criteria_instruments_every_listener() -> None:
    port = free_port()
    app = start_process([sys.executable, str(SERVERS / "app.py"), str(port)], ready="ready")
    try:
        with AgentProcess({"OTEL_EBPF_TRACE_PRINTER": "json"}) as agent:
            agent.wait_log(lambda e: e.get("event") == "no_discovery_criteria", 5)
            agent.wait_instrumented(app.pid)
            assert curl(f"http://127.0.0.1:{port}/hello") == "hello\n"
            deadline = time.monotonic() + 10
            while not any('"/hello"' in line for line in agent.stdout) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert agent.stop() == 0
        assert any('"url.path":"/hello"' in line.replace(" ", "") for line in agent.stdout)
    finally:
        stop_process(app)
