"""The records that flow through the pipeline: who served a request, and the span for it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ServiceIdentity:
    """An instrumented process as telemetry sees it: its OTel resource.

    One per process; every span of the process shares the same object, so
    exporters can group spans by identity (``id(identity)`` or ``pid``).
    """

    pid: int
    exe_path: str
    service_name: str
    service_namespace: str = ""
    instance_id: str = ""
    sdk_language: str = "unknown"
    # The process's own environment named the service (OTEL_SERVICE_NAME or
    # service.name in OTEL_RESOURCE_ATTRIBUTES): later sources must not rename it.
    name_from_env: bool = False
    start_time: int = 0  # /proc/PID/stat start time: tells a reused pid from the process
    # Extra resource attributes (OTEL_RESOURCE_ATTRIBUTES of the process, host.name,
    # os.type, later Kubernetes metadata). Keys are OTel attribute names.
    attributes: dict[str, str] = field(default_factory=dict)

    def resource_attributes(self) -> dict[str, str | int]:
        """Every resource attribute, in a stable order, ready to encode."""
        attrs: dict[str, str | int] = {"service.name": self.service_name}
        if self.service_namespace:
            attrs["service.namespace"] = self.service_namespace
        attrs["service.instance.id"] = self.instance_id
        attrs["telemetry.sdk.name"] = "opentelemetry-ebpf-instrumentation"
        attrs["telemetry.sdk.language"] = self.sdk_language
        from obi import __version__

        attrs["telemetry.sdk.version"] = __version__
        attrs["process.pid"] = self.pid
        for key, value in self.attributes.items():
            attrs.setdefault(key, value)
        return attrs


SPAN_KIND_SERVER = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER


@dataclass(slots=True)
class HttpSpan:
    """One HTTP request served by an instrumented process.

    Times are nanoseconds since the Unix epoch. ``route`` is None when no
    route pattern matched and the unmatched mode left it unset.
    """

    service: ServiceIdentity
    start_ns: int
    end_ns: int
    method: str
    path: str
    route: str | None
    status_code: int
    request_body_size: int
    response_body_size: int
    scheme: str
    protocol_version: str  # "1.0" / "1.1"
    server_address: str
    server_port: int
    client_address: str
    client_port: int
    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes
    parent_span_id: bytes  # 8 bytes, or b"" for a root span
    sampled: bool = True
    kind: int = SPAN_KIND_SERVER

    @property
    def name(self) -> str:
        return f"{self.method} {self.route}" if self.route else self.method

    @property
    def is_error(self) -> bool:
        """Server spans are errors on 5xx only (OTel HTTP semantic conventions)."""
        return self.status_code >= 500

    def attributes(self) -> dict[str, str | int]:
        """Span attributes with OTel HTTP semantic-convention names."""
        attrs: dict[str, str | int] = {
            "http.request.method": self.method,
            "http.response.status_code": self.status_code,
            "url.path": self.path,
            "url.scheme": self.scheme,
        }
        if self.route is not None:
            attrs["http.route"] = self.route
        attrs["server.address"] = self.server_address
        attrs["server.port"] = self.server_port
        attrs["client.address"] = self.client_address
        attrs["network.protocol.version"] = self.protocol_version
        attrs["http.request.body.size"] = self.request_body_size
        attrs["http.response.body.size"] = self.response_body_size
        return attrs
