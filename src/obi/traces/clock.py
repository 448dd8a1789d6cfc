"""The kernel's clock (CLOCK_MONOTONIC, bpf_ktime_get_ns) to Unix epoch time.

The offset between the two clocks is read in pairs: a thread preempted between
its two reads (hundreds of microseconds on a busy VM) would shift every span of
a batch against the spans of the next. So the offset is the tightest of a few
monotonic-wall-monotonic readings, kept for a while (the wall clock's slewing is
microseconds per second), and a reading that no sample could make tight is not
taken over a good one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

REFRESH_NS = 1_000_000_000  # a wall clock step (NTP, a resumed VM) is followed within this
SAMPLES = 5
TIGHT_NS = 50_000  # a wider window than this is a preemption, not a reading


class EpochClock:
    """`offset()` + a CLOCK_MONOTONIC time in nanoseconds = nanoseconds since the Unix epoch."""

    def __init__(self, monotonic_ns: Callable[[], int] = time.monotonic_ns,
                 time_ns: Callable[[], int] = time.time_ns, refresh_ns: int = REFRESH_NS) -> None:
        self._monotonic_ns = monotonic_ns
        self._time_ns = time_ns
        self._refresh_ns = refresh_ns
        self._offset: int | None = None
        self._read_at = 0
        self.loose_readings = 0  # refreshes where every sample was preempted (the old offset kept)

    def offset(self) -> int:
        now = self._monotonic_ns()
        if self._offset is not None and now - self._read_at < self._refresh_ns:
            return self._offset
        offset, window = self._read()
        if window <= TIGHT_NS or self._offset is None:
            self._offset = offset
        else:
            self.loose_readings += 1
        self._read_at = now
        return self._offset

    def _read(self) -> tuple[int, int]:
        """The tightest of SAMPLES readings: (offset, the monotonic window it was read in)."""
        monotonic_ns, time_ns = self._monotonic_ns, self._time_ns
        best_offset, best_window = 0, -1
        for _ in range(SAMPLES):
            before = monotonic_ns()
            wall = time_ns()
            after = monotonic_ns()
            window = after - before
            if best_window < 0 or window < best_window:
                best_offset, best_window = wall - (before + after) // 2, window
        return best_offset, best_window
