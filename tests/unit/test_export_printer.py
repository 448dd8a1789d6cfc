"""Trace printer modes and OBI's text layout."""

from __future__ import annotations

import datetime
import io
import json
import threading
import time

import pytest

from obi.export.printer import TracePrinter, TracePrinterMode, go_duration, traceparent
from obi.traces.model import SPAN_KIND_SERVER
from tests.unit.test_export_encode import PARENT_ID, SPAN_ID, TRACE_ID, make_db_span, make_service, make_span

UTC = datetime.UTC


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (999, "999ns"),
        (1_000, "1µs"),
        (1_500, "1.5µs"),
        (1_500_000, "1.5ms"),
        (1_234_567, "1.234567ms"),
        (2_000_000_000, "2s"),
        (2_500_000_000, "2.5s"),
        (61_000_000_000, "1m1s"),
        (3_723_500_000_000, "1h2m3.5s"),
        (-1_500_000, "-1.5ms"),
    ],
)
def test_go_duration(ns: int, text: str) -> None:
    assert go_duration(ns) == text


def test_text_line_in_obis_layout() -> None:
    stream = io.StringIO()
    printer = TracePrinter("text", stream, tz=UTC)
    printer.print_spans([make_span(make_service("api"))])
    printer.close()  # what waits is written
    assert stream.getvalue() == (
        "2023-11-14 22:13:20.000 (1.5ms[1.5ms]) HTTP 200 GET /items/42(/items/{id}) "
        "[127.0.0.1 as 127.0.0.1:51234]->[127.0.0.1 as api:8080] "
        "contentLen:0B responseLen:321B svc=[api python] "
        f"traceparent=[00-{TRACE_ID.hex()}-{SPAN_ID.hex()}[{PARENT_ID.hex()}]-01]\n"
    )


def test_text_without_route_with_namespace_unsampled_root() -> None:
    stream = io.StringIO()
    printer = TracePrinter(TracePrinterMode.TEXT, stream, tz=UTC)
    service = make_service("api", service_namespace="shop")
    printer.print_spans([make_span(service, route=None, parent_span_id=b"", sampled=False, status_code=503)])
    printer.close()
    line = stream.getvalue()
    assert " HTTP 503 GET /items/42 [" in line
    assert "svc=[shop/api python]" in line
    assert line.endswith(f"traceparent=[00-{TRACE_ID.hex()}-{SPAN_ID.hex()}[{'0' * 16}]-00]\n")


def test_database_spans_in_obis_layout_without_query_text() -> None:
    stream = io.StringIO()
    printer = TracePrinter("text", stream, tz=UTC)
    printer.print_spans([make_db_span(make_service("api"), error_type="WRONGTYPE", status_code="WRONGTYPE",
                                      operation="LPUSH", query_text="LPUSH secret-key x"),
                         make_db_span(make_service("redis"), kind=SPAN_KIND_SERVER)])
    printer.close()
    first, second = stream.getvalue().splitlines()
    assert first == (
        "2023-11-14 22:13:20.000 (250µs[250µs]) RedisClient 1 LPUSH  "
        "[127.0.0.1 as api:40000]->[127.0.0.1 as 127.0.0.1:6379] "
        "contentLen:0B responseLen:0B svc=[api python] "
        f"traceparent=[00-{TRACE_ID.hex()}-{SPAN_ID.hex()}[{PARENT_ID.hex()}]-01]"
    )
    assert " RedisServer 0 SET  [127.0.0.1 as 127.0.0.1:40000]->[127.0.0.1 as redis:6379] " in second
    json_stream = io.StringIO()
    json_printer = TracePrinter("json", json_stream)
    json_printer.print_spans([make_db_span(query_text="SET k v")])
    json_printer.close()
    printed = json.loads(json_stream.getvalue())
    assert printed["type"] == "RedisClient" and printed["name"] == "SET"
    assert printed["attributes"]["db.query.text"] == "SET k v"  # asked for: the span has it


def test_traceparent_empty_without_trace_id() -> None:
    assert traceparent(make_span(trace_id=b"\x00" * 16)) == ""


def test_json_one_object_per_line() -> None:
    stream = io.StringIO()
    printer = TracePrinter("json", stream)
    printer.print_spans([make_span(), make_span(status_code=500)])
    printer.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["name"] == "GET /items/{id}"
    assert first["traceId"] == TRACE_ID.hex()
    assert first["parentSpanId"] == PARENT_ID.hex()
    assert first["traceFlags"] == "01"
    assert first["status"] == "unset" and second["status"] == "error"
    assert first["attributes"]["http.response.status_code"] == 200
    assert first["service"]["service.name"] == "api"
    assert first["duration"] == "1.5ms"


def test_json_indent_is_pretty() -> None:
    stream = io.StringIO()
    printer = TracePrinter("json_indent", stream)
    printer.print_spans([make_span()])
    printer.close()
    text = stream.getvalue()
    assert text.startswith("{\n ")
    assert json.loads(text)["spanId"] == SPAN_ID.hex()


def test_counter_prints_periodically_and_at_close() -> None:
    stream = io.StringIO()
    printer = TracePrinter("counter", stream, counter_interval_s=0.0)
    printer.print_spans([make_span()] * 3)
    printer.print_spans([make_span()] * 2)
    printer.close()  # nothing new since the last line
    assert stream.getvalue() == "Processed 3 requests\nProcessed 5 requests\n"

    stream = io.StringIO()
    printer = TracePrinter("counter", stream, counter_interval_s=3600)
    printer.print_spans([make_span()] * 4)
    assert stream.getvalue() == ""
    printer.close()
    assert stream.getvalue() == "Processed 4 requests\n"


def test_disabled_prints_nothing_and_bad_mode_is_rejected() -> None:
    stream = io.StringIO()
    printer = TracePrinter("disabled", stream)
    assert not printer.enabled
    printer.print_spans([make_span()])
    printer.close()
    assert stream.getvalue() == ""
    with pytest.raises(ValueError):
        TracePrinter("yaml", stream)


class BlockedStream(io.StringIO):
    """A stream whose writes wait until it is let go: a pipe nobody reads."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()

    def write(self, text: str) -> int:
        self.go.wait(10)
        return super().write(text)


def test_a_stream_that_does_not_keep_up_never_blocks_the_printer() -> None:
    """The first batch waits in the writer's thread for the blocked stream; what does not fit
    beside it is dropped and counted, at once; once the stream moves, what waited is written."""
    stream = BlockedStream()
    printer = TracePrinter("text", stream, tz=UTC, max_pending_chars=1000)
    started = time.monotonic()
    for _ in range(50):
        printer.print_spans([make_span(make_service("api"))] * 2)
    assert time.monotonic() - started < 1.0
    assert printer.count == 100
    assert 90 <= printer.dropped_lines < 100  # about 280 characters a line: three fit, at most
    stream.go.set()
    printer.close()
    written = stream.getvalue().splitlines()
    assert len(written) == 100 - printer.dropped_lines and written[0].endswith("-01]")
