"""Real loopback export to the test OTLP receiver over gRPC and HTTP, with retries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
import structlog.testing

from obi.export.batch import (
    QUEUE_SIZE_KNOB,
    BatchingExporter,
    OtlpSender,
    PeriodicMetricsExporter,
    make_transport,
)
from obi.export.encode import TraceEncoder
from obi.export.endpoints import OtlpSignal, resolve_otlp_target
from obi.export.metrics import RedMetrics
from obi.export.retry import RetryPolicy
from tests.otlp_receiver import OtlpReceiver, attributes_dict
from tests.unit.test_export_encode import PARENT_ID, TRACE_ID, make_service, make_span

FAST_RETRY = RetryPolicy(initial_s=0.02, max_s=0.1)
TOKEN = "Bearer s3cr3t-Token"
ONE_SPAN = TraceEncoder().encode_bytes([make_span()])


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def sender_for(
    receiver: OtlpReceiver, protocol: str, signal: OtlpSignal = "traces", policy: RetryPolicy = FAST_RETRY
) -> OtlpSender:
    endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
    target = resolve_otlp_target(endpoint, "", protocol, signal)
    assert target is not None
    return OtlpSender(make_transport(target, {"Authorization": TOKEN}), policy, signal)


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_spans_arrive_exactly_with_authorization(receiver: OtlpReceiver, protocol: str) -> None:
    service = make_service("checkout", 77)
    spans = [make_span(service, path=f"/items/{i}", span_id=bytes([0] * 7 + [i + 1])) for i in range(3)]
    exporter = BatchingExporter(sender_for(receiver, protocol), max_export_batch_size=10, batch_timeout_s=60)
    task = asyncio.create_task(exporter.run())
    exporter.offer(spans)
    await exporter.shutdown(5.0)
    await task
    assert (exporter.sent, exporter.failed) == (3, 0)

    received = receiver.spans()
    assert [span.span_id[-1] for _, span in received] == [1, 2, 3]
    resource, first = received[0]
    assert resource["service.name"] == "checkout"
    assert resource["process.pid"] == 77
    assert first.trace_id == TRACE_ID and first.parent_span_id == PARENT_ID
    assert first.name == "GET /items/{id}"
    assert attributes_dict(first.attributes)["url.path"] == "/items/0"
    (request,) = receiver.trace_requests
    assert request.transport == ("grpc" if protocol == "grpc" else "http")
    assert request.headers["authorization"] == TOKEN
    if protocol != "grpc":
        assert request.headers["content-type"] == "application/x-protobuf"


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_retry_until_the_receiver_recovers(receiver: OtlpReceiver, protocol: str) -> None:
    receiver.fail_next(2)  # 503 / UNAVAILABLE
    sender = sender_for(receiver, protocol)
    ok = await sender.send_bytes(ONE_SPAN, 5.0, asyncio.Event())
    await sender.close()
    assert ok
    assert receiver.failed_count == 2
    assert len(receiver.spans()) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("protocol", "failure"),
    [
        ("http/protobuf", {"http_status": 400}),
        ("http/protobuf", {"http_status": 401}),
        ("grpc", {"grpc_code": grpc.StatusCode.INVALID_ARGUMENT}),
        ("grpc", {"grpc_code": grpc.StatusCode.UNAUTHENTICATED}),
        # RESOURCE_EXHAUSTED without RetryInfo is permanent in OTLP.
        ("grpc", {"grpc_code": grpc.StatusCode.RESOURCE_EXHAUSTED}),
    ],
)
async def test_permanent_errors_are_not_retried(
    receiver: OtlpReceiver, protocol: str, failure: dict[str, object]
) -> None:
    receiver.fail_next(3, **failure)  # type: ignore[arg-type]
    sender = sender_for(receiver, protocol)
    ok = await sender.send_bytes(ONE_SPAN, 5.0, asyncio.Event())
    await sender.close()
    assert not ok
    assert receiver.failed_count == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("protocol", "failure"),
    [
        ("http/protobuf", {"http_status": 429}),
        ("grpc", {"grpc_code": grpc.StatusCode.RESOURCE_EXHAUSTED}),
    ],
)
async def test_server_retry_hint_is_honoured(
    receiver: OtlpReceiver, protocol: str, failure: dict[str, object]
) -> None:
    # The backoff alone would retry after ~20 ms; the hint says 1 s.
    receiver.fail_next(1, retry_after_s=1.0, **failure)  # type: ignore[arg-type]
    sender = sender_for(receiver, protocol)
    started = time.monotonic()
    ok = await sender.send_bytes(ONE_SPAN, 5.0, asyncio.Event())
    elapsed = time.monotonic() - started
    await sender.close()
    assert ok
    assert 0.9 <= elapsed < 3.0
    assert receiver.failed_count == 1


@pytest.mark.asyncio
async def test_hint_beyond_the_deadline_gives_up_at_once(receiver: OtlpReceiver) -> None:
    receiver.fail_next(1, http_status=503, retry_after_s=30)
    sender = sender_for(receiver, "http/protobuf")
    started = time.monotonic()
    ok = await sender.send_bytes(ONE_SPAN, 1.0, asyncio.Event())
    await sender.close()
    assert not ok
    assert time.monotonic() - started < 0.5


@pytest.mark.asyncio
async def test_export_deadline_bounds_retries_and_slow_receivers(receiver: OtlpReceiver) -> None:
    receiver.set_delay(2.0)
    sender = sender_for(receiver, "grpc")
    started = time.monotonic()
    ok = await sender.send_bytes(ONE_SPAN, 0.3, asyncio.Event())
    await sender.close()
    assert not ok
    assert time.monotonic() - started < 1.0
    receiver.set_delay(0)


@pytest.mark.asyncio
async def test_connection_refused_is_retried_until_the_deadline() -> None:
    target = resolve_otlp_target("http://127.0.0.1:9", "", "http/protobuf", "traces")
    assert target is not None
    sender = OtlpSender(make_transport(target, {}), RetryPolicy(initial_s=0.05, max_s=0.05))
    attempts = 0
    original = sender._transport.attempt

    async def counting(body: bytes, timeout_s: float):  # type: ignore[no-untyped-def]
        nonlocal attempts
        attempts += 1
        return await original(body, timeout_s)

    sender._transport.attempt = counting  # type: ignore[method-assign]
    assert not await sender.send_bytes(b"", 0.4, asyncio.Event())
    await sender.close()
    assert attempts >= 3


@pytest.mark.asyncio
async def test_shutdown_interrupts_backoff(receiver: OtlpReceiver) -> None:
    receiver.fail_next(100)
    slow_retry = RetryPolicy(initial_s=10.0, max_s=10.0, jitter=0.0)
    exporter = BatchingExporter(
        sender_for(receiver, "http/protobuf", policy=slow_retry),
        max_export_batch_size=1,
        batch_timeout_s=60,
        export_timeout_s=30,
    )
    task = asyncio.create_task(exporter.run())
    exporter.offer([make_span()])
    await asyncio.to_thread(receiver.wait_for_failures, 1, 2.0)
    await asyncio.sleep(0.05)  # now waiting out a 10 s backoff
    started = time.monotonic()
    await exporter.shutdown(5.0)
    await task
    assert time.monotonic() - started < 1.0
    assert exporter.failed == 1 and exporter.sent == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_periodic_metrics_export(receiver: OtlpReceiver, protocol: str) -> None:
    service = make_service("api", 5)
    red = RedMetrics(series_ttl_s=None)  # the sample spans are from 2023
    red.record([make_span(service), make_span(service, status_code=500)])
    exporter = PeriodicMetricsExporter(red, sender_for(receiver, protocol, "metrics"), interval_s=0.1)
    task = asyncio.create_task(exporter.run())
    await asyncio.to_thread(receiver.wait_for_metric, "http.server.request.duration", 3.0)
    red.record([make_span(service)])
    await exporter.shutdown(3.0)
    await task
    points = receiver.metric_points("http.server.request.duration")
    last_by_status: dict[object, int] = {}
    for resource, point in points:
        assert resource["service.name"] == "api"
        status = attributes_dict(point.attributes)["http.response.status_code"]
        last_by_status[status] = point.count  # type: ignore[union-attr]
    # The final push at shutdown carries the span recorded after the first push.
    assert last_by_status == {200: 2, 500: 1}
    assert receiver.metric_requests[0].headers["authorization"] == TOKEN
    assert exporter.failed == 0 and exporter.sent >= 2


@pytest.mark.asyncio
async def test_failures_are_logged_without_header_values(receiver: OtlpReceiver) -> None:
    receiver.fail_next(1, http_status=400)
    sender = sender_for(receiver, "http/protobuf")
    with structlog.testing.capture_logs() as logs:
        assert not await sender.send_bytes(ONE_SPAN, 2.0, asyncio.Event())
    await sender.close()
    assert [entry["event"] for entry in logs] == ["otlp_export_failed"]
    assert logs[0]["reason"] == "http status 400" and logs[0]["permanent"] is True
    assert "s3cr3t" not in repr(logs)


@pytest.mark.asyncio
async def test_queue_overflow_is_logged_once_with_the_knob() -> None:
    class Refuse:
        async def send_bytes(self, body: bytes, timeout_s: float, interrupt: asyncio.Event) -> bool:
            return False

        async def close(self) -> None:
            pass

    exporter = BatchingExporter(Refuse(), max_queue_size=2, max_export_batch_size=2)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            exporter.offer([make_span(), make_span(), make_span()])
    assert exporter.dropped == 7
    assert [(e["event"], e["knob"], e["max_queue_size"]) for e in logs] == [
        ("span_queue_full", QUEUE_SIZE_KNOB, 2)
    ]
    await exporter.shutdown(0.5)


def test_grpc_target_host_and_port() -> None:
    from obi.export.otlp_grpc import split_target

    assert split_target("collector:4317", False) == ("collector", 4317)
    assert split_target("[::1]:4317", True) == ("::1", 4317)
    assert split_target("collector", True) == ("collector", 443)
    assert split_target("collector", False) == ("collector", 80)
