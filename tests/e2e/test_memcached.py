"""Memcached end to end: Debian's memcached with pymemcache (noreply, errors, multi-get), the
real agent, exact client and server spans and metrics at an OTLP receiver."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.e2e.agent import AgentProcess
from tests.e2e.test_http_clients import Client
from tests.e2e.test_python_app import attributes, latest_points
from tests.e2e.test_redis import by_start, otlp
from tests.otlp_receiver import OtlpReceiver
from tests.servers.datastores import start_memcached
from tests.support import stop_process

CLIENTS = Path(__file__).resolve().parents[1] / "clients"
# What tests/clients/memcached_client.py sends, in order: (command, error)
COMMANDS = [("set", ""), ("get", ""), ("get", ""), ("set", ""), ("incr", "CLIENT_ERROR"),
            ("set", "SERVER_ERROR"), ("delete", "")]


@pytest.fixture
def memcached() -> Iterator[tuple[subprocess.Popen[str], int]]:
    proc, port = start_memcached()
    yield proc, port
    stop_process(proc)


def test_pymemcache_client_and_server(memcached: tuple[subprocess.Popen[str], int]) -> None:
    server, port = memcached
    client = Client([sys.executable, str(CLIENTS / "memcached_client.py"), str(port)])
    try:
        with OtlpReceiver() as receiver:
            env = {"OTEL_EBPF_TARGET_PID": str(client.proc.pid), "OTEL_EBPF_OPEN_PORT": str(port),
                   **otlp(receiver)}
            with AgentProcess(env) as agent:
                agent.wait_instrumented(client.proc.pid)
                agent.wait_instrumented(server.pid)
                lines = client.run()
                assert lines[:3] == ["True", "b'alice'", "{'user:1': b'alice'}"]
                assert lines[3].startswith("client error") and lines[4].startswith("server error")
                receiver.wait_for(lambda: len(receiver.spans()) >= 2 * len(COMMANDS), timeout=15)
                receiver.wait_for_metric("db.server.operation.duration")
                assert agent.stop() == 0
                stopped = agent.wait_log(lambda e: e.get("event") == "agent_stopped", 1)
            spans = [(r, s) for r, s in receiver.spans()
                     if attributes(s).get("db.system.name") == "memcached"]
            clients = by_start([(r, s) for r, s in spans if s.kind == Span.SPAN_KIND_CLIENT])
            servers = by_start([(r, s) for r, s in spans if s.kind == Span.SPAN_KIND_SERVER])
            assert [(attributes(s)["db.operation.name"], attributes(s).get("error.type", ""))
                    for _, s in clients] == COMMANDS
            assert [attributes(s)["db.operation.name"] for _, s in servers] == [op for op, _ in COMMANDS]
            for (resource, span), (server_resource, served), (op, error) in zip(clients, servers, COMMANDS,
                                                                                  strict=True):
                assert resource["process.pid"] == client.proc.pid
                assert server_resource["process.pid"] == server.pid
                assert span.name == op
                expected = {"db.system.name": "memcached", "db.operation.name": op,
                            "server.address": "127.0.0.1", "server.port": port}
                if error:
                    expected |= {"db.response.status_code": error, "error.type": error}
                assert attributes(span) == expected
                assert span.status.code == (Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET)
                assert attributes(served) == expected | {"client.address": "127.0.0.1"}
                assert served.trace_id == span.trace_id and served.parent_span_id == span.span_id
            assert stopped["parse_errors"] == 0
            for name in ("db.client.operation.duration", "db.server.operation.duration"):
                counts = Counter({(a["db.operation.name"], a.get("error.type")): p.count
                                  for a, p in latest_points(receiver, name)
                                  if a["db.system.name"] == "memcached"})
                assert counts == Counter({("set", None): 2, ("get", None): 2, ("incr", "CLIENT_ERROR"): 1,
                                          ("set", "SERVER_ERROR"): 1, ("delete", None): 1}), name
    finally:
        client.close()
