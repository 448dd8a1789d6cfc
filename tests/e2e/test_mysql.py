"""MySQL protocol end to end: Debian's MariaDB with PyMySQL (COM_QUERY) and
mysql-connector-python (server-side prepared statements), the real agent, exact client and
server spans and metrics at an OTLP receiver."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.e2e.agent import AgentProcess
from tests.e2e.test_http_clients import Client
from tests.e2e.test_python_app import attributes, latest_points
from tests.e2e.test_redis import by_start, otlp
from tests.otlp_receiver import OtlpReceiver
from tests.servers.mariadb import PASSWORD, MariaDbServer, start_mariadb

CLIENTS = Path(__file__).resolve().parents[1] / "clients"
# tests/clients/mysql_client.py's statements as spans, after the client's own SETs:
# (name, operation, table, error code)
SPANS = [("SELECT users", "SELECT", "users", "")] * 2 + [("SELECT nosuch", "SELECT", "nosuch", "1146"),
                                                         ("INSERT users", "INSERT", "users", "1062")]


@pytest.fixture
def mariadb() -> Iterator[MariaDbServer]:
    server = start_mariadb()
    yield server
    server.stop()


def sql_spans(receiver: OtlpReceiver, kind: int) -> list[tuple[dict[str, Any], Span]]:
    return by_start([(r, s) for r, s in receiver.spans()
                     if s.kind == kind and attributes(s).get("db.system.name") == "mysql"])


@pytest.mark.parametrize("api", ["pymysql", "connector"])
def test_client_and_server_spans(mariadb: MariaDbServer, api: str) -> None:
    client = Client([sys.executable, str(CLIENTS / "mysql_client.py"), api, str(mariadb.port), PASSWORD])
    try:
        with OtlpReceiver() as receiver:
            env = {"OTEL_EBPF_TARGET_PID": str(client.proc.pid), "OTEL_EBPF_OPEN_PORT": str(mariadb.port),
                   **otlp(receiver)}
            with AgentProcess(env) as agent:
                agent.wait_instrumented(client.proc.pid)
                agent.wait_instrumented(mariadb.proc.pid)
                assert client.run() == ["(('alice',),)" if api == "pymysql" else "[('alice',)]"] * 2 + [
                    "error 1146", "error 1062"]
                receiver.wait_for(lambda: min(len(sql_spans(receiver, Span.SPAN_KIND_SERVER)),
                                              len(sql_spans(receiver, Span.SPAN_KIND_CLIENT))) >= len(SPANS),
                                  timeout=15)
                receiver.wait_for_metric("db.server.operation.duration")
                assert agent.stop() == 0
                stopped = agent.wait_log(lambda e: e.get("event") == "agent_stopped", 1)
            clients = [p for p in sql_spans(receiver, Span.SPAN_KIND_CLIENT) if p[1].name != "SET"]
            servers = [p for p in sql_spans(receiver, Span.SPAN_KIND_SERVER) if p[1].name != "SET"]
            assert [s.name for _, s in clients] == [name for name, *_ in SPANS]
            assert [s.name for _, s in servers] == [name for name, *_ in SPANS]
            for (resource, span), (server_resource, served), (_, op, table, error) in zip(
                    clients, servers, SPANS, strict=True):
                assert resource["process.pid"] == client.proc.pid
                assert server_resource["process.pid"] == mariadb.proc.pid
                expected: dict[str, Any] = {"db.system.name": "mysql", "db.operation.name": op,
                                            "db.collection.name": table, "db.namespace": "shop",
                                            "server.address": "127.0.0.1", "server.port": mariadb.port}
                if error:
                    expected |= {"db.response.status_code": error, "error.type": error}
                assert attributes(span) == expected
                assert attributes(served) == expected | {"client.address": "127.0.0.1"}
                assert span.status.code == (Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET)
            links = [(served.trace_id == span.trace_id, served.parent_span_id == span.span_id)
                     for (_, span), (_, served) in zip(clients, servers, strict=True)]
            assert links == [(True, True)] * len(SPANS)
            assert stopped["parse_errors"] == 0
            for name in ("db.client.operation.duration", "db.server.operation.duration"):
                counts = Counter({(a["db.operation.name"], a.get("error.type")): p.count
                                  for a, p in latest_points(receiver, name)
                                  if a["db.system.name"] == "mysql" and a["db.operation.name"] != "SET"})
                assert counts == Counter({("SELECT", None): 2, ("SELECT", "1146"): 1,
                                          ("INSERT", "1062"): 1}), name
    finally:
        client.close()
