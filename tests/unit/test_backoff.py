"""The one backoff policy of exporters and informers: capped, exponential, jittered."""

from __future__ import annotations

import random

from obi.backoff import Backoff


def test_capped_exponential_with_jitter() -> None:
    backoff = Backoff(initial_s=1.0, max_s=5.0, jitter=0.5)
    assert [backoff.delay(n, lambda: 0.0) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.delay(1, lambda: 1.0) == 1.0
    assert Backoff(initial_s=1.0, multiplier=3.0, max_s=100.0).delay(2, lambda: 0.0) == 9.0


def test_jitter_only_shortens_and_stays_within_its_fraction() -> None:
    backoff = Backoff(initial_s=2.0, max_s=2.0, jitter=0.5)
    rng = random.Random(7)
    delays = [backoff.delay(0, rng.random) for _ in range(1000)]
    assert all(1.0 < d <= 2.0 for d in delays)
    assert len(set(delays)) > 900  # clients do not retry in step


def test_retrying_for_ever_stays_at_the_cap() -> None:
    backoff = Backoff(initial_s=0.5, max_s=30.0, jitter=0.0)
    assert backoff.delay(10_000) == 30.0


def test_informers_wait_half_to_all_of_the_capped_value_and_slowly_after_a_403() -> None:
    from obi.kube.informers import InformerRetry

    retry = InformerRetry()
    rng = random.Random(3)
    for attempt, ceiling in ((0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (100, 30.0)):
        delays = [retry.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 < d <= ceiling for d in delays), attempt
    assert retry.forbidden_s == 60.0
