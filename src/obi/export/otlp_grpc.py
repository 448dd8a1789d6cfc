"""OTLP/gRPC transport: one unary Export call per attempt over an HTTP/2 channel (grpclib).

The request is sent as already-serialized bytes (the encoder writes them), so a
retry never re-encodes. grpclib is gRPC in Python on asyncio's own sockets and
TLS: no second runtime beside the event loop (grpcio's core brought 12 MiB of
resident memory and threads of its own to an agent that makes one call every
few seconds), and TLS is Python's, so ``insecure_skip_verify`` works as in OBI.
A lost connection is made again by the next attempt; the retry policy paces them.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any

from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.encoding.base import CodecBase, StatusDetailsCodecBase
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from obi.export.endpoints import OtlpSignal
from obi.export.retry import SUCCESS, AttemptResult, Outcome, classify_grpc, retry_delay_from_status_details

EXPORT_METHODS: dict[OtlpSignal, str] = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}

# grpcio's variable for a file of trusted roots, which obi's gRPC exporter documented before
# it used Python's TLS: still honoured, beside OpenSSL's SSL_CERT_FILE and SSL_CERT_DIR.
ROOTS_FILE_ENV = "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"


class _Bytes(CodecBase):
    """Messages are bytes both ways: the encoder serialized the request, the reply is ignored."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


class _RawDetails(StatusDetailsCodecBase):
    """Keeps grpc-status-details-bin as bytes (its RetryInfo is read by obi.export.retry)."""

    def encode(self, status: Status, message: str | None, details: Any) -> bytes:
        raise NotImplementedError  # a client never sends status details

    def decode(self, status: Status, message: str | None, data: bytes) -> bytes:
        return data


def split_target(target: str, tls: bool) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) -> (host, port); without a port, gRPC's default (443/80)."""
    url = urllib.parse.urlsplit(f"//{target}")
    host = url.hostname or ""
    return host, url.port or (443 if tls else 80)


def tls_context(insecure_skip_verify: bool) -> ssl.SSLContext:
    """TLS 1.2+ with ALPN h2, verifying the collector's certificate (unless told not to) against
    the system's roots, SSL_CERT_FILE / SSL_CERT_DIR, and ROOTS_FILE_ENV's file."""
    context = ssl.create_default_context()
    roots = os.environ.get(ROOTS_FILE_ENV)
    if roots:
        try:
            context.load_verify_locations(cafile=roots)
        except (OSError, ValueError) as err:  # missing, unreadable, or no certificate in it
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise OSError(f"{ROOTS_FILE_ENV}={roots}: cannot read trusted certificates ({reason})") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    if insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class GrpcTransport:
    """Sends serialized Export requests of one signal to ``host:port``."""

    def __init__(
        self,
        target: str,
        signal: OtlpSignal,
        headers: Mapping[str, str],
        tls: bool,
        insecure_skip_verify: bool = False,
    ) -> None:
        self._target = target
        self._host, self._port = split_target(target, tls)
        self._method = EXPORT_METHODS[signal]
        # gRPC metadata keys must be lower case.
        self._metadata = tuple((k.lower(), v) for k, v in headers.items())
        self._ssl = tls_context(insecure_skip_verify) if tls else None
        self._channel: Channel | None = None

    @property
    def description(self) -> str:
        return f"grpc {self._target}"

    def _ensure_channel(self) -> Channel:
        if self._channel is None:  # made inside the running loop, which grpclib binds to
            self._channel = Channel(self._host, self._port, ssl=self._ssl, codec=_Bytes(),
                                    status_details_codec=_RawDetails())
        return self._channel

    async def attempt(self, body: bytes, timeout_s: float) -> AttemptResult:
        channel = self._ensure_channel()
        try:
            async with asyncio.timeout(timeout_s):
                async with channel.request(self._method, Cardinality.UNARY_UNARY, bytes, bytes,
                                           timeout=timeout_s, metadata=self._metadata) as stream:
                    await stream.send_message(body, end=True)
                    await stream.recv_message()
                    await stream.recv_trailing_metadata()
        except GRPCError as err:
            details = err.details if isinstance(err.details, bytes) else None
            retry_after = retry_delay_from_status_details(details) if details is not None else None
            return classify_grpc(err.status.value, retry_after, f"grpc status {err.status.name}")
        except TimeoutError:
            return AttemptResult(Outcome.RETRYABLE, "grpc status DEADLINE_EXCEEDED")
        except ssl.SSLCertVerificationError:
            return AttemptResult(Outcome.RETRYABLE, "grpc connection error: certificate not trusted")
        except (OSError, ProtocolError, StreamTerminatedError) as err:
            # Refused, reset, GOAWAY...: the type only, a message could quote the address.
            self._drop_channel()
            return AttemptResult(Outcome.RETRYABLE, f"grpc connection error: {type(err).__name__}")
        return SUCCESS

    def _drop_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    async def close(self) -> None:
        self._drop_channel()
