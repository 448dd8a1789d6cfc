"""The syscall hook sets against each other on this kernel (ebpf.syscall_hooks): for each set the
kernel allows, the capture is attached in this process, a traced HTTP server takes keep-alive
requests, and an untraced process makes write() calls that obi does not care about.

Printed per set, all measured in this one run:
- BPF time per request of the traced server (kernel.bpf_stats_enabled, run_time_ns);
- the request time against the same requests with nothing attached (a ratio);
- what an untraced process pays per write() (ratio to nothing attached): raw tracepoints run
  for every syscall of every process; fentry, kprobes and classic tracepoints only for theirs.

The order "auto" tries them in (obi.ebpf.capture.AUTO_HOOKS) comes from these figures.
Run as root; `--requests` and `--writes` bound the work. Under software emulation (the 6.1 guest
of tests/matrix) the absolute times mean nothing: compare the sets with each other.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.http_bench import bpf_delta, bpf_run_time, bpf_stats
from tests.support import free_port, kernel_hook_sets, start_process, stop_process

from obi.ebpf.capture import Capture, CaptureSettings

START_S = 120.0  # a Python server starting under software emulation
SERVER = Path(__file__).resolve().parents[1] / "tests" / "servers" / "behaviour_server.py"
WRITER = """
import os, sys, time
n = int(sys.argv[1]); fd = os.open("/dev/null", os.O_WRONLY); b = b"x"
sys.stdin.readline()
t = time.perf_counter_ns()
for _ in range(n):
    os.write(fd, b)
print((time.perf_counter_ns() - t) / n, flush=True)
"""


def requests(port: int, count: int) -> float:
    """Seconds per keep-alive request (one connection)."""
    request = b"GET /plain HTTP/1.1\r\nHost: bench\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as conn:
        started = time.perf_counter()
        for _ in range(count):
            conn.sendall(request)
            reply = b""
            while not reply.endswith(b"ok\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    raise RuntimeError("the server closed the connection")
                reply += chunk
        return (time.perf_counter() - started) / count


def untraced_write_ns(writes: int) -> float:
    """ns per write() of a process obi does not trace."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(writes)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate("go\n", timeout=300)
    return float(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--writes", type=int, default=200000)
    parser.add_argument("--hooks", default=",".join(kernel_hook_sets()))
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    port = free_port()
    server = start_process([sys.executable, str(SERVER), str(port)], ready="ready",
                           timeout=START_S)
    try:
        requests(port, 200)  # warm
        bare_request = requests(port, args.requests)
        bare_write = untraced_write_ns(args.writes)
        print(f"kernel {Path('/proc/sys/kernel/osrelease').read_text().strip()}: nothing attached: "
              f"{bare_request * 1e6:.1f} us per request, {bare_write:.0f} ns per untraced write()")
        with bpf_stats():
            for hooks in args.hooks.split(","):
                started = time.monotonic()
                with Capture(CaptureSettings(syscall_hooks=hooks, uprobes=False,  # type: ignore[arg-type]
                                             ring_buffer_size=1 << 22)) as capture:
                    load_s = time.monotonic() - started
                    capture.add_pid(server.pid)
                    requests(port, 50)  # the connection the server was in accept() for
                    before = bpf_run_time(os.getpid())
                    per_request = requests(port, args.requests)
                    after = bpf_run_time(os.getpid())
                    write = untraced_write_ns(args.writes)
                    for _ in capture.ring.drain():
                        pass
                delta = bpf_delta(before, after)
                bpf_ns = sum(ns for name, ns in delta.items() if name != "sweep") / args.requests
                print(f"  {hooks:<15} BPF {bpf_ns / 1000:7.2f} us per request; request time x"
                      f"{per_request / bare_request:.2f}; untraced write() x{write / bare_write:.2f}; "
                      f"load {load_s:.1f} s")
    finally:
        stop_process(server)


if __name__ == "__main__":
    main()
