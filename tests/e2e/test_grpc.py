"""gRPC end to end: a grpcio server and client over h2c and over TLS (unary, server streaming, a
failure), the real agent following their connection frame by frame, exact SERVER and CLIENT spans
and the rpc.*.call.duration metrics at an OTLP receiver.

The TLS case runs Debian's grpcio (python3-grpcio, on Debian's own Python), which is built on the
system's OpenSSL, so the TLS uprobes see its plaintext. PyPI's grpcio wheels carry BoringSSL
linked in without symbols: nothing to attach to (README, protocols)."""

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
from tests.e2e.databases import by_start, otlp
from tests.e2e.test_http_clients import Client
from tests.e2e.test_python_app import attributes, curl, latest_points
from tests.otlp_receiver import OtlpReceiver
from tests.support import free_port, start_process, stop_process

TESTS = Path(__file__).resolve().parents[1]
DEBIAN_PYTHON = "/usr/bin/python3"  # with Debian's python3-grpcio (make deps installs it)
TRACE, PARENT = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
ERROR, UNSET = Status.STATUS_CODE_ERROR, Status.STATUS_CODE_UNSET
# (method, status, a server's error?, a client's error?)
CALLS = [("/shop.Cart/Add", "OK", False, False), ("/shop.Cart/Watch", "OK", False, False),
         ("/shop.Cart/Fail", "NOT_FOUND", False, True)]


def rpc_spans(receiver: OtlpReceiver, kind: int) -> list[tuple[dict[str, Any], Span]]:
    return by_start([(r, s) for r, s in receiver.spans()
                     if s.kind == kind and attributes(s).get("rpc.system.name") == "grpc"])


def calls_traced(receiver: OtlpReceiver, env: dict[str, str], client: Client, server: int) -> dict[str, Any]:
    """The agent on the client and the server while the client makes its round of calls (CALLS),
    until the 3 server and 3 client spans and both rpc metrics arrived; its agent_stopped log."""
    with AgentProcess({**env, **otlp(receiver)}) as agent:
        agent.wait_instrumented(client.proc.pid)
        agent.wait_instrumented(server)
        assert client.run() == ["b'added:apple'", "[b'event 0', b'event 1', b'event 2']", "NOT_FOUND"]
        receiver.wait_for(lambda: min(len(rpc_spans(receiver, Span.SPAN_KIND_SERVER)),
                                      len(rpc_spans(receiver, Span.SPAN_KIND_CLIENT))) >= len(CALLS),
                          timeout=15)
        receiver.wait_for_metric("rpc.server.call.duration")
        receiver.wait_for_metric("rpc.client.call.duration")
        assert agent.stop() == 0
        return agent.wait_log(lambda e: e.get("event") == "agent_stopped", 1)


@pytest.fixture(params=["h2c", "tls"])
def transport(request: pytest.FixtureRequest,
              certificate: tuple[Path, Path]) -> Iterator[tuple[str, list[str]]]:
    """(the Python that runs grpcio, the TLS arguments of server and client: none for h2c)"""
    if request.param == "h2c":
        yield sys.executable, []
    else:
        yield DEBIAN_PYTHON, [str(path) for path in certificate]


def test_grpcio_unary_streaming_and_failing_calls(transport: tuple[str, list[str]]) -> None:
    python, tls = transport
    port = free_port()
    server = start_process([python, str(TESTS / "servers" / "grpc_server.py"), str(port), *tls],
                           ready="ready")
    client = Client([python, str(TESTS / "clients" / "grpc_client.py"), str(port), f"00-{TRACE}-{PARENT}-01",
                     *tls[:1]])
    try:
        with OtlpReceiver() as receiver:
            stopped = calls_traced(receiver, {"OTEL_EBPF_TARGET_PID": str(client.proc.pid),
                                              "OTEL_EBPF_OPEN_PORT": str(port)}, client, server.pid)
            servers = rpc_spans(receiver, Span.SPAN_KIND_SERVER)
            clients = rpc_spans(receiver, Span.SPAN_KIND_CLIENT)
            assert [s.name for _, s in servers] == [s.name for _, s in clients] == [m for m, *_ in CALLS]
            for (resource, span), (method, status, _, client_error) in zip(clients, CALLS, strict=True):
                assert resource["process.pid"] == client.proc.pid
                assert attributes(span) == {"rpc.system.name": "grpc", "rpc.method": method,
                                            "rpc.response.status_code": status, "server.address": "127.0.0.1",
                                            "server.port": port}
                assert span.status.code == (ERROR if client_error else UNSET)
            for (resource, span), (method, status, server_error, _) in zip(servers, CALLS, strict=True):
                assert resource["process.pid"] == server.pid
                assert attributes(span) == {"rpc.system.name": "grpc", "rpc.method": method,
                                            "rpc.response.status_code": status, "server.address": "127.0.0.1",
                                            "server.port": port, "client.address": "127.0.0.1"}
                assert span.status.code == (ERROR if server_error else UNSET)
            # the first call carried a traceparent: the client span is that context, the server continues it
            (_, call), (_, served) = clients[0], servers[0]
            assert (call.trace_id.hex(), call.span_id.hex()) == (TRACE, PARENT)
            assert (served.trace_id.hex(), served.parent_span_id.hex()) == (TRACE, PARENT)
            assert stopped["parse_errors"] == 0
            for name in ("rpc.server.call.duration", "rpc.client.call.duration"):
                counts = Counter({(a["rpc.method"], a["rpc.response.status_code"]): p.count
                                  for a, p in latest_points(receiver, name)})
                assert counts == Counter({(m, s): 1 for m, s, *_ in CALLS}), name
    finally:
        client.close()
        stop_process(server)


def test_a_channel_open_before_obi_started_gives_what_can_be_known() -> None:
    """A grpcio channel that made its calls before obi started, and makes them again: obi joins
    its connection at its next frames, at both ends. grpcio's HPACK encoder put every header in
    its table the first time, so the method, the content-type and the status are references obi
    cannot resolve: the calls are gRPC calls (their data is gRPC messages), with no method and
    no status rather than wrong ones, and not errors."""
    port = free_port()
    server = start_process([sys.executable, str(TESTS / "servers" / "grpc_server.py"), str(port)],
                           ready="ready")
    client = Client([sys.executable, str(TESTS / "clients" / "grpc_client.py"), str(port),
                     f"00-{TRACE}-{PARENT}-01"])
    try:
        # the channel's connection, made before obi starts
        assert client.run() == ["b'added:apple'", "[b'event 0', b'event 1', b'event 2']", "NOT_FOUND"]
        with OtlpReceiver() as receiver:
            stopped = calls_traced(receiver, {"OTEL_EBPF_TARGET_PID": str(client.proc.pid),
                                              "OTEL_EBPF_OPEN_PORT": str(port)}, client, server.pid)
            assert not [s for _, s in receiver.spans() if attributes(s).get("http.request.method")]
            servers = rpc_spans(receiver, Span.SPAN_KIND_SERVER)
            clients = rpc_spans(receiver, Span.SPAN_KIND_CLIENT)
            assert len(servers) == len(clients) == 3
            for (resource, span) in clients:
                assert resource["process.pid"] == client.proc.pid
                assert (span.name, span.status.code) == ("GRPC", UNSET)
                assert attributes(span) == {"rpc.system.name": "grpc", "server.address": "127.0.0.1",
                                            "server.port": port}
            for (resource, span) in servers:
                assert resource["process.pid"] == server.pid
                assert (span.name, span.status.code) == ("GRPC", UNSET)
                assert attributes(span) == {"rpc.system.name": "grpc", "server.address": "127.0.0.1",
                                            "server.port": port, "client.address": "127.0.0.1"}
            assert stopped["parse_errors"] == 0
            for name in ("rpc.server.call.duration", "rpc.client.call.duration"):
                points = [(a.get("rpc.method"), a.get("rpc.response.status_code"), p.count)
                          for a, p in latest_points(receiver, name)]
                assert points == [(None, None, 3)], name
    finally:
        client.close()
        stop_process(server)


def test_a_web_service_calling_grpc_makes_one_trace_per_request() -> None:
    """A threaded web service that calls a gRPC backend for each request: each call it makes on
    the request's thread is a child of that request's span. The channel's first call is made
    from grpcio's own thread, not the request's: that one may be a trace of its own, never
    another request's child."""
    grpc_port, port = free_port(), free_port()
    backend = start_process([sys.executable, str(TESTS / "servers" / "grpc_server.py"), str(grpc_port)],
                            ready="ready")
    gateway = start_process([sys.executable, str(TESTS / "servers" / "grpc_gateway.py"), str(port),
                             str(grpc_port)], ready="ready")
    items = ["pear", "plum", "fig", "kiwi"]
    try:
        with OtlpReceiver() as receiver:
            with AgentProcess({"OTEL_EBPF_OPEN_PORT": str(port), **otlp(receiver)}) as agent:
                agent.wait_instrumented(gateway.pid)
                for item in items:
                    assert curl(f"http://127.0.0.1:{port}/cart/{item}") == f"added:{item}"
                receiver.wait_for(lambda: len(rpc_spans(receiver, Span.SPAN_KIND_CLIENT)) >= len(items),
                                  timeout=15)
                receiver.wait_for(lambda: len(http_spans(receiver)) >= len(items), timeout=15)
                assert agent.stop() == 0
            requests = [s for _, s in http_spans(receiver)]
            calls = [s for _, s in rpc_spans(receiver, Span.SPAN_KIND_CLIENT)]
            assert [attributes(s)["url.path"] for s in requests] == [f"/cart/{item}" for item in items]
            assert [s.name for s in calls] == ["/shop.Cart/Add"] * len(items)
            for index, (request, call) in enumerate(zip(requests, calls, strict=True)):
                assert request.start_time_unix_nano < call.start_time_unix_nano < request.end_time_unix_nano
                if index == 0 and call.trace_id != request.trace_id:
                    assert not call.parent_span_id  # grpcio's thread opened it: a root, not a wrong child
                    continue
                assert (call.trace_id, call.parent_span_id) == (request.trace_id, request.span_id), index
    finally:
        stop_process(gateway)
        stop_process(backend)


def http_spans(receiver: OtlpReceiver) -> list[tuple[dict[str, Any], Span]]:
    return by_start([(r, s) for r, s in receiver.spans() if attributes(s).get("http.request.method")])


def test_nghttp_client_and_h2c_server_http_spans() -> None:
    """nghttp2's client (a short-lived process, HTTP/2 with prior knowledge) against an h2c
    server: HTTP spans of protocol version 2 at both ends."""
    port = free_port()
    server = start_process([sys.executable, str(TESTS / "servers" / "h2_server.py"), str(port), "65536"],
                           ready="ready")
    try:
        with OtlpReceiver() as receiver:
            env = {"OTEL_EBPF_AUTO_TARGET_EXE": "*/nghttp", "OTEL_EBPF_OPEN_PORT": str(port),
                   **otlp(receiver)}
            with AgentProcess(env) as agent:
                agent.wait_instrumented(server.pid)
                subprocess.run(["nghttp", f"http://127.0.0.1:{port}/size/100", f"http://127.0.0.1:{port}/items/7"],
                               check=True, capture_output=True, timeout=30)
                receiver.wait_for(lambda: len(http_spans(receiver)) >= 4, timeout=15)
                assert agent.stop() == 0
            spans = http_spans(receiver)
            served = [s for _, s in spans if s.kind == Span.SPAN_KIND_SERVER]
            called = [s for _, s in spans if s.kind == Span.SPAN_KIND_CLIENT]
            assert sorted(attributes(s)["url.path"] for s in served) == ["/items/7", "/size/100"]
            assert sorted(attributes(s)["url.full"] for s in called) == [
                f"http://127.0.0.1:{port}/items/7", f"http://127.0.0.1:{port}/size/100"]
            for span in served:
                attrs = attributes(span)
                assert (attrs["http.request.method"], attrs["http.response.status_code"],
                        attrs["network.protocol.version"]) == ("GET", 200, "2")
            sizes = {attributes(s)["url.full"].rsplit("/", 1)[1]: attributes(s)["http.response.body.size"]
                     for s in called}
            assert sizes == {"100": 100, "7": 2}
    finally:
        stop_process(server)
