"""`make bench`: nginx under wrk on loopback, with and without obi, in one run.

Prints ratios and per-request costs measured in this run, never a pass/fail
on an absolute time:
  1. unthrottled wrk: requests/s without obi, with obi, and the ratio;
     obi's CPU time per request; events lost; obi's peak RSS.
  2. a sustained paced load (default 5,000 requests/s for 30 s), without obi
     and with it: the application's p50/p99 latency both ways; events lost,
     spans built and exported against the requests wrk completed.
  3. a burst: as many requests as the machine gives for 30 s (issue 11's
     target is 50,000/s), and what was lost on the way to the collector.
The figures that issue 11 sets targets for are recorded for bench/targets.py,
which `make bench` runs last (--parts picks runs, for a quicker look).
A third run puts an nginx proxy in front and traces only the proxy: each of
its requests is a server exchange and a client one upstream, both captured.
The proxy is then run again, new (its upstream connections opened while obi
runs), with ebpf.context_propagation=headers: every upstream request gets a
traceparent header from obi's sk_msg program; against the proxy run without
headers, what adding them costs.
Another serves HTTPS (nginx with ssl, a certificate made by openssl): the
spans come from OpenSSL's plaintext through uprobes, and the BPF time per
request includes the uprobe programs (not the kernel's cost of each uprobe
trap, which shows in the ratio).
Then redis-server under redis-benchmark (SET and GET, 16 commands per write), without obi
and with obi tracing the server: a span per command. The last: a grpcio server under a
Python client's unary calls, without obi and with obi tracing the server (its HTTP/2 frames).
The runs also print the kernel side's cost: BPF run time per request of
obi's programs (kernel.bpf_stats_enabled, run_time_ns / run_cnt): the part run
in nginx's own syscalls, and apart from it the sweep obi runs from its own
thread (already inside obi's CPU); and the bytes each ring record carried.
obi's capture follows both roles of every connection of the process it
traces (here nginx serves, so its exchanges are server ones). obi exports
traces and metrics over OTLP/gRPC to a receiver in another process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.targets import record  # noqa: E402
from tests.e2e.agent import AgentProcess  # noqa: E402
from tests.servers.datastores import start_redis  # noqa: E402
from tests.servers.nginx import nginx_worker, start_nginx  # noqa: E402
from tests.support import free_port, start_process, stop_process  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def bpf_map_rss_mib(pid: int) -> float:
    """What of the process's RSS is BPF maps it mapped: the ring buffer's data pages are mapped
    twice in a row (so a record that wraps reads in one piece) and count twice in RSS."""
    rss, in_map = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0]:  # a mapping's first line
            in_map = line.endswith("anon_inode:bpf-map")
        elif in_map and line.startswith("Rss:"):
            rss += int(line.split()[1])
    return rss / 1024


@contextlib.contextmanager
def bpf_stats() -> Any:
    """kernel.bpf_stats_enabled on for the duration (restored after)."""
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    before = path.read_text().strip()
    path.write_text("1\n")
    try:
        yield
    finally:
        path.write_text(before + "\n")


# The proxy of the both-roles run: keep-alive to its upstream, as production proxies run.
PROXY = """\
    upstream backend {{ server 127.0.0.1:{upstream}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
TLS_SITE = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {root}/www;
    }}"""


def make_certificate(root: Path) -> tuple[Path, Path]:
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def held_program_ids(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds (its program and link fds, from /proc/PID/fdinfo)."""
    ids: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
    return ids


def bpf_run_time(agent_pid: int) -> dict[str, tuple[int, int]]:
    """name -> (run_time_ns, run_cnt) of the BPF programs the agent holds."""
    held = held_program_ids(agent_pid)
    out = subprocess.run(["bpftool", "-j", "prog", "show"], check=True, capture_output=True, text=True).stdout
    found: dict[str, tuple[int, int]] = {}
    for prog in json.loads(out or "[]"):
        if prog.get("id") in held:
            name = prog.get("name", "?")
            time_ns, count = found.get(name, (0, 0))
            found[name] = (time_ns + prog.get("run_time_ns", 0), count + prog.get("run_cnt", 0))
    return found


def bpf_delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, int]:
    return {name: after[name][0] - before.get(name, (0, 0))[0] for name in after}


# Programs obi runs itself (BPF_PROG_TEST_RUN from its own thread): their time is in the
# application's context of no one, and already inside obi's CPU.
OBI_CONTEXT_PROGRAMS = frozenset({"sweep"})


def print_bpf(delta: dict[str, int], requests: int) -> None:
    per = {name: time_ns / max(requests, 1) for name, time_ns in delta.items() if time_ns}
    app = {name: ns for name, ns in per.items() if name not in OBI_CONTEXT_PROGRAMS and ns >= 0.5}
    parts = ", ".join(f"{name} {ns:.0f} ns" for name, ns in sorted(app.items(), key=lambda i: -i[1]))
    print(f"  BPF time per request       {sum(app.values()) / 1000:10.2f} us  in the application ({parts})")
    own = sum(ns for name, ns in per.items() if name in OBI_CONTEXT_PROGRAMS)
    print(f"  BPF sweep per request      {own / 1000:10.2f} us  in obi (part of obi CPU)")


@dataclass
class Load:
    """What a load generator did: requests (or commands, calls) completed, their rate, and the
    latency percentiles it measured (wrk only)."""

    requests: int
    rps: float
    p50_ms: float | None = None
    p99_ms: float | None = None


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def parse_wrk(out: str) -> Load:
    """wrk --latency's report."""
    completed = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # the distribution's own lines: "+/- Stdev" columns end in % too (a "96.50%" once read as p50)
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)\s*$", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)\s*$", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    return Load(completed, rps, p50, p99)


def wrk(url: str, seconds: int, connections: int, script: Path | None = None) -> Load:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    return parse_wrk(subprocess.run([*argv, url], check=True, capture_output=True, text=True,
                                    timeout=seconds + 60).stdout)


def pace(root: Path, name: str, rate: int, connections: int) -> Path:
    """A wrk script pausing each connection between requests so that all of them together make
    about `rate` requests/s (the pause is whole milliseconds: the total is just above `rate`)."""
    script = root / f"{name}.lua"
    script.write_text(f"function delay() return {max(1000 * connections // rate - 1, 0)} end\n")
    return script


# --agent-env KEY=VALUE: settings for every traced run (a ring buffer size, say)
EXTRA_AGENT_ENV: dict[str, str] = {}


def agent_env(receiver_port: int, worker: int) -> dict[str, str]:
    return EXTRA_AGENT_ENV | {
        "OTEL_EBPF_TARGET_PID": str(worker),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EBPF_OTLP_TRACES_BATCH_TIMEOUT": "1s",
        "OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_SIZE": "262144",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
    }


def stopped_stats(agent: AgentProcess) -> dict[str, Any]:
    return agent.wait_log(lambda e: e.get("event") == "agent_stopped", 5)


@dataclass
class Run:
    """One wrk run with obi tracing `pid`: what wrk did and what obi cost."""

    load: Load
    cpu: float  # obi's CPU seconds
    rss: float  # obi's peak RSS, MiB
    map_rss: float  # of it, BPF maps (the ring buffer's double mapping)
    bpf: dict[str, int]  # BPF run time per program, ns
    stats: dict[str, Any]  # agent_stopped

    @property
    def requests(self) -> int:
        return self.load.requests

    @property
    def rps(self) -> float:
        return self.load.rps

    def cpu_us(self) -> float:
        return 1e6 * self.cpu / max(self.requests, 1)

    def bpf_app_ns(self) -> float:
        """BPF run time per request in the application's context (obi's own sweep left out)."""
        app = sum(ns for name, ns in self.bpf.items() if name not in OBI_CONTEXT_PROGRAMS)
        return app / max(self.requests, 1)

    def print(self, seconds: int) -> None:
        stats, per = self.stats, max(self.requests, 1)
        print(f"  events lost (kernel)       {stats['events_lost']:10d}")
        print(f"  obi CPU per request        {1e6 * self.cpu / per:10.1f} us"
              f"  ({100 * self.cpu / seconds:.0f}% of one core)")
        print(f"  spans exported             {stats['spans_exported']:10d}"
              f"  (dropped at export queue: {stats['spans_export_dropped']})")
        print(f"  obi peak RSS               {self.rss:10.1f} MiB  ({self.map_rss:.1f} MiB of it BPF maps: "
              "the ring buffer, mapped twice)")
        print_bpf(self.bpf, self.requests)
        ring_bytes = stats.get("ring_bytes", 0) / max(stats.get("ring_records", 0), 1)
        print(f"  bytes per ring record      {ring_bytes:10.0f}")


def traced_run(receiver_port: int, pid: int, url: str, seconds: int, connections: int,
               script: Path | None = None, env: dict[str, str] | None = None) -> Run:
    return traced_load(receiver_port, pid, lambda: wrk(url, seconds, connections, script), env)


def traced_load(receiver_port: int, pid: int, load: Callable[[], Load],
                env: dict[str, str] | None = None) -> Run:
    """obi tracing `pid` while `load` runs (it returns requests completed and requests/s)."""
    agent = AgentProcess({**agent_env(receiver_port, pid), **(env or {})}).start()
    assert agent.proc is not None
    agent.wait_instrumented(pid)
    with bpf_stats():
        cpu0 = cpu_seconds(agent.proc.pid)
        bpf0 = bpf_run_time(agent.agent_pid())
        done = load()
        bpf = bpf_delta(bpf0, bpf_run_time(agent.agent_pid()))
        time.sleep(2)  # let the agent finish the tail of the run
        cpu = cpu_seconds(agent.proc.pid) - cpu0
    rss, map_rss = peak_rss_mib(agent.proc.pid), bpf_map_rss_mib(agent.proc.pid)
    agent.stop()
    return Run(done, cpu, rss, map_rss, bpf, stopped_stats(agent))


def side_by_side(root: Path, site: str, scheme: str, receiver_port: int, args: argparse.Namespace,
                 **values: object) -> tuple[float, Run]:
    """Another nginx serving `site`: requests/s without obi, then a traced run (unthrottled)."""
    nginx, port = start_nginx(root, site, **values)
    try:
        worker = nginx_worker(nginx.pid)
        url = f"{scheme}://127.0.0.1:{port}/index.html"
        return (untraced_rps(url, args.seconds, args.connections),
                traced_run(receiver_port, worker, url, args.seconds, args.connections))
    finally:
        stop_process(nginx)


def headers_run(root: Path, receiver_port: int, args: argparse.Namespace, upstream: int) -> Run:
    """A new proxy nginx traced with traceparent headers on, from before its first request (the
    sock_ops program sees connections as they are established)."""
    nginx, port = start_nginx(root, PROXY, upstream=upstream)
    try:
        url = f"http://127.0.0.1:{port}/index.html"
        return traced_run(receiver_port, nginx_worker(nginx.pid), url, args.seconds, args.connections,
                          env={"OTEL_EBPF_BPF_CONTEXT_PROPAGATION": "headers"})
    finally:
        stop_process(nginx)


def redis_benchmark(port: int, requests: int, pipeline: int, clients: int) -> Load:
    """redis-benchmark SET then GET, `requests` each: commands completed and commands/s overall."""
    out = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "set,get",
                          "-n", str(requests), "-P", str(pipeline), "-c", str(clients), "--csv"],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    rates = [float(m) for m in re.findall(r'^"(?:SET|GET)","([\d.]+)"', out, re.MULTILINE)]
    assert len(rates) == 2, out
    return Load(2 * requests, 2 * requests / sum(requests / rate for rate in rates))


def redis_run(root: Path, receiver_port: int, args: argparse.Namespace) -> tuple[float, Run]:
    """redis-server under redis-benchmark (16 commands per write): commands/s without obi, then
    with obi tracing the server (a server span per command)."""
    server, port = start_redis(root)
    try:
        redis_benchmark(port, args.redis_requests // 4, 16, args.connections)  # warm up
        base = redis_benchmark(port, args.redis_requests, 16, args.connections).rps
        return base, traced_load(receiver_port, server.pid,
                                 lambda: redis_benchmark(port, args.redis_requests, 16, args.connections))
    finally:
        stop_process(server)


def grpc_load(port: int, calls: int) -> Load:
    """bench/grpc_load.py: `calls` unary calls on one channel; calls and calls/s."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "grpc_load.py"), str(port), str(calls)],
                         check=True, capture_output=True, text=True, timeout=600).stdout.split()
    return Load(int(out[0]), float(out[1]))


def grpc_run(receiver_port: int, args: argparse.Namespace) -> tuple[float, Run]:
    """A grpcio server under a Python client's unary calls: calls/s without obi, then with obi
    tracing the server (a span per call, from its HTTP/2 frames)."""
    port = free_port()
    server = start_process([sys.executable, str(ROOT / "tests" / "servers" / "grpc_server.py"), str(port)],
                           ready="ready")
    try:
        grpc_load(port, args.grpc_calls // 4)  # warm up
        base = grpc_load(port, args.grpc_calls).rps
        return base, traced_load(receiver_port, server.pid, lambda: grpc_load(port, args.grpc_calls))
    finally:
        stop_process(server)


def untraced_rps(url: str, seconds: int, connections: int) -> float:
    wrk(url, 2, connections)  # warm up
    return wrk(url, seconds, connections).rps


PARTS = ("unthrottled", "paced", "burst", "proxy", "tls", "redis", "grpc")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each unthrottled run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=int, default=5000, help="paced run: requests per second")
    parser.add_argument("--rate-seconds", type=int, default=30, help="paced run: duration")
    parser.add_argument("--burst-seconds", type=int, default=30, help="burst run: duration")
    parser.add_argument("--redis-requests", type=int, default=1_000_000,
                        help="redis-benchmark: SET and GET commands each (pipelining 16)")
    parser.add_argument("--grpc-calls", type=int, default=20_000, help="gRPC: unary calls of the client")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated runs to make, of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--agent-env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for obi in every traced run (repeatable)")
    args = parser.parse_args()
    for setting in args.agent_env:
        key, sep, value = setting.partition("=")
        if not sep:
            parser.error(f"--agent-env wants KEY=VALUE, not {setting!r}")
        EXTRA_AGENT_ENV[key] = value
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(parts - set(PARTS)))}")

    print("obi benchmark: nginx (1 worker) + wrk on loopback, 2 cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="obi-bench-") as tmp:
        root = Path(tmp)
        nginx, port = start_nginx(root)
        worker = nginx_worker(nginx.pid)
        receiver_port = free_port()
        sink = ROOT / "tests" / "servers" / "otlp_sink.py"
        receiver = start_process([sys.executable, str(sink), str(receiver_port)], ready="ready")
        url = f"http://127.0.0.1:{port}/index.html"
        try:
            if "unthrottled" in parts:
                unthrottled_part(url, receiver_port, worker, args)
            if "paced" in parts:
                paced_part(root, url, receiver_port, worker, args)
            if "burst" in parts:
                burst_part(url, receiver_port, worker, args)
            if "proxy" in parts:
                proxy_part(root, receiver_port, port, args)
            if "tls" in parts:
                tls_part(root, receiver_port, args)
            if "redis" in parts:
                (root / "redis").mkdir()
                redis_part(root / "redis", receiver_port, args)
            if "grpc" in parts:
                grpc_part(receiver_port, args)
        finally:
            stop_process(receiver)
            stop_process(nginx)
    return 0


def unthrottled_part(url: str, receiver_port: int, worker: int, args: argparse.Namespace) -> None:
    base_rps = untraced_rps(url, args.seconds, args.connections)
    run = traced_run(receiver_port, worker, url, args.seconds, args.connections)
    print(f"unthrottled, {args.seconds}s x {args.connections} connections:")
    print(f"  requests/s without obi     {base_rps:10.0f}")
    print(f"  requests/s with obi        {run.rps:10.0f}")
    print(f"  ratio with/without         {run.rps / base_rps:10.3f}")
    print(f"  spans built / requests     {run.stats['spans']:>10d} / {run.requests}")
    run.print(args.seconds)
    record(cpu_unthrottled_us=run.cpu_us(), bpf_unthrottled_ns=run.bpf_app_ns())


PACED_CONNECTIONS = 100  # each connection pauses between requests


def paced_part(root: Path, url: str, receiver_port: int, worker: int, args: argparse.Namespace) -> None:
    """The same paced load without obi, then with it: the application's latency, obi's cost."""
    script = pace(root, "paced", args.rate, PACED_CONNECTIONS)
    bare = wrk(url, args.rate_seconds, PACED_CONNECTIONS, script)
    run = traced_run(receiver_port, worker, url, args.rate_seconds, PACED_CONNECTIONS, script)
    print(f"paced, target {args.rate}/s for {args.rate_seconds}s ({PACED_CONNECTIONS} connections):")
    print(f"  requests/s achieved        {run.rps:10.0f}  (without obi {bare.rps:.0f})")
    print(f"  latency p50 / p99 with obi {run.load.p50_ms:7.2f} / {run.load.p99_ms:.2f} ms"
          f"  (without obi {bare.p50_ms:.2f} / {bare.p99_ms:.2f} ms)")
    print(f"  spans built / requests     {run.stats['spans']:>10d} / {run.requests}")
    run.print(args.rate_seconds)
    record(cpu_paced_us=run.cpu_us(), bpf_paced_ns=run.bpf_app_ns(), rss_paced_mib=run.rss,
           rss_paced_maps_mib=run.map_rss,
           p99_bare_ms=bare.p99_ms or 0.0, p99_obi_ms=run.load.p99_ms or 0.0)


def burst_part(url: str, receiver_port: int, worker: int, args: argparse.Namespace) -> None:
    """Unthrottled for --burst-seconds (the target is 50,000 requests/s; the machine may give
    less): what the kernel lost (ring full) and what never became an exported span."""
    run = traced_run(receiver_port, worker, url, args.burst_seconds, args.connections)
    lost = run.stats["events_lost"]
    unexported = max(run.requests - run.stats["spans_exported"], 0)
    print(f"burst, unthrottled for {args.burst_seconds}s x {args.connections} connections "
          "(the target is 50,000 requests/s):")
    print(f"  requests/s achieved        {run.rps:10.0f}")
    print(f"  spans exported / requests  {run.stats['spans_exported']:>10d} / {run.requests}")
    run.print(args.burst_seconds)
    record(burst_lost=lost, burst_requests=run.requests, burst_rps=run.rps,
           burst_seconds=args.burst_seconds, burst_unexported=unexported)


def proxy_part(root: Path, receiver_port: int, upstream: int, args: argparse.Namespace) -> None:
    # Both roles at once: a second nginx proxies to the first; obi traces the proxy,
    # whose every request is a server exchange and a client exchange upstream.
    proxy_base_rps, proxied = side_by_side(root / "proxy", PROXY, "http", receiver_port, args,
                                           upstream=upstream)
    print(f"proxy (nginx in front of nginx, obi tracing the proxy: server and client spans), "
          f"{args.seconds}s x {args.connections} connections:")
    print(f"  requests/s without obi     {proxy_base_rps:10.0f}")
    print(f"  requests/s with obi        {proxied.rps:10.0f}")
    print(f"  ratio with/without         {proxied.rps / proxy_base_rps:10.3f}")
    print(f"  spans built / requests     {proxied.stats['spans']:>10d} / {proxied.requests}"
          "  (2 per request: server, client)")
    proxied.print(args.seconds)
    with_headers = headers_run(root / "headers", receiver_port, args, upstream)
    print(f"proxy with traceparent headers (ebpf.context_propagation=headers, a new proxy), "
          f"{args.seconds}s x {args.connections} connections:")
    print(f"  requests/s with obi        {with_headers.rps:10.0f}")
    print(f"  ratio with/without obi     {with_headers.rps / proxy_base_rps:10.3f}")
    print(f"  ratio headers on/off       {with_headers.rps / proxied.rps:10.3f}")
    added = with_headers.stats["traceparent_added"]
    print(f"  headers added / requests   {added:>10d} / {with_headers.requests}")
    with_headers.print(args.seconds)


def tls_part(root: Path, receiver_port: int, args: argparse.Namespace) -> None:
    cert, key = make_certificate(root)
    tls_base_rps, tls_run = side_by_side(root / "tls", TLS_SITE, "https", receiver_port, args,
                                         cert=cert, key=key)
    print(f"https (nginx with ssl, keep-alive; spans from OpenSSL's plaintext through uprobes), "
          f"{args.seconds}s x {args.connections} connections:")
    print(f"  requests/s without obi     {tls_base_rps:10.0f}")
    print(f"  requests/s with obi        {tls_run.rps:10.0f}")
    print(f"  ratio with/without         {tls_run.rps / tls_base_rps:10.3f}")
    print(f"  spans built / requests     {tls_run.stats['spans']:>10d} / {tls_run.requests}")
    tls_run.print(args.seconds)


def redis_part(root: Path, receiver_port: int, args: argparse.Namespace) -> None:
    redis_base, redis_traced = redis_run(root, receiver_port, args)
    print(f"redis (redis-benchmark SET and GET, {args.redis_requests} each, pipelining 16, "
          f"{args.connections} clients; obi tracing redis-server: a server span per command):")
    print(f"  commands/s without obi     {redis_base:10.0f}")
    print(f"  commands/s with obi        {redis_traced.rps:10.0f}")
    print(f"  ratio with/without         {redis_traced.rps / redis_base:10.3f}")
    print(f"  spans built / commands     {redis_traced.stats['spans']:>10d} / {redis_traced.requests}")
    print(f"  events dropped (obi queue) {redis_traced.stats.get('events_dropped', 0):10d}")
    redis_traced.print(max(1, round(redis_traced.requests / redis_traced.rps)))


def grpc_part(receiver_port: int, args: argparse.Namespace) -> None:
    grpc_base, grpc_traced = grpc_run(receiver_port, args)
    print(f"grpc (a grpcio server, a Python client making {args.grpc_calls} unary calls on one channel; "
          "obi tracing the server: a span per call from its HTTP/2 frames):")
    print(f"  calls/s without obi        {grpc_base:10.0f}")
    print(f"  calls/s with obi           {grpc_traced.rps:10.0f}")
    print(f"  ratio with/without         {grpc_traced.rps / grpc_base:10.3f}")
    print(f"  spans built / calls        {grpc_traced.stats['spans']:>10d} / {grpc_traced.requests}")
    grpc_traced.print(max(1, round(grpc_traced.requests / grpc_traced.rps)))


if __name__ == "__main__":
    sys.exit(main())
