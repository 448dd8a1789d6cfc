"""The kernel clock's offset to epoch time: tight readings only, refreshed, steps followed."""

from __future__ import annotations

import time
from collections.abc import Iterator

from obi.traces.clock import REFRESH_NS, SAMPLES, TIGHT_NS, EpochClock

EPOCH = 1_800_000_000_000_000_000


class Clocks:
    """A monotonic clock that advances by scripted steps and a wall clock EPOCH (+ step) ahead of it."""

    def __init__(self, gaps: Iterator[int]) -> None:
        self.now = 1_000_000
        self.gaps = gaps
        self.step = 0

    def monotonic_ns(self) -> int:
        self.now += 1_000
        return self.now

    def time_ns(self) -> int:
        wall = EPOCH + self.step + self.now + 500  # read half-way through a 1 µs window...
        self.now += next(self.gaps, 0)  # ...unless preempted right after it
        return wall


def test_the_tightest_sample_wins_over_a_preempted_one() -> None:
    # the first sample is preempted for 400 µs after reading the wall clock: it would say 200 µs less
    clocks = Clocks(iter([400_000]))
    clock = EpochClock(clocks.monotonic_ns, clocks.time_ns)
    assert clock.offset() == EPOCH
    assert clock.loose_readings == 0


def test_the_offset_is_kept_between_refreshes_and_read_again_after() -> None:
    clocks = Clocks(iter([]))
    clock = EpochClock(clocks.monotonic_ns, clocks.time_ns)
    assert clock.offset() == EPOCH
    clocks.step = 5_000_000_000  # the wall clock stepped 5 s ahead (NTP)
    assert clock.offset() == EPOCH
    clocks.now += REFRESH_NS
    assert clock.offset() == EPOCH + clocks.step


def test_a_refresh_where_every_sample_was_preempted_keeps_the_old_offset() -> None:
    clocks = Clocks(iter([]))
    clock = EpochClock(clocks.monotonic_ns, clocks.time_ns)
    assert clock.offset() == EPOCH
    clocks.now += REFRESH_NS
    clocks.gaps = iter([TIGHT_NS * 2] * SAMPLES)
    assert clock.offset() == EPOCH
    assert clock.loose_readings == 1
    # ...and is read again at the next refresh
    clocks.now += REFRESH_NS
    clocks.step = 7
    assert clock.offset() == EPOCH + 7


def test_the_first_reading_is_taken_even_when_loose() -> None:
    clocks = Clocks(iter([TIGHT_NS * 2] * SAMPLES))
    clock = EpochClock(clocks.monotonic_ns, clocks.time_ns)
    assert abs(clock.offset() - EPOCH) <= TIGHT_NS


def test_the_real_clocks_agree_with_a_direct_reading() -> None:
    clock = EpochClock()
    direct = time.time_ns() - time.monotonic_ns()
    assert abs(clock.offset() - direct) < 5_000_000
