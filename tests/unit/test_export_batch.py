"""BatchingExporter: size and time triggers, drop-oldest by count and by bytes, shutdown flush
and deadline. The sender decodes what it is given, as a collector would."""

from __future__ import annotations

import asyncio

import pytest
import structlog.testing
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan

from obi.export.batch import BatchingExporter
from obi.export.encode import TraceEncoder
from obi.traces.model import Span
from tests.otlp_receiver import attributes_dict
from tests.unit.test_export_encode import make_service, make_span


class RecordingSender:
    """Accepts (or refuses) batches and remembers them."""

    def __init__(self, accept: bool = True, delay_s: float = 0.0) -> None:
        self.batches: list[list[OtlpSpan]] = []
        self.accept = accept
        self.delay_s = delay_s
        self.closed = False
        self.got_batch = asyncio.Event()

    async def send_bytes(self, body: bytes, timeout_s: float, interrupt: asyncio.Event) -> bool:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        request = ExportTraceServiceRequest.FromString(body)
        self.batches.append([span for rs in request.resource_spans for ss in rs.scope_spans
                             for span in ss.spans])
        self.got_batch.set()
        return self.accept

    async def close(self) -> None:
        self.closed = True


SERVICE = make_service()


def spans(count: int, first: int = 0) -> list[Span]:
    return [make_span(SERVICE, response_body_size=first + i) for i in range(count)]


def ids(batch: list[OtlpSpan]) -> list[int]:
    return [int(str(attributes_dict(s.attributes)["http.response.body.size"])) for s in batch]


@pytest.mark.asyncio
async def test_the_first_spans_go_out_at_once_and_later_ones_wait_for_a_full_batch() -> None:
    sender = RecordingSender()
    exporter = BatchingExporter(sender, max_queue_size=100, max_export_batch_size=4, batch_timeout_s=60)
    task = asyncio.create_task(exporter.run())
    await asyncio.sleep(0)
    exporter.offer(spans(1, first=100))  # obi's first span: not held for the 60 s timer
    await asyncio.wait_for(sender.got_batch.wait(), 1)
    assert [ids(b) for b in sender.batches] == [[100]]
    sender.got_batch.clear()
    exporter.offer(spans(3))
    await asyncio.sleep(0.05)
    assert len(sender.batches) == 1  # a partial batch waits for the timer now
    exporter.offer(spans(6, first=3))
    await asyncio.wait_for(sender.got_batch.wait(), 1)
    await asyncio.sleep(0.05)
    # Spans offered together are encoded together (in pieces of at most a batch), and a batch
    # takes whole pieces: [0, 1, 2] waited, [3..6] and [7, 8] came.
    assert [ids(b) for b in sender.batches] == [[100], [0, 1, 2], [3, 4, 5, 6]]
    assert exporter.pending == 2
    await exporter.shutdown(1.0)
    await task
    assert [ids(b) for b in sender.batches][-1] == [7, 8]
    assert (exporter.sent, exporter.failed, exporter.dropped) == (10, 0, 0)
    assert sender.closed


@pytest.mark.asyncio
async def test_partial_batch_is_sent_when_the_timer_fires() -> None:
    sender = RecordingSender()
    exporter = BatchingExporter(sender, max_queue_size=100, max_export_batch_size=50, batch_timeout_s=0.1)
    task = asyncio.create_task(exporter.run())
    exporter.offer(spans(2))
    await asyncio.wait_for(sender.got_batch.wait(), 1)
    assert [ids(b) for b in sender.batches] == [[0, 1]]
    await exporter.shutdown(1.0)
    await task
    assert exporter.sent == 2


@pytest.mark.asyncio
async def test_overflow_drops_the_oldest_and_counts() -> None:
    sender = RecordingSender()
    exporter = BatchingExporter(sender, max_queue_size=5, max_export_batch_size=5, batch_timeout_s=60)
    exporter.offer(spans(3))
    exporter.offer(spans(4, first=3))  # queue keeps 2..6
    assert exporter.dropped == 2
    assert exporter.pending == 5
    await exporter.shutdown(1.0)  # never ran: shutdown flushes by itself
    assert [ids(b) for b in sender.batches] == [[2, 3, 4, 5, 6]]
    assert (exporter.sent, exporter.dropped) == (5, 2)


@pytest.mark.asyncio
async def test_offer_after_shutdown_is_dropped() -> None:
    exporter = BatchingExporter(RecordingSender(), max_queue_size=5, max_export_batch_size=5)
    await exporter.shutdown(0.5)
    exporter.offer(spans(2))
    assert exporter.dropped == 2 and exporter.pending == 0


@pytest.mark.asyncio
async def test_shutdown_flushes_everything_in_batches() -> None:
    sender = RecordingSender()
    exporter = BatchingExporter(sender, max_queue_size=100, max_export_batch_size=10, batch_timeout_s=60)
    task = asyncio.create_task(exporter.run())
    await asyncio.sleep(0)
    exporter.offer(spans(25))
    await exporter.shutdown(2.0)
    await task
    assert sum(len(b) for b in sender.batches) == 25
    assert all(len(b) <= 10 for b in sender.batches)
    assert exporter.sent == 25


@pytest.mark.asyncio
async def test_failed_batches_are_counted() -> None:
    sender = RecordingSender(accept=False)
    exporter = BatchingExporter(sender, max_queue_size=10, max_export_batch_size=10)
    exporter.offer(spans(3))
    await exporter.shutdown(1.0)
    assert (exporter.sent, exporter.failed) == (0, 3)


@pytest.mark.asyncio
async def test_shutdown_gives_up_at_its_deadline() -> None:
    sender = RecordingSender(delay_s=5.0)  # a destination that hangs
    exporter = BatchingExporter(sender, max_queue_size=100, max_export_batch_size=2, batch_timeout_s=60)
    task = asyncio.create_task(exporter.run())
    exporter.offer(spans(6))
    await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await exporter.shutdown(0.2)
    assert loop.time() - started < 1.0
    assert task.done()
    assert exporter.sent == 0
    assert exporter.failed + exporter.dropped == 6
    assert sender.closed


@pytest.mark.asyncio
async def test_the_bytes_bound_drops_the_oldest_whole_pieces_and_counts() -> None:
    one = len(TraceEncoder().encode_spans(spans(1), 1)[0].data)  # all the test's spans are this size
    sender = RecordingSender()
    exporter = BatchingExporter(sender, max_queue_size=1000, max_export_batch_size=4, batch_timeout_s=60,
                                max_queue_bytes=10 * one)
    exporter.offer(spans(4))
    exporter.offer(spans(4, first=4))
    assert (exporter.pending, exporter.pending_bytes, exporter.dropped) == (8, 8 * one, 0)
    exporter.offer(spans(3, first=8))  # 11 spans' bytes: the oldest piece goes
    assert (exporter.pending, exporter.pending_bytes, exporter.dropped) == (7, 7 * one, 4)
    await exporter.shutdown(1.0)
    assert [ids(b) for b in sender.batches] == [[4, 5, 6, 7], [8, 9, 10]]
    assert (exporter.sent, exporter.dropped) == (7, 4)


@pytest.mark.asyncio
async def test_queue_full_by_bytes_is_logged_once_with_its_knob() -> None:
    one = len(TraceEncoder().encode_spans(spans(1), 1)[0].data)
    exporter = BatchingExporter(RecordingSender(), max_queue_bytes=2 * one, max_export_batch_size=2)
    with structlog.testing.capture_logs() as logs:
        exporter.offer(spans(2))
        exporter.offer(spans(2))
    [full] = [e for e in logs if e["event"] == "span_queue_full"]
    assert full["knob"].startswith("otel_traces_export.max_queue_bytes")
    assert full["max_queue_bytes"] == 2 * one
    assert exporter.dropped == 2 and exporter.pending == 2


@pytest.mark.asyncio
async def test_a_piece_over_the_bytes_bound_is_kept_whole_the_older_ones_go() -> None:
    one = len(TraceEncoder().encode_spans(spans(1), 1)[0].data)
    sender = RecordingSender()
    exporter = BatchingExporter(sender, max_queue_size=1000, max_export_batch_size=8, batch_timeout_s=60,
                                max_queue_bytes=3 * one)
    exporter.offer(spans(2))
    exporter.offer(spans(5, first=2))  # a batch's piece bigger than the bound: it stays
    assert (exporter.pending, exporter.dropped) == (5, 2)
    await exporter.shutdown(1.0)
    assert [ids(b) for b in sender.batches] == [[2, 3, 4, 5, 6]]
