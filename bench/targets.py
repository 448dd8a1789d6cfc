"""Issue 11's targets beside the figures this `make bench` measured.

Each benchmark script records its figures with `record()` (a JSON line per call in
build/bench-targets.jsonl, or the file OBI_BENCH_TARGETS names); `make bench` empties the file
first and runs this module last, which prints every target with its figure from this run, or
"not measured" when the script that measures it did not run or failed.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def figures_path() -> Path:
    return Path(os.environ.get("OBI_BENCH_TARGETS", ROOT / "build" / "bench-targets.jsonl"))


def record(**figures: float) -> None:
    """Keep figures of this run for the summary (later figures of one name replace earlier)."""
    path = figures_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(figures) + "\n")


def recorded() -> dict[str, float]:
    found: dict[str, float] = {}
    path = figures_path()
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                found.update(json.loads(line))
    return found


@dataclass(frozen=True)
class Target:
    label: str
    target: str
    show: Callable[[dict[str, float]], str | None]  # the figure as text, None if not measured
    met: Callable[[dict[str, float]], bool]


def _figure(key: str, fmt: str) -> Callable[[dict[str, float]], str | None]:
    return lambda f: fmt.format(f[key]) if key in f else None


def _at_most(key: str, limit: float) -> Callable[[dict[str, float]], bool]:
    return lambda f: f[key] <= limit


def _p99(f: dict[str, float]) -> str | None:
    if "p99_bare_ms" not in f or "p99_obi_ms" not in f:
        return None
    return (f"{100 * (f['p99_obi_ms'] / f['p99_bare_ms'] - 1):+.1f}% ({f['p99_obi_ms']:.2f} ms with obi, "
            f"{f['p99_bare_ms']:.2f} ms without)")


def _rss(f: dict[str, float]) -> str | None:
    if "rss_paced_mib" not in f:
        return None
    maps = f.get("rss_paced_maps_mib", 0.0)
    return f"{f['rss_paced_mib']:.1f} MiB ({maps:.1f} MiB of it the ring, mapped twice)"


def _burst(f: dict[str, float]) -> str | None:
    if "burst_lost" not in f:
        return None
    return (f"{f['burst_lost']:.0f} lost at {f['burst_rps']:.0f}/s for {f['burst_seconds']:.0f} s "
            f"({f['burst_unexported']:.0f} of {f['burst_requests']:.0f} requests without a span)")


TARGETS = (
    Target("obi CPU/request, unthrottled", "<= 5 us", _figure("cpu_unthrottled_us", "{:.1f} us"),
           _at_most("cpu_unthrottled_us", 5)),
    Target("obi CPU/request, paced 5k/s", "<= 5 us", _figure("cpu_paced_us", "{:.1f} us"),
           _at_most("cpu_paced_us", 5)),
    Target("BPF time/request, HTTP/1 keep-alive", "<= 600 ns",
           _figure("bpf_unthrottled_ns", "{:.0f} ns"), _at_most("bpf_unthrottled_ns", 600)),
    Target("idle (1,000 processes, 10,000 connections)", "<= 0.2% of a core",
           _figure("idle_pct", "{:.3f}%"), _at_most("idle_pct", 0.2)),
    Target("peak RSS at 5k/s steady", "<= 60 MiB", _rss,
           _at_most("rss_paced_mib", 60)),
    Target("events lost at 50k requests/s, 30 s", "0", _burst,
           lambda f: f["burst_lost"] == 0 and f["burst_rps"] >= 50_000),
    Target("application p99 at 5k/s, against no obi", "within 5%", _p99,
           lambda f: f["p99_obi_ms"] <= 1.05 * f["p99_bare_ms"]),
    Target("first span after obi starts (median)", "<= 2 s", _figure("first_span_s", "{:.2f} s"),
           _at_most("first_span_s", 2)),
)


def main() -> int:
    figures = recorded()
    print("issue 11's targets, figures of this run:")
    print(f"  {'':<42} {'target':<18} {'':<13} figure")
    for t in TARGETS:
        shown = t.show(figures)
        verdict = "not measured" if shown is None else ("met" if t.met(figures) else "NOT met")
        print(f"  {t.label:<42} {t.target:<18} {verdict:<13} {shown or '-'}")
    if "peer_obi_ratio" in figures:
        print(f"  peer line: Flask throughput kept, obi {figures['peer_obi_ratio']:.2f}, "
              f"OpenTelemetry SDK {figures['peer_sdk_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
