"""OTLP/gRPC transport: one unary Export call per attempt over a grpc.aio channel.

The request is sent as already-serialized bytes (the encoder writes them), so a
retry never re-encodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import cast

import grpc
import grpc.aio
import structlog

from obi.export.endpoints import OtlpSignal
from obi.export.retry import (
    GRPC_STATUS_DETAILS_KEY,
    SUCCESS,
    AttemptResult,
    classify_grpc,
    retry_delay_from_status_details,
)

EXPORT_METHODS: dict[OtlpSignal, str] = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}


# gRPC's reconnect backoff grows to 120 s by default: after a long outage exports would
# resume up to two minutes after the collector is back. Capped, they resume within seconds.
CHANNEL_OPTIONS = (("grpc.max_reconnect_backoff_ms", 5000),)


def _identity(data: bytes) -> bytes:
    return data


def _status_details(trailing: object) -> bytes | None:
    """The grpc-status-details-bin value; grpc.aio.Metadata iterates as (key, value) pairs."""
    if trailing is None:
        return None
    for key, value in cast(Iterable[tuple[str, str | bytes]], trailing):
        if key == GRPC_STATUS_DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


class GrpcTransport:
    """Sends serialized Export requests of one signal to ``host:port``.

    ``insecure_skip_verify`` cannot be honoured: grpcio offers no way to skip the check of
    the server's certificate (OBI's Go exporter sets tls.Config.InsecureSkipVerify). With
    TLS it is warned about once, here, when the exporter is built at start.
    """

    def __init__(
        self,
        target: str,
        signal: OtlpSignal,
        headers: Mapping[str, str],
        tls: bool,
        insecure_skip_verify: bool = False,
    ) -> None:
        if tls and insecure_skip_verify:
            structlog.get_logger().bind(component="export").warning(
                "insecure_skip_verify_not_supported",
                protocol="grpc",
                endpoint=target,
                signal=signal,
                message="gRPC cannot skip TLS certificate verification: the collector's certificate "
                "is still verified, and a self-signed one is refused",
                hint="use OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf, or trust the collector's CA with "
                "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
            )
        self._target = target
        self._method = EXPORT_METHODS[signal]
        # gRPC metadata keys must be lower case.
        self._metadata = tuple((k.lower(), v) for k, v in headers.items())
        self._tls = tls
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] | None = None

    @property
    def description(self) -> str:
        return f"grpc {self._target}"

    def _ensure_call(self) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        if self._call is None:
            if self._tls:
                self._channel = grpc.aio.secure_channel(self._target, grpc.ssl_channel_credentials(),
                                                        options=CHANNEL_OPTIONS)
            else:
                self._channel = grpc.aio.insecure_channel(self._target, options=CHANNEL_OPTIONS)
            self._call = self._channel.unary_unary(
                self._method, request_serializer=_identity, response_deserializer=_identity
            )
        return self._call

    async def attempt(self, body: bytes, timeout_s: float) -> AttemptResult:
        call = self._ensure_call()
        try:
            await call(body, timeout=timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            retry_after: float | None = None
            details = _status_details(err.trailing_metadata())
            if details is not None:
                retry_after = retry_delay_from_status_details(details)
            return classify_grpc(err.code(), retry_after, f"grpc status {err.code().name}")
        return SUCCESS

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
            self._call = None
