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

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.agent import AgentProcess
from tests.e2e.conftest import SERVERS
from tests.e2e.test_python_app import FAST_EXPORT, attributes
from tests.golang import build_go
from tests.otlp_receiver import OtlpReceiver
from tests.servers.nginx import nginx_worker, start_nginx
from tests.support import free_port, start_process, stop_process

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
    assert started["context_propagation"] == "on"
    assert agent.logs[-1]["traceparent_added"] >= 3  # curl, nginx and goblog's plaintext requests
    assert attributes(ordered[4])["url.full"].startswith("https://")


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
