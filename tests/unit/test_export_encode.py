"""OTLP trace encoding: exact fields after a round trip through the official classes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from obi import __version__
from obi.export import encode
from obi.export.encode import SCOPE_NAME, TraceEncoder, attribute_field, key_value, skip_spans, span_flags
from obi.traces.model import SPAN_KIND_CLIENT, SPAN_KIND_SERVER, DbSpan, HttpSpan, RpcSpan, ServiceIdentity

TRACE_ID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
SPAN_ID = bytes.fromhex("b7ad6b7169203331")
PARENT_ID = bytes.fromhex("00f067aa0ba902b7")


def make_service(name: str = "api", pid: int = 4242, **kw: Any) -> ServiceIdentity:
    return ServiceIdentity(
        pid=pid,
        exe_path="/usr/bin/python3",
        service_name=name,
        instance_id=f"host:{pid}",
        sdk_language="python",
        **kw,
    )


def make_span(service: ServiceIdentity | None = None, **kw: Any) -> HttpSpan:
    fields: dict[str, Any] = dict(
        service=service or make_service(),
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_000_001_500_000,
        method="GET",
        path="/items/42",
        route="/items/{id}",
        status_code=200,
        request_body_size=0,
        response_body_size=321,
        scheme="http",
        protocol_version="1.1",
        server_address="127.0.0.1",
        server_port=8080,
        client_address="127.0.0.1",
        client_port=51234,
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        parent_span_id=PARENT_ID,
        kind=SPAN_KIND_SERVER,
        sampled=True,
        exclude=0,
        url_full="",
        error_type="",
    )
    fields.update(kw)
    return HttpSpan(**fields)


def encode_spans(spans: list[HttpSpan]) -> ExportTraceServiceRequest:
    return TraceEncoder().encode(spans)


def attrs(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = (kind, getattr(kv.value, kind))
    return out


def test_single_span_exact_fields() -> None:
    service = make_service(attributes={"host.name": "node-1"})
    request = encode_spans([make_span(service)])

    assert len(request.resource_spans) == 1
    rs = request.resource_spans[0]
    assert attrs(rs.resource.attributes) == {
        "service.name": ("string_value", "api"),
        "service.instance.id": ("string_value", "host:4242"),
        "telemetry.sdk.name": ("string_value", "opentelemetry-ebpf-instrumentation"),
        "telemetry.sdk.language": ("string_value", "python"),
        "telemetry.sdk.version": ("string_value", __version__),
        "process.pid": ("int_value", 4242),
        "host.name": ("string_value", "node-1"),
    }
    assert len(rs.scope_spans) == 1
    assert rs.scope_spans[0].scope.name == SCOPE_NAME == "go.opentelemetry.io/obi"
    (span,) = rs.scope_spans[0].spans
    assert span.trace_id == TRACE_ID
    assert span.span_id == SPAN_ID
    assert span.parent_span_id == PARENT_ID
    assert span.name == "GET /items/{id}"
    assert span.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert span.start_time_unix_nano == 1_700_000_000_000_000_000
    assert span.end_time_unix_nano == 1_700_000_000_001_500_000
    assert span.flags == 0x301  # sampled, parent is remote (and known to be)
    assert span.status.code == Status.StatusCode.STATUS_CODE_UNSET
    assert attrs(span.attributes) == {
        "http.request.method": ("string_value", "GET"),
        "http.response.status_code": ("int_value", 200),
        "url.path": ("string_value", "/items/42"),
        "url.scheme": ("string_value", "http"),
        "http.route": ("string_value", "/items/{id}"),
        "server.address": ("string_value", "127.0.0.1"),
        "server.port": ("int_value", 8080),
        "client.address": ("string_value", "127.0.0.1"),
        "network.protocol.version": ("string_value", "1.1"),
        "http.request.body.size": ("int_value", 0),
        "http.response.body.size": ("int_value", 321),
    }
    # Attribute order is the model's order.
    assert [kv.key for kv in span.attributes] == list(make_span().attributes())


def test_root_unsampled_error_span() -> None:
    span = make_span(parent_span_id=b"", sampled=False, status_code=503, route=None, method="POST")
    (encoded,) = encode_spans([span]).resource_spans[0].scope_spans[0].spans
    assert encoded.parent_span_id == b""
    assert encoded.flags == 0x100  # not sampled, parent not remote (root)
    assert encoded.status.code == Status.StatusCode.STATUS_CODE_ERROR
    assert encoded.name == "POST"
    assert "http.route" not in attrs(encoded.attributes)


def test_4xx_is_not_an_error_on_server_spans() -> None:
    (encoded,) = encode_spans([make_span(status_code=404)]).resource_spans[0].scope_spans[0].spans
    assert encoded.status.code == Status.StatusCode.STATUS_CODE_UNSET


def test_client_span_exact_fields() -> None:
    span = make_span(kind=SPAN_KIND_CLIENT, route=None, status_code=404, parent_span_id=b"",
                     server_address="backend", server_port=9000, url_full="http://backend:9000/items/42")
    (encoded,) = encode_spans([span]).resource_spans[0].scope_spans[0].spans
    assert encoded.kind == Span.SpanKind.SPAN_KIND_CLIENT
    assert encoded.name == "GET"
    assert encoded.status.code == Status.StatusCode.STATUS_CODE_ERROR  # a client's 4xx is an error (OBI)
    assert attrs(encoded.attributes) == {
        "http.request.method": ("string_value", "GET"),
        "http.response.status_code": ("int_value", 404),
        "url.scheme": ("string_value", "http"),
        "server.address": ("string_value", "backend"),
        "server.port": ("int_value", 9000),
        "url.full": ("string_value", "http://backend:9000/items/42"),
        "http.request.body.size": ("int_value", 0),
        "http.response.body.size": ("int_value", 321),
    }


def test_request_without_response_has_error_type_and_no_status_code() -> None:
    span = make_span(status_code=0, error_type="connection_closed", response_body_size=0)
    (encoded,) = encode_spans([span]).resource_spans[0].scope_spans[0].spans
    assert encoded.status.code == Status.StatusCode.STATUS_CODE_ERROR
    found = attrs(encoded.attributes)
    assert "http.response.status_code" not in found
    assert found["error.type"] == ("string_value", "connection_closed")


def test_spans_grouped_per_service_in_first_seen_order() -> None:
    api, web = make_service("api", 1), make_service("web", 2)
    spans = [
        make_span(api, span_id=b"\x00" * 7 + b"\x01"),
        make_span(web, span_id=b"\x00" * 7 + b"\x02"),
        make_span(api, span_id=b"\x00" * 7 + b"\x03"),
    ]
    request = encode_spans(spans)
    names = [attrs(rs.resource.attributes)["service.name"][1] for rs in request.resource_spans]
    assert names == ["api", "web"]
    ids = [[s.span_id[-1] for s in rs.scope_spans[0].spans] for rs in request.resource_spans]
    assert ids == [[1, 3], [2]]


def test_encoder_caches_give_identical_output_and_follow_resource_changes() -> None:
    service = make_service()
    encoder = TraceEncoder()
    spans = [make_span(service, path=f"/items/{i}", response_body_size=i) for i in range(50)]
    first = encoder.encode_bytes(spans)
    assert first == official_request(spans)
    assert encoder.encode_bytes(spans) == first
    # Metadata arriving later changes the resource of the same identity.
    service.attributes["k8s.pod.name"] = "api-0"
    later = encoder.encode(spans[:1])
    assert attrs(later.resource_spans[0].resource.attributes)["k8s.pod.name"] == ("string_value", "api-0")


def test_empty_batch() -> None:
    assert encode_spans([]) == ExportTraceServiceRequest()


@given(
    key=st.text(max_size=200),
    value=st.one_of(st.text(max_size=300), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
)
def test_attribute_field_matches_official_encoding(key: str, value: str | int) -> None:
    span = Span.FromString(attribute_field(key, value))
    assert list(span.attributes) == [key_value(key, value)]
    expected = Span(attributes=[KeyValue(key=key, value=key_value(key, value).value)])
    assert span == expected


def official_request(spans: list[HttpSpan]) -> bytes:
    """The request built and serialized by the official classes, as a byte-exact reference."""
    groups: dict[int, tuple[ServiceIdentity, list[Span]]] = {}
    for span in spans:
        group = groups.setdefault(id(span.service), (span.service, []))
        group[1].append(
            Span(
                trace_id=span.trace_id,
                span_id=span.span_id,
                parent_span_id=span.parent_span_id,
                name=span.name,
                kind=span.kind,  # type: ignore[arg-type]
                start_time_unix_nano=span.start_ns,
                end_time_unix_nano=span.end_ns,
                attributes=[key_value(k, v) for k, v in span.attributes().items()],
                status=Status(code=Status.StatusCode.STATUS_CODE_ERROR) if span.is_error else None,
                flags=span_flags(span),
            )
        )
    scope = InstrumentationScope(name=SCOPE_NAME)
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[key_value(k, v) for k, v in s.resource_attributes().items()]),
                scope_spans=[ScopeSpans(scope=scope, spans=group)],
            )
            for s, group in groups.values()
        ]
    ).SerializeToString()


SERVICES = (make_service("api", 1), make_service("web", 2, attributes={"host.name": "node-1"}))

# Few distinct values for the repeated fields (cache hits), any value for the varying ones.
spans_strategy = st.builds(
    make_span,
    service=st.sampled_from(SERVICES),
    start_ns=st.integers(min_value=1, max_value=2**63),
    method=st.sampled_from(["GET", "POST"]),
    path=st.one_of(st.sampled_from(["/", "/items/42"]), st.text(min_size=1, max_size=300)),
    route=st.sampled_from([None, "", "/items/{id}", "/" + "r" * 200]),
    status_code=st.sampled_from([0, 200, 404, 499, 500, 503]),
    kind=st.sampled_from([SPAN_KIND_SERVER, SPAN_KIND_CLIENT]),
    url_full=st.one_of(st.just("http://shop.local/items/42"), st.text(max_size=100)),
    error_type=st.sampled_from(["", "timeout"]),
    request_body_size=st.integers(min_value=0, max_value=2**63 - 1),
    response_body_size=st.sampled_from([0, 13, 127, 128, 2**40]),
    server_address=st.sampled_from(["127.0.0.1", "shop.local"]),
    server_port=st.sampled_from([80, 8080]),
    client_address=st.sampled_from(["10.9.8.7", "::1"]),
    protocol_version=st.sampled_from(["1.0", "1.1"]),
    trace_id=st.one_of(st.just(TRACE_ID), st.binary(min_size=1, max_size=20)),
    span_id=st.one_of(st.just(SPAN_ID), st.binary(min_size=1, max_size=9)),
    parent_span_id=st.sampled_from([b"", PARENT_ID, b"\x01" * 9]),
    sampled=st.booleans(),
)


def make_db_span(service: ServiceIdentity | None = None, **kw: Any) -> DbSpan:
    fields: dict[str, Any] = dict(
        service=service or make_service(), kind=SPAN_KIND_CLIENT, start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_000_000_250_000, trace_id=TRACE_ID, span_id=SPAN_ID, parent_span_id=PARENT_ID,
        sampled=True, exclude=0, system="redis", operation="SET", collection="", namespace="0",
        server_address="127.0.0.1", server_port=6379, client_address="127.0.0.1", client_port=40000,
        status_code="", error_type="", query_text=None,
    )
    fields.update(kw)
    return DbSpan(**fields)


db_spans_strategy = st.builds(
    make_db_span,
    service=st.sampled_from(SERVICES),
    kind=st.sampled_from([SPAN_KIND_SERVER, SPAN_KIND_CLIENT]),
    system=st.sampled_from(["redis", "memcached", "postgresql"]),
    operation=st.sampled_from(["", "SET", "SELECT"]),
    collection=st.sampled_from(["", "users"]),
    namespace=st.sampled_from(["", "0", "shop"]),
    status_code=st.sampled_from(["", "WRONGTYPE", "42P01"]),
    error_type=st.sampled_from(["", "WRONGTYPE", "connection_closed"]),
    query_text=st.one_of(st.none(), st.text(max_size=100)),
    parent_span_id=st.sampled_from([b"", PARENT_ID]),
)


def make_rpc_span(service: ServiceIdentity | None = None, **kw: Any) -> RpcSpan:
    fields: dict[str, Any] = dict(
        service=service or make_service(), kind=SPAN_KIND_SERVER, start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_000_000_900_000, trace_id=TRACE_ID, span_id=SPAN_ID, parent_span_id=PARENT_ID,
        sampled=True, exclude=0, method="/shop.Cart/Add", status="OK", server_address="127.0.0.1",
        server_port=50051, client_address="127.0.0.1", client_port=40000, error_type="",
    )
    fields.update(kw)
    return RpcSpan(**fields)


rpc_spans_strategy = st.builds(
    make_rpc_span,
    service=st.sampled_from(SERVICES),
    kind=st.sampled_from([SPAN_KIND_SERVER, SPAN_KIND_CLIENT]),
    method=st.sampled_from(["", "/shop.Cart/Add", "/a.B/C"]),
    status=st.sampled_from(["", "OK", "UNAVAILABLE", "NOT_FOUND"]),
    error_type=st.sampled_from(["", "stream_reset"]),
)


def test_rpc_span_errors_as_obi() -> None:
    assert not make_rpc_span(status="NOT_FOUND").is_error  # a server's NOT_FOUND is the client's fault
    assert make_rpc_span(status="NOT_FOUND", kind=SPAN_KIND_CLIENT).is_error
    assert make_rpc_span(status="INTERNAL").is_error
    assert not make_rpc_span(status="", kind=SPAN_KIND_CLIENT).is_error  # not known: not an error
    assert make_rpc_span(status="", error_type="stream_reset").is_error


def test_db_span_names_attributes_and_status() -> None:
    span = make_db_span(system="postgresql", operation="SELECT", collection="users", namespace="shop",
                        status_code="42P01", error_type="42P01", query_text="SELECT * FROM users")
    assert span.name == "SELECT users" and span.is_error and span.type_name == "SQLClient"
    assert span.attributes() == {
        "db.system.name": "postgresql", "db.operation.name": "SELECT", "db.collection.name": "users",
        "db.namespace": "shop", "db.response.status_code": "42P01", "error.type": "42P01",
        "server.address": "127.0.0.1", "server.port": 6379, "db.query.text": "SELECT * FROM users"}
    redis = make_db_span(operation="", namespace="", kind=SPAN_KIND_SERVER)
    assert redis.name == "REDIS" and not redis.is_error and redis.type_name == "RedisServer"
    assert redis.attributes() == {"db.system.name": "redis", "server.address": "127.0.0.1",
                                  "server.port": 6379, "client.address": "127.0.0.1"}
    assert make_db_span(system="memcached", operation="").name == "MEMCACHED"


any_span = st.one_of(spans_strategy, db_spans_strategy, rpc_spans_strategy)


@given(batches=st.lists(st.lists(any_span, max_size=12), min_size=1, max_size=3))
def test_cached_encoding_is_byte_identical_to_the_official_classes(batches: list[list[Any]]) -> None:
    encoder = TraceEncoder()  # shared: later batches hit what earlier ones cached
    for spans in batches:
        assert encoder.encode_bytes(spans) == official_request(spans)


def test_full_caches_are_cleared_and_output_stays_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    for limit in ("SPAN_SHAPE_CACHE_LIMIT", "VALUE_CACHE_LIMIT"):
        monkeypatch.setattr(encode, limit, 3)
    spans = [
        make_span(path=f"/items/{i % 5}", status_code=200 + i % 7, request_body_size=i % 4,
                  response_body_size=i)
        for i in range(40)
    ]
    encoder = TraceEncoder()
    for _ in range(2):
        assert encoder.encode_bytes(spans) == official_request(spans)
    sizes = [*(len(shapes) for shapes in encoder._shapes.values()),
             *(len(cache) for cache in encoder._values.values())]
    assert len(sizes) == 4 and all(1 <= size <= 3 for size in sizes)


def test_spans_encoded_in_pieces_assemble_into_the_same_request() -> None:
    first, second = make_service("a", 1), make_service("b", 2)
    batch = [make_span(first if i % 3 else second, response_body_size=i) for i in range(10)]
    encoder = TraceEncoder()
    pieces = encoder.encode_spans(batch, 3)
    assert [(p.service.service_name, p.span_count) for p in pieces] == [("b", 3), ("b", 1), ("a", 3),
                                                                        ("a", 3)]
    # Assembled in any split, the pieces make one ResourceSpans per service, spans in order.
    whole = encoder.encode_bytes(batch)
    assert encoder.assemble(pieces) == encoder.assemble(encoder.encode_spans(batch, 10))
    assert ExportTraceServiceRequest.FromString(encoder.assemble(pieces)) == \
        ExportTraceServiceRequest.FromString(whole)


def test_skip_spans_finds_the_boundaries() -> None:

    service = make_service()
    batch = [make_span(service, path="/" + "x" * size) for size in (1, 200, 20000)]  # 1-3 byte lengths
    [piece] = TraceEncoder().encode_spans(batch, 3)
    singles = [TraceEncoder().encode_spans([span], 1)[0].data for span in batch]
    ends = [0, len(singles[0]), len(singles[0]) + len(singles[1]), len(piece.data)]
    assert [skip_spans(piece.data, k) for k in range(4)] == ends
