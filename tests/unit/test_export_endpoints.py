"""OTLP endpoint, protocol and header resolution (OTel spec + OBI rules)."""

from __future__ import annotations

import pytest

from obi.export.endpoints import (
    OtlpEndpointError,
    OtlpSignal,
    OtlpTarget,
    redact_url,
    resolve_otlp_target,
)


def http(url: str, signal: OtlpSignal = "traces") -> OtlpTarget:
    return OtlpTarget("http/protobuf", url, url.startswith("https:"), signal)


def grpc(host_port: str, tls: bool = False, signal: OtlpSignal = "traces") -> OtlpTarget:
    return OtlpTarget("grpc", host_port, tls, signal)


CASES = [
    # The deployment guide's cases.
    ("http://otelcol:4318", "", "", "traces", http("http://otelcol:4318/v1/traces")),
    ("http://otelcol:4317", "", "", "traces", grpc("otelcol:4317")),
    ("http://otelcol:4318", "", "", "metrics", http("http://otelcol:4318/v1/metrics", "metrics")),
    ("http://otelcol:4317", "", "", "metrics", grpc("otelcol:4317", signal="metrics")),
    # No double slash; a base path is kept and the signal path appended.
    ("http://otelcol:4318/", "", "", "traces", http("http://otelcol:4318/v1/traces")),
    (
        "https://gw.example.com/otlp/",
        "",
        "",
        "metrics",
        http("https://gw.example.com/otlp/v1/metrics", "metrics"),
    ),
    # A signal-specific endpoint with a path is used as given and wins over the common one.
    ("http://a:4318", "http://b:9000/custom/path", "", "traces", http("http://b:9000/custom/path")),
    ("", "http://b:4318/v1/traces", "", "traces", http("http://b:4318/v1/traces")),
    ("", "http://b:4318/custom/", "", "metrics", http("http://b:4318/custom/", "metrics")),
    ("", "http://b:4318/x?tenant=1", "", "traces", http("http://b:4318/x?tenant=1")),
    ("", "http://b:4317", "", "traces", grpc("b:4317")),
    ("", "http://b:4317/ignored", "", "traces", grpc("b:4317")),
    # Without a path (or just "/") it gets the signal path, as OBI's Go SDK does.
    ("", "http://b:4318", "", "traces", http("http://b:4318/v1/traces")),
    ("http://a:4318/base", "http://b:4318/", "", "traces", http("http://b:4318/v1/traces")),
    ("", "https://b", "", "metrics", http("https://b/v1/metrics", "metrics")),
    # An explicit protocol beats the port guess.
    ("http://otelcol:4317", "", "http/protobuf", "traces", http("http://otelcol:4317/v1/traces")),
    ("http://otelcol:4318", "", "grpc", "traces", grpc("otelcol:4318")),
    ("http://otelcol:9999", "", "GRPC", "traces", grpc("otelcol:9999")),
    # Unknown port: OBI's default http/protobuf. https means TLS.
    ("https://otelcol:443", "", "", "traces", http("https://otelcol:443/v1/traces")),
    ("https://otelcol:4317", "", "", "traces", grpc("otelcol:4317", tls=True)),
    ("http://[::1]:4317", "", "", "traces", grpc("[::1]:4317")),
    ("http://otelcol", "", "", "traces", http("http://otelcol/v1/traces")),
    ("http://u:p@otelcol:4317", "", "", "traces", grpc("otelcol:4317")),
]


@pytest.mark.parametrize(("common", "signal_endpoint", "protocol", "signal", "expected"), CASES)
def test_resolve_otlp_target(
    common: str, signal_endpoint: str, protocol: str, signal: OtlpSignal, expected: OtlpTarget
) -> None:
    assert resolve_otlp_target(common, signal_endpoint, protocol, signal) == expected


def test_no_endpoint_means_no_target() -> None:
    assert resolve_otlp_target("", "", "", "traces") is None
    assert resolve_otlp_target("  ", "", "grpc", "metrics") is None


@pytest.mark.parametrize(
    ("endpoint", "protocol", "message"),
    [
        ("otelcol:4317", "", "scheme must be http or https"),
        ("/just/a/path", "", "scheme must be http or https"),
        ("ftp://otelcol:4317", "", "scheme must be http or https"),
        ("http://:4317", "", "missing host"),
        ("http://otelcol:99999", "", "invalid port"),
        ("http://otelcol:abc", "", "invalid port"),
        ("http://otelcol:0", "", "invalid port"),
        ("http://[::1:4317", "", "invalid host"),
        ("http://otelcol:4318", "http/json", "not supported by obi yet"),
        ("http://otelcol:4318", "thrift", "unknown protocol"),
    ],
)
def test_bad_settings_are_clear_errors(endpoint: str, protocol: str, message: str) -> None:
    with pytest.raises(OtlpEndpointError, match=message):
        resolve_otlp_target(endpoint, "", protocol, "traces")
    with pytest.raises(OtlpEndpointError, match=message):
        resolve_otlp_target("", endpoint, protocol, "metrics")


def test_errors_hide_user_info() -> None:
    with pytest.raises(OtlpEndpointError) as info:
        resolve_otlp_target("ftp://user:s3cret@otelcol:4317/a@b", "", "", "traces")
    assert "s3cret" not in str(info.value)
    assert '"ftp://otelcol:4317/a@b"' in str(info.value)


def test_redact_url() -> None:
    assert redact_url("https://user:tok@gw:4318/v1/traces") == "https://gw:4318/v1/traces"
    assert redact_url("http://gw:4318/v1/traces") == "http://gw:4318/v1/traces"
