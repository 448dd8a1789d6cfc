"""`make bench`: how long after obi starts a running service's first span reaches the collector
(issue 11's target: at most 2 s).

An asyncio HTTP/1.1 server takes a request every 20 ms on a keep-alive connection (a bounded
client: at most 60 s); obi is started with the defaults (the 15 s batch timeout included)
selecting the server by its port, exporting over OTLP/gRPC to a receiver. Measured from the
moment obi's process is started to the first span of the server at the receiver, with the
time its start-up milestones were seen in its log (seen by this script as the lines come, so
a little late): `capture_attached` (the syscall programs loaded and attached: the capture runs),
`agent_started`, `uprobe_programs_loaded` (the TLS, Go and nginx uprobe programs, loaded in
the background after the others), `process_instrumented` (the server traced, and its uprobes
on: said once those programs are there).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.idle import SERVER  # noqa: E402
from bench.targets import record  # noqa: E402
from tests.e2e.agent import AgentProcess  # noqa: E402
from tests.otlp_receiver import OtlpReceiver  # noqa: E402
from tests.support import free_port, start_process, stop_process  # noqa: E402

# One keep-alive connection, a request every 20 ms, until stdin closes or 60 s pass.
CLIENT = r"""
import socket, sys, threading, time
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
deadline = time.monotonic() + 60
print("connected", flush=True)
while not done.is_set() and time.monotonic() < deadline:
    conn.sendall(b"GET /first HTTP/1.1\r\nHost: bench\r\n\r\n")
    got = b""
    while not got.endswith(b"ok"):
        got += conn.recv(4096)
    time.sleep(0.02)
"""

MILESTONES = ("capture_attached", "agent_started", "uprobe_programs_loaded", "process_instrumented")


def one_run(port: int, server_pid: int) -> dict[str, float]:
    """Seconds from obi's start to each milestone and to the first span ("first_span")."""
    seen: dict[str, float] = {}
    with OtlpReceiver() as receiver:
        env = {"OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint,
               "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        agent = AgentProcess(env)
        started = time.monotonic()
        agent.start(wait_started=False)
        try:
            deadline = started + 30
            while len(seen) <= len(MILESTONES) and time.monotonic() < deadline:
                now = time.monotonic() - started
                for event in MILESTONES:
                    if event not in seen and any(e.get("event") == event for e in list(agent.logs)):
                        seen[event] = now
                if "first_span" not in seen and any(r.get("process.pid") == server_pid
                                                    for r, _ in receiver.spans()):
                    seen["first_span"] = now
                time.sleep(0.01)
        finally:
            agent.stop()
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    server = start_process([sys.executable, "-c", SERVER, str(port)], ready="ready")
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(port)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    runs: list[dict[str, float]] = []
    try:
        assert client.stdout is not None and client.stdout.readline().split() == ["connected"]
        for _ in range(args.runs):
            runs.append(one_run(port, server.pid))
    finally:
        stop_process(client)
        stop_process(server)
    for name in (*MILESTONES, "first_span"):
        times = [run[name] for run in runs if name in run]
        shown = ", ".join(f"{t:.2f}" for t in times)
        median = f"median {statistics.median(times):.2f} s" if times else "never seen"
        target = "  (target 2 s)" if name == "first_span" else ""
        if name == "first_span" and times:
            record(first_span_s=statistics.median(times))
        lost = len(runs) - len(times)
        missing = f"; not seen in {lost} of {len(runs)} runs" if lost else ""
        print(f"first span: {name:<22} {median} ({shown}){missing}{target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
