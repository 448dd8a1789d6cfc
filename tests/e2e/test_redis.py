"""Redis end to end: Debian's redis-server with redis-py (RESP2 and RESP3), redis-cli and
redis-benchmark (pipelined), the real agent, exact client and server spans and the
db.*.operation.duration metrics at an OTLP receiver."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.e2e.agent import AgentProcess
from tests.e2e.test_http_clients import Client
from tests.e2e.test_python_app import FAST_EXPORT, attributes, latest_points
from tests.otlp_receiver import OtlpReceiver
from tests.servers.datastores import start_redis
from tests.support import stop_process

CLIENTS = Path(__file__).resolve().parents[1] / "clients"
# What tests/clients/redis_client.py runs after its connection's handshake, in order:
# (operation, error prefix or "")
COMMANDS = [("SET", ""), ("GET", ""), ("SET", ""), ("INCRBY", ""), ("LPUSH", "WRONGTYPE"),
            ("NOSUCHCMD", "ERR"), ("MGET", "")]


def otlp(receiver: OtlpReceiver) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            **FAST_EXPORT}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc, port = start_redis(tmp_path)
    yield proc, port
    stop_process(proc)


def db_spans(receiver: OtlpReceiver, kind: int) -> list[tuple[dict[str, Any], Span]]:
    return [(r, s) for r, s in receiver.spans()
            if s.kind == kind and attributes(s).get("db.system.name") == "redis"]


def operations(spans: list[tuple[dict[str, Any], Span]]) -> list[str]:
    return [attributes(s).get("db.operation.name", "") for _, s in by_start(spans)]


def by_start(spans: list[tuple[dict[str, Any], Span]]) -> list[tuple[dict[str, Any], Span]]:
    return sorted(spans, key=lambda pair: pair[1].start_time_unix_nano)


@pytest.mark.parametrize("protocol", [2, 3])
def test_redis_py_client_and_server(redis_server: tuple[subprocess.Popen[str], int], protocol: int) -> None:
    server, port = redis_server
    client = Client([sys.executable, str(CLIENTS / "redis_client.py"), str(port), "2", str(protocol)])
    try:
        with OtlpReceiver() as receiver:
            env = {"OTEL_EBPF_TARGET_PID": str(client.proc.pid), "OTEL_EBPF_OPEN_PORT": str(port),
                   **otlp(receiver)}
            with AgentProcess(env) as agent:
                agent.wait_instrumented(client.proc.pid)
                agent.wait_instrumented(server.pid)
                lines = client.run()
                assert lines[:2] == ["b'alice'", "[True, 42, server:ResponseError]"] or protocol == 3
                assert lines[-1] == "1000"
                # the client's last exchange ends when its connection has been quiet for a second
                receiver.wait_for(lambda: len(receiver.spans()) >= 2 * (len(COMMANDS) + 1), timeout=15)
                receiver.wait_for_metric("db.server.operation.duration")
                assert agent.stop() == 0
                stopped = agent.wait_log(lambda e: e.get("event") == "agent_stopped", 1)
            clients = by_start(db_spans(receiver, Span.SPAN_KIND_CLIENT))
            servers = by_start(db_spans(receiver, Span.SPAN_KIND_SERVER))
            # the connection's handshake (HELLO for RESP3, CLIENT SETINFO, SELECT 2), then the commands
            names = operations(clients)
            select = names.index("SELECT")
            assert set(names[:select]) <= {"HELLO", "CLIENT"}
            assert ("HELLO" in names[:select]) == (protocol == 3)
            assert names[select + 1:] == [op for op, _ in COMMANDS]
            assert operations(servers) == names
            for (resource, span), (peer_resource, peer) in zip(clients, servers, strict=True):
                assert resource["process.pid"] == client.proc.pid
                assert peer_resource["process.pid"] == server.pid
                # the server's span is the child of the client's (linked in the kernel)
                assert peer.trace_id == span.trace_id and peer.parent_span_id == span.span_id
            for i, ((_, span), (op, error)) in enumerate(zip(clients[select + 1:], COMMANDS, strict=True)):
                attrs = attributes(span)
                expected: dict[str, Any] = {"db.system.name": "redis", "db.operation.name": op,
                                            "db.namespace": "2", "server.address": "127.0.0.1",
                                            "server.port": port}
                if error:
                    expected |= {"db.response.status_code": error, "error.type": error}
                assert attrs == expected, i
                assert span.name == op
                assert span.status.code == (Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET)
                server_attrs = attributes(servers[select + 1 + i][1])
                assert server_attrs.pop("client.address") == "127.0.0.1"
                assert server_attrs == expected | {"server.port": port}
            assert attributes(clients[select][1])["db.namespace"] == "2"  # SELECT names its target
            assert all(attributes(s)["db.namespace"] == "0" for _, s in clients[:select])
            # a pipeline's commands are one exchange: one trace each, the same times
            pipeline = [s for _, s in clients[select + 3: select + 6]]
            assert len({(s.start_time_unix_nano, s.end_time_unix_nano) for s in pipeline}) == 1
            assert len({s.span_id for s in pipeline}) == 3
            assert stopped["parse_errors"] == 0

            counts = Counter(op for op, _ in COMMANDS)
            for name, pid in (("db.client.operation.duration", client.proc.pid),
                              ("db.server.operation.duration", server.pid)):
                points = {(a["db.operation.name"], a.get("error.type")): p
                          for a, p in latest_points(receiver, name) if a.get("db.operation.name") in counts}
                assert {k: p.count for k, p in points.items()} == {
                    ("SET", None): 2, ("GET", None): 1, ("INCRBY", None): 1, ("LPUSH", "WRONGTYPE"): 1,
                    ("NOSUCHCMD", "ERR"): 1, ("MGET", None): 1}, (name, pid)
                for point in points.values():
                    assert attributes(point)["db.system.name"] == "redis"
                    assert attributes(point)["server.address"] == "127.0.0.1"
                    assert set(attributes(point)) <= {"db.system.name", "db.operation.name", "server.address",
                                                      "error.type"}
    finally:
        client.close()


def test_redis_cli_benchmark_pipelined(redis_server: tuple[subprocess.Popen[str], int]) -> None:
    """redis-benchmark with 16 commands per write: one span per command, none lost."""
    server, port = redis_server
    requests = 1600
    with OtlpReceiver() as receiver:
        env = {"OTEL_EBPF_AUTO_TARGET_EXE": "*/redis-benchmark", "OTEL_EBPF_OPEN_PORT": str(port),
               "OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_SIZE": "100000", **otlp(receiver)}
        with AgentProcess(env) as agent:
            agent.wait_instrumented(server.pid)
            out = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "set,get",
                                  "-n", str(requests), "-P", "16", "-c", "4", "-q"],
                                 check=True, capture_output=True, text=True, timeout=60).stdout
            assert re.search(r"SET: [\d.]+ requests per second", out), out
            receiver.wait_for(lambda: sum(operations(db_spans(receiver, Span.SPAN_KIND_CLIENT)).count(op)
                                          for op in ("SET", "GET")) >= 2 * requests, timeout=30)
            receiver.wait_for(lambda: sum(operations(db_spans(receiver, Span.SPAN_KIND_SERVER)).count(op)
                                          for op in ("SET", "GET")) >= 2 * requests, timeout=30)
            assert agent.stop() == 0
            stopped = agent.wait_log(lambda e: e.get("event") == "agent_stopped", 1)
        for kind in (Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_SERVER):
            counts = Counter(operations(db_spans(receiver, kind)))
            assert counts["SET"] == requests and counts["GET"] == requests, (kind, counts)
            errors = [s for _, s in db_spans(receiver, kind) if s.status.code == Status.STATUS_CODE_ERROR]
            assert not errors
        assert stopped["events_lost"] == 0
        assert stopped["parse_errors"] == 0


def test_query_text_when_asked_and_never_a_password(tmp_path: Path) -> None:
    """attributes.select.traces.include db.query.text: each command as sent; AUTH's argument is
    left out, of spans and of the log. RESP3 (redis-cli -3) parses the same."""
    secret = "s3cret-pw-7741"
    server, port = start_redis(tmp_path, password=secret)
    config = tmp_path / "obi.yaml"
    config.write_text('attributes:\n  select:\n    traces:\n      include: ["db.*"]\n')
    try:
        with OtlpReceiver() as receiver:
            env = {"OTEL_EBPF_AUTO_TARGET_EXE": "*/redis-cli", "OTEL_EBPF_CONFIG_PATH": str(config),
                   "OTEL_EBPF_LOG_LEVEL": "debug", "OTEL_EBPF_TRACE_PRINTER": "text", **otlp(receiver)}
            with AgentProcess(env) as agent:
                cli = ["redis-cli", "-p", str(port), "--no-auth-warning", "-a", secret]
                subprocess.run([*cli, "set", "greeting", "hello world"], check=True, timeout=10)
                subprocess.run([*cli, "-3", "hgetall", "nothing"], check=True, timeout=10,
                               capture_output=True)
                receiver.wait_for(lambda: {"SET", "HGETALL"} <= set(operations(
                    db_spans(receiver, Span.SPAN_KIND_CLIENT))), timeout=15)
                assert agent.stop() == 0
            texts = {attributes(s)["db.operation.name"]: attributes(s)["db.query.text"]
                     for _, s in db_spans(receiver, Span.SPAN_KIND_CLIENT)}
            assert texts["AUTH"] == "AUTH"
            assert texts["SET"] == "SET greeting 'hello world'"
            assert texts["HGETALL"] == "HGETALL nothing"
            assert texts.get("HELLO", "HELLO") == "HELLO"  # redis-cli -3 says HELLO 3 (and AUTH in it)
            assert secret not in repr(receiver.spans())
            assert agent.stdout and secret not in "\n".join(agent.stdout)  # the trace printer's lines
            assert secret not in repr(agent.logs)
    finally:
        stop_process(server)
