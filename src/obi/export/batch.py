"""Asynchronous exporters: a bounded span batcher and a periodic metrics pusher.

``BatchingExporter.offer`` is called from the pipeline and never blocks. It
encodes the spans at once (OTLP wire format, a few hundred bytes a span, where
the span objects took three times that and kept the garbage collector busy),
and queues the bytes, bounded both in spans (OBI's max_queue_size) and in bytes;
past either bound the oldest spans are dropped (counted, logged once with the
knob to raise). ``run`` sends a batch when it is full or when the
batch timeout elapses, and the first spans at once (whoever starts obi sees
it work within a second or two, not after the 15 s batch timeout);
``shutdown`` flushes what is pending within a deadline and interrupts any
retry backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Protocol

import structlog

from obi.config.model import TracesExportConfig
from obi.export.encode import EncodedSpans, TraceEncoder, skip_spans
from obi.export.endpoints import OtlpTarget
from obi.export.internal import MetricsSource
from obi.export.retry import AttemptResult, Outcome, RetryPolicy, send_with_retry
from obi.traces.model import Span

# The defaults are the configuration's (one definition: obi.config.model).
_TRACES = TracesExportConfig()
DEFAULT_MAX_QUEUE_SIZE = _TRACES.max_queue_size
DEFAULT_MAX_EXPORT_BATCH_SIZE = _TRACES.max_export_batch_size
DEFAULT_BATCH_TIMEOUT_S = _TRACES.batch_timeout
DEFAULT_EXPORT_TIMEOUT_S = _TRACES.timeout
DEFAULT_MAX_QUEUE_BYTES = _TRACES.max_queue_bytes
QUEUE_SIZE_KNOB = "otel_traces_export.max_queue_size (OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_SIZE)"
QUEUE_BYTES_KNOB = "otel_traces_export.max_queue_bytes (OTEL_EBPF_OTLP_TRACES_MAX_QUEUE_BYTES)"


class OtlpTransport(Protocol):
    """One attempt to deliver a serialized Export request."""

    @property
    def description(self) -> str: ...

    async def attempt(self, body: bytes, timeout_s: float) -> AttemptResult: ...

    async def close(self) -> None: ...


class BodySender(Protocol):
    """Delivers one serialized Export request; True when the destination accepted it."""

    async def send_bytes(self, body: bytes, timeout_s: float, interrupt: asyncio.Event) -> bool: ...

    async def close(self) -> None: ...


def make_transport(target: OtlpTarget, headers: Mapping[str, str],
                   insecure_skip_verify: bool = False) -> OtlpTransport:
    """The transport for a resolved target (gRPC or HTTP/protobuf). Each is imported when
    used: grpc and aiohttp take 0.1-0.25 s each to import, before obi's first span."""
    if target.is_grpc:
        from obi.export.otlp_grpc import GrpcTransport

        return GrpcTransport(target.endpoint, target.signal, headers, target.tls, insecure_skip_verify)
    from obi.export.otlp_http import HttpTransport

    return HttpTransport(target.endpoint, headers, insecure_skip_verify)


class OtlpSender:
    """Sends serialized requests through a transport with retries, logging failures."""

    def __init__(
        self,
        transport: OtlpTransport,
        policy: RetryPolicy | None = None,
        signal: str = "traces",
    ) -> None:
        self._transport = transport
        self._policy = policy or RetryPolicy()
        self.exports = 0  # requests the destination accepted
        self.failures: dict[str, int] = {}  # requests that failed after retries, by reason
        self._log = structlog.get_logger().bind(
            component="export.otlp", signal=signal, destination=transport.description
        )

    async def send_bytes(self, body: bytes, timeout_s: float, interrupt: asyncio.Event) -> bool:
        try:
            result = await send_with_retry(
                lambda remaining: self._transport.attempt(body, remaining),
                timeout_s,
                interrupt,
                self._policy,
            )
        except Exception as err:  # a transport bug must cost one export, never the agent
            # The type only: a message could quote a URL or a header.
            result = AttemptResult(Outcome.PERMANENT, f"unexpected error: {type(err).__name__}")
        if result.outcome is Outcome.SUCCESS:
            self.exports += 1
            return True
        self.failures[result.reason] = self.failures.get(result.reason, 0) + 1
        self._log.warning(
            "otlp_export_failed",
            reason=result.reason,
            permanent=result.outcome is Outcome.PERMANENT,
        )
        return False

    async def close(self) -> None:
        await self._transport.close()


class BatchingExporter:
    """Bounded queue of encoded spans drained in batches to a BodySender."""

    def __init__(
        self,
        sender: BodySender,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        max_export_batch_size: int = DEFAULT_MAX_EXPORT_BATCH_SIZE,
        batch_timeout_s: float = DEFAULT_BATCH_TIMEOUT_S,
        export_timeout_s: float = DEFAULT_EXPORT_TIMEOUT_S,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        encoder: TraceEncoder | None = None,
    ) -> None:
        if max_queue_size < 1 or max_export_batch_size < 1 or max_queue_bytes < 1:
            raise ValueError("max_queue_size, max_queue_bytes and max_export_batch_size must be positive")
        self._sender = sender
        self._encoder = encoder or TraceEncoder()
        self._queue: deque[EncodedSpans] = deque()
        self._spans = 0  # in the queue
        self._bytes = 0  # of encoded spans in the queue
        self.max_queue_size = max_queue_size
        self.max_queue_bytes = max_queue_bytes
        self._batch_size = min(max_export_batch_size, max_queue_size)
        self._batch_timeout_s = batch_timeout_s
        self._export_timeout_s = export_timeout_s
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self._task: asyncio.Task[None] | None = None
        self._drop_logged = False
        self._deadline: float | None = None
        self._first_sent = False  # the first spans offered go out at once
        self.dropped = 0
        self.sent = 0
        self.failed = 0
        self._log = structlog.get_logger().bind(component="export.batch")

    @property
    def sender(self) -> BodySender:
        return self._sender

    @property
    def pending(self) -> int:
        """Spans waiting in the queue."""
        return self._spans

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def offer(self, spans: Sequence[Span]) -> None:
        """Encode and queue spans without blocking; past a bound the oldest are dropped."""
        if self._stopping.is_set():
            self.dropped += len(spans)
            return
        queue = self._queue
        for piece in self._encoder.encode_spans(spans, self._batch_size):
            queue.append(piece)
            self._spans += piece.span_count
            self._bytes += len(piece.data)
        if self._spans > self.max_queue_size or self._bytes > self.max_queue_bytes:
            self._drop_oldest()
        if self._spans >= self._batch_size or not self._first_sent:
            self._wakeup.set()

    def _drop_oldest(self) -> None:
        """Drops the oldest spans until the queue is within both bounds (whole pieces for the
        bytes, though the newest piece, at most a batch, always stays; the exact excess for the
        count), and says so once."""
        queue, before = self._queue, self.dropped
        bytes_full = self._bytes > self.max_queue_bytes
        while queue and ((self._bytes > self.max_queue_bytes and len(queue) > 1)
                         or self._spans > self.max_queue_size):
            oldest = queue[0]
            excess = self._spans - self.max_queue_size
            if (self._bytes <= self.max_queue_bytes or len(queue) == 1) and 0 < excess < oldest.span_count:
                cut = skip_spans(oldest.data, excess)
                queue[0] = EncodedSpans(oldest.service, oldest.data[cut:], oldest.span_count - excess)
                self._bytes -= cut
                self._spans -= excess
                self.dropped += excess
                break
            queue.popleft()
            self._bytes -= len(oldest.data)
            self._spans -= oldest.span_count
            self.dropped += oldest.span_count
        if self.dropped > before and not self._drop_logged:
            self._drop_logged = True
            self._log.warning(
                "span_queue_full",
                max_queue_size=self.max_queue_size,
                max_queue_bytes=self.max_queue_bytes,
                knob=QUEUE_BYTES_KNOB if bytes_full else QUEUE_SIZE_KNOB,
                hint="spans are dropped oldest first; raise the knob or lower the load",
            )

    async def run(self) -> None:
        """Send batches until shutdown, then flush what is left."""
        loop = asyncio.get_running_loop()
        if self._stopping.is_set():
            return  # shutdown came first and flushes by itself
        self._running = True
        self._task = asyncio.current_task()
        try:
            next_timer = loop.time() + self._batch_timeout_s
            while not self._stopping.is_set():
                now = loop.time()
                first = not self._first_sent and bool(self._queue)
                if self._spans < self._batch_size and now < next_timer and not first:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), next_timer - now)
                    continue
                if self._spans < self._batch_size:
                    next_timer = loop.time() + self._batch_timeout_s
                if self._queue:
                    await self._export_one()
            await self._flush()
        finally:
            self._finished.set()

    async def shutdown(self, deadline_s: float) -> None:
        """Flush pending spans within ``deadline_s``, then stop; close the sender."""
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + deadline_s
        self._stopping.set()
        self._wakeup.set()
        try:
            if self._running:
                try:
                    await asyncio.wait_for(asyncio.shield(self._finished.wait()), deadline_s)
                except TimeoutError:
                    self._log.warning("span_flush_timeout", left=self._spans)
                    await self._cancel_run()
            else:
                try:
                    await asyncio.wait_for(self._flush(), deadline_s)
                except TimeoutError:
                    self._log.warning("span_flush_timeout", left=self._spans)
        finally:
            self.dropped += self._spans
            self._queue.clear()
            self._spans = self._bytes = 0
            await self._sender.close()

    async def _cancel_run(self) -> None:
        task = self._task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if self._deadline is not None and loop.time() >= self._deadline:
                return
            await self._export_one()

    async def _export_one(self) -> None:
        queue = self._queue
        batch = [queue.popleft()]
        count = batch[0].span_count
        while queue and count + queue[0].span_count <= self._batch_size:
            piece = queue.popleft()
            batch.append(piece)
            count += piece.span_count
        self._spans -= count
        self._bytes -= sum(len(piece.data) for piece in batch)
        timeout = self._export_timeout_s
        if self._deadline is not None:
            timeout = min(timeout, self._deadline - asyncio.get_running_loop().time())
        # Once stopping, a failed attempt is not retried after a backoff wait.
        try:
            ok = timeout > 0 and await self._sender.send_bytes(self._encoder.assemble(batch), timeout,
                                                                self._stopping)
        except asyncio.CancelledError:
            self.failed += count
            raise
        self._first_sent = True
        if ok:
            self.sent += count
        else:
            self.failed += count


class PeriodicMetricsExporter:
    """Collects the RED aggregator every interval and sends it; once more at shutdown."""

    def __init__(
        self,
        aggregator: MetricsSource,
        sender: BodySender,
        interval_s: float,
        export_timeout_s: float = DEFAULT_EXPORT_TIMEOUT_S,
    ) -> None:
        self._aggregator = aggregator
        self._sender = sender
        self._interval_s = interval_s
        self._export_timeout_s = export_timeout_s
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self.sent = 0
        self.failed = 0

    @property
    def sender(self) -> BodySender:
        return self._sender

    async def run(self) -> None:
        self._running = True
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._interval_s)
                if self._stopping.is_set():
                    break
                await self.export_once(self._export_timeout_s)
        finally:
            self._finished.set()

    async def export_once(self, timeout_s: float) -> bool:
        request = self._aggregator.collect(time.time_ns())
        if not request.resource_metrics:
            return True
        ok = await self._sender.send_bytes(request.SerializeToString(), timeout_s, self._stopping)
        if ok:
            self.sent += 1
        else:
            self.failed += 1
        return ok

    async def shutdown(self, deadline_s: float) -> None:
        """Stop the loop (interrupting a backoff) and push the final snapshot."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        self._stopping.set()
        try:
            if self._running:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._finished.wait(), deadline_s)
            remaining = deadline - loop.time()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.export_once(remaining), remaining)
        finally:
            await self._sender.close()
