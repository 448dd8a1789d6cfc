"""A user's service end to end: a Python web service with Redis as its cache and PostgreSQL
as its database, all three traced by one obi selecting them by port, curl as the user. Each
request is one trace: the service's server span, its cache and database calls as children,
and Redis's and PostgreSQL's server spans as theirs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.agent import AgentProcess
from tests.e2e.databases import otlp
from tests.e2e.test_python_app import attributes, curl
from tests.otlp_receiver import OtlpReceiver
from tests.servers.datastores import start_redis
from tests.servers.postgres import PASSWORD, PostgresServer, start_postgres
from tests.support import free_port, start_process, stop_process

SERVERS = Path(__file__).resolve().parents[1] / "servers"


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.stop()


Key = tuple[str, str, int]  # db.system.name (or "http"), span name, kind


def key(span: Any) -> Key:
    return attributes(span).get("db.system.name", "http"), span.name, span.kind


def trace_of(spans: list[Any], trace_id: bytes) -> dict[Key, list[Any]]:
    """The spans of one trace by their key, in the order they began."""
    found: dict[Key, list[Any]] = {}
    for span in sorted(spans, key=lambda s: s.start_time_unix_nano):
        if span.trace_id == trace_id:
            found.setdefault(key(span), []).append(span)
    return found


def test_each_request_is_one_trace_through_cache_and_database(postgres: PostgresServer,
                                                             tmp_path: Path) -> None:
    redis_server, redis_port = start_redis(tmp_path)
    port = free_port()
    shop = start_process([sys.executable, str(SERVERS / "shop_server.py"), str(port), str(redis_port),
                          str(postgres.port), PASSWORD], ready="ready")
    try:
        with OtlpReceiver() as receiver:
            env = {"OTEL_EBPF_OPEN_PORT": f"{port},{redis_port},{postgres.port}", **otlp(receiver)}
            with AgentProcess(env) as agent:
                for pid in (shop.pid, redis_server.pid, postgres.proc.pid):
                    agent.wait_instrumented(pid)
                base = f"http://127.0.0.1:{port}"
                assert curl(f"{base}/user/1") == "alice"  # a miss: Redis, then PostgreSQL, then Redis
                assert curl(f"{base}/user/1") == "alice"  # a hit
                curl(f"{base}/boom")
                # 3 requests; the calls, each seen at both ends: 2 + 3 of the miss, 1 of the hit, 1 of boom
                receiver.wait_for(lambda: len(receiver.spans()) >= 3 + 2 * (5 + 1 + 1), timeout=15)
                assert agent.stop() == 0
            spans = [s for _, s in receiver.spans()]
            client, server = Span.SPAN_KIND_CLIENT, Span.SPAN_KIND_SERVER
            requests = sorted((s for s in spans if key(s)[0] == "http"), key=lambda s: s.start_time_unix_nano)
            assert [(s.kind, attributes(s)["url.path"]) for s in requests] == [
                (server, "/user/1"), (server, "/user/1"), (server, "/boom")]
            miss, hit, boom = (trace_of(spans, r.trace_id) for r in requests)
            served = [key(r) for r in requests]
            # a miss: redis-py's handshake (CLIENT SETINFO, twice) on its new connection, Redis's
            # GET, PostgreSQL's SELECT, Redis's SET, each called and served
            calls = [("redis", "CLIENT"), ("redis", "GET"), ("postgresql", "SELECT users"), ("redis", "SET")]
            assert set(miss) == {served[0]} | {(system, name, kind) for system, name in calls
                                               for kind in (client, server)}
            (request,) = miss[served[0]]
            for system, name in calls:
                made, answered = miss[(system, name, client)], miss[(system, name, server)]
                assert len(made) == len(answered) == (2 if name == "CLIENT" else 1)
                for call, serving in zip(made, answered, strict=True):
                    assert call.parent_span_id == request.span_id
                    assert serving.parent_span_id == call.span_id
            # a hit: Redis only
            assert set(hit) == {served[1], ("redis", "GET", client), ("redis", "GET", server)}
            (failed,), (failing,) = boom[("postgresql", "SELECT nosuch", client)], boom[served[2]]
            assert failed.parent_span_id == failing.span_id
            assert attributes(failed)["error.type"] == "42P01"
            assert attributes(failing)["http.response.status_code"] == 500
    finally:
        stop_process(shop)
        stop_process(redis_server)
