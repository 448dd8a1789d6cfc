"""Trace printer (OBI's ``trace_printer``): spans to a text stream for debugging.

Modes: disabled, counter (a running "Processed N requests" line at most every
``counter_interval_s`` and at close), text (one line per span in OBI's
layout), json (one object per span per line), json_indent (pretty objects).
"""

from __future__ import annotations

import datetime
import enum
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TextIO

import structlog

from obi.export.encode import span_flags
from obi.traces.model import SPAN_KIND_SERVER, DbSpan, HttpSpan, RpcSpan, ServiceIdentity, Span


class TracePrinterMode(enum.StrEnum):
    DISABLED = "disabled"
    COUNTER = "counter"
    TEXT = "text"
    JSON = "json"
    JSON_INDENT = "json_indent"


def go_duration(ns: int) -> str:
    """A duration formatted like Go's time.Duration.String (``1.5ms``, ``850µs``, ``2m3s``)."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return sign + _fraction(ns, 1_000, 3) + "µs"
    if ns < 1_000_000_000:
        return sign + _fraction(ns, 1_000_000, 6) + "ms"
    hours, rest = divmod(ns, 3_600 * 1_000_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000_000)
    text = _fraction(rest, 1_000_000_000, 9) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _fraction(value: int, unit: int, digits: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


def traceparent(span: Span) -> str:
    """OBI's printer form: ``00-<trace>-<span>[<parent>]-<flags>``; empty without a trace id."""
    if not any(span.trace_id):
        return ""
    parent = span.parent_span_id.hex() if span.parent_span_id else "0" * 16
    flags = span_flags(span) & 0xFF
    return f"00-{span.trace_id.hex()}-{span.span_id.hex()}[{parent}]-{flags:02x}"


def service_label(service: ServiceIdentity) -> str:
    if service.service_namespace:
        return f"{service.service_namespace}/{service.service_name}"
    return service.service_name


def format_text(span: Span, tz: datetime.tzinfo | None = None) -> str:
    """One line in OBI's text printer layout (the caller's side first, then the server's)."""
    start = datetime.datetime.fromtimestamp(span.start_ns / 1e9, tz)
    stamp = start.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    duration = go_duration(span.end_ns - span.start_ns)
    if isinstance(span, HttpSpan):
        route = f"({span.route})" if span.route else ""
        what = f"{span.status_code} {span.method} {span.path}{route}"
        sizes = f"contentLen:{span.request_body_size}B responseLen:{span.response_body_size}B"
    elif isinstance(span, DbSpan):  # OBI's status for these: 1 when the operation failed
        what = f"{int(span.is_error)} {span.operation or span.name} {span.collection}"
        sizes = "contentLen:0B responseLen:0B"
    elif isinstance(span, RpcSpan):
        what = f"{span.status or '-'} {span.method}"
        sizes = "contentLen:0B responseLen:0B"
    else:
        return ""
    server, client = span.server_address, span.client_address
    if span.kind == SPAN_KIND_SERVER:
        caller = f"[{client} as {client}:{span.client_port}]"
        callee = f"[{server} as {span.service.service_name}:{span.server_port}]"
    else:
        caller = f"[{client} as {span.service.service_name}:{span.client_port}]"
        callee = f"[{server} as {server}:{span.server_port}]"
    return (
        f"{stamp} ({duration}[{duration}]) {span.type_name} {what} "
        f"{caller}->{callee} {sizes} "
        f"svc=[{service_label(span.service)} {span.service.sdk_language}] "
        f"traceparent=[{traceparent(span)}]"
    )


def span_json(span: Span) -> dict[str, object]:
    """A JSON-ready description of the span with OTel names."""
    return {
        "type": span.type_name,
        "kind": "SPAN_KIND_SERVER" if span.kind == SPAN_KIND_SERVER else "SPAN_KIND_CLIENT",
        "name": span.name,
        "traceId": span.trace_id.hex(),
        "spanId": span.span_id.hex(),
        "parentSpanId": span.parent_span_id.hex(),
        "traceFlags": f"{span_flags(span) & 0xFF:02x}",
        "startTimeUnixNano": span.start_ns,
        "endTimeUnixNano": span.end_ns,
        "duration": go_duration(span.end_ns - span.start_ns),
        "status": "error" if span.is_error else "unset",
        "service": {k: v for k, v in span.service.resource_attributes().items()},
        "attributes": span.attributes(),
    }


# Text waiting for a stream that does not keep up; past it, lines are dropped and counted.
DEFAULT_PENDING_CHARS = 4 << 20


class BackgroundWriter:
    """Writes text to a stream from a thread of its own, so that a stream that blocks (a pipe
    nobody reads, a slow terminal) never blocks the caller, obi's event loop. What does not
    fit in `max_chars` waiting to be written is dropped, and its lines counted."""

    def __init__(self, stream: TextIO, max_chars: int = DEFAULT_PENDING_CHARS) -> None:
        self._stream = stream
        self._max = max_chars
        self._pending: deque[str] = deque()
        self._chars = 0  # waiting, and being written
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.dropped_lines = 0

    def write(self, text: str, lines: int) -> bool:
        """Queue `text` (`lines` lines); False when it was dropped."""
        with self._cond:
            if self._closed or self._chars + len(text) > self._max:
                self.dropped_lines += lines
                return False
            self._pending.append(text)
            self._chars += len(text)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="obi-trace-printer", daemon=True)
                self._thread.start()
            self._cond.notify()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                text = "".join(self._pending)
                self._pending.clear()
            try:
                self._stream.write(text)
                self._stream.flush()
            except (OSError, ValueError):  # the stream is gone: what it had is lost
                pass
            with self._cond:
                self._chars -= len(text)

    def close(self, timeout_s: float = 2.0) -> None:
        """Write what waits (for at most `timeout_s`), then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)


class TracePrinter:
    """Writes spans to a stream in the chosen mode, through a BackgroundWriter: once per batch,
    and never waiting for the stream."""

    def __init__(
        self,
        mode: TracePrinterMode | str,
        stream: TextIO | None = None,
        counter_interval_s: float = 5.0,
        tz: datetime.tzinfo | None = None,
        max_pending_chars: int = DEFAULT_PENDING_CHARS,
    ) -> None:
        self.mode = TracePrinterMode(mode)
        self._writer = BackgroundWriter(stream if stream is not None else sys.stdout, max_pending_chars)
        self._drop_logged = False
        self._counter_interval_s = counter_interval_s
        self._tz = tz
        self._count = 0
        self._printed_count = 0
        self._last_counter_print = time.monotonic()

    @property
    def enabled(self) -> bool:
        return self.mode is not TracePrinterMode.DISABLED

    @property
    def count(self) -> int:
        return self._count

    @property
    def dropped_lines(self) -> int:
        """Lines the stream did not keep up with."""
        return self._writer.dropped_lines

    def _write(self, text: str, lines: int) -> None:
        if not self._writer.write(text, lines) and not self._drop_logged:
            self._drop_logged = True
            structlog.get_logger().bind(component="printer").warning(
                "trace_printer_behind", hint="the output does not keep up: lines are dropped and counted "
                "(obi.printer.lines.dropped); spans are still exported")

    def print_spans(self, spans: Sequence[Span]) -> None:
        mode = self.mode
        if mode is TracePrinterMode.DISABLED or not spans:
            return
        self._count += len(spans)
        if mode is TracePrinterMode.COUNTER:
            now = time.monotonic()
            if now - self._last_counter_print >= self._counter_interval_s:
                self._last_counter_print = now
                self._print_counter()
            return
        printable = [s for s in spans if isinstance(s, (HttpSpan, DbSpan, RpcSpan))]
        if mode is TracePrinterMode.TEXT:
            lines = [format_text(s, self._tz) for s in printable]
        elif mode is TracePrinterMode.JSON:
            lines = [json.dumps(span_json(s), separators=(",", ":")) for s in printable]
        else:
            lines = [json.dumps(span_json(s), indent=1) for s in printable]
        if lines:
            self._write("\n".join(lines) + "\n", len(lines))

    def _print_counter(self) -> None:
        self._printed_count = self._count
        self._write(f"Processed {self._count} requests\n", 1)

    def close(self) -> None:
        """Print the final count in counter mode; write what waits."""
        if self.mode is TracePrinterMode.COUNTER and self._count != self._printed_count:
            self._print_counter()
        self._writer.close()
