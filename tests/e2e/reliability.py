"""Helpers shared by the reliability tests (tests/e2e/test_reliability_*.py)."""

from __future__ import annotations

import http.client
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.agent import AgentProcess
from tests.otlp_receiver import AttributeValue
from tests.support import free_port, start_process, stop_process

SERVERS = Path(__file__).resolve().parents[1] / "servers"
# Export quickly, give up on an export quickly, flush the internal counters often.
FAST = {"OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT": "200ms", "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_EBPF_INTERNAL_METRICS_EXPORTER": "otel"}


def get_all(port: int, paths: Sequence[str], connections: int = 16, timeout: float = 10.0) -> list[int]:
    """GET every path over up to ``connections`` keep-alive connections in parallel; the statuses.

    Parallel because app.py writes headers and body apart: Nagle and delayed ACKs cost
    each keep-alive request about 40 ms.
    """
    shares = [paths[i::connections] for i in range(min(connections, len(paths)))]
    with ThreadPoolExecutor(len(shares)) as pool:
        return [s for share in pool.map(lambda p: _get_serially(port, p, timeout), shares) for s in share]


def _get_serially(port: int, paths: Sequence[str], timeout: float) -> list[int]:
    statuses = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        for path in paths:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        conn.close()
    return statuses


@contextmanager
def python_app(service: str, port: int | None = None) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """tests/servers/app.py with OTEL_SERVICE_NAME=service on a free (or given) port."""
    port = port or free_port()
    env = {"PATH": "/usr/bin:/bin", "OTEL_SERVICE_NAME": service}
    proc = start_process([sys.executable, str(SERVERS / "app.py"), str(port)], ready="ready", env=env)
    try:
        yield proc, port
    finally:
        stop_process(proc)


def span_path(span: Span) -> str:
    for kv in span.attributes:
        if kv.key == "url.path":
            return str(kv.value.string_value)
    raise AssertionError(f"span without url.path: {span}")


def stopped(agent: AgentProcess) -> dict[str, Any]:
    """The agent_stopped event (the agent must have exited)."""
    return agent.wait_log(lambda e: e.get("event") == "agent_stopped", 1)


def last_counter(points: Sequence[tuple[dict[str, AttributeValue], Any]]) -> int:
    assert points, "internal metric never received"
    return int(points[-1][1].as_int)


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")
