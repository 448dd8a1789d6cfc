"""Memcached end to end: Debian's memcached with pymemcache (noreply, errors, multi-get), the
real agent, exact client and server spans and metrics at an OTLP receiver."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.databases import check_client_and_server, db_spans, metric_counts, traced_client
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
    argv = [sys.executable, str(CLIENTS / "memcached_client.py"), str(port)]
    with traced_client(argv, server.pid, port, lambda r: len(r.spans()) >= 2 * len(COMMANDS)) as run:
        assert run.lines[:3] == ["True", "b'alice'", "{'user:1': b'alice'}"]
        assert run.lines[3].startswith("client error") and run.lines[4].startswith("server error")
        clients = db_spans(run.receiver, "memcached", Span.SPAN_KIND_CLIENT)
        servers = db_spans(run.receiver, "memcached", Span.SPAN_KIND_SERVER)
        assert [s.name for _, s in clients] == [op for op, _ in COMMANDS]
        expected = [{"db.system.name": "memcached", "db.operation.name": op, "server.address": "127.0.0.1",
                     "server.port": port}
                    | ({"db.response.status_code": error, "error.type": error} if error else {})
                    for op, error in COMMANDS]
        check_client_and_server(clients, servers, expected, run.client_pid, server.pid)
        for name in ("db.client.operation.duration", "db.server.operation.duration"):
            assert metric_counts(run.receiver, name, "memcached") == Counter({
                ("set", None): 2, ("get", None): 2, ("incr", "CLIENT_ERROR"): 1, ("set", "SERVER_ERROR"): 1,
                ("delete", None): 1}), name
