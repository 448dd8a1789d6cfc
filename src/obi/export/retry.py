"""Retrying one OTLP export: capped exponential backoff with jitter, server hints, deadline.

Transports report each attempt as an AttemptResult; ``send_with_retry`` decides
whether and when to try again. A set ``interrupt`` event (shutdown) ends any
backoff wait at once and gives up the export.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from obi.backoff import Backoff


class Outcome(enum.Enum):
    SUCCESS = "success"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one export attempt came to; ``reason`` is safe to log (no header values)."""

    outcome: Outcome
    reason: str = ""
    retry_after_s: float | None = None


SUCCESS = AttemptResult(Outcome.SUCCESS)


# The exporters' backoff between attempts; its defaults are the OTel exporters'.
RetryPolicy = Backoff


# gRPC status codes (the numbers of the gRPC specification, as on the wire).
GRPC_OK = 0
GRPC_RESOURCE_EXHAUSTED = 8
# OTLP/gRPC: retryable codes (RESOURCE_EXHAUSTED only with RetryInfo): CANCELLED,
# DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE, DATA_LOSS.
RETRYABLE_GRPC_CODES = frozenset({1, 4, 10, 11, 14, 15})
# OTLP/HTTP: retryable statuses.
RETRYABLE_HTTP_STATUSES = frozenset({429, 502, 503, 504})

GRPC_STATUS_DETAILS_KEY = "grpc-status-details-bin"
RETRY_INFO_TYPE_URL = "type.googleapis.com/google.rpc.RetryInfo"


def classify_grpc(code: int, retry_after_s: float | None, reason: str) -> AttemptResult:
    if code == GRPC_OK:
        return SUCCESS
    if code in RETRYABLE_GRPC_CODES or (code == GRPC_RESOURCE_EXHAUSTED and retry_after_s is not None):
        return AttemptResult(Outcome.RETRYABLE, reason, retry_after_s)
    return AttemptResult(Outcome.PERMANENT, reason)


def classify_http(status: int, retry_after_s: float | None) -> AttemptResult:
    if 200 <= status < 300:
        return SUCCESS
    reason = f"http status {status}"
    if status in RETRYABLE_HTTP_STATUSES:
        return AttemptResult(Outcome.RETRYABLE, reason, retry_after_s)
    return AttemptResult(Outcome.PERMANENT, reason)


async def send_with_retry(
    attempt: Callable[[float], Awaitable[AttemptResult]],
    timeout_s: float,
    interrupt: asyncio.Event,
    policy: RetryPolicy,
) -> AttemptResult:
    """Call ``attempt(remaining_s)`` until success, a permanent error, the deadline or interrupt.

    Returns the last AttemptResult (SUCCESS or the error that ended the export).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    retry = 0
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return AttemptResult(Outcome.RETRYABLE, "export deadline exceeded")
        result = await attempt(remaining)
        if result.outcome is not Outcome.RETRYABLE:
            return result
        if interrupt.is_set():
            return result
        delay = result.retry_after_s if result.retry_after_s is not None else policy.delay(retry)
        if loop.time() + delay >= deadline:
            return result
        retry += 1
        try:
            await asyncio.wait_for(interrupt.wait(), delay)
        except TimeoutError:
            continue
        return result


# --- google.rpc.Status / RetryInfo in grpc-status-details-bin, without googleapis protos.


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """Top-level (field number, value) pairs of a protobuf message."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            out.append((number, value))
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise ValueError("truncated field")
            out.append((number, data[pos : pos + size]))
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def retry_delay_from_status_details(details: bytes) -> float | None:
    """RetryInfo.retry_delay (seconds) from a serialized google.rpc.Status, if any."""
    try:
        for number, value in _fields(details):
            if number != 3 or not isinstance(value, bytes):  # Status.details: Any
                continue
            any_fields = dict(_fields(value))
            if any_fields.get(1) != RETRY_INFO_TYPE_URL.encode():
                continue
            retry_info = dict(_fields(_as_bytes(any_fields.get(2))))
            duration = dict(_fields(_as_bytes(retry_info.get(1))))
            seconds = duration.get(1, 0)
            nanos = duration.get(2, 0)
            if isinstance(seconds, int) and isinstance(nanos, int):
                return seconds + nanos / 1e9
    except ValueError:
        return None
    return None


def _as_bytes(value: int | bytes | None) -> bytes:
    return value if isinstance(value, bytes) else b""


def parse_retry_after(value: str | None) -> float | None:
    """HTTP Retry-After as seconds (delta-seconds or HTTP-date), None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())
