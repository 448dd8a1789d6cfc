"""The records that flow through the pipeline: who served or made a request, and its span.

One span model for every protocol: ``Span`` holds what all spans have (who,
kind, times, trace context); a subclass per protocol adds its facts and says,
in one place, the span's name, status and attributes. Exporters see spans only
through that interface:

- ``shape_key()``: a hashable tuple of every field the span's name, kind,
  status and repeated attributes depend on; the class method
  ``shape_of(key)`` builds them from the key alone, so an encoder may cache by
  the key without any chance of the two drifting apart;
- ``varying_values()``: the attributes that change from span to span (paths,
  sizes), encoded after the repeated ones; their keys are part of the shape.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Final, NamedTuple

AttributeValue = str | int


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


# opentelemetry.proto.trace.v1.Span.SpanKind
SPAN_KIND_SERVER: Final = 2
SPAN_KIND_CLIENT: Final = 3

# Span.exclude bits: where a span must not go (routes.ignored_patterns with ignore_mode).
EXCLUDE_TRACES: Final = 1
EXCLUDE_METRICS: Final = 2


class SpanShape(NamedTuple):
    """What a span's shape key stands for: name, kind, error status, repeated attributes,
    and the keys of the attributes whose values vary from span to span."""

    name: str
    kind: int
    is_error: bool
    attributes: tuple[tuple[str, AttributeValue], ...]
    varying: tuple[str, ...]


# Spans are made once per event: their __init__ is written out (init=False), because the one
# dataclass generates stays interpreted Python when the module is compiled (7,000 instructions a
# span against a few hundred); the parameters are the fields, in field order. Subclasses call
# Span.__init__ by name: slots=True makes a new class, which zero-argument super() does not know.
@dataclass(slots=True, init=False)
class Span:
    """What every span has. Times are nanoseconds since the Unix epoch; ids are
    16 and 8 bytes, the parent id b"" for a root span."""

    service: ServiceIdentity
    kind: int
    start_ns: int
    end_ns: int
    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes
    sampled: bool
    exclude: int  # EXCLUDE_* bits

    def __init__(self, service: ServiceIdentity, kind: int, start_ns: int, end_ns: int, trace_id: bytes,
                 span_id: bytes, parent_span_id: bytes, sampled: bool, exclude: int) -> None:
        self.service = service
        self.kind = kind
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.sampled = sampled
        self.exclude = exclude

    @property
    def type_name(self) -> str:
        """OBI's name for the span's type ("HTTP", "HTTPClient", ...), for printers."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        return self.shape_of(self.shape_key()).name

    @property
    def is_error(self) -> bool:
        return self.shape_of(self.shape_key()).is_error

    def shape_key(self) -> Hashable:
        raise NotImplementedError

    @classmethod
    def shape_of(cls, key: Hashable) -> SpanShape:
        raise NotImplementedError

    def varying_values(self) -> tuple[AttributeValue, ...]:
        raise NotImplementedError

    def attributes(self) -> dict[str, AttributeValue]:
        """Every span attribute, in encoding order (repeated ones, then varying ones)."""
        shape = self.shape_of(self.shape_key())
        attrs = dict(shape.attributes)
        attrs.update(zip(shape.varying, self.varying_values(), strict=True))
        return attrs


_SERVER_VARYING: Final = ("url.path", "http.request.body.size", "http.response.body.size")
_CLIENT_VARYING: Final = ("url.full", "http.request.body.size", "http.response.body.size")

# (kind, method, status_code, route, scheme, server_address, server_port,
#  client_address, protocol_version, error_type): everything an HTTP span's name,
# status and repeated attributes depend on.
HttpShapeKey = tuple[int, str, int, str | None, str, str, int, str, str, str]


@dataclass(slots=True, init=False)
class HttpSpan(Span):
    """One HTTP/1.x request, served (SERVER) or made (CLIENT) by an instrumented process.

    ``route`` is None when no route applies. ``status_code`` is 0 when no
    response came (then ``error_type`` says why). ``url_full`` is for client
    spans, ``client_address`` / ``client_port`` for server spans.
    """

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
    url_full: str
    error_type: str

    def __init__(self, service: ServiceIdentity, kind: int, start_ns: int, end_ns: int, trace_id: bytes,
                 span_id: bytes, parent_span_id: bytes, sampled: bool, exclude: int, method: str, path: str,
                 route: str | None, status_code: int, request_body_size: int, response_body_size: int,
                 scheme: str, protocol_version: str, server_address: str, server_port: int,
                 client_address: str, client_port: int, url_full: str, error_type: str) -> None:
        Span.__init__(self, service, kind, start_ns, end_ns, trace_id, span_id, parent_span_id, sampled,
                      exclude)
        self.method = method
        self.path = path
        self.route = route
        self.status_code = status_code
        self.request_body_size = request_body_size
        self.response_body_size = response_body_size
        self.scheme = scheme
        self.protocol_version = protocol_version
        self.server_address = server_address
        self.server_port = server_port
        self.client_address = client_address
        self.client_port = client_port
        self.url_full = url_full
        self.error_type = error_type

    def shape_key(self) -> HttpShapeKey:
        return (self.kind, self.method, self.status_code, self.route, self.scheme, self.server_address,
                self.server_port, self.client_address, self.protocol_version, self.error_type)

    @classmethod
    def shape_of(cls, key: Hashable) -> SpanShape:
        shape: HttpShapeKey = key  # type: ignore[assignment]
        kind, method, status, route, scheme, server_address, server_port, client, version, error = shape
        attrs: list[tuple[str, AttributeValue]] = [("http.request.method", method)]
        if status:
            attrs.append(("http.response.status_code", status))
        if error:
            attrs.append(("error.type", error))
        if route is not None:
            attrs.append(("http.route", route))
        attrs.append(("url.scheme", scheme))
        attrs.append(("server.address", server_address))
        attrs.append(("server.port", server_port))
        if kind == SPAN_KIND_SERVER:
            attrs.append(("client.address", client))
            attrs.append(("network.protocol.version", version))
            is_error = not status or status >= 500  # OTel: a server's 4xx is the client's fault
            varying = _SERVER_VARYING
        else:
            is_error = not status or status >= 400  # OBI's client rule
            varying = _CLIENT_VARYING
        return SpanShape(f"{method} {route}" if route else method, kind, is_error, tuple(attrs), varying)

    def varying_values(self) -> tuple[AttributeValue, ...]:
        where = self.path if self.kind == SPAN_KIND_SERVER else self.url_full
        return (where, self.request_body_size, self.response_body_size)

    @property
    def type_name(self) -> str:
        return "HTTP" if self.kind == SPAN_KIND_SERVER else "HTTPClient"


def _append_ends(attrs: list[tuple[str, AttributeValue]], kind: int, error: str, address: str, port: int,
                 client: str) -> None:
    """What database and gRPC spans end their repeated attributes with: error.type when set, the
    server's address and port, and (server spans) the client's address."""
    if error:
        attrs.append(("error.type", error))
    attrs.append(("server.address", address))
    attrs.append(("server.port", port))
    if kind == SPAN_KIND_SERVER:
        attrs.append(("client.address", client))


# (kind, system, operation, collection, namespace, server_address, server_port, client_address,
#  status_code, error_type, has_query_text): everything a database span's name, status and
# repeated attributes depend on.
DbShapeKey = tuple[int, str, str, str, str, str, int, str, str, str, bool]
_DB_VARYING_TEXT: Final = ("db.query.text",)
# OBI's span name when the operation is not known, by db.system.name.
_DB_UNNAMED: Final = {"redis": "REDIS", "memcached": "MEMCACHED"}
# OBI's printer type names, by db.system.name and kind.
_DB_TYPE_NAMES: Final = {"redis": ("RedisServer", "RedisClient"),
                  "memcached": ("MemcachedServer", "MemcachedClient")}


@dataclass(slots=True, init=False)
class DbSpan(Span):
    """One database or cache operation (a Redis command, a SQL statement, a Memcached
    command), made (CLIENT) or served (SERVER) by an instrumented process.

    ``operation`` is "" when the capture did not hold it. ``status_code`` is the
    database's own code of a failed operation (Redis's error prefix, a SQLSTATE), ``error_type``
    says what failed ("" when nothing did). ``query_text`` is set only when the user asked for
    ``db.query.text``.
    """

    system: str  # db.system.name: "redis", "memcached", "postgresql", "mysql"
    operation: str
    collection: str
    namespace: str
    server_address: str
    server_port: int
    client_address: str
    client_port: int
    status_code: str
    error_type: str
    query_text: str | None

    def __init__(self, service: ServiceIdentity, kind: int, start_ns: int, end_ns: int, trace_id: bytes,
                 span_id: bytes, parent_span_id: bytes, sampled: bool, exclude: int, system: str,
                 operation: str, collection: str, namespace: str, server_address: str, server_port: int,
                 client_address: str, client_port: int, status_code: str, error_type: str,
                 query_text: str | None) -> None:
        Span.__init__(self, service, kind, start_ns, end_ns, trace_id, span_id, parent_span_id, sampled,
                      exclude)
        self.system = system
        self.operation = operation
        self.collection = collection
        self.namespace = namespace
        self.server_address = server_address
        self.server_port = server_port
        self.client_address = client_address
        self.client_port = client_port
        self.status_code = status_code
        self.error_type = error_type
        self.query_text = query_text

    def shape_key(self) -> DbShapeKey:
        return (self.kind, self.system, self.operation, self.collection, self.namespace, self.server_address,
                self.server_port, self.client_address if self.kind == SPAN_KIND_SERVER else "",
                self.status_code, self.error_type, self.query_text is not None)

    @classmethod
    def shape_of(cls, key: Hashable) -> SpanShape:
        shape: DbShapeKey = key  # type: ignore[assignment]
        kind, system, operation, collection, namespace, address, port, client, status, error, text = shape
        attrs: list[tuple[str, AttributeValue]] = [("db.system.name", system)]
        if operation:
            attrs.append(("db.operation.name", operation))
        if collection:
            attrs.append(("db.collection.name", collection))
        if namespace:
            attrs.append(("db.namespace", namespace))
        if status:
            attrs.append(("db.response.status_code", status))
        _append_ends(attrs, kind, error, address, port, client)
        if operation:
            name = f"{operation} {collection}" if collection else operation
        else:
            name = _DB_UNNAMED.get(system, "SQL")
        return SpanShape(name, kind, bool(error), tuple(attrs), _DB_VARYING_TEXT if text else ())

    def varying_values(self) -> tuple[AttributeValue, ...]:
        return () if self.query_text is None else (self.query_text,)

    @property
    def type_name(self) -> str:
        names = _DB_TYPE_NAMES.get(self.system, ("SQLServer", "SQLClient"))
        return names[0] if self.kind == SPAN_KIND_SERVER else names[1]


# (kind, method, status, server_address, server_port, client_address, error_type): everything a
# gRPC span's name, status and repeated attributes depend on.
RpcShapeKey = tuple[int, str, str, str, int, str, str]
# gRPC statuses that are a server's error (OBI, after the OTel gRPC conventions); for a client
# every status but OK is.
GRPC_SERVER_ERRORS: Final = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL",
                                       "UNAVAILABLE", "DATA_LOSS"})


@dataclass(slots=True, init=False)
class RpcSpan(Span):
    """One gRPC call over HTTP/2, served (SERVER) or made (CLIENT).

    ``method`` is the full method (``/pkg.Service/Method``), ``status`` the gRPC status name
    from the trailers (``OK``, ``UNAVAILABLE``), "" when none came (then ``error_type`` says
    why)."""

    method: str
    status: str
    server_address: str
    server_port: int
    client_address: str
    client_port: int
    error_type: str

    def __init__(self, service: ServiceIdentity, kind: int, start_ns: int, end_ns: int, trace_id: bytes,
                 span_id: bytes, parent_span_id: bytes, sampled: bool, exclude: int, method: str, status: str,
                 server_address: str, server_port: int, client_address: str, client_port: int,
                 error_type: str) -> None:
        Span.__init__(self, service, kind, start_ns, end_ns, trace_id, span_id, parent_span_id, sampled,
                      exclude)
        self.method = method
        self.status = status
        self.server_address = server_address
        self.server_port = server_port
        self.client_address = client_address
        self.client_port = client_port
        self.error_type = error_type

    def shape_key(self) -> RpcShapeKey:
        return (self.kind, self.method, self.status, self.server_address, self.server_port,
                self.client_address if self.kind == SPAN_KIND_SERVER else "", self.error_type)

    @classmethod
    def shape_of(cls, key: Hashable) -> SpanShape:
        shape: RpcShapeKey = key  # type: ignore[assignment]
        kind, method, status, address, port, client, error = shape
        attrs: list[tuple[str, AttributeValue]] = [("rpc.system.name", "grpc")]
        if method:  # "": not known (its header was indexed before obi joined the connection)
            attrs.append(("rpc.method", method))
        if status:
            attrs.append(("rpc.response.status_code", status))
        _append_ends(attrs, kind, error, address, port, client)
        if kind == SPAN_KIND_SERVER:
            is_error = bool(error) or status in GRPC_SERVER_ERRORS
        else:
            is_error = bool(error) or status not in ("", "OK")  # "": not known, not an error
        return SpanShape(method or "GRPC", kind, is_error, tuple(attrs), ())

    def varying_values(self) -> tuple[AttributeValue, ...]:
        return ()

    @property
    def type_name(self) -> str:
        return "GRPC" if self.kind == SPAN_KIND_SERVER else "GRPCClient"
