"""MySQL protocol end to end: Debian's MariaDB with PyMySQL (COM_QUERY) and
mysql-connector-python (server-side prepared statements), the real agent, exact client and
server spans and metrics at an OTLP receiver."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.databases import Spans, check_client_and_server, db_spans, metric_counts, traced_client
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


def sql_spans(receiver: OtlpReceiver, kind: int) -> Spans:
    """The MySQL spans but those of the clients' own SET statements."""
    return [p for p in db_spans(receiver, "mysql", kind) if p[1].name != "SET"]


@pytest.mark.parametrize("api", ["pymysql", "connector"])
def test_client_and_server_spans(mariadb: MariaDbServer, api: str) -> None:
    argv = [sys.executable, str(CLIENTS / "mysql_client.py"), api, str(mariadb.port), PASSWORD]

    def arrived(receiver: OtlpReceiver) -> bool:
        return min(len(sql_spans(receiver, Span.SPAN_KIND_SERVER)),
                   len(sql_spans(receiver, Span.SPAN_KIND_CLIENT))) >= len(SPANS)

    with traced_client(argv, mariadb.proc.pid, mariadb.port, arrived) as run:
        assert run.lines == ["(('alice',),)" if api == "pymysql" else "[('alice',)]"] * 2 + [
            "error 1146", "error 1062"]
        clients = sql_spans(run.receiver, Span.SPAN_KIND_CLIENT)
        servers = sql_spans(run.receiver, Span.SPAN_KIND_SERVER)
        assert [s.name for _, s in clients] == [name for name, *_ in SPANS]
        expected = [{"db.system.name": "mysql", "db.operation.name": op, "db.collection.name": table,
                     "db.namespace": "shop", "server.address": "127.0.0.1", "server.port": mariadb.port}
                    | ({"db.response.status_code": error, "error.type": error} if error else {})
                    for _, op, table, error in SPANS]
        check_client_and_server(clients, servers, expected, run.client_pid, mariadb.proc.pid)
        for name in ("db.client.operation.duration", "db.server.operation.duration"):
            assert metric_counts(run.receiver, name, "mysql", leave_out=frozenset({"SET"})) == Counter({
                ("SELECT", None): 2, ("SELECT", "1146"): 1, ("INSERT", "1062"): 1}), name
