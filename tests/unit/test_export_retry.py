"""Retry decisions: classification, server hints, backoff, deadline and interrupt."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from obi.export.retry import (
    SUCCESS,
    AttemptResult,
    Outcome,
    RetryPolicy,
    classify_grpc,
    classify_http,
    parse_retry_after,
    retry_delay_from_status_details,
    send_with_retry,
)
from tests.rpc_status import encode_retry_info_status

# google.rpc.Status{code: 8, message: "x", details: [Any{RetryInfo{retry_delay: 2.5s}}]},
# written out by hand from the .proto definitions.
RETRY_INFO_STATUS = (
    b"\x08\x08"  # code = 8
    b"\x12\x01x"  # message = "x"
    b"\x1a\x36"  # details (Any), 54 bytes
    b"\x0a\x28type.googleapis.com/google.rpc.RetryInfo"  # type_url, 40 bytes
    b"\x12\x0a"  # value (RetryInfo), 10 bytes
    b"\x0a\x08"  # retry_delay (Duration), 8 bytes
    b"\x08\x02"  # seconds = 2
    b"\x10\x80\xca\xb5\xee\x01"  # nanos = 500000000
)


def test_retry_info_literal_bytes() -> None:
    assert retry_delay_from_status_details(RETRY_INFO_STATUS) == 2.5
    assert encode_retry_info_status(8, "x", 2.5) == RETRY_INFO_STATUS


def test_retry_info_round_trip_and_garbage() -> None:
    assert retry_delay_from_status_details(encode_retry_info_status(8, "slow down", 0.25)) == pytest.approx(
        0.25
    )
    assert retry_delay_from_status_details(encode_retry_info_status(14, "", 3)) == 3
    assert retry_delay_from_status_details(b"") is None
    assert retry_delay_from_status_details(b"\xff\xff\xff") is None
    assert retry_delay_from_status_details(b"\x08\x08\x12\x01x") is None


def test_classification() -> None:
    assert classify_http(200, None) == SUCCESS
    assert classify_http(503, 2.0) == AttemptResult(Outcome.RETRYABLE, "http status 503", 2.0)
    for status in (429, 502, 504):
        assert classify_http(status, None).outcome is Outcome.RETRYABLE
    for status in (400, 401, 403, 404, 413, 500):
        assert classify_http(status, None).outcome is Outcome.PERMANENT


def test_grpc_classification_by_the_codes_on_the_wire() -> None:
    # grpcio's enum (a test dependency) holds obi's numbers to the gRPC specification's.
    retryable = {"CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS"}
    for status in grpc.StatusCode:
        code, name = status.value[0], status.name
        result = classify_grpc(code, None, name)
        if name == "OK":
            assert result == SUCCESS
        elif name in retryable:
            assert result == AttemptResult(Outcome.RETRYABLE, name), name
        else:
            assert result == AttemptResult(Outcome.PERMANENT, name), name
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert classify_grpc(exhausted, 1.0, "") == AttemptResult(Outcome.RETRYABLE, "", 1.0)


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_exporters_back_off_as_otel_exporters_do() -> None:
    policy = RetryPolicy()
    assert [policy.delay(n, lambda: 0.0) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.delay(0, lambda: 1.0) == pytest.approx(0.8)  # 20% jitter


@pytest.mark.asyncio
async def test_retries_then_succeeds() -> None:
    results = [AttemptResult(Outcome.RETRYABLE, "busy"), AttemptResult(Outcome.RETRYABLE, "busy"), SUCCESS]
    seen: list[float] = []

    async def attempt(remaining: float) -> AttemptResult:
        seen.append(remaining)
        return results.pop(0)

    policy = RetryPolicy(initial_s=0.01, max_s=0.02)
    assert await send_with_retry(attempt, 5.0, asyncio.Event(), policy) == SUCCESS
    assert len(seen) == 3
    assert all(0 < r <= 5.0 for r in seen)


@pytest.mark.asyncio
async def test_permanent_is_returned_at_once() -> None:
    calls = 0

    async def attempt(remaining: float) -> AttemptResult:
        nonlocal calls
        calls += 1
        return AttemptResult(Outcome.PERMANENT, "bad request")

    result = await send_with_retry(attempt, 5.0, asyncio.Event(), RetryPolicy(initial_s=0.01))
    assert result.outcome is Outcome.PERMANENT and calls == 1


@pytest.mark.asyncio
async def test_interrupt_ends_a_backoff_wait() -> None:
    interrupt = asyncio.Event()

    async def attempt(remaining: float) -> AttemptResult:
        return AttemptResult(Outcome.RETRYABLE, "busy")

    loop = asyncio.get_running_loop()
    loop.call_later(0.05, interrupt.set)
    started = time.monotonic()
    result = await send_with_retry(attempt, 30.0, interrupt, RetryPolicy(initial_s=10.0))
    assert result.outcome is Outcome.RETRYABLE
    assert time.monotonic() - started < 1.0
