"""Staying up when the collector misbehaves: down at start, down mid-run, back;
retry hints and backoff; permanent errors; a slow collector; bounded memory.

Every test ends with the books balanced: spans built == spans received +
spans counted as dropped or failed, in the agent_stopped log and in obi's own
internal metrics.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.e2e.agent import AgentProcess
from tests.e2e.reliability import FAST, get_all, last_counter, python_app, span_path, stopped, vm_rss_kib
from tests.otlp_receiver import OtlpReceiver
from tests.servers.nginx import nginx_worker, start_nginx
from tests.support import free_port, stop_process

PROTOCOLS = {"grpc": "grpc", "http": "http/protobuf"}
# The reasons of a failed export one of whose attempts may have reached the collector unanswered.
UNANSWERED = re.compile(r"deadline.exceeded|timed out|connection error|UNAVAILABLE|CANCELLED",
                        re.IGNORECASE)


def export_env(protocol: str, port: int, metrics: bool = True, **extra: str) -> dict[str, str]:
    """Traces (and metrics with obi's internal counters) to 127.0.0.1:port."""
    endpoint = f"http://127.0.0.1:{port}"
    if not metrics:
        return {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": PROTOCOLS[protocol],
                "OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT": FAST["OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT"], **extra}
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": PROTOCOLS[protocol],
            **FAST, **extra}


class DownableReceiver(OtlpReceiver):
    """An OtlpReceiver whose stop() also closes the HTTP keep-alive connections it accepted.

    OtlpReceiver.stop() leaves HTTP handler threads serving their open connections, so a
    client with a pooled connection would still be answered: a collector that is down does not.
    """

    def __init__(self, protocol: str, port: int) -> None:
        grpc = protocol == "grpc"
        super().__init__(grpc_port=port if grpc else 0, http_port=0 if grpc else port)
        self._accepted: list[socket.socket] = []

    def start(self) -> DownableReceiver:
        super().start()
        server = self._http_server
        assert server is not None
        accept = server.get_request

        def get_request() -> tuple[socket.socket, Any]:
            conn, address = accept()
            self._accepted.append(conn)
            return conn, address

        server.get_request = get_request  # type: ignore[method-assign]
        return self

    def stop(self) -> None:
        super().stop()
        for conn in self._accepted:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._accepted.clear()


def received_paths(*receivers: OtlpReceiver) -> list[str]:
    return [span_path(s) for r in receivers for _, s in r.spans()]


def receiver_on(protocol: str, port: int) -> DownableReceiver:
    return DownableReceiver(protocol, port)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_collector_down_at_start_down_mid_run_and_back(protocol: str) -> None:
    """Nothing listens when obi starts; it comes, goes, comes back: every span is received or counted."""
    port = free_port()
    env = export_env(protocol, port, OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_SIZE="40",
                     OTEL_EBPF_OTLP_TRACES_MAX_EXPORT_BATCH_SIZE="20", OTEL_EXPORTER_OTLP_TIMEOUT="1500")
    first = receiver_on(protocol, port)
    second = receiver_on(protocol, port)
    with python_app("collector-outage") as (app, app_port), AgentProcess({
            **env, "OTEL_EBPF_OPEN_PORT": str(app_port)}) as agent:
        agent.wait_instrumented(app.pid)
        # 1. Down: 100 requests into a queue of 40, exports failing.
        assert get_all(app_port, [f"/down1/{i}" for i in range(100)]) == [404] * 100
        agent.wait_log(lambda e: e.get("event") == "span_queue_full", 10)
        agent.wait_log(lambda e: e.get("event") == "otlp_export_failed", 10)
        # 2. Up: new spans arrive.
        first.start()
        try:
            get_all(app_port, [f"/up1/{i}" for i in range(20)])
            first.wait_for(lambda: sum(span_path(s).startswith("/up1/") for _, s in first.spans()) == 20, 20)
        finally:
            first.stop()
        # 3. Down again mid-run.
        get_all(app_port, [f"/down2/{i}" for i in range(30)])
        time.sleep(3)
        # 4. Back: exports resume.
        second.start()
        try:
            # Back: once a probe gets through (reconnection may back off a little)...
            came_back = time.monotonic()
            for n in range(40):
                get_all(app_port, [f"/probe/{n}"])
                time.sleep(0.5)
                if any(p.startswith("/probe/") for p in received_paths(first, second)):
                    break
            print(f"\nexports resumed {time.monotonic() - came_back:.1f}s after the collector came back")
            assert time.monotonic() - came_back < 12
            # ...everything gets through.
            get_all(app_port, [f"/up2/{i}" for i in range(20)])
            # A stopped in-process gRPC server may still answer on a connection it had: count both.
            second.wait_for(lambda: sum(p.startswith("/up2/") for p in received_paths(first, second)) == 20,
                            20)
            assert agent.stop() == 0
        finally:
            second.stop()
    assert agent.proc is not None and agent.proc.returncode == 0
    stats = stopped(agent)
    received = received_paths(first, second)
    assert len(received) == len(set(received)), "a span was delivered twice"
    assert stats["spans"] == 170 + n + 1 and stats["events_lost"] == 0 and stats["events_dropped"] == 0
    assert stats["spans"] == (stats["spans_exported"] + stats["spans_export_dropped"]
                              + stats["spans_export_failed"])
    # An export whose answer never came (its deadline passed, or the collector went away
    # mid-request) has an unknown outcome: the collector may have taken it. obi counts it as
    # failed; the receiver may hold it. Only such a failure may leave more received than exported.
    unanswered = [e for e in agent.logs if e.get("event") == "otlp_export_failed"
                  and UNANSWERED.search(e.get("reason", ""))]
    extra = len(received) - stats["spans_exported"]
    assert 0 <= extra <= stats["spans_export_failed"], (extra, stats)
    assert extra <= 20 * len(unanswered), (extra, unanswered)  # a batch holds at most 20
    assert stats["spans_export_dropped"] >= 30  # 100 at once into a queue of 40
    # The same books in obi's own metrics, as the collector saw them at shutdown.
    counters = {name: last_counter(first.metric_points(name) + second.metric_points(name)) for name in (
        "obi.spans.built", "obi.spans.exported", "obi.spans.export.dropped", "obi.spans.export.failed")}
    assert counters == {"obi.spans.built": stats["spans"], "obi.spans.exported": stats["spans_exported"],
                        "obi.spans.export.dropped": stats["spans_export_dropped"],
                        "obi.spans.export.failed": stats["spans_export_failed"]}


def wait_failures_at(receiver: OtlpReceiver, count: int, timeout: float = 15.0) -> list[float]:
    """Monotonic times at which the receiver answered its 1st..count-th injected failure."""
    times = []
    for n in range(1, count + 1):
        receiver.wait_for_failures(n, timeout)
        times.append(time.monotonic())
    return times


def wait_span_at(receiver: OtlpReceiver, path: str, timeout: float = 15.0) -> float:
    receiver.wait_for(lambda: any(span_path(s) == path for _, s in receiver.spans()), timeout)
    return time.monotonic()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_retries_back_off_honour_hints_and_stop_on_permanent_errors(protocol: str) -> None:
    with OtlpReceiver() as receiver, python_app("retries") as (app, app_port):
        port = receiver.grpc_port if protocol == "grpc" else receiver.http_port
        env = {**export_env(protocol, port, metrics=False), "OTEL_EBPF_OPEN_PORT": str(app_port)}
        with AgentProcess(env) as agent:
            agent.wait_instrumented(app.pid)

            # Capped exponential backoff with jitter: about 1 s, 2 s, 4 s (each cut by up to 20 %).
            receiver.fail_next(3)
            get_all(app_port, ["/backoff"])
            times = wait_failures_at(receiver, 3)
            times.append(wait_span_at(receiver, "/backoff"))
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert gaps[0] >= 0.7 and gaps[1] >= 1.5 and gaps[2] >= 3.1, gaps
            assert gaps[0] < gaps[2] and sum(gaps) < 15, gaps

            # A retry hint (Retry-After / RetryInfo) longer than the backoff is honoured.
            receiver.fail_next(1, http_status=503, grpc_code=grpc.StatusCode.UNAVAILABLE, retry_after_s=3)
            get_all(app_port, ["/hinted"])
            failed_at = wait_failures_at(receiver, 1)[0]
            assert wait_span_at(receiver, "/hinted") - failed_at >= 2.9

            if protocol == "grpc":
                # RESOURCE_EXHAUSTED is retried only with a RetryInfo hint.
                receiver.fail_next(1, grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after_s=2)
                get_all(app_port, ["/exhausted-hinted"])
                failed_at = wait_failures_at(receiver, 1)[0]
                assert wait_span_at(receiver, "/exhausted-hinted") - failed_at >= 1.9

            # A permanent error (gRPC RESOURCE_EXHAUSTED without RetryInfo, HTTP 400): one
            # attempt, the batch counted as failed, never retried.
            receiver.fail_next(5, http_status=400, grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED)
            get_all(app_port, ["/permanent"])
            receiver.wait_for_failures(1)
            agent.wait_log(lambda e: e.get("event") == "otlp_export_failed" and e.get("permanent") is True,
                           10)
            time.sleep(2.5)  # longer than the first backoff
            assert receiver.failed_count == 1
            receiver.fail_next(0)
            get_all(app_port, ["/after"])
            wait_span_at(receiver, "/after")
            assert agent.stop() == 0
        stats = stopped(agent)
    paths = sorted(span_path(s) for _, s in receiver.spans())
    expected = ["/after", "/backoff", "/hinted"] + (["/exhausted-hinted"] if protocol == "grpc" else [])
    assert paths == sorted(expected)
    assert stats["spans_export_failed"] == 1 and stats["spans_export_dropped"] == 0
    assert stats["spans"] == stats["spans_exported"] + 1 == len(paths) + 1


def test_slow_collector_does_not_stall_the_ring_reader() -> None:
    """Exports take 4 s each; meanwhile every request still becomes a span, nothing is lost."""
    requests = 600
    with OtlpReceiver() as receiver, python_app("slow-collector") as (app, app_port):
        receiver.set_delay(4.0)
        env = {**export_env("grpc", receiver.grpc_port, metrics=False), "OTEL_EBPF_OPEN_PORT": str(app_port),
               "OTEL_EBPF_TRACE_PRINTER": "json", "OTEL_EBPF_SHUTDOWN_TIMEOUT": "20s"}
        with AgentProcess(env) as agent:
            agent.wait_instrumented(app.pid)
            get_all(app_port, ["/first"])
            time.sleep(0.5)  # the first export is now stuck in the collector
            started = time.monotonic()
            for round_ in range(6):
                get_all(app_port, [f"/r{round_}/{i}" for i in range(requests // 6)])
            # The printer sees spans as they are built, whatever the exporter is doing.
            deadline = started + 8
            while len(agent.stdout) < requests + 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert len(agent.stdout) == requests + 1
            assert time.monotonic() - started < 8
            assert len(receiver.spans()) < requests + 1, "the collector was not slow"
            receiver.wait_for_spans(requests + 1, timeout=30)
            assert agent.stop() == 0
        stats = stopped(agent)
    assert stats["events_lost"] == 0 and stats["events_dropped"] == 0
    assert stats["spans"] == stats["spans_exported"] == len(receiver.spans()) == requests + 1


def test_memory_stays_bounded_while_the_collector_is_down(tmp_path: Path) -> None:
    """nginx under wrk, nothing listening for OTLP: the queue stays at its bound, the rest is counted."""
    nginx, port = start_nginx(tmp_path)
    dead = free_port()
    try:
        worker = nginx_worker(nginx.pid)
        env = {**export_env("http", dead, OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_SIZE="256",
                            OTEL_EXPORTER_OTLP_TIMEOUT="2000"),
               "OTEL_EBPF_TARGET_PID": str(worker)}
        with AgentProcess(env) as agent:
            agent.wait_instrumented(worker)
            pid = agent.agent_pid()
            wrk = ["wrk", "-t1", "-c8", "-d3s", f"http://127.0.0.1:{port}/index.html"]
            subprocess.run(wrk, check=True, capture_output=True, timeout=30)  # warm up
            time.sleep(1)
            baseline = vm_rss_kib(pid)
            total = 0
            peak = baseline
            for _ in range(3):
                out = subprocess.run(wrk, check=True, capture_output=True, text=True, timeout=30).stdout
                total += int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
                peak = max(peak, vm_rss_kib(pid))
            assert agent.stop() == 0
        stats = stopped(agent)
    finally:
        stop_process(nginx)
    print(f"\nmemory: {total} requests with the collector down, RSS {baseline} -> {peak} KiB, "
          f"{stats['spans_export_dropped']} dropped, {stats['spans_export_failed']} failed")
    assert total > 10_000, "wrk made too few requests to tell"
    assert peak - baseline < 32 * 1024, f"RSS grew by {(peak - baseline) // 1024} MiB"
    assert stats["spans_exported"] == 0
    assert stats["spans"] == stats["spans_export_dropped"] + stats["spans_export_failed"]
    assert stats["spans_export_dropped"] > 0
