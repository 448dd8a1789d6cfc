"""The RED metrics in Prometheus's text exposition format (version 0.0.4), under OBI's names.

An OTel metric name becomes a Prometheus one with its dots as underscores and its
unit as a suffix (http.server.request.duration, s -> http_server_request_duration_seconds;
a body size, By -> ..._bytes); attribute names become label names the same way.
As in OBI, each series carries its service's identity (``service_name``,
``service_namespace``, ``job`` = [namespace/]name, ``instance``) and Kubernetes
labels (``k8s_*``); the rest of the resource (SDK, host, process) is in
``target_info``, one per service, joined on ``job`` and ``instance`` (the whole
resource is there, so OBI's ``extra_resource_attributes`` ask for nothing more).
``obi_build_info`` has a series per SDK language of the services seen
(``target_lang``). Every series of one metric is written together,
whatever its service, as the format requires. A series not updated for the ttl
is gone from the next scrape, and ``target_info`` with its service's last one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from obi import __version__
from obi.ebpf.objects import MapStats
from obi.export.internal import INTERNAL_COUNTERS
from obi.export.metrics import (
    OVERFLOW,
    OVERFLOW_ATTRIBUTE,
    HistogramState,
    MetricFamily,
    RedMetrics,
    SeriesState,
)
from obi.traces.model import ServiceIdentity

BUILD_INFO = "obi_build_info"
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_]")


def label_name(attribute: str) -> str:
    """An attribute name as a Prometheus label name (dots and anything else invalid as _)."""
    name = _INVALID_NAME.sub("_", attribute)
    return f"_{name}" if name[:1].isdigit() else name


def label_value(value: object) -> str:
    """A label value, escaped as the text format wants: backslash, double quote, newline."""
    text = value if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    if "\\" in text or '"' in text or "\n" in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return text


def labels(pairs: Iterable[tuple[str, object]]) -> str:
    """``name="value",...`` (no braces)."""
    return ",".join(f'{label_name(k)}="{label_value(v)}"' for k, v in pairs)


def number(value: float) -> str:
    """A sample value or bucket bound as Go's clients write it (10, 0.005, 1e-05, +Inf)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def job_and_instance(service: ServiceIdentity) -> tuple[str, str]:
    """OpenTelemetry's Prometheus mapping: job is [namespace/]name, instance the instance id."""
    job = f"{service.service_namespace}/{service.service_name}" if service.service_namespace \
        else service.service_name
    return job, service.instance_id


@dataclass(frozen=True)
class ExpositionOptions:
    build_info: bool = True


_IDENTITY = ("service.name", "service.namespace", "service.instance.id")


def _service_labels(service: ServiceIdentity) -> list[tuple[str, object]]:
    job, instance = job_and_instance(service)
    pairs: list[tuple[str, object]] = [("service.name", service.service_name)]
    if service.service_namespace:
        pairs.append(("service.namespace", service.service_namespace))
    pairs += [("instance", instance), ("job", job)]
    pairs.extend((k, v) for k, v in service.attributes.items() if k.startswith("k8s."))
    return pairs


def _target_info_labels(service: ServiceIdentity) -> list[tuple[str, object]]:
    """Identity, the whole resource (so OBI's extra_resource_attributes are there already),
    OBI's source and os_type: each label once (the first of the names that map to it)."""
    resource = service.resource_attributes()
    pairs = _service_labels(service)
    pairs += [(k, v) for k, v in resource.items() if k not in _IDENTITY and not k.startswith("k8s.")]
    pairs += [("source", "obi"), ("os.type", "linux")]
    once: dict[str, tuple[str, object]] = {}
    for key, value in pairs:
        once.setdefault(label_name(key), (key, value))
    return list(once.values())


class _Histogram(NamedTuple):
    """A histogram's numbers copied at the snapshot: its buckets, sum and count agree."""

    bucket_counts: list[int]
    sum: float
    total: int  # the count (a NamedTuple's field cannot be named count)


# A service and its series at the snapshot: (family, key, [(which, name, help, histogram)]).
_Snapshot = list[tuple[ServiceIdentity, list[tuple[MetricFamily, tuple[str | int | None, ...],
                                                   list[tuple[str, str, str, _Histogram]]]]]]

# Series rendered between two yields to the event loop (render_async).
SERIES_PER_TURN = 500


def _snapshot(metrics: RedMetrics, now_ns: int) -> _Snapshot:
    """The live series (expired ones dropped first) with their numbers copied, so that the
    rendering may give the event loop turns while spans keep updating the originals."""
    out: _Snapshot = []
    for service, series in metrics.live_series(now_ns):
        rows = []
        for (family, key), state in series.items():
            rows.append((family, key, [
                (which, otel_name.replace(".", "_") + suffix, help_text,
                 _Histogram(list(h.bucket_counts), h.sum, h.count))
                for which, (otel_name, help_text), suffix, h in _histograms(family, state)]))
        out.append((service, rows))
    return out


def _histogram_lines(out: list[str], name: str, label_text: str, state: _Histogram,
                     les: Sequence[str]) -> None:
    prefix = f"{name}_bucket{{{label_text}," if label_text else f"{name}_bucket{{"
    total = 0
    for le, count in zip(les, state.bucket_counts, strict=True):
        total += count
        out.append(f'{prefix}le="{le}"}} {total}')
    braces = f"{{{label_text}}}" if label_text else ""
    out.append(f"{name}_sum{braces} {number(state.sum)}")
    out.append(f"{name}_count{braces} {state.total}")


def _exposition(snapshot: _Snapshot, bounds: tuple[tuple[float, ...], ...],
                options: ExpositionOptions) -> Generator[None, None, bytes]:
    """Writes the exposition, yielding every SERIES_PER_TURN series; returns it."""
    les = {which: [number(b) for b in found] + ["+Inf"]
           for which, found in zip(("duration", "request", "response"), bounds, strict=True)}
    # metric name -> (help, lines); families are written in first-seen order
    by_metric: dict[str, tuple[str, list[str]]] = {}
    done = 0
    for service, rows in snapshot:
        service_pairs = _service_labels(service)
        for family, key, histograms in rows:
            label_text = labels([*service_pairs, *_attributes(family, key)])
            for which, name, help_text, histogram in histograms:
                entry = by_metric.get(name)
                if entry is None:
                    entry = by_metric[name] = (help_text, [])
                _histogram_lines(entry[1], name, label_text, histogram, les[which])
            done += 1
            if done % SERIES_PER_TURN == 0:
                yield
    out: list[str] = []
    for name, (help_text, lines) in by_metric.items():
        out.append(f"# HELP {name} {_help(help_text)}")
        out.append(f"# TYPE {name} histogram")
        out.extend(lines)
    if snapshot:
        out.append("# HELP target_info Target metadata")
        out.append("# TYPE target_info gauge")
        for service, _ in snapshot:
            out.append(f"target_info{{{labels(_target_info_labels(service))}}} 1")
    if options.build_info:
        languages = sorted({service.sdk_language for service, _ in snapshot})
        out.append(f"# HELP {BUILD_INFO} A metric with a constant '1' value labeled by version, revision, "
                   "and the runtime obi was built with and runs on, per language of the services it saw")
        out.append(f"# TYPE {BUILD_INFO} gauge")
        for language in languages:
            out.append(f'{BUILD_INFO}{{{labels([*_BUILD_LABELS, ("target_lang", language)])}}} 1')
    out.append("")
    return "\n".join(out).encode()


def _step(writer: Generator[None, None, bytes]) -> bytes | None:
    """Runs the writer to its next turn; the exposition once it is written."""
    try:
        next(writer)
    except StopIteration as finished:
        return bytes(finished.value)
    return None


def render(metrics: RedMetrics, now_ns: int, options: ExpositionOptions = ExpositionOptions()) -> bytes:
    """The exposition of every live series (expired ones are dropped first), target_info and
    obi_build_info, at once."""
    writer = _exposition(_snapshot(metrics, now_ns), metrics.bounds, options)
    while (body := _step(writer)) is None:
        pass
    return body


async def render_async(metrics: RedMetrics, now_ns: int,
                       options: ExpositionOptions = ExpositionOptions()) -> bytes:
    """The same, giving the event loop (the per-event path) a turn every SERIES_PER_TURN series."""
    writer = _exposition(_snapshot(metrics, now_ns), metrics.bounds, options)
    while (body := _step(writer)) is None:
        await asyncio.sleep(0)
    return body


def _attributes(family: MetricFamily, key: tuple[str | int | None, ...]) -> list[tuple[str, object]]:
    if key == OVERFLOW:  # equal, not the same object: a compiled module's Final tuple is boxed anew
        return [(OVERFLOW_ATTRIBUTE, "true")]
    names = family.attribute_names
    return [(name, value) for name, value in zip(names, key, strict=True) if value is not None]


def _histograms(family: MetricFamily,
                state: SeriesState) -> list[tuple[str, tuple[str, str], str, HistogramState]]:
    found = [("duration", family.duration, "_seconds", state.duration)]
    if family.request_size is not None:
        found.append(("request", family.request_size, "_bytes", state.request_size))
    if family.response_size is not None:
        found.append(("response", family.response_size, "_bytes", state.response_size))
    return found


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _build_labels() -> list[tuple[str, object]]:
    import platform
    import sys

    machine = platform.machine().lower()
    goarch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    runtime = "python" + ".".join(str(part) for part in sys.version_info[:3])
    return [("goarch", goarch), ("goos", sys.platform), ("goversion", runtime),
            ("version", __version__), ("revision", "unset")]


_BUILD_LABELS = _build_labels()


# ---- obi's own metrics (internal_metrics.exporter: prometheus) ----------------------------------

Sample = tuple[Sequence[tuple[str, object]], float]  # labels, value


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # counter or gauge
    help: str
    samples: Sequence[Sample]


@dataclass(frozen=True)
class InternalState:
    """What the internal endpoint shows, read at each scrape."""

    counters: Mapping[str, int | Mapping[int, int]]  # obi.export.internal.INTERNAL_COUNTERS's names
    instrumented: Mapping[str, int]  # processes instrumented now, by executable name
    trace_exports: int | None  # None: no OTLP trace export
    trace_export_errors: Mapping[str, int]
    metric_exports: int | None
    metric_export_errors: Mapping[str, int]
    scrapes: Mapping[tuple[int, str], int]  # (port, path) -> requests
    bpf_maps: Sequence[MapStats] = ()  # counted every internal_metrics.bpf_metric_scrape_interval


def internal_families(state: InternalState) -> list[Family]:
    """OBI's internal metric names where OBI has one, obi's own counters (as *_total) beside."""
    instrumented: list[Sample] = [([("process_name", name)], count)
                                  for name, count in sorted(state.instrumented.items())]
    families = [Family("obi_instrumented_processes", "gauge", "Instrumented processes, by executable name",
                       instrumented)]
    for signal, exports, errors in (("trace", state.trace_exports, state.trace_export_errors),
                                    ("metric", state.metric_exports, state.metric_export_errors)):
        if exports is None:
            continue  # no OTLP export of that signal
        families += [
            Family(f"obi_otel_{signal}_exports_total", "counter", f"OTLP {signal} export requests accepted",
                   [([], exports)]),
            Family(f"obi_otel_{signal}_export_errors_total", "counter",
                   f"OTLP {signal} export requests that failed after retries, by error",
                   [([("error", e)], n) for e, n in sorted(errors.items())]),
        ]
    families.append(Family("obi_prometheus_http_requests_total", "counter",
                           "Requests to obi's Prometheus endpoints, by port and path",
                           [([("port", port), ("path", path)], n)
                            for (port, path), n in sorted(state.scrapes.items())]))
    # OBI's names; untyped, not gauges: a gauge named *_total is what promtool warns about
    families.append(Family("obi_bpf_map_entries_total", "untyped", "Entries of obi's BPF maps",
                           [(_map_labels(m), m.entries) for m in state.bpf_maps]))
    families.append(Family("obi_bpf_map_max_entries_total", "untyped", "Capacity of obi's BPF maps",
                           [(_map_labels(m), m.max_entries) for m in state.bpf_maps]))
    families.append(Family("obi_internal_build_info", "gauge", "obi's version and the runtime it runs on",
                           [(_BUILD_LABELS, 1)]))
    for otel_name, (_, description) in INTERNAL_COUNTERS.items():
        value = state.counters.get(otel_name, 0)
        if isinstance(value, Mapping):
            samples: list[Sample] = [([("process.pid", pid)], n) for pid, n in sorted(value.items())]
        else:
            samples = [([], value)]
        families.append(Family(otel_name.replace(".", "_") + "_total", "counter", description, samples))
    return families


def _map_labels(stats: MapStats) -> list[tuple[str, object]]:
    return [("map_id", stats.map_id), ("map_name", stats.name), ("map_type", stats.type)]


def render_families(families: Iterable[Family]) -> bytes:
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {_help(family.help)}")
        out.append(f"# TYPE {family.name} {family.kind}")
        for pairs, value in family.samples:
            out.append(f"{family.name}{{{labels(pairs)}}} {number(value)}" if pairs
                       else f"{family.name} {number(value)}")
    out.append("")
    return "\n".join(out).encode()
