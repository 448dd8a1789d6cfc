"""Instrumented processes that fork, exit or exec in the middle of a request, and a
port served by a new process after the old one died: the agent stays up and never
attributes a span to the wrong service."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.agent import AgentProcess
from tests.e2e.reliability import SERVERS, python_app, span_path, stopped
from tests.otlp_receiver import AttributeValue, OtlpReceiver, attributes_dict
from tests.support import free_port, start_process, stop_process

# The agent_stopped counter of requests whose response the capture never saw (the reader closed
# the connection, exited or exec'd first) and that were not made into spans: such a request is
# a span or counted there, never dropped silently. (obi makes every one a span, with no status
# code and error.type saying why, and counts those in spans_without_response.)
UNANSWERED = "requests_unanswered"


def forking_server(port: int, service: str, workers: int = 0,
                   exec_service: str = "after-exec") -> subprocess.Popen[str]:
    env = {"PATH": "/usr/bin:/bin", "OTEL_SERVICE_NAME": service, "EXEC_SERVICE_NAME": exec_service}
    argv = [sys.executable, str(SERVERS / "forking_server.py"), str(port), str(workers)]
    return start_process(argv, ready="ready", env=env)


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def get(port: int, path: str) -> str | None:
    """One request on a new connection; the body, or None when the server hung up."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    except (ConnectionError, http.client.HTTPException):
        return None
    finally:
        conn.close()


@contextmanager
def agent_on_port(port: int, receiver: OtlpReceiver) -> Iterator[AgentProcess]:
    env = {"OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.grpc_endpoint,
           "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT": "200ms"}
    with AgentProcess(env) as agent:
        yield agent


def by_path(receiver: OtlpReceiver) -> dict[str, list[tuple[dict[str, AttributeValue], Span]]]:
    out: dict[str, list[tuple[dict[str, AttributeValue], Span]]] = {}
    for resource, span in receiver.spans():
        out.setdefault(span_path(span), []).append((resource, span))
    return out


def owner(entry: tuple[dict[str, AttributeValue], Any]) -> tuple[AttributeValue, AttributeValue]:
    resource, _ = entry
    return resource["service.name"], resource["process.pid"]


def check_cut_short(entries: list[tuple[dict[str, AttributeValue], Span]], path: str,
                    owners: set[tuple[str, int]]) -> int:
    """Checks a request its reader let go of mid-way; returns 1 when it must be counted as unanswered.

    Either no span (then counted), or exactly one: of one of ``owners``, for that GET, with
    the answer's status (200) if the capture saw the answer and no status if it did not."""
    if not entries:
        return 1
    [(resource, span)] = entries
    assert (resource["service.name"], resource["process.pid"]) in owners, (path, owner((resource, span)))
    attrs = attributes_dict(span.attributes)
    assert (attrs["http.request.method"], attrs["url.path"]) == ("GET", path)
    assert attrs.get("http.response.status_code") in (200, None), (path, attrs)
    return 0


def test_prefork_children_and_a_fork_mid_request() -> None:
    port = free_port()
    with OtlpReceiver() as receiver:
        server = forking_server(port, "prefork", workers=2)
        try:
            workers = children(server.pid)
            with agent_on_port(port, receiver) as agent:
                for pid in workers:
                    agent.wait_instrumented(pid)
                answered = {f"/hello/{i}": get(port, f"/hello/{i}") for i in range(20)}
                # The worker reads the request, a forked child answers and exits.
                forked = {f"/fork/{i}": get(port, f"/fork/{i}") for i in range(10)}
                after = {f"/after/{i}": get(port, f"/after/{i}") for i in range(10)}
                receiver.wait_for(lambda: sum(p.startswith("/after/") for p in by_path(receiver)) == 10, 15)
                assert agent.stop() == 0
            stats = stopped(agent)
        finally:
            stop_process(server)
    assert all(answered.values()) and all(forked.values()) and all(after.values())
    spans = by_path(receiver)
    # Each request served by a worker: one span, attributed to the worker that answered.
    for path, body in {**answered, **after}.items():
        assert body is not None
        assert [owner(e) for e in spans[path]] == [("prefork", int(body))], path
    # Forked mid-request: the worker read the request and closed it; its child answered. Each
    # such request is one span of the worker that read it, or counted as unanswered.
    readers = {("prefork", pid) for pid in workers}
    unanswered = sum(check_cut_short(spans.get(path, []), path, readers) for path in forked)
    assert stats.get(UNANSWERED, 0) == unanswered, (unanswered, stats)
    assert stats["spans"] == len(receiver.spans())


def test_exit_mid_request_then_a_new_process_on_the_same_port() -> None:
    port = free_port()
    with OtlpReceiver() as receiver:
        first = forking_server(port, "first-life")
        with agent_on_port(port, receiver) as agent:
            agent.wait_instrumented(first.pid)
            assert get(port, "/before") == f"{first.pid}\n"
            assert get(port, "/exit") is None  # dies holding the request
            first.wait(5)
            agent.wait_log(lambda e: e.get("event") == "process_forgotten" and e.get("pid") == first.pid, 10)
            second = forking_server(port, "second-life")
            try:
                agent.wait_instrumented(second.pid)
                assert get(port, "/reborn") == f"{second.pid}\n"
                receiver.wait_for(lambda: "/reborn" in by_path(receiver), 15)
            finally:
                stop_process(second)
            assert agent.stop() == 0
        stats = stopped(agent)
    spans = by_path(receiver)
    assert [owner(e) for e in spans["/before"]] == [("first-life", first.pid)]
    assert [owner(e) for e in spans["/reborn"]] == [("second-life", second.pid)]
    # Died holding the request: one span of the first life, or counted as unanswered.
    unanswered = check_cut_short(spans.get("/exit", []), "/exit", {("first-life", first.pid)})
    assert stats.get(UNANSWERED, 0) == unanswered, (unanswered, stats)
    assert set(spans) <= {"/before", "/exit", "/reborn"}
    assert stats["spans"] == len(receiver.spans())


def test_exec_mid_request() -> None:
    port = free_port()
    with OtlpReceiver() as receiver:
        server = forking_server(port, "before-exec", exec_service="after-exec")
        try:
            with agent_on_port(port, receiver) as agent:
                agent.wait_instrumented(server.pid)
                assert get(port, "/before") == f"{server.pid}\n"
                # The old image reads the request; the new one (same pid) answers it.
                assert get(port, "/exec") == f"{server.pid}\n"
                time.sleep(1.5)  # a few discovery scans
                assert get(port, "/after-exec") == f"{server.pid}\n"
                receiver.wait_for(lambda: "/after-exec" in by_path(receiver), 15)
                assert agent.stop() == 0
            stats = stopped(agent)
        finally:
            stop_process(server)
    spans = by_path(receiver)
    assert [owner(e) for e in spans["/before"]] == [("before-exec", server.pid)]
    # The request that spans the exec: one span of this pid under either image's name, or,
    # when the capture let go of the connection at the exec, counted as unanswered.
    either_image = {("before-exec", server.pid), ("after-exec", server.pid)}
    unanswered = check_cut_short(spans.get("/exec", []), "/exec", either_image)
    assert stats.get(UNANSWERED, 0) == unanswered, (unanswered, stats)
    assert [owner(e) for e in spans["/after-exec"]] == [("after-exec", server.pid)]
    assert stats["spans"] == len(receiver.spans())


def test_many_short_lived_processes_keep_their_own_service_names() -> None:
    """Processes come and go on the same port (as with pid reuse): each span to its own service."""
    port = free_port()
    with OtlpReceiver() as receiver, agent_on_port(port, receiver) as agent:
        pids = {}
        for life in range(4):
            with python_app(f"life-{life}", port) as (app, _):
                agent.wait_instrumented(app.pid)
                assert get(port, f"/life/{life}") == "not found\n"
                pids[life] = app.pid
                receiver.wait_for_spans(life + 1, 15)
        assert agent.stop() == 0
    assert len(receiver.spans()) == 4
    for resource, span in receiver.spans():
        life = int(span_path(span).removeprefix("/life/"))
        assert (resource["service.name"], resource["process.pid"]) == (f"life-{life}", pids[life])
