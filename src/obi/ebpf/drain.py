"""The capture's user-space side: drain the ring into a bounded queue, run the sweep, watch losses.

The ring is drained when the kernel asks (its epoll fd, batched wakeups; the
process events that cannot wait force one) and on a short timer, which slows
down to once a second while nothing comes; each tick also runs the kernel sweep
once (one syscall, whatever the number of connections). Batches wait in a queue bounded by
bytes; a full queue drops the batch, counts its records and says so once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from obi.ebpf.capture import Capture

# How often the ring is drained and the sweep run without a wakeup, while records come.
DRAIN_INTERVAL_S = 0.1
# Ticks that find nothing double the interval up to this (a tick costs obi's CPU even
# when nothing happens: 1 s brings an idle agent from 0.4% to 0.03% of a core); the first
# record drained brings it back to DRAIN_INTERVAL_S. The process events that cannot wait
# (exec, listen, a first TLS connection) wake the drain at once.
DRAIN_IDLE_INTERVAL_S = 1.0
# Kernel counters are read (and losses logged) every this many ticks.
COUNTER_TICKS = 10
DEFAULT_QUEUE_BYTES = 64 << 20


class BatchQueue:
    """Drained batches waiting for the span stage, bounded by their total size."""

    def __init__(self, max_bytes: int = DEFAULT_QUEUE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: deque[tuple[bytes, int]] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.dropped_records = 0

    def put(self, batch: bytes, records: int) -> bool:
        """Queue a batch; False (dropped and counted) when it would exceed the bound."""
        if self._bytes + len(batch) > self.max_bytes and self._items:
            self.dropped_records += records
            return False
        self._items.append((batch, records))
        self._bytes += len(batch)
        self._ready.set()
        self._idle.clear()
        return True

    async def get(self) -> bytes:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        batch, _ = self._items.popleft()
        self._bytes -= len(batch)
        return batch

    def done(self) -> None:
        """The batch last taken is processed."""
        if not self._items:
            self._idle.set()

    async def join(self) -> None:
        await self._idle.wait()

    def discard(self) -> int:
        """Drops what is left (at shutdown); returns how many records it held."""
        left = sum(records for _, records in self._items)
        self.dropped_records += left
        self._items.clear()
        self._bytes = 0
        self._idle.set()
        return left


@dataclass
class DrainSettings:
    idle_ns: int = 1_000_000_000  # ebpf.response_idle_timeout
    request_timeout_ns: int = 0  # ebpf.http_request_timeout
    queue_bytes: int = DEFAULT_QUEUE_BYTES


class CaptureDrain:
    """Moves what the kernel completed into the batch queue."""

    def __init__(self, capture: Capture, settings: DrainSettings) -> None:
        self.capture = capture
        self.settings = settings
        self.queue = BatchQueue(settings.queue_bytes)
        self.kernel: dict[str, int] = {}
        self.drained_bytes = 0  # record bytes taken from the ring (lengths excluded)
        self.drained_records = 0
        self._lost_reported = 0
        self._process_lost_seen = 0
        # called when process events were lost (discovery then looks at every process again)
        self.on_process_events_lost: Callable[[], None] | None = None
        self._queue_full_logged = False
        self._log = structlog.get_logger().bind(component="ebpf")

    def drain(self) -> None:
        for batch, records in self.capture.ring.drain():
            self.drained_records += records
            self.drained_bytes += len(batch) - 4 * records
            if not self.queue.put(batch, records) and not self._queue_full_logged:
                self._queue_full_logged = True
                self._log.warning("batch_queue_full", dropped_records=self.queue.dropped_records,
                                  max_bytes=self.queue.max_bytes,
                                  knob="ebpf.record_queue_bytes (OTEL_EBPF_BPF_RECORD_QUEUE_BYTES)",
                                  hint="the span stage is behind; records are dropped and counted")

    def sweep(self, flush: bool = False) -> None:
        self.capture.sweep(self.settings.idle_ns, self.settings.request_timeout_ns, flush)

    def check_counters(self) -> None:
        counters = self.capture.counters()
        self.kernel = counters
        lost = counters["events_lost"]
        if lost > self._lost_reported:
            self._log.warning("ring_buffer_events_lost", lost_total=lost, new=lost - self._lost_reported,
                              hint="raise ebpf.ring_buffer_size (OTEL_EBPF_BPF_RING_BUFFER_SIZE)")
            self._lost_reported = lost
        process_lost = counters.get("process_events_lost", 0)
        if process_lost > self._process_lost_seen:
            self._process_lost_seen = process_lost
            if self.on_process_events_lost is not None:
                self.on_process_events_lost()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_reader(self.capture.ring.epoll_fd, self.drain)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self.capture.ring.epoll_fd)

    async def run(self, stop: asyncio.Event) -> None:
        """Drain and sweep every tick until stop."""
        ticks = 0
        interval, seen = DRAIN_INTERVAL_S, self.drained_records
        while not stop.is_set():
            # a plain sleep: wait_for would build a task and a timeout scope every tick
            await asyncio.sleep(interval)
            self.sweep()
            self.drain()
            # records drained on a wakeup in between count as activity too
            busy, seen = self.drained_records != seen, self.drained_records
            interval = DRAIN_INTERVAL_S if busy else min(2 * interval, DRAIN_IDLE_INTERVAL_S)
            ticks += 1
            if ticks % COUNTER_TICKS == 0:
                self.check_counters()

    def flush(self) -> None:
        """At shutdown: everything the kernel completed, then every response under way."""
        self.drain()
        self.sweep(flush=True)
        self.drain()
        self.check_counters()
