"""PostgreSQL end to end: the machine's PostgreSQL 15 with psycopg 3 (extended protocol,
prepared statements, an error; plaintext and TLS through the bundled libssl's uprobes) and
psql (simple protocol), the real agent, exact client and server spans and metrics at an
OTLP receiver."""

from __future__ import annotations

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
from tests.e2e.test_python_app import attributes, latest_points
from tests.e2e.test_redis import by_start, otlp
from tests.otlp_receiver import OtlpReceiver
from tests.servers.postgres import PASSWORD, PostgresServer, start_postgres

CLIENTS = Path(__file__).resolve().parents[1] / "clients"
# tests/clients/postgres_client.py's statements as spans, in order: (name, operation, table, error)
SPANS = [("BEGIN", "BEGIN", "", "")] + [("SELECT users", "SELECT", "users", "")] * 4 + [
    ("SELECT nosuch", "SELECT", "nosuch", "42P01"), ("COMMIT", "COMMIT", "", "")]


@pytest.fixture
def postgres(request: pytest.FixtureRequest, certificate: tuple[Path, Path]) -> Iterator[PostgresServer]:
    server = start_postgres(ssl=certificate)
    yield server
    server.stop()


def sql_spans(receiver: OtlpReceiver, kind: int) -> list[tuple[dict[str, Any], Span]]:
    return by_start([(r, s) for r, s in receiver.spans()
                     if s.kind == kind and attributes(s).get("db.system.name") == "postgresql"])


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_psycopg_client_and_server(postgres: PostgresServer, sslmode: str) -> None:
    argv = [sys.executable, str(CLIENTS / "postgres_client.py"), str(postgres.port), sslmode, PASSWORD]
    client = Client(argv)
    try:
        with OtlpReceiver() as receiver:
            env = {"OTEL_EBPF_TARGET_PID": str(client.proc.pid), "OTEL_EBPF_OPEN_PORT": str(postgres.port),
                   **otlp(receiver)}
            with AgentProcess(env) as agent:
                agent.wait_instrumented(client.proc.pid)
                agent.wait_instrumented(postgres.proc.pid)
                assert client.run() == ["[('alice',)]", "error 42P01"]
                receiver.wait_for(lambda: min(len(sql_spans(receiver, Span.SPAN_KIND_SERVER)),
                                              len(sql_spans(receiver, Span.SPAN_KIND_CLIENT))) >= len(SPANS),
                                  timeout=15)
                receiver.wait_for_metric("db.server.operation.duration")
                assert agent.stop() == 0
                stopped = agent.wait_log(lambda e: e.get("event") == "agent_stopped", 1)
            clients = sql_spans(receiver, Span.SPAN_KIND_CLIENT)
            servers = sql_spans(receiver, Span.SPAN_KIND_SERVER)
            assert [s.name for _, s in clients] == [name for name, *_ in SPANS]
            assert [s.name for _, s in servers] == [name for name, *_ in SPANS]
            for (resource, span), (server_resource, served), (_, op, table, error) in zip(
                    clients, servers, SPANS, strict=True):
                assert resource["process.pid"] == client.proc.pid
                assert server_resource["service.name"] == "postgres"  # the connection's backend
                expected: dict[str, Any] = {"db.system.name": "postgresql", "db.operation.name": op,
                                            "db.namespace": "shop", "server.address": "127.0.0.1",
                                            "server.port": postgres.port}
                if table:
                    expected["db.collection.name"] = table
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
                                  if a["db.system.name"] == "postgresql"})
                assert counts == Counter({("BEGIN", None): 1, ("SELECT", None): 4, ("SELECT", "42P01"): 1,
                                          ("COMMIT", None): 1}), name
    finally:
        client.close()


def test_psql_simple_queries_and_query_text(postgres: PostgresServer, tmp_path: Path) -> None:
    """psql's simple protocol; db.query.text as sent when asked, the password never."""
    config = tmp_path / "obi.yaml"
    config.write_text("attributes:\n  select:\n    traces:\n      include: [db.query.text]\n")
    with OtlpReceiver() as receiver:
        env = {"OTEL_EBPF_AUTO_TARGET_EXE": "*/psql", "OTEL_EBPF_CONFIG_PATH": str(config), **otlp(receiver)}
        with AgentProcess(env) as agent:
            psql = ["psql", "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "obi", "-d", "shop", "-X",
                    "-q"]
            # plaintext: a psql that lives 30 ms ends before its libssl's uprobes are attached
            secret = {"PGPASSWORD": PASSWORD, "PGSSLMODE": "disable", "PATH": "/usr/bin:/bin"}
            subprocess.run([*psql, "-c", "SELECT count(*) FROM users WHERE name <> 'carol'"], check=True,
                           timeout=30, capture_output=True, env=secret)
            failed = subprocess.run([*psql, "-c", "DELETE FROM nosuch"], timeout=30, capture_output=True,
                                    env=secret)
            assert failed.returncode == 1
            receiver.wait_for(lambda: len(sql_spans(receiver, Span.SPAN_KIND_CLIENT)) >= 2, timeout=15)
            assert agent.stop() == 0
        spans = [s for _, s in sql_spans(receiver, Span.SPAN_KIND_CLIENT)]
        assert [(s.name, attributes(s).get("error.type"), attributes(s)["db.query.text"]) for s in spans] == [
            ("SELECT users", None, "SELECT count(*) FROM users WHERE name <> 'carol'"),
            ("DELETE nosuch", "42P01", "DELETE FROM nosuch")]
        assert PASSWORD not in repr(receiver.spans()) and PASSWORD not in repr(agent.logs)
