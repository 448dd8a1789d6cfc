"""`make bench`: what obi costs when nothing happens (issue 11's target: at most 0.2% of one
core with 1,000 processes on the host and 10,000 idle keep-alive connections on the server
obi instruments).

The server (asyncio, HTTP/1.1 keep-alive) answers one request on each of the 10,000
connections a client process opens while obi runs; then nothing moves. obi selects the
server by its port and exports over OTLP/gRPC to a receiver; its CPU (utime + stime) is
read over a minute (the full /proc scan, discovery's safety net every 5 minutes, falls
outside it: 45-90 ms of CPU with these processes, about 0.02% of a core on average), after
20 s of quiet (longer than the default 15 s batch timeout, so that
exporting the 10,000 spans of the connections' requests is not counted as idle).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_bench import cpu_seconds, peak_rss_mib  # noqa: E402
from bench.targets import record  # noqa: E402
from tests.e2e.agent import AgentProcess  # noqa: E402
from tests.otlp_receiver import OtlpReceiver  # noqa: E402
from tests.support import free_port, start_process, stop_process  # noqa: E402

SERVER = r"""
import asyncio, sys
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
async def serve(reader, writer):
    try:
        while True:
            request = await reader.readuntil(b"\r\n\r\n")
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""

# Opens N keep-alive connections, one request on each, then holds them until stdin closes.
CLIENT = r"""
import asyncio, sys
async def one(port):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /idle HTTP/1.1\r\nHost: bench\r\n\r\n")
    await writer.drain()
    await reader.readuntil(b"ok")
    return writer
async def main():
    port, count = int(sys.argv[1]), int(sys.argv[2])
    writers = []
    for start in range(0, count, 500):
        writers += await asyncio.gather(*(one(port) for _ in range(start, min(count, start + 500))))
    print("connected", len(writers), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
asyncio.run(main())
"""


def thread_ticks(pid: int) -> dict[str, int]:
    """Clock ticks (user + system) of each of the process's threads, by thread name."""
    ticks: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1: stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        ticks[name] = ticks.get(name, 0) + int(fields[11]) + int(fields[12])
    return ticks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--processes", type=int, default=1000, help="sleeping processes added to the host")
    parser.add_argument("--connections", type=int, default=10_000, help="idle keep-alive connections")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds waited before measuring")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds measured")
    args = parser.parse_args()
    limit = args.connections + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, limit), max(hard, limit)))

    lifetime = str(int(args.settle + args.seconds + 120))  # bounded even if this script dies
    sleeps = [subprocess.Popen(["sleep", lifetime]) for _ in range(args.processes)]
    port = free_port()
    server = start_process([sys.executable, "-c", SERVER, str(port)], ready="ready")
    client: subprocess.Popen[str] | None = None
    try:
        with OtlpReceiver() as receiver:
            env = {"OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
                   "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                   "OTEL_EBPF_BPF_MAX_CONNECTIONS": str(2 * args.connections)}
            with AgentProcess(env) as agent:
                agent.wait_instrumented(server.pid, timeout=30)
                client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port), str(args.connections)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                assert client.stdout is not None
                line = client.stdout.readline().split()
                assert line[:1] == ["connected"], line
                time.sleep(args.settle)
                pid = agent.agent_pid()
                before, started, threads = cpu_seconds(pid), time.monotonic(), thread_ticks(pid)
                time.sleep(args.seconds)
                used, elapsed = cpu_seconds(pid) - before, time.monotonic() - started
                after = thread_ticks(pid)
                by_thread = {name: after[name] - threads.get(name, 0) for name in after}
                rss = peak_rss_mib(pid)
                spans = len(receiver.spans())
    finally:
        if client is not None:
            stop_process(client)
        stop_process(server)
        for sleep in sleeps:
            sleep.kill()
        for sleep in sleeps:
            sleep.wait()
    print(f"idle: obi used {100 * used / elapsed:.3f}% of one core over {elapsed:.0f} s "
          f"({args.processes:,} more processes on the host, {int(line[1]):,} idle keep-alive connections "
          f"on the instrumented server; target 0.2%); peak RSS {rss:.0f} MiB; {spans:,} spans "
          f"(one per connection)")
    record(idle_pct=100 * used / elapsed)
    hz = os.sysconf("SC_CLK_TCK")
    print("  by thread: " + ", ".join(f"{name} {100 * n / hz / elapsed:.3f}%"
                                      for name, n in sorted(by_thread.items(), key=lambda kv: -kv[1]) if n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
