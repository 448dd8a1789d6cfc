"""One trace across processes: a chain of five programs, obi on every hop.

    curl -> nginx (proxy_pass) -> a threaded Python app -> goblog (Go, HTTPS) -> a Python backend

With `ebpf.context_propagation: headers` obi adds a traceparent header to every plaintext
HTTP/1 request a traced process sends (the backend echoes what it got); with propagation
disabled, the ends of each call on this host are still joined by their connection. Either
way the OTLP receiver gets one trace whose parent chain is exactly server, client,
server, client, ... down the chain. The TLS hop (Python to goblog) carries no header:
there the connection joins the two ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.agent import AgentProcess
from tests.e2e.conftest import SERVERS
from tests.e2e.test_python_app import FAST_EXPORT, attributes
from tests.golang import build_go
from tests.otlp_receiver import OtlpReceiver
from tests.servers.nginx import nginx_worker, start_nginx
from tests.support import bpf_link_ids, free_port, start_process, stop_process

GOBLOG = Path(__file__).resolve().parents[1] / "apps" / "goblog" / "main.go"
NGINX_TO_APP = """\
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{app};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
SERVER, CLIENT = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT


@dataclass
class Chain:
    ports: dict[str, int]  # hop name -> its port
    pids: dict[str, int]   # hop name -> the pid that serves (nginx: its worker)
    procs: list[subprocess.Popen[str]]
    tmp: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['nginx']}/next"


@pytest.fixture
def chain(tmp_path: Path, certificate: tuple[Path, Path]) -> Iterator[Chain]:
    cert, key = certificate
    ports = {name: free_port() for name in ("backend", "goblog", "app")}
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(start_process([sys.executable, str(SERVERS / "behaviour_server.py"),
                                    str(ports["backend"])], ready="ready"))
        procs.append(start_process([str(build_go(GOBLOG, "current", True, "goblog")),
                                    "-listen", f"127.0.0.1:{ports['goblog']}", "-cert", str(cert),
                                    "-key", str(key), "-backend", f"http://127.0.0.1:{ports['backend']}"],
                                   ready="ready"))
        procs.append(start_process([
            sys.executable, str(SERVERS / "calling_server.py"), str(ports["app"]), "0",
            f"https://127.0.0.1:{ports['goblog']}/api/backend?path=/traceparent/seen"], ready="ready"))
        nginx, ports["nginx"] = start_nginx(tmp_path, NGINX_TO_APP, app=ports["app"])
        procs.append(nginx)
        pids = {"backend": procs[0].pid, "goblog": procs[1].pid, "app": procs[2].pid,
                "nginx": nginx_worker(nginx.pid)}
        yield Chain(ports, pids, procs, tmp_path)
    finally:
        for proc in reversed(procs):
            stop_process(proc)


def run_chain(chain: Chain, propagation: str, requests: int = 1) -> tuple[list[str], list[Any], AgentProcess]:
    """obi on every hop (and on curl, selected when it starts); `requests` curls down the chain.
    Returns what the backend echoed for each, the spans (resource, span), and the agent."""
    config = chain.tmp / "obi.yml"
    ports = ",".join(str(p) for p in chain.ports.values())
    config.write_text(f"discovery:\n  instrument:\n    - open_ports: {ports}\n    - exe_path: '*/curl'\n"
                      f"ebpf:\n  context_propagation: {propagation}\n")
    echoed = []
    with OtlpReceiver() as receiver, AgentProcess({
            "OTEL_EBPF_CONFIG_PATH": str(config), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", **FAST_EXPORT}) as agent:
        for pid in chain.pids.values():
            agent.wait_instrumented(pid)
        agent.wait_log(lambda e: e.get("event") == "go_binary_attached", 15)
        for _ in range(requests):
            done = subprocess.run(["curl", "-sS", "--max-time", "10", chain.url], capture_output=True,
                                  text=True, timeout=20, check=True)
            echoed.append(done.stdout)
        receiver.wait_for(lambda: len(receiver.spans()) >= 8 * requests, 20)
        assert agent.stop() == 0
    return echoed, receiver.spans(), agent


def describe(chain: Chain, spans: list[Any]) -> str:
    """The spans as (hop, kind, trace, span, parent) lines, for a failure's message."""
    hop_of = {pid: name for name, pid in chain.pids.items()}
    return "\n".join(f"{hop_of.get(r['process.pid'], 'curl')} {s.kind} {s.trace_id.hex()[:8]} "
                     f"{s.span_id.hex()[:8]} {s.parent_span_id.hex()[:8]} {s.name}"
                     for r, s in sorted(spans, key=lambda p: p[1].start_time_unix_nano))


HOPS = [("curl", CLIENT), ("nginx", SERVER), ("nginx", CLIENT), ("app", SERVER), ("app", CLIENT),
        ("goblog", SERVER), ("goblog", CLIENT), ("backend", SERVER)]


def check_one_trace(chain: Chain, spans: list[Any]) -> list[Span]:
    """The eight spans of one request down the chain, in order, each the child of the one
    before it, all in one trace."""
    hop_of = {pid: name for name, pid in chain.pids.items()}
    named = sorted(((hop_of.get(r["process.pid"], "curl"), s) for r, s in spans),
                   key=lambda p: p[1].start_time_unix_nano)
    assert sorted((name, s.kind) for name, s in named) == sorted(HOPS), [(n, s.kind) for n, s in named]
    ordered = [next(s for name, s in named if (name, s.kind) == hop) for hop in HOPS]
    root = ordered[0]
    assert root.parent_span_id == b"" and len(root.trace_id) == 16 and any(root.trace_id)
    for (hop, parent), child in zip(zip(HOPS, ordered, strict=True), ordered[1:], strict=False):
        assert child.trace_id == root.trace_id, f"{hop}: another trace"
        assert child.parent_span_id == parent.span_id, f"the span after {hop} is not its child"
    assert len({s.span_id for s in ordered}) == len(ordered)
    return ordered


def test_headers_one_trace_down_the_chain(chain: Chain) -> None:
    echoed, spans, agent = run_chain(chain, "headers")
    ordered = check_one_trace(chain, spans)
    goblog_client = ordered[6]
    # the backend's handler read, on the wire, the traceparent obi wrote into goblog's request
    assert echoed == [f"00-{goblog_client.trace_id.hex()}-{goblog_client.span_id.hex()}-01\n"]
    started = next(e for e in agent.logs if e.get("event") == "capture_attached")
    assert started["context_propagation"] == "headers"
    assert agent.logs[-1]["traceparent_added"] >= 3  # curl, nginx and goblog's plaintext requests
    assert attributes(ordered[4])["url.full"].startswith("https://")


@pytest.mark.parametrize("propagation", ["headers", "disabled"])
def test_obi_on_some_hops_gives_consistent_traces(chain: Chain, propagation: str) -> None:
    """obi on nginx and goblog only: each traced hop's server and client spans are one trace and
    parent and child; the untraced Python app in between (which forwards no traceparent)
    breaks the chain there, and nothing claims a parent it does not have."""
    config = chain.tmp / "obi.yml"
    traced = f"{chain.ports['nginx']},{chain.ports['goblog']}"
    config.write_text(f"discovery:\n  instrument:\n    - open_ports: {traced}\n"
                      f"ebpf:\n  context_propagation: {propagation}\n")
    with OtlpReceiver() as receiver, AgentProcess({
            "OTEL_EBPF_CONFIG_PATH": str(config), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", **FAST_EXPORT}) as agent:
        agent.wait_instrumented(chain.pids["nginx"])
        agent.wait_instrumented(chain.pids["goblog"])
        agent.wait_log(lambda e: e.get("event") == "go_binary_attached", 15)
        echoed = subprocess.run(["curl", "-sS", "--max-time", "10", chain.url], capture_output=True,
                                text=True, timeout=20, check=True).stdout
        receiver.wait_for(lambda: len(receiver.spans()) >= 4, 20)
        assert agent.stop() == 0
    spans = receiver.spans()
    hop_of: dict[Any, str] = {pid: name for name, pid in chain.pids.items()}
    by_hop = {(hop_of.get(r["process.pid"], "?"), s.kind): s for r, s in spans}
    assert sorted(by_hop) == sorted([("nginx", SERVER), ("nginx", CLIENT), ("goblog", SERVER),
                                     ("goblog", CLIENT)]), describe(chain, spans)
    for hop in ("nginx", "goblog"):
        server, client = by_hop[(hop, SERVER)], by_hop[(hop, CLIENT)]
        assert server.parent_span_id == b"", hop  # its caller is not traced
        assert (client.trace_id, client.parent_span_id) == (server.trace_id, server.span_id), hop
    assert by_hop[("nginx", SERVER)].trace_id != by_hop[("goblog", SERVER)].trace_id
    goblog_client = by_hop[("goblog", CLIENT)]
    assert echoed == (f"00-{goblog_client.trace_id.hex()}-{goblog_client.span_id.hex()}-01\n"
                      if propagation == "headers" else "none\n")


def test_disabled_the_connection_still_joins_the_chain(chain: Chain) -> None:
    """Propagation disabled (OBI's default): nothing is added on the wire, and each call's two
    ends on this host are joined by their connection, keep-alive connections included."""
    echoed, spans, agent = run_chain(chain, "disabled", requests=3)
    assert echoed == ["none\n"] * 3
    traces: dict[bytes, list[Any]] = {}
    for resource, span in spans:
        traces.setdefault(span.trace_id, []).append((resource, span))
    assert len(traces) == 3, describe(chain, spans)
    for trace in traces.values():
        check_one_trace(chain, trace)
    assert agent.logs[-1]["traceparent_added"] == 0


CLIENT_APP = Path(__file__).resolve().parents[1] / "clients" / "raw_http_client.py"
SPLIT_BODY = b"split body\n"
OWN_TRACE, OWN_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
# case -> the backend paths its requests ask for
CASES = {"plain": ["/traceparent/plain"], "own": ["/traceparent/own"], "long-line": ["/traceparent/long"],
         "big-body": ["/traceparent/big"], "split": ["/traceparent/split"],
         "keep-alive": ["/traceparent/first", "/traceparent/second"]}


def test_headers_what_goes_on_the_wire(tmp_path: Path) -> None:
    """Requests written the ways real clients write them get exactly one traceparent, the
    client span's, and arrive otherwise intact: one write or many, a request line longer
    than 1 KiB, a body of many TCP segments, the header block split across writes, two
    requests on a keep-alive connection; an application's own traceparent stays as it is."""
    ports = {"backend": free_port(), "client": free_port()}
    backend = start_process([sys.executable, str(SERVERS / "behaviour_server.py"), str(ports["backend"])],
                            ready="ready")
    client = subprocess.Popen([sys.executable, str(CLIENT_APP), str(ports["client"]), str(ports["backend"])],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    results: dict[str, list[str]] = {}
    try:
        assert client.stdin is not None and client.stdout is not None
        assert client.stdout.readline().strip() == "ready"
        config = tmp_path / "obi.yml"
        selected = f"{ports['backend']},{ports['client']}"
        config.write_text(f"discovery:\n  instrument:\n    - open_ports: {selected}\n"
                          "ebpf:\n  context_propagation: headers\n")
        with OtlpReceiver() as receiver, AgentProcess({
                "OTEL_EBPF_CONFIG_PATH": str(config), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", **FAST_EXPORT}) as agent:
            agent.wait_instrumented(backend.pid)
            agent.wait_instrumented(client.pid)
            for case in CASES:
                client.stdin.write(case + "\n")
                client.stdin.flush()
                results[case] = json.loads(client.stdout.readline())
            receiver.wait_for(lambda: len(receiver.spans()) >= 14, 20)
            assert agent.stop() == 0
    finally:
        stop_process(client)
        stop_process(backend)
    clients = {urlsplit(attributes(s)["url.full"]).path: s for r, s in receiver.spans()
               if s.kind == CLIENT and r["process.pid"] == client.pid}
    servers = {attributes(s)["url.path"]: s for r, s in receiver.spans()
               if s.kind == SERVER and r["process.pid"] == backend.pid}
    assert sorted(clients) == sorted(servers) == sorted(p for paths in CASES.values() for p in paths)
    for case, paths in CASES.items():
        for path, seen in zip(paths, results[case], strict=True):
            span, served = clients[path], servers[path]
            lines = seen.splitlines()
            trace, span_id = ((OWN_TRACE, OWN_SPAN) if case == "own"
                              else (span.trace_id.hex(), span.span_id.hex()))
            # exactly one traceparent, the client span's (the application's own, kept, for "own")
            assert lines[0] == f"00-{trace}-{span_id}-01", (case, seen)
            assert (span.trace_id.hex(), span.span_id.hex()) == (trace, span_id)
            assert (served.trace_id, served.parent_span_id) == (span.trace_id, span.span_id), case
            if case == "big-body":
                body = bytes(range(256)) * 1024
                assert lines[1:] == [f"body {len(body)} {hashlib.sha256(body).hexdigest()}"]
            elif case == "split":
                assert lines[1:] == [f"body 11 {hashlib.sha256(SPLIT_BODY).hexdigest()}"]
            else:
                assert lines[1:] == []
    assert clients["/traceparent/first"].span_id != clients["/traceparent/second"].span_id
    assert agent.logs[-1]["traceparent_added"] == 6 and agent.logs[-1]["traceparent_skipped"] == 0


def test_headers_detached_when_obi_is_killed(tmp_path: Path) -> None:
    """The sock_ops program is on the cgroup through a link and the sk_msg program is held by
    a map of obi's: SIGKILL leaves neither behind, and connections made afterwards carry
    nothing obi added."""
    backend_port = free_port()
    backend = start_process([sys.executable, str(SERVERS / "behaviour_server.py"), str(backend_port)],
                            ready="ready")
    try:
        with AgentProcess({"OTEL_EBPF_OPEN_PORT": str(backend_port),
                           "OTEL_EBPF_BPF_CONTEXT_PROPAGATION": "headers"}) as agent:
            started = agent.wait_log(lambda e: e.get("event") == "capture_attached", 10)
            assert started["context_propagation"] == "headers"
            # HTTP/2 and gRPC get no header, and the log says why
            http2 = agent.wait_log(lambda e: e.get("event") == "context_propagation_http2", 5)
            assert http2["traceparent"] == "not added" and "HPACK" in http2["reason"]
            ours = bpf_link_ids() - agent.links_before
            programs = bpf_programs()
            assert {"propagation_sockops", "propagation_msg"} <= set(programs.values())
            os.kill(agent.agent_pid(), signal.SIGKILL)
            assert agent.proc is not None
            agent.proc.wait(10)
            deadline = time.monotonic() + 10
            while (ours & bpf_link_ids() or {"propagation_sockops", "propagation_msg"} & set(
                    bpf_programs().values())) and time.monotonic() < deadline:
                time.sleep(0.1)
        assert not ours & bpf_link_ids()
        assert not {"propagation_sockops", "propagation_msg"} & set(bpf_programs().values())
        seen = subprocess.run(["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{backend_port}/traceparent"],
                              capture_output=True, text=True, check=True).stdout
        assert seen == "none\n"
    finally:
        stop_process(backend)


def bpf_programs() -> dict[int, str]:
    """Id -> name of every BPF program on the host (bpftool)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], check=True, capture_output=True, text=True).stdout
    return {int(p["id"]): p.get("name", "") for p in json.loads(out or "[]")}


def test_tcp_option_carries_a_tls_call_between_two_obis(chain: Chain) -> None:
    """ebpf.context_propagation=tcp across two obi agents, as on two hosts: one traces the
    Python app, the other goblog, each with maps of its own, so the TLS call between them
    can only be joined by what travels on the wire: the TCP option on the request's first
    packet. goblog's server span is the child of the app's client span."""
    agents, receiver = [], OtlpReceiver().__enter__()
    try:
        for hop, mode in (("app", "tcp"), ("goblog", "ip")):  # "ip": OBI's deprecated name of tcp
            config = chain.tmp / f"obi-{hop}.yml"
            config.write_text(f"discovery:\n  instrument:\n    - open_ports: {chain.ports[hop]}\n"
                              f"ebpf:\n  context_propagation: {mode}\n")
            agent = AgentProcess({"OTEL_EBPF_CONFIG_PATH": str(config),
                                  "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
                                  "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", **FAST_EXPORT}).start()
            agents.append(agent)
            agent.wait_instrumented(chain.pids[hop])
            started = agent.wait_log(lambda e: e.get("event") == "capture_attached", 10)
            assert started["context_propagation"] == "tcp"
        agents[1].wait_log(lambda e: e.get("event") == "go_binary_attached", 15)
        for _ in range(2):
            subprocess.run(["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{chain.ports['app']}/next"],
                           capture_output=True, text=True, timeout=20, check=True)
        receiver.wait_for(lambda: len(receiver.spans()) >= 8, 20)
        for agent in reversed(agents):  # the last one started first: each sees only its own links go
            assert agent.stop() == 0
    finally:
        for agent in reversed(agents):
            if agent.proc is not None and agent.proc.poll() is None:
                agent.stop()
        receiver.__exit__(None, None, None)
    spans = receiver.spans()
    hop_of: dict[Any, str] = {pid: name for name, pid in chain.pids.items()}
    got = sorted(((hop_of.get(r["process.pid"], "?"), s) for r, s in spans),
                 key=lambda p: p[1].start_time_unix_nano)
    app_clients = [s for hop, s in got if (hop, s.kind) == ("app", CLIENT)]
    goblog_servers = [s for hop, s in got if (hop, s.kind) == ("goblog", SERVER)]
    assert len(app_clients) == len(goblog_servers) == 2, describe(chain, spans)
    for client, server in zip(app_clients, goblog_servers, strict=True):
        assert attributes(client)["url.full"].startswith("https://")
        assert (server.trace_id, server.parent_span_id) == (client.trace_id, client.span_id), (
            describe(chain, spans))
    deprecated = [e for e in agents[1].logs if e.get("event") == "deprecated_setting"]
    assert [(e["level"], e["value"], e["replacement"]) for e in deprecated] == [("warning", "ip", "tcp")]
    assert not any(e.get("event") == "deprecated_setting" for e in agents[0].logs)
    app_stats, goblog_stats = agents[0].logs[-1], agents[1].logs[-1]
    assert app_stats["tcp_context_sent"] >= 2 and goblog_stats["tcp_context_received"] >= 2
