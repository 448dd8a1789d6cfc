"""Least privilege for real: uid 0 with only the guide's unprivileged capability list.

The agent runs under setpriv (bounding, inheritable and ambient sets cut to the
list) inside a private mount namespace where tracefs is unmounted, so it can
neither find nor mount it. It must deliver the same spans as a privileged
agent, say in its preflight what is off and what would turn it on, and fail in
one line naming a missing required capability.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from obi.capabilities import REQUIRED_CAPABILITIES
from obi.preflight import probe_uprobe_modes
from tests.e2e.agent import AgentProcess
from tests.e2e.test_python_app import FAST_EXPORT, SERVERS, attributes, curl, latest_points
from tests.e2e.test_tls import CURL_CALLS, agent_env, check_server_spans, drive_with_curl, server_spans
from tests.otlp_receiver import OtlpReceiver
from tests.support import free_port, kernel_hook_sets, self_signed_certificate, start_process, stop_process

UNPRIVILEGED = tuple(c.lower() for c in REQUIRED_CAPABILITIES)
# A private mount namespace without tracefs (nor debugfs): nothing to find, and no right to mount.
NO_TRACEFS = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
              "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; "
              'exec "$@"', "no-tracefs"]


def with_caps(capabilities: Iterable[str]) -> list[str]:
    """setpriv keeping exactly `capabilities` (as uid 0: bounding, inheritable, ambient)."""
    keep = ",".join(["-all", *(f"+{c}" for c in capabilities)])
    return ["setpriv", f"--bounding-set={keep}", f"--inh-caps={keep}", f"--ambient-caps={keep}", "--"]


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KUBE"))}, **extra}


@pytest.fixture
def app() -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    proc = start_process([sys.executable, str(SERVERS / "app.py"), str(port)], ready="ready",
                         env={"PATH": "/usr/bin:/bin", "OTEL_SERVICE_NAME": "least-privilege-app"})
    yield proc, port
    stop_process(proc)


def traffic(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    assert curl(f"{base}/hello", f"{base}/factorial/5") == "hello\n120\n"
    assert curl("-H", "Connection: close", f"{base}/status/404") == "status\n"
    curl(f"{base}/status/500")
    assert curl("-X", "POST", "--data-binary", "hello world", f"{base}/echo") == "hello world"


def comparable(received: list[tuple[dict[str, Any], Any]]) -> list[tuple[Any, ...]]:
    """What must not depend on privilege: names, attributes, status, kind, service."""
    out = []
    for resource, span in received:
        attrs = attributes(span)
        out.append((span.name, span.kind, span.status.code, sorted(attrs.items()),
                    resource["service.name"], resource["process.pid"]))
    return sorted(out, key=lambda row: (row[0], str(row[3])))


def run_scenario(app_pid: int, port: int, wrapper: list[str]) -> tuple[list[tuple[Any, ...]], AgentProcess]:
    with OtlpReceiver() as receiver:
        env = {"OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
               "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", **FAST_EXPORT}
        agent = AgentProcess(env, command=[*wrapper, sys.executable, "-m", "obi.cli"]).start()
        try:
            agent.wait_instrumented(app_pid)
            traffic(port)
            receiver.wait_for_spans(5, timeout=15)
        finally:
            assert agent.stop() == 0
        return comparable(receiver.spans()), agent


def preflight_summary(agent: AgentProcess) -> dict[str, Any]:
    """The one line the preflight logs at info: how many features are on, what would turn the rest on."""
    [summary] = [e for e in agent.logs if e.get("event") == "preflight"]
    assert summary["component"] == "preflight" and summary["level"] == "info"
    return summary


def test_unprivileged_list_delivers_the_same_spans_as_privileged(
        app: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = app
    privileged, root_agent = run_scenario(proc.pid, port, [])
    unprivileged, agent = run_scenario(proc.pid, port, [*NO_TRACEFS, *with_caps(UNPRIVILEGED)])

    assert len(privileged) == 5
    assert unprivileged == privileged

    # Without tracefs and without the right to mount it: fentry where the kernel has it (the
    # 6.1 guest of tests/matrix; CAP_BPF and CAP_PERFMON let it attach), else raw tracepoints.
    expected = "fentry" if "fentry" in kernel_hook_sets() else "raw_tracepoint"
    attached = agent.wait_log(lambda e: e.get("event") == "capture_attached", 1)
    assert attached["hooks"] == expected
    assert agent.wait_log(lambda e: e.get("event") == "agent_started", 1)["hooks"] == expected

    # The preflight says, in one short line, what is off and which capability turns it on.
    # This machine: uprobes through uprobe_multi links (6.6+), perf events at paranoid 2. Debian's
    # 6.1 (the matrix guest): paranoid 3 (Debian's default) keeps perf events for CAP_SYS_ADMIN, and
    # without uprobe_multi, uprobes are perf events: no TLS or Go uprobes under this list there.
    paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    uprobe_multi = probe_uprobe_modes()[0].ok
    off = {"perf events and tracepoints": paranoid > 2, "sock_ops and sk_msg (context propagation)": True,
           "tracefs mount": True, "uprobes": not uprobe_multi}
    grants = {"sock_ops and sk_msg (context propagation)": "grant CAP_NET_ADMIN"}
    unavailable = {name: grants.get(name, "grant CAP_SYS_ADMIN") for name, is_off in off.items() if is_off}
    summary = preflight_summary(agent)
    assert summary["features_available"] == f"{11 - len(unavailable)}/11"
    assert summary["unavailable"] == unavailable
    assert not any(e.get("event") == "preflight_detail" for e in agent.logs)  # debug only
    warnings = {e["capability"]: e for e in agent.logs if e.get("event") == "capability_missing"}
    assert warnings["CAP_SYS_ADMIN"]["disables"] == [name for name, grant in unavailable.items()
                                                     if grant == "grant CAP_SYS_ADMIN"]
    assert warnings["CAP_SYS_ADMIN"]["required"] is False
    assert not any(e["required"] for e in warnings.values())
    # The privileged agent has nothing missing but what the kernel itself lacks.
    assert preflight_summary(root_agent)["unavailable"] == {}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("{")]


def test_a_missing_required_capability_is_named_in_one_line() -> None:
    without_bpf = with_caps(c for c in UNPRIVILEGED if c != "bpf")
    command = [*without_bpf, sys.executable, "-m", "obi.cli"]
    env = clean_env(OTEL_EBPF_OPEN_PORT=str(free_port()), OTEL_EBPF_LOG_FORMAT="json")

    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 1
    [line] = error_lines(done.stderr)
    assert line.startswith("obi: load capture.bpf.o: Operation not permitted: missing capability CAP_BPF "
                           "(needed for: BPF programs and maps)"), done.stderr
    logs = [json.loads(x) for x in done.stderr.splitlines() if x.startswith("{")]
    warning = next(e for e in logs if e["event"] == "capability_missing" and e["capability"] == "CAP_BPF")
    assert warning["required"] is True and warning["level"] == "warning"

    # Enforced: refused before anything is loaded.
    enforced = subprocess.run(command, capture_output=True, text=True, timeout=60,
                              env={**env, "OTEL_EBPF_ENFORCE_SYS_CAPS": "true"})
    assert enforced.returncode == 1
    assert error_lines(enforced.stderr) == [
        "obi: missing capability CAP_BPF (needed for: BPF programs and maps)"]
    logs = [json.loads(x) for x in enforced.stderr.splitlines() if x.startswith("{")]
    assert [e["event"] for e in logs if e["component"] != "preflight"] == []
    assert "Traceback" not in done.stderr + enforced.stderr


def test_enforced_with_every_required_capability_starts() -> None:
    env = {"OTEL_EBPF_OPEN_PORT": str(free_port()), "OTEL_EBPF_ENFORCE_SYS_CAPS": "true"}
    agent = AgentProcess(env, command=[*with_caps(UNPRIVILEGED), sys.executable, "-m", "obi.cli"]).start()
    assert not any(e.get("event") == "setting_not_supported_yet" for e in agent.logs)
    assert agent.stop() == 0


def uprobe_probe(capabilities: Iterable[str], probe: str = "uprobe") -> dict[str, Any]:
    script = (f"import json; from obi.preflight import run_probes; p = run_probes()[{probe!r}]; "
              "print(json.dumps({'ok': p.ok, 'errno': p.errno, 'detail': p.detail}))")
    done = subprocess.run([*with_caps(capabilities), sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=30, env=clean_env(), check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_uprobe_probes_are_measured_by_trying() -> None:
    refused = uprobe_probe(UNPRIVILEGED)
    assert refused["ok"] is False and refused["errno"] == 13, refused  # EACCES on this kernel
    assert uprobe_probe([*UNPRIVILEGED, "sys_admin"])["ok"] is True
    assert uprobe_probe(UNPRIVILEGED, "uprobe_multi")["ok"] is True  # CAP_BPF and CAP_PERFMON suffice


def test_doctor_shows_the_preflight_table() -> None:
    done = subprocess.run([*with_caps(UNPRIVILEGED), sys.executable, "-m", "obi.cli", "doctor"],
                          capture_output=True, text=True, timeout=60, env=clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    # uprobe perf events are refused, with the precise cause; uprobe_multi links are not
    assert "[ok] uprobes: tried: uprobe_multi link on libc.so.6; uprobe perf event on " in done.stdout
    assert ": Permission denied (perf_uprobe_event_init checks capable(CAP_SYS_ADMIN)" in done.stdout
    assert "[ok] BPF programs and maps: tried: array map, ring buffer\n" in done.stdout
    assert "missing capabilities       none\n" in done.stdout


def test_tls_spans_under_the_unprivileged_list(tmp_path: Path) -> None:
    """OpenSSL uprobes with the guide's list only: this kernel refuses uprobe perf events
    without CAP_SYS_ADMIN, and accepts uprobe_multi links with CAP_BPF and CAP_PERFMON."""
    wrapper = [*NO_TRACEFS, *with_caps(UNPRIVILEGED)]
    doctor = subprocess.run([*wrapper, sys.executable, "-m", "obi.cli", "doctor"], capture_output=True,
                            text=True, timeout=60, env=clean_env())
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    [uprobes] = [line for line in doctor.stdout.splitlines() if line[5:].startswith("uprobes:")]
    assert uprobes.startswith("[ok] uprobes: tried: uprobe_multi"), uprobes

    cert, key = self_signed_certificate(tmp_path / "cert.pem", tmp_path / "key.pem")
    port = free_port()
    server = start_process([sys.executable, str(SERVERS / "behaviour_server.py"), str(port)], ready="ready",
                           env={**os.environ, "TLS_CERT": str(cert), "TLS_KEY": str(key)})
    try:
        with OtlpReceiver() as receiver:
            agent = AgentProcess(agent_env(receiver, OTEL_EBPF_OPEN_PORT=str(port)),
                                 command=[*wrapper, sys.executable, "-m", "obi.cli"]).start()
            agent.wait_instrumented(server.pid)
            attached = agent.wait_log(lambda e: e.get("event") == "tls_library_attached", 10)
            drive_with_curl(port)
            receiver.wait_for(lambda: len(server_spans(receiver)) >= len(CURL_CALLS), 15)
            receiver.wait_for(lambda: sum(p.count for _, p in latest_points(
                receiver, "http.server.request.duration")) >= len(CURL_CALLS), 15)
            assert agent.stop() == 0
    finally:
        stop_process(server)
    # Attached at the first try (uprobe perf events would be refused: no CAP_SYS_ADMIN).
    assert attached["pid"] == server.pid, attached
    assert not [e for e in agent.logs if "attach_failed" in str(e.get("event"))]
    check_server_spans(receiver, port, server.pid)
    last = next(e for e in agent.logs if e.get("event") == "agent_stopped")
    assert (last["spans"], last["unknown_protocol"], last["tls_unbound"]) == (len(CURL_CALLS), 0, 0)


@pytest.mark.parametrize("extra", [(), ("net_admin",)])
def test_context_propagation_needs_net_admin_and_says_so(extra: tuple[str, ...]) -> None:
    """Propagation asked for under the guide's list: without CAP_NET_ADMIN obi says, in one
    line, that it runs without it and why, and still traces; with it, headers and the TCP
    option are on."""
    backend = free_port()
    proc = start_process([sys.executable, str(SERVERS / "behaviour_server.py"), str(backend)], ready="ready")
    try:
        env = {"OTEL_EBPF_OPEN_PORT": str(backend), "OTEL_EBPF_BPF_CONTEXT_PROPAGATION": "all",
               "OTEL_EBPF_TRACE_PRINTER": "counter"}
        agent = AgentProcess(env, command=[*with_caps([*UNPRIVILEGED, *extra]), sys.executable, "-m",
                                           "obi.cli"]).start()
        try:
            agent.wait_instrumented(proc.pid)
            attached = agent.wait_log(lambda e: e.get("event") == "capture_attached", 10)
            assert curl(f"http://127.0.0.1:{backend}/plain") == "ok\n"
        finally:
            assert agent.stop() == 0
    finally:
        stop_process(proc)
    unavailable = [e for e in agent.logs if e.get("event") == "context_propagation_unavailable"]
    if extra:
        assert attached["context_propagation"] == "headers+tcp" and unavailable == []
    else:
        assert attached["context_propagation"] == "off: CAP_NET_ADMIN is missing"
        assert [(e["level"], e["wanted"], e["reason"]) for e in unavailable] == [
            ("warning", "headers+tcp", "CAP_NET_ADMIN is missing")]
    assert agent.logs[-1]["spans"] == 1
