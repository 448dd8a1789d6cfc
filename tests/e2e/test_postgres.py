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

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.agent import AgentProcess
from tests.e2e.databases import Spans, check_client_and_server, db_spans, metric_counts, otlp, traced_client
from tests.e2e.test_python_app import attributes
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


def sql_spans(receiver: OtlpReceiver, kind: int) -> Spans:
    return db_spans(receiver, "postgresql", kind)


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_psycopg_client_and_server(postgres: PostgresServer, sslmode: str) -> None:
    argv = [sys.executable, str(CLIENTS / "postgres_client.py"), str(postgres.port), sslmode, PASSWORD]

    def arrived(receiver: OtlpReceiver) -> bool:
        return min(len(sql_spans(receiver, Span.SPAN_KIND_SERVER)),
                   len(sql_spans(receiver, Span.SPAN_KIND_CLIENT))) >= len(SPANS)

    with traced_client(argv, postgres.proc.pid, postgres.port, arrived) as run:
        assert run.lines == ["[('alice',)]", "error 42P01"]
        clients = sql_spans(run.receiver, Span.SPAN_KIND_CLIENT)
        servers = sql_spans(run.receiver, Span.SPAN_KIND_SERVER)
        assert [s.name for _, s in clients] == [name for name, *_ in SPANS]
        expected = [{"db.system.name": "postgresql", "db.operation.name": op, "db.namespace": "shop",
                     "server.address": "127.0.0.1", "server.port": postgres.port}
                    | ({"db.collection.name": table} if table else {})
                    | ({"db.response.status_code": error, "error.type": error} if error else {})
                    for _, op, table, error in SPANS]
        check_client_and_server(clients, servers, expected, run.client_pid)
        assert {r["service.name"] for r, _ in servers} == {"postgres"}  # the connection's backend
        for name in ("db.client.operation.duration", "db.server.operation.duration"):
            assert metric_counts(run.receiver, name, "postgresql") == Counter({
                ("BEGIN", None): 1, ("SELECT", None): 4, ("SELECT", "42P01"): 1, ("COMMIT", None): 1}), name


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
