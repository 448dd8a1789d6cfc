"""Replay: recorded kernel records through obi's whole user-space path, and nothing else.

    replay.py record OUT [--seconds S]   nginx (one worker) under wrk on loopback, the capture on
                                         its worker: every drained ring batch, written to OUT
    replay.py run FILE [--repeat K]      the batches through the span stage the agent builds
                                         (records -> protocols -> spans -> RED metrics, sampler,
                                         batching exporter -> OTLP encoding) to a transport that
                                         counts what it is given; CPU time per span
    replay.py instructions FILE          the same under callgrind, once with one replay and once
                                         with three: the instructions per span of the difference
                                         (start-up and imports cancel out)

The kernel, the ring and the network are out of the figure: what is left is the per-event
Python (and C) path that issue 11's targets are about. CPU time varies with what else the
machine does; instructions do not (callgrind counts them; `callgrind_annotate` on the file it
leaves shows where they go).

FILE holds gzip of [u32 little-endian length][batch] for each batch, as the drain hands them
to the span stage. bench/records/ keeps real ones, recorded once with `record`.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from obi.config import load_config  # noqa: E402
from obi.export.retry import SUCCESS, AttemptResult  # noqa: E402
from obi.pipeline import build_span_stage  # noqa: E402
from obi.traces.model import ServiceIdentity  # noqa: E402

LENGTH = struct.Struct("<I")


class CountingTransport:
    """An OTLP transport that takes every request and keeps only its count and size."""

    description = "counting"

    def __init__(self) -> None:
        self.requests = 0
        self.bytes = 0

    async def attempt(self, body: bytes, timeout_s: float) -> AttemptResult:
        self.requests += 1
        self.bytes += len(body)
        return SUCCESS

    async def close(self) -> None:
        pass


def read_batches(path: Path) -> list[bytes]:
    data = gzip.decompress(path.read_bytes())
    batches, at = [], 0
    while at < len(data):
        (size,) = LENGTH.unpack_from(data, at)
        batches.append(data[at + LENGTH.size:at + LENGTH.size + size])
        at += LENGTH.size + size
    return batches


def record(out: Path, seconds: int) -> None:
    """nginx under wrk with the capture on its worker; the drained batches to `out`."""
    from tests.servers.nginx import nginx_worker, start_nginx
    from tests.support import stop_process

    from obi.ebpf.capture import Capture, CaptureSettings

    with tempfile.TemporaryDirectory(prefix="obi-replay-") as tmp:
        nginx, port = start_nginx(Path(tmp))
        batches: list[bytes] = []
        try:
            with Capture(CaptureSettings(ring_buffer_size=1 << 24)) as capture:
                capture.add_pid(nginx_worker(nginx.pid))
                wrk = subprocess.Popen(["wrk", "-t1", "-c16", f"-d{seconds}s", f"http://127.0.0.1:{port}/index.html"],
                                       stdout=subprocess.DEVNULL)
                deadline = time.monotonic() + seconds + 30
                while wrk.poll() is None and time.monotonic() < deadline:
                    batches += [bytes(batch) for batch, _ in capture.ring.drain()]
                    time.sleep(0.05)
                wrk.wait(timeout=30)
                time.sleep(0.2)
                batches += [bytes(batch) for batch, _ in capture.ring.drain()]
        finally:
            stop_process(nginx)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(b"".join(LENGTH.pack(len(b)) + b for b in batches), 9))
    print(f"{len(batches)} batches, {sum(map(len, batches))} bytes -> {out}")


async def replay(batches: list[bytes], repeat: int) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    config = load_config(None, environ)
    identities: dict[int, ServiceIdentity] = {}

    def identity_for(pid: int) -> ServiceIdentity:
        found = identities.get(pid)
        if found is None:
            found = identities[pid] = ServiceIdentity(pid=pid, exe_path="/usr/sbin/nginx",
                                                      service_name="nginx", sdk_language="cpp")
        return found

    transport = CountingTransport()
    stage = build_span_stage(config, identity_for, lambda event, pid, parent, path: None, frozenset(),
                             trace_transport=transport)
    exporter = stage.trace_exporter
    assert exporter is not None and stage.metrics is not None
    batch_size = config.otel_traces_export.max_export_batch_size
    exporting = asyncio.create_task(exporter.run())
    process, offer = stage.records.process, stage.fanout.offer
    cpu = time.process_time()
    for _ in range(repeat):
        for batch in batches:
            offer(process(batch))
            while exporter.pending >= batch_size:  # let the exporter take its batches
                await asyncio.sleep(0)
    await exporter.shutdown(60)
    await exporting
    cpu = time.process_time() - cpu
    records = stage.records.stats.spans
    spans = exporter.sent
    print(f"batches replayed         {len(batches) * repeat:10d}")
    print(f"spans built              {records:10d}")
    print(f"spans exported           {spans:10d}  ({transport.requests} requests, {transport.bytes} bytes;"
          f" dropped {exporter.dropped})")
    print(f"CPU per span             {cpu / max(records, 1) * 1e6:10.2f} us  (whole user-space path)")


def instructions(path: Path) -> None:
    """Instructions per span under callgrind: a run of three replays less a run of one."""
    counts, spans = [], []
    for repeat in (1, 3):
        with tempfile.TemporaryDirectory(prefix="obi-callgrind-") as tmp:
            done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out",
                                   sys.executable, __file__, "run", str(path), "--repeat", str(repeat)],
                                  capture_output=True, text=True, check=True, timeout=3600)
        counts.append(int(re.search(r"Collected : (\d+)", done.stderr).group(1)))  # type: ignore[union-attr]
        spans.append(int(re.search(r"spans built\s+(\d+)", done.stdout).group(1)))  # type: ignore[union-attr]
    per_span = (counts[1] - counts[0]) / (spans[1] - spans[0])
    print(f"instructions per span    {per_span:10.0f}  (callgrind: {spans[1] - spans[0]} spans, "
          f"{counts[1] - counts[0]} instructions)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("--seconds", type=int, default=2)
    run = sub.add_parser("run")
    run.add_argument("file", type=Path)
    run.add_argument("--repeat", type=int, default=1)
    count = sub.add_parser("instructions")
    count.add_argument("file", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, args.seconds)
    elif args.command == "instructions":
        instructions(args.file)
    else:
        asyncio.run(replay(read_batches(args.file), args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
