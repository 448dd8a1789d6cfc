"""deploy/systemd/obi.service run for real: systemd as PID 1 in a podman container built
FROM obi's image, the README's install steps (`/etc/obi/obi.env` from the example,
`systemctl enable --now obi`), a real HTTP server taking requests, the exact spans at an
OTLP receiver, and `systemctl stop obi` flushing the spans still queued.

What the container is given, and why (the unit's own settings confine obi inside it):
- `--systemd=always`: podman mounts what systemd needs as PID 1 (tmpfs /run, /tmp, the
  journal; the name=systemd cgroup hierarchy writable). runc, with the limits lowered, is
  the only runtime that starts here (DESIGN.md, "Kernel facts"); systemd 252 runs in the
  hybrid cgroup layout as it finds it.
- the six capabilities the unit grants obi: the unit can only keep what the container
  has. podman's default capabilities have none of them.
- CAP_SYS_ADMIN, for systemd itself: without it systemd cannot build the unit's mount
  namespace and, taking the container for the reason, starts obi without
  ProtectSystem=, ProtectHome=, ProtectKernelTunables= (a read-write root, logged only at
  debug level). podman's default seccomp profile also refuses bpf() to a container
  without it. The unit's CapabilityBoundingSet= drops it for obi, which this test checks.
- `--network host`: the receiver is on the host's loopback; the server (in the container,
  a second unit) listens there too.
Not given: CAP_SYS_RESOURCE (root on these machines lacks it), so LimitMEMLOCK=infinity
stays at the container's 8 MiB; kernels from 5.11 on do not charge BPF to it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.e2e.agent import AgentProcess
from tests.e2e.test_python_app import attributes, latest_points
from tests.image import PODMAN_RUNTIME, podman_run_args, remove_containers
from tests.otlp_receiver import OtlpReceiver
from tests.support import bpf_link_ids, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]  # may be the one that waits for the image build

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "deploy" / "systemd"
SERVERS = REPO / "tests" / "servers"
UNIT_CAPABILITIES = ("BPF", "PERFMON", "SYS_PTRACE", "NET_RAW", "CHECKPOINT_RESTORE", "DAC_READ_SEARCH")
CONTAINER_CAPABILITIES = ("SYS_ADMIN", *UNIT_CAPABILITIES)
# Bit numbers (linux/capability.h) of the unit's capabilities: obi's sets must be exactly these.
CAPABILITY_BITS = {"DAC_READ_SEARCH": 2, "NET_RAW": 13, "SYS_PTRACE": 19, "PERFMON": 38, "BPF": 39,
                   "CHECKPOINT_RESTORE": 40}
UNIT_CAPABILITY_MASK = sum(1 << CAPABILITY_BITS[name] for name in UNIT_CAPABILITIES)
# obi's image with systemd added and the unit installed as the README says; obi itself is
# the image's /opt/obi venv, the unit's ExecStart as it stands. No second build of obi.
CONTAINERFILE = """\
ARG OBI_IMAGE
FROM ${OBI_IMAGE}
RUN apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends systemd \\
    && rm -rf /var/lib/apt/lists/*
COPY obi.service /etc/systemd/system/obi.service
RUN install -d -m 0700 /etc/obi
WORKDIR /
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/lib/systemd/systemd"]
"""
# The application: the e2e tests' http.server app, as a service of its own.
APP_UNIT = """\
[Unit]
Description=HTTP server obi instruments (test)
[Service]
ExecStart=/usr/bin/python3 /srv/obi-test/app.py {port}
Environment=OTEL_SERVICE_NAME=systemd-app
"""
# Export settings for the test, appended to the example obi.env: the first span goes out at
# once (obi's rule), later ones wait for a batch of 100 or five minutes, so what is queued at
# `systemctl stop` is only delivered by the flush; metrics every 500 ms show what obi has seen.
TEST_SETTINGS = {
    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    "OTEL_EBPF_LOG_FORMAT": "json",
    "OTEL_EBPF_OTLP_TRACES_MAX_EXPORT_BATCH_SIZE": "100",
    "OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT": "5m",
    "OTEL_METRIC_EXPORT_INTERVAL": "500",
}
# Writable for obi: /run/obi only (ProtectSystem=strict, RuntimeDirectory=obi). The rest
# are paths the unit's settings make read-only, probed from inside obi's mount namespace.
READ_ONLY_PATHS = ("/", "/etc", "/usr", "/var", "/opt/obi", "/tmp", "/var/tmp", "/root", "/home", "/run",
                   "/proc/sys", "/sys/fs/cgroup")
WRITABLE_PATHS = ("/run/obi",)


def require_tools(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        pytest.fail(f"the systemd unit test needs {', '.join(missing)} on PATH "
                    "(Debian packages podman, runc, curl, util-linux, bpftool; `make deps`)")


def run(argv: list[str], timeout: float, input: str | None = None, check: bool = True) -> str:
    """One command with a timeout; a failure is an assertion carrying its output."""
    try:
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{' '.join(argv[:4])} did not finish in {timeout}s") from None
    if check:
        assert done.returncode == 0, f"{' '.join(argv[:6])} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


@dataclass
class Container:
    """A running container with systemd as PID 1."""

    name: str
    start_s: float = 0.0  # from `podman run` to systemd running

    def sh(self, script: str, timeout: float = 30, input: str | None = None, check: bool = True) -> str:
        return run(["podman", "exec", "-i", self.name, "sh", "-c", script], timeout, input=input, check=check)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in properties))
        return dict(line.split("=", 1) for line in out.splitlines())

    def journal(self, unit: str) -> list[dict[str, Any]]:
        """The unit's journal entries (systemd's and the service's own lines)."""
        out = self.sh(f"journalctl -u {unit} -o json --no-pager", timeout=30)
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def obi_logs(self) -> list[dict[str, Any]]:
        """obi's structured log lines, from the journal (it logs JSON to stderr)."""
        logs = []
        for entry in self.journal("obi"):
            message = entry.get("MESSAGE")
            if entry.get("SYSLOG_IDENTIFIER") == "obi" and isinstance(message, str):
                try:
                    logs.append(json.loads(message))
                except ValueError:
                    logs.append({"event": "raw", "line": message})
        return logs

    def wait_obi_log(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            logs = self.obi_logs()
            for entry in logs:
                if match(entry):
                    return entry
            if time.monotonic() > deadline:
                raise AssertionError(f"obi's journal did not show it in {timeout}s; last lines: {logs[-10:]}")
            time.sleep(0.25)

    def host_pid(self, pid: int) -> int:
        """The host pid of the container's process `pid` (same pid namespace as its PID 1)."""
        init = int(run(["podman", "inspect", "-f", "{{.State.Pid}}", self.name], 30).strip())
        namespace = os.readlink(f"/proc/{init}/ns/pid")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "pid") != namespace:
                    continue
                status = (entry / "status").read_text()
            except OSError:
                continue
            nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:"))
            if int(nspid[-1]) == pid:
                return int(entry.name)
        raise AssertionError(f"no host process is pid {pid} of container {self.name}")


@pytest.fixture(scope="module")
def systemd_image(obi_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """obi's image plus systemd and the unit (podman's layer cache keeps this to seconds
    after the first build)."""
    require_tools("podman", "runc")
    context = tmp_path_factory.mktemp("systemd-image")
    (context / "Containerfile").write_text(CONTAINERFILE)
    shutil.copy2(SYSTEMD / "obi.service", context / "obi.service")
    tag = "localhost/obi-systemd:test"
    started = time.monotonic()
    run(["podman", "build", *PODMAN_RUNTIME, "--network", "host", "--build-arg", f"OBI_IMAGE={obi_image}",
         "-t", tag, "-f", str(context / "Containerfile"), str(context)], timeout=600)
    print(f"\nsystemd image {tag} from {obi_image}: {time.monotonic() - started:.1f}s")
    return tag


@pytest.fixture
def container(systemd_image: str) -> Iterator[Container]:
    """The systemd container, up to `systemctl is-system-running`; removed by name after."""
    name = f"obi-systemd-test-{os.getpid()}"
    remove_containers(name)
    started = time.monotonic()
    try:
        run(podman_run_args(name, "-d", "--systemd=always", "--cap-add", ",".join(CONTAINER_CAPABILITIES),
                            "-v", f"{SERVERS}:/srv/obi-test:ro", systemd_image), 120)
        box = Container(name)
        # Until systemd listens on its socket, systemctl answers nothing at all.
        deadline = time.monotonic() + 60
        while not (state := box.sh("systemctl is-system-running --wait", timeout=90, check=False).strip()):
            assert time.monotonic() < deadline, "systemctl could not reach systemd in the container in 60s"
            time.sleep(0.2)
        failed = box.sh("systemctl list-units --failed --plain --no-legend", check=False)
        assert state == "running", f"systemd in the container is {state!r}; failed units:\n{failed}"
        box.start_s = time.monotonic() - started
        yield box
    finally:
        remove_containers(name)


def environment_file(receiver: OtlpReceiver, port: int) -> str:
    """The example deploy/systemd/obi.env with its two settings pointed at this test, plus
    TEST_SETTINGS."""
    lines = []
    for line in (SYSTEMD / "obi.env").read_text().splitlines():
        if line.startswith("OTEL_EBPF_OPEN_PORT="):
            line = f"OTEL_EBPF_OPEN_PORT={port}"
        elif line.startswith("OTEL_EXPORTER_OTLP_ENDPOINT="):
            line = f"OTEL_EXPORTER_OTLP_ENDPOINT={receiver.http_endpoint}"
        lines.append(line)
    lines += [f"{key}={value}" for key, value in TEST_SETTINGS.items()]
    return "\n".join(lines) + "\n"


def curl(*args: str) -> str:
    return run(["curl", "-sS", "--max-time", "10", *args], timeout=15)


def request_count(receiver: OtlpReceiver) -> int:
    """Requests counted in the newest metrics export (cumulative)."""
    return sum(int(p.count) for _, p in latest_points(receiver, "http.server.request.duration"))


def writable(host_pid: int, paths: tuple[str, ...]) -> dict[str, bool]:
    """Which paths a file can be created in, in the mount namespace of a process."""
    script = ('for d in "$@"; do if (: > "$d/.obi-probe") 2>/dev/null; then rm -f "$d/.obi-probe"; '
              'echo "$d rw"; else echo "$d ro"; fi; done')
    out = run(["nsenter", "-t", str(host_pid), "-m", "--", "sh", "-c", script, "sh", *paths], 30)
    return {line.rsplit(" ", 1)[0]: line.endswith(" rw") for line in out.splitlines()}


def capability_sets(host_pid: int) -> dict[str, int]:
    status = Path(f"/proc/{host_pid}/status").read_text().splitlines()
    return {line.split(":")[0]: int(line.split()[1], 16) for line in status if line.startswith("Cap")}


def test_unit_starts_instruments_and_flushes_at_stop(container: Container,
                                                    record_property: Callable[[str, object], None]) -> None:
    require_tools("curl", "nsenter", "bpftool")
    began = time.monotonic()
    port = free_port()
    with OtlpReceiver() as receiver:
        container.sh("cat > /etc/systemd/system/obi-test-app.service", input=APP_UNIT.format(port=port))
        container.sh("systemctl daemon-reload && systemctl start obi-test-app")
        app_pid = int(container.show("obi-test-app", "MainPID")["MainPID"])
        assert app_pid > 0
        # The README's steps: the environment file, mode 0600, then enable --now.
        container.sh("umask 077 && cat > /etc/obi/obi.env", input=environment_file(receiver, port))
        assert container.sh("stat -c %a /etc/obi/obi.env").strip() == "600"
        links_before = bpf_link_ids()
        obi_began = time.monotonic()
        container.sh("systemctl daemon-reload && systemctl enable --now obi", timeout=60)
        container.wait_obi_log(lambda e: e.get("event") == "agent_started", 60)
        container.wait_obi_log(
            lambda e: e.get("event") == "process_instrumented" and e.get("pid") == app_pid, 30)
        obi_start_s = time.monotonic() - obi_began
        obi = container.show("obi", "MainPID", "ActiveState", "UnitFileState")
        assert (obi["ActiveState"], obi["UnitFileState"]) == ("active", "enabled")
        obi_host_pid = container.host_pid(int(obi["MainPID"]))
        held_links = AgentProcess.held_link_ids(obi_host_pid)
        assert held_links, "obi runs but holds no BPF link"
        caps = capability_sets(obi_host_pid)
        sandbox = writable(obi_host_pid, READ_ONLY_PATHS + WRITABLE_PATHS)

        # The first span goes out at once: instrumented and exporting.
        base = f"http://127.0.0.1:{port}"
        assert curl(f"{base}/factorial/5") == "120\n"
        ((resource, first),) = receiver.wait_for_spans(1, timeout=15)

        # Five more: seen by obi (the metrics count six), queued, not yet exported.
        assert curl(f"{base}/hello") == "hello\n"
        assert curl(f"{base}/factorial/3") == "6\n"
        assert curl(f"{base}/status/404") == "status\n"
        assert curl("-X", "POST", "--data-binary", "hello world", f"{base}/echo") == "hello world"
        assert curl(f"{base}/status/503") == "status\n"
        receiver.wait_for(lambda: request_count(receiver) >= 6, timeout=15)
        assert request_count(receiver) == 6
        assert len(receiver.spans()) == 1, "spans went out before stop: the flush would prove nothing"

        stop_began = time.monotonic()
        container.sh("systemctl stop obi", timeout=60)
        stop_s = time.monotonic() - stop_began
        # Delivered before systemctl returned: no waiting here.
        received = receiver.spans()
        final_count = request_count(receiver)
    time.sleep(0.1)
    links_after = bpf_link_ids()

    # The unit's confinement held inside the container: exactly its capabilities, and the
    # file system read-only but for obi's runtime directory.
    assert {name: caps[name] for name in ("CapEff", "CapPrm", "CapBnd", "CapAmb")} == dict.fromkeys(
        ("CapEff", "CapPrm", "CapBnd", "CapAmb"), UNIT_CAPABILITY_MASK), {k: hex(v) for k, v in caps.items()}

    # The exact spans, the last five delivered by the flush at stop.
    assert resource["service.name"] == "systemd-app"
    assert resource["process.pid"] == app_pid
    assert first.kind == Span.SPAN_KIND_SERVER and first.name == "GET /factorial/*"
    assert attributes(first) == {
        "http.request.method": "GET", "http.response.status_code": 200, "url.path": "/factorial/5",
        "url.scheme": "http", "http.route": "/factorial/*", "server.address": "127.0.0.1",
        "server.port": port, "client.address": "127.0.0.1", "network.protocol.version": "1.1",
        "http.request.body.size": 0, "http.response.body.size": 4,
    }
    common = {"url.scheme": "http", "server.address": "127.0.0.1", "server.port": port,
              "client.address": "127.0.0.1", "network.protocol.version": "1.1"}
    assert [(r["service.name"], r["process.pid"]) for r, _ in received] == [("systemd-app", app_pid)] * 6
    assert [(s.kind, s.name, s.status.code, attributes(s)) for _, s in received[1:]] == [
        (Span.SPAN_KIND_SERVER, "GET /hello", Status.STATUS_CODE_UNSET,
         {**common, "http.request.method": "GET", "http.response.status_code": 200, "url.path": "/hello",
          "http.route": "/hello", "http.request.body.size": 0, "http.response.body.size": 6}),
        (Span.SPAN_KIND_SERVER, "GET /factorial/*", Status.STATUS_CODE_UNSET,
         {**common, "http.request.method": "GET", "http.response.status_code": 200,
          "url.path": "/factorial/3", "http.route": "/factorial/*", "http.request.body.size": 0,
          "http.response.body.size": 2}),
        (Span.SPAN_KIND_SERVER, "GET /status/*", Status.STATUS_CODE_UNSET,
         {**common, "http.request.method": "GET", "http.response.status_code": 404,
          "url.path": "/status/404", "http.route": "/status/*", "http.request.body.size": 0,
          "http.response.body.size": 7}),
        (Span.SPAN_KIND_SERVER, "POST /echo", Status.STATUS_CODE_UNSET,
         {**common, "http.request.method": "POST", "http.response.status_code": 200, "url.path": "/echo",
          "http.route": "/echo", "http.request.body.size": 11, "http.response.body.size": 11}),
        (Span.SPAN_KIND_SERVER, "GET /status/*", Status.STATUS_CODE_ERROR,
         {**common, "http.request.method": "GET", "http.response.status_code": 503,
          "url.path": "/status/503", "http.route": "/status/*", "http.request.body.size": 0,
          "http.response.body.size": 7}),
    ]
    assert final_count == 6

    # Stopped cleanly: exit 0 on SIGTERM, its own account of the flush, nothing left attached.
    stopped = container.show("obi", "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert stopped == {"ActiveState": "inactive", "Result": "success", "ExecMainCode": "1",
                       "ExecMainStatus": "0"}, stopped
    logs = container.obi_logs()
    summary = next(e for e in logs if e.get("event") == "agent_stopped")
    assert (summary["spans"], summary["spans_exported"], summary["spans_export_failed"],
            summary["spans_export_dropped"], summary["events_dropped"]) == (6, 6, 0, 0, 0), summary
    problems = [e for e in logs if e.get("level") in ("error", "critical") or e.get("event") == "raw"]
    assert problems == []
    # systemd applied every sandboxing setting (it says "ignoring" when a container stops it).
    notices = [e["MESSAGE"] for e in container.journal("obi")
               if e.get("SYSLOG_IDENTIFIER") != "obi" and "ignoring" in str(e.get("MESSAGE"))]
    assert notices == []
    assert not held_links & links_after, f"obi's BPF links outlived it: {held_links & links_after}"
    assert not links_after - links_before, f"BPF links appeared and stayed: {links_after - links_before}"

    timings = {"container_start_s": container.start_s, "obi_start_s": obi_start_s, "obi_stop_s": stop_s,
               "test_s": time.monotonic() - began}
    for key, seconds in timings.items():
        record_property(key, round(seconds, 2))
    print(f"\nsystemd up {container.start_s:.1f}s after `podman run`; obi active and instrumenting "
          f"{obi_start_s:.1f}s after `systemctl enable --now`; `systemctl stop` {stop_s:.1f}s "
          f"(obi's shutdown {summary['shutdown_s']}s); test {timings['test_s']:.1f}s")
    # Last, since the other checks hold either way. systemd leaves /run read-write under
    # ProtectSystem=strict when ProtectKernelTunables= or ProtectControlGroups= is set: they
    # imply MountAPIVFS=, whose /run entry (a fallback tmpfs, skipped as /run is mounted)
    # still exempts /run from the read-only remount. ReadOnlyPaths=/run closes it.
    assert sandbox == {**dict.fromkeys(READ_ONLY_PATHS, False), **dict.fromkeys(WRITABLE_PATHS, True)}, (
        "writable in obi's mount namespace: "
        f"{sorted(path for path, rw in sandbox.items() if rw)}; expected only {list(WRITABLE_PATHS)}")
