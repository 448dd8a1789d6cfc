"""What a Prometheus scrape of obi costs at 10,000 series (issue 12's figure).

A series is what Prometheus stores: one sample line of the exposition. An HTTP server
attribute set is 44 of them with the default buckets (a duration histogram of 15 bounds
and two body-size ones of 10: their buckets, sums and counts). The bench builds enough
attribute sets (10 services, routes each) for the series asked, serves them with obi's
scrape endpoint on loopback, and times real GETs: the whole answer as a scraper sees it,
and obi's CPU for it (rendering included: scrapes more than half a second apart do not
share a rendering).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.unit.test_export_encode import make_service, make_span  # noqa: E402

from obi.export.metrics import RedMetrics  # noqa: E402
from obi.export.prometheus import render, render_async  # noqa: E402
from obi.export.scrape import ScrapeServer  # noqa: E402

SERIES_PER_SET = 44  # HTTP server, default buckets: (16 + 2) + 2 * (11 + 2)


def metrics_with(series: int) -> RedMetrics:
    sets = -(-series // SERIES_PER_SET)
    services = 10
    per_service = -(-sets // services)
    metrics = RedMetrics(series_ttl_s=None, cardinality_limit=per_service + 2)
    now = time.time_ns()
    for s in range(services):
        service = make_service(f"service-{s}", 1000 + s, service_namespace="bench")
        metrics.record([make_span(service, route=f"/api/v1/resource-{r}/{{id}}", start_ns=now - 2_000_000,
                                  end_ns=now) for r in range(per_service)])
    return metrics


async def scrape_once(port: int) -> tuple[float, int]:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
    await writer.drain()
    body = await reader.read()
    writer.close()
    return time.perf_counter() - started, len(body)


async def main_async(series: int, scrapes: int) -> None:
    metrics = metrics_with(series)
    server = ScrapeServer(0, {"/metrics": lambda: render_async(metrics, time.time_ns())}, host="127.0.0.1")
    await server.start()
    try:
        walls, cpus, size = [], [], 0
        for _ in range(scrapes):
            await asyncio.sleep(0.6)  # past the shared rendering
            cpu = time.process_time()
            wall, size = await scrape_once(server.port)
            cpus.append(time.process_time() - cpu)
            walls.append(wall)
    finally:
        await server.close()
    lines = sum(1 for line in render(metrics, time.time_ns()).splitlines() if not line.startswith(b"#"))
    print(f"scrape of {lines:,} series ({metrics.series_count} attribute sets, "
          f"{size / 2**20:.1f} MiB of text, {scrapes} scrapes): "
          f"answer median {statistics.median(walls) * 1000:.0f} ms (max {max(walls) * 1000:.0f} ms, "
          f"target 100 ms), CPU median {statistics.median(cpus) * 1000:.0f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main_async(args.series, args.scrapes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
