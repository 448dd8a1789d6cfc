"""insecure_skip_verify against a real TLS collector with a self-signed certificate on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
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


async def test_grpc_refuses_a_self_signed_certificate_by_default(receiver: OtlpReceiver) -> None:
    target = resolve_otlp_target(receiver.grpc_endpoint, "", "grpc", "traces")
    assert target is not None and target.tls
    result = await export_once(GrpcTransport(target.endpoint, "traces", {}, target.tls))
    assert result == AttemptResult(Outcome.RETRYABLE, "grpc connection error: certificate not trusted")
    assert received_names(receiver) == []


async def test_grpc_insecure_skip_verify_exports_to_it_over_tls(receiver: OtlpReceiver) -> None:
    target = resolve_otlp_target(receiver.grpc_endpoint, "", "grpc", "traces")
    assert target is not None and target.tls
    transport = GrpcTransport(target.endpoint, "traces", {"x-tenant": "a"}, target.tls,
                              insecure_skip_verify=True)
    assert await export_once(transport) == SUCCESS
    assert received_names(receiver) == ["GET /tls"]
    assert receiver.trace_requests[0].headers["x-tenant"] == "a"


@pytest.mark.parametrize(("protocol", "variable"), [("grpc", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"),
                                                    ("grpc", "SSL_CERT_FILE"), ("http", "SSL_CERT_FILE")])
def test_the_collector_certificate_named_by_the_environment_is_trusted(
        receiver: OtlpReceiver, certificate: tuple[Path, Path], protocol: str, variable: str) -> None:
    # In a process of its own, as obi reads its environment at start.
    script = (
        "import asyncio, sys\n"
        "from obi.export.otlp_grpc import GrpcTransport\n"
        "from obi.export.otlp_http import HttpTransport\n"
        "from tests.unit.test_export_tls import BODY\n"
        "async def main():\n"
        "    if sys.argv[1] == 'grpc':\n"
        "        transport = GrpcTransport(sys.argv[2], 'traces', {}, True)\n"
        "    else:\n"
        "        transport = HttpTransport(sys.argv[2], {})\n"
        "    result = await transport.attempt(BODY, 5.0)\n"
        "    print(result.reason, file=sys.stderr)\n"
        "    print(result.outcome.value)\n"
        "    await transport.close()\n"
        "asyncio.run(main())\n"
    )
    grpc_target, http_target = f"127.0.0.1:{receiver.grpc_port}", f"{receiver.http_endpoint}/v1/traces"
    target = grpc_target if protocol == "grpc" else http_target
    env = {**os.environ, variable: str(certificate[0])}
    done = subprocess.run([sys.executable, "-c", script, protocol, target], env=env,
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert done.stdout == "success\n", done.stderr
    assert received_names(receiver) == ["GET /tls"]


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_grpc_roots_file_that_cannot_be_used_is_a_clear_error_at_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None) -> None:
    roots = tmp_path / "roots.pem"
    if content is not None:
        roots.write_text(content)
    monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", str(roots))
    with pytest.raises(OSError, match=f"^GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={roots}: cannot read trusted"):
        GrpcTransport("collector:4317", "traces", {}, True)
    GrpcTransport("collector:4317", "traces", {}, False)  # without TLS the file is not read
