"""Capped exponential backoff with jitter: how long exporters and informers wait before a retry."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """The wait before retry n (0 first): ``initial_s * multiplier**n`` capped at ``max_s``,
    shortened by up to ``jitter`` of itself so that many clients do not retry in step.

    The defaults are the OpenTelemetry exporters': about 1 s, doubling, up to 30 s.
    """

    initial_s: float = 1.0
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait; ``rand`` draws from [0, 1)."""
        try:
            growth = self.multiplier**retry
        except OverflowError:  # retried for ever: long since at the cap
            growth = math.inf
        base = min(self.max_s, self.initial_s * growth)
        return base * (1.0 - self.jitter * rand())
