"""What the database and cache end-to-end tests share: their spans at the receiver, the
check of a client's spans against its server's, and metric counts."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.e2e.agent import AgentProcess
from tests.e2e.test_http_clients import Client
from tests.e2e.test_python_app import FAST_EXPORT, attributes, latest_points
from tests.otlp_receiver import OtlpReceiver

Spans = list[tuple[dict[str, Any], Span]]


def otlp(receiver: OtlpReceiver) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            **FAST_EXPORT}


def by_start(spans: Spans) -> Spans:
    return sorted(spans, key=lambda pair: pair[1].start_time_unix_nano)


def db_spans(receiver: OtlpReceiver, system: str, kind: int) -> Spans:
    """The spans of one database system and kind, in the order they began."""
    return by_start([(r, s) for r, s in receiver.spans()
                     if s.kind == kind and attributes(s).get("db.system.name") == system])


def operations(spans: Spans) -> list[str]:
    return [attributes(s).get("db.operation.name", "") for _, s in spans]


def check_client_and_server(clients: Spans, servers: Spans, expected: list[dict[str, Any]], client_pid: int,
                            server_pid: int | None = None) -> None:
    """Each client span has exactly the attributes expected (status ERROR with error.type), the
    server's span for it the same with client.address, as its child."""
    assert len(clients) == len(servers) == len(expected)
    for (resource, span), (server_resource, served), attrs in zip(clients, servers, expected, strict=True):
        assert resource["process.pid"] == client_pid
        if server_pid is not None:
            assert server_resource["process.pid"] == server_pid
        assert attributes(span) == attrs
        assert attributes(served) == attrs | {"client.address": "127.0.0.1"}
        error = Status.STATUS_CODE_ERROR if "error.type" in attrs else Status.STATUS_CODE_UNSET
        assert (span.status.code, served.status.code) == (error, error)
    links = [(served.trace_id == span.trace_id, served.parent_span_id == span.span_id)
             for (_, span), (_, served) in zip(clients, servers, strict=True)]
    # linked in the kernel, every one
    assert links == [(True, True)] * len(expected), "\n".join(map(_ids, clients + servers))


def _ids(pair: tuple[dict[str, Any], Span]) -> str:
    """One span's ids and times, for a failed link's message."""
    span = pair[1]
    return (f"{span.kind} {span.name}: trace {span.trace_id.hex()} span {span.span_id.hex()} parent "
            f"{span.parent_span_id.hex()} {span.start_time_unix_nano}-{span.end_time_unix_nano}")


def metric_counts(receiver: OtlpReceiver, name: str, system: str,
                  leave_out: frozenset[str] = frozenset()) -> Counter[tuple[str, str | None]]:
    """(operation, error.type) -> count of a db.*.operation.duration metric's newest export;
    its attributes are OBI's defaults."""
    counts: Counter[tuple[str, str | None]] = Counter()
    for attrs, point in latest_points(receiver, name):
        if attrs["db.system.name"] != system or attrs.get("db.operation.name") in leave_out:
            continue
        assert set(attrs) <= {"db.system.name", "db.operation.name", "server.address", "error.type"}
        assert attrs["server.address"] == "127.0.0.1"
        counts[(attrs["db.operation.name"], attrs.get("error.type"))] += point.count
    return counts


@dataclass
class Traced:
    """A client's run under obi: what it printed, what the receiver got, obi's last log line."""

    lines: list[str]
    receiver: OtlpReceiver
    stopped: dict[str, Any]
    client_pid: int


@contextlib.contextmanager
def traced_client(argv: list[str], server_pid: int, port: int,
                  arrived: Callable[[OtlpReceiver], bool]) -> Iterator[Traced]:
    """obi tracing a client (tests/clients/*: "ready", "go", its lines, "done") and the server on
    `port` while the client runs; stopped once `arrived` holds and the server metrics came."""
    client = Client(argv)
    try:
        with OtlpReceiver() as receiver:
            env = {"OTEL_EBPF_TARGET_PID": str(client.proc.pid), "OTEL_EBPF_OPEN_PORT": str(port),
                   **otlp(receiver)}
            with AgentProcess(env) as agent:
                agent.wait_instrumented(client.proc.pid)
                agent.wait_instrumented(server_pid)
                lines = client.run()
                # a client's last exchange ends when its connection has been quiet for a second
                receiver.wait_for(lambda: arrived(receiver), timeout=15)
                receiver.wait_for_metric("db.server.operation.duration")
                assert agent.stop() == 0
                stopped = agent.wait_log(lambda e: e.get("event") == "agent_stopped", 1)
            assert stopped["parse_errors"] == stopped["unknown_protocol"] == 0  # authentication too
            print("agent_stopped:", stopped)  # for a failed check's report
            yield Traced(lines, receiver, stopped, client.proc.pid)
    finally:
        client.close()
