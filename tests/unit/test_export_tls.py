"""insecure_skip_verify against a real TLS collector with a self-signed certificate on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog.testing
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from obi.export.endpoints import resolve_otlp_target
from obi.export.otlp_grpc import GrpcTransport
from obi.export.otlp_http import HttpTransport
from obi.export.retry import SUCCESS, AttemptResult, Outcome
from tests.otlp_receiver import OtlpReceiver
from tests.support import self_signed_certificate

BODY = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[
    Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="GET /tls", kind=Span.SPAN_KIND_SERVER)])])]
).SerializeToString()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    return self_signed_certificate(directory / "server.crt", directory / "server.key")


@pytest.fixture
def receiver(certificate: tuple[Path, Path]) -> Iterator[OtlpReceiver]:
    with OtlpReceiver(tls=certificate) as r:
        yield r


async def export_once(transport: HttpTransport | GrpcTransport) -> AttemptResult:
    try:
        return await transport.attempt(BODY, 5.0)
    finally:
        await transport.close()


def received_names(receiver: OtlpReceiver) -> list[str]:
    return [span.name for _, span in receiver.spans()]


async def test_https_collector_with_a_self_signed_certificate_is_refused_by_default(
        receiver: OtlpReceiver) -> None:
    result = await export_once(HttpTransport(f"{receiver.http_endpoint}/v1/traces", {}))
    assert result == AttemptResult(Outcome.RETRYABLE,
                                   "http connection error: ClientConnectorCertificateError")
    assert received_names(receiver) == []


async def test_insecure_skip_verify_exports_to_it_over_tls(receiver: OtlpReceiver) -> None:
    assert receiver.http_endpoint.startswith("https://")  # the receiver speaks TLS only
    transport = HttpTransport(f"{receiver.http_endpoint}/v1/traces", {"x-tenant": "a"},
                              insecure_skip_verify=True)
    assert await export_once(transport) == SUCCESS
    assert received_names(receiver) == ["GET /tls"]
    assert receiver.trace_requests[0].headers["x-tenant"] == "a"


async def test_grpc_cannot_skip_verification_and_says_so_at_start(receiver: OtlpReceiver) -> None:
    target = resolve_otlp_target(receiver.grpc_endpoint, "", "grpc", "traces")
    assert target is not None and target.tls
    with structlog.testing.capture_logs() as logs:
        transport = GrpcTransport(target.endpoint, "traces", {}, target.tls, insecure_skip_verify=True)
    [warning] = logs
    assert warning["event"] == "insecure_skip_verify_not_supported" and warning["log_level"] == "warning"
    assert warning["protocol"] == "grpc" and warning["endpoint"] == target.endpoint
    assert "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH" in warning["hint"] and "http/protobuf" in warning["hint"]
    # The certificate is still verified: a self-signed one is refused.
    result = await export_once(transport)
    assert result.outcome is Outcome.RETRYABLE and result.reason == "grpc status UNAVAILABLE"
    assert received_names(receiver) == []
    # Without TLS there is nothing to verify, so nothing to warn about.
    with structlog.testing.capture_logs() as logs:
        await GrpcTransport(target.endpoint, "traces", {}, False, insecure_skip_verify=True).close()
    assert logs == []


def test_the_grpc_hint_works_trusting_the_collector_certificate(
        receiver: OtlpReceiver, certificate: tuple[Path, Path]) -> None:
    # In a process of its own: gRPC reads its default roots once per process.
    script = (
        "import asyncio, sys\n"
        "from obi.export.otlp_grpc import GrpcTransport\n"
        "from tests.unit.test_export_tls import BODY\n"
        "async def main():\n"
        "    transport = GrpcTransport(sys.argv[1], 'traces', {}, True)\n"
        "    print((await transport.attempt(BODY, 5.0)).outcome.value)\n"
        "    await transport.close()\n"
        "asyncio.run(main())\n"
    )
    env = {**os.environ, "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(certificate[0])}
    done = subprocess.run([sys.executable, "-c", script, f"127.0.0.1:{receiver.grpc_port}"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert done.stdout == "success\n", done.stderr
    assert received_names(receiver) == ["GET /tls"]
