"""Sustained load: nginx at about 5,000 requests/s for 30 s, paced by wrk, with the
agent exporting every span over OTLP/gRPC to a sink in another process.

Not a timing test: it asserts that nothing is lost (kernel ring, span stage,
export queue) and that every request the server answered became one span.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.agent import AgentProcess
from tests.servers.nginx import nginx_worker, start_nginx
from tests.support import free_port, start_process, stop_process

SERVERS = Path(__file__).resolve().parents[1] / "servers"
RATE = 5000
SECONDS = 30
CONNECTIONS = 100


def test_5000_requests_per_second_for_30_seconds_lose_nothing(tmp_path: Path) -> None:
    nginx, port = start_nginx(tmp_path)
    sink_port = free_port()
    sink = start_process([sys.executable, str(SERVERS / "otlp_sink.py"), str(sink_port)], ready="ready")
    try:
        worker = nginx_worker(nginx.pid)
        env = {"OTEL_EBPF_TARGET_PID": str(worker),
               "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{sink_port}",
               "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
               "OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT": "1s"}
        with AgentProcess(env) as agent:
            agent.wait_instrumented(worker)
            pace = tmp_path / "pace.lua"
            # each connection waits this long between requests; what a request takes comes on top
            # (about a millisecond on a slow VM), hence 2 ms off the 20 ms that 5,000/s would be
            pace.write_text(f"function delay() return {1000 * CONNECTIONS // RATE - 2} end\n")
            out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "-s", str(pace),
                                  f"http://127.0.0.1:{port}/index.html"],
                                 check=True, capture_output=True, text=True, timeout=SECONDS + 60).stdout
            completed = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
            rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
            assert agent.stop() == 0
            stats = agent.wait_log(lambda e: e.get("event") == "agent_stopped", 1)
    finally:
        stop_process(nginx)
        stop_process(sink)
    assert sink.stdout is not None
    received = int(re.search(r"spans received: (\d+)", sink.stdout.read()).group(1))  # type: ignore[union-attr]
    print(stats)
    print(f"\nsustained load: {rate:.0f} requests/s for {SECONDS}s, {completed} requests, "
          f"{stats['spans']} spans, {received} received, {stats['events_lost']} lost")
    assert rate >= RATE * 0.95, f"the load generator reached only {rate:.0f}/s"
    assert stats["events_lost"] == 0
    assert stats["events_dropped"] == 0
    assert stats["parse_errors"] == 0
    # wrk stops with at most one request per connection unanswered or unread.
    assert completed <= stats["spans"] <= completed + CONNECTIONS
    assert stats["spans_exported"] == stats["spans"] == received
    assert stats["spans_export_dropped"] == 0
