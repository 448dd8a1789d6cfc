"""`make bench`: the peer line. A Flask app under gunicorn (one sync worker, the app pinned to
one core, wrk on another) bare, with the OpenTelemetry Python SDK's auto-instrumentation
(opentelemetry-distro: `opentelemetry-instrument gunicorn ...`, traces and metrics over
OTLP/gRPC) and with obi (tracing the app by its port, OTLP/gRPC); each exporting to a counting
sink of its own. Printed: requests/s and its ratio to the bare app (the mean of a bare run
before and one after), p50 and p99 latency, and the spans each sink received against the
requests wrk completed.

The SDK and Flask live in their own virtual environment (.venv-peer, made on first use from
PyPI), apart from obi's.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_bench import Load, parse_wrk  # noqa: E402
from bench.targets import record  # noqa: E402
from tests.e2e.agent import AgentProcess  # noqa: E402
from tests.support import free_port, start_process, stop_process, wait_for_port  # noqa: E402

PEER_VENV = ROOT / ".venv-peer"
PEER_PACKAGES = ["flask>=3", "gunicorn>=22", "opentelemetry-distro>=0.50b0",
                 "opentelemetry-exporter-otlp-proto-grpc>=1.29",
                 "opentelemetry-instrumentation-flask>=0.50b0"]
APP = '''
from flask import Flask
app = Flask(__name__)

@app.route("/hello")
def hello():
    return "hello"
'''
SINK = ROOT / "tests" / "servers" / "otlp_sink.py"
APP_CORE, LOAD_CORE = "1", "0"


def peer_venv() -> Path:
    """The peer environment's bin directory, made and filled on first use."""
    bin_dir = PEER_VENV / "bin"
    if not (bin_dir / "opentelemetry-instrument").exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(bin_dir / "pip"), "install", "-q", *PEER_PACKAGES], check=True, timeout=900)
    return bin_dir


def wrk(url: str, seconds: int, connections: int) -> Load:
    return parse_wrk(subprocess.run(["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}",
                                     f"-d{seconds}s", "--latency", url], check=True, capture_output=True,
                                    text=True, timeout=seconds + 60).stdout)


@dataclass
class Result(Load):
    spans: int | None = None


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def run(bin_dir: Path, app_dir: Path, mode: str, args: argparse.Namespace) -> Result:
    """One run: the app (bare, sdk or obi), wrk against it, the sink's span count."""
    port, sink_port = free_port(), free_port()
    sink = start_process([sys.executable, str(SINK), str(sink_port)], ready="ready")
    endpoint = f"http://127.0.0.1:{sink_port}"
    gunicorn = [str(bin_dir / "gunicorn"), "-w", "1", "-k", "sync", "-b", f"127.0.0.1:{port}",
                "--chdir", str(app_dir), "app:app"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if mode == "sdk":
        gunicorn = [str(bin_dir / "opentelemetry-instrument"), *gunicorn]
        env |= {"OTEL_SERVICE_NAME": "flask-peer", "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_METRICS_EXPORTER": "otlp", "OTEL_LOGS_EXPORTER": "none",
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    app = subprocess.Popen(["taskset", "-c", APP_CORE, *gunicorn], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, text=True)
    agent: AgentProcess | None = None
    try:
        wait_for_port(port, timeout=30)
        url = f"http://127.0.0.1:{port}/hello"
        if mode == "obi":
            agent = AgentProcess({"OTEL_EBPF_OPEN_PORT": str(port), "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                                  "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}).start()
            for pid in [app.pid, *children(app.pid)]:
                agent.wait_instrumented(pid, timeout=30)
        subprocess.run(["curl", "-sf", url], check=True, capture_output=True, timeout=10)  # warm
        load = wrk(url, args.seconds, args.connections)
        time.sleep(1)
    finally:
        if agent is not None:
            agent.stop()
        stop_process(app)  # an SDK flushes its spans on the way out
    stop_process(sink)
    assert sink.stdout is not None
    counted = re.search(r"spans received: (\d+)", sink.stdout.read())
    return Result(load.requests, load.rps, load.p50_ms, load.p99_ms,
                  int(counted.group(1)) if counted else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    bin_dir = peer_venv()
    with tempfile.TemporaryDirectory(prefix="obi-peer-") as tmp:
        app_dir = Path(tmp)
        (app_dir / "app.py").write_text(APP)
        results = {mode: run(bin_dir, app_dir, mode, args) for mode in ("bare", "sdk", "obi")}
        after = run(bin_dir, app_dir, "bare", args)
    bare_rps = (results["bare"].rps + after.rps) / 2
    print(f"peer: Flask under gunicorn (1 sync worker on core {APP_CORE}), wrk -c{args.connections} "
          f"for {args.seconds} s on core {LOAD_CORE}")
    for mode, label in (("bare", "bare (first run)"), ("sdk", "OpenTelemetry SDK"), ("obi", "obi")):
        r = results[mode]
        spans = "" if mode == "bare" else f"; spans at the sink {r.spans} of {r.requests} requests"
        print(f"  {label:<20} {r.rps:8.0f} req/s  ratio {r.rps / bare_rps:.2f}  p50 {r.p50_ms:.2f} ms  "
              f"p99 {r.p99_ms:.2f} ms{spans}")
    print(f"  {'bare (last run)':<20} {after.rps:8.0f} req/s  ratio {after.rps / bare_rps:.2f}  "
          f"p50 {after.p50_ms:.2f} ms  p99 {after.p99_ms:.2f} ms")
    record(peer_obi_ratio=results["obi"].rps / bare_rps, peer_sdk_ratio=results["sdk"].rps / bare_rps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
