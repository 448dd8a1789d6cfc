"""HttpSpan batches -> OTLP ExportTraceServiceRequest (opentelemetry-proto schema).

Spans are grouped by their shared ServiceIdentity into one ResourceSpans each.
Resource and scope are built with the opentelemetry-proto classes and encoded
once; per-span fields are written straight in protobuf wire format (with the
encoded attribute for repeated values cached), which is several times cheaper
in Python than building one message object per span and per attribute. Tests
decode the result with the official classes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from obi.traces.model import HttpSpan, ServiceIdentity

SCOPE_NAME = "go.opentelemetry.io/obi"

# W3C trace flags live in the low byte of Span.flags; bits 8-9 say whether the
# parent is known to be remote (Span.SpanFlags in trace.proto).
TRACE_FLAG_SAMPLED = 0x01
SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE = 0x100
SPAN_FLAGS_CONTEXT_IS_REMOTE = 0x200

# Attributes whose values rarely repeat: caching them would only churn the cache.
UNCACHED_ATTRIBUTES = frozenset({"url.path", "client.port"})
_ATTRIBUTE_CACHE_LIMIT = 16384
_RESOURCE_CACHE_LIMIT = 1024

# Wire-format tags (field number << 3 | wire type) of the fields written by hand.
_TAG_TRACE_ID = b"\x0a"  # Span.trace_id = 1
_TAG_SPAN_ID = b"\x12"  # Span.span_id = 2
_TAG_PARENT_SPAN_ID = b"\x22"  # Span.parent_span_id = 4
_TAG_NAME = b"\x2a"  # Span.name = 5
_TAG_KIND = b"\x30"  # Span.kind = 6, varint
_TAG_START = b"\x39"  # Span.start_time_unix_nano = 7, fixed64
_TAG_END = b"\x41"  # Span.end_time_unix_nano = 8, fixed64
_TAG_ATTRIBUTE = b"\x4a"  # Span.attributes = 9
_STATUS_ERROR = b"\x7a\x02\x18\x02"  # Span.status = 15 {code = 3: STATUS_CODE_ERROR}
_TAG_FLAGS = b"\x85\x01"  # Span.flags = 16, fixed32
_TAG_SPANS = b"\x12"  # ScopeSpans.spans = 2 / ResourceSpans.scope_spans = 2
_TAG_FIRST = b"\x0a"  # field 1, length-delimited (resource, scope, key, string_value, ...)
_TAG_KV_VALUE = b"\x12"  # KeyValue.value = 2
_TAG_INT_VALUE = b"\x18"  # AnyValue.int_value = 3
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_SMALL_VARINTS = tuple(bytes((i,)) for i in range(128))


def varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative ints as 64-bit two's complement."""
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    value &= 0xFFFF_FFFF_FFFF_FFFF
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _delimited(tag: bytes, payload: bytes) -> bytes:
    size = len(payload)
    return tag + (_SMALL_VARINTS[size] if size < 128 else varint(size)) + payload


def key_value(key: str, value: str | int | float | bool) -> KeyValue:
    """One OTLP attribute with the AnyValue variant matching the Python type."""
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def key_values(attributes: dict[str, str | int]) -> list[KeyValue]:
    return [key_value(k, v) for k, v in attributes.items()]


def attribute_field(key: str, value: str | int) -> bytes:
    """A whole ``attributes`` entry (tag, length, KeyValue) in wire format."""
    if isinstance(value, int) and not isinstance(value, bool):
        any_value = _TAG_INT_VALUE + varint(value)
    elif isinstance(value, str):
        any_value = _delimited(_TAG_FIRST, value.encode())
    else:
        any_value = key_value(key, value).value.SerializeToString()
    kv = _delimited(_TAG_FIRST, key.encode()) + _delimited(_TAG_KV_VALUE, any_value)
    return _delimited(_TAG_ATTRIBUTE, kv)


class AttributeCache:
    """Bounded cache of encoded attribute fields for repeated (key, value) pairs."""

    __slots__ = ("_entries", "_limit")

    def __init__(self, limit: int = _ATTRIBUTE_CACHE_LIMIT) -> None:
        self._entries: dict[tuple[str, str | int], bytes] = {}
        self._limit = limit

    def encode(self, attributes: dict[str, str | int]) -> list[bytes]:
        entries = self._entries
        out: list[bytes] = []
        for item in attributes.items():
            field = entries.get(item)
            if field is None:
                field = attribute_field(item[0], item[1])
                if item[0] not in UNCACHED_ATTRIBUTES:
                    if len(entries) >= self._limit:
                        entries.clear()
                    entries[item] = field
            out.append(field)
        return out


class ResourceCache:
    """Encoded Resource per distinct resource-attribute set, bounded."""

    __slots__ = ("_entries", "_limit")

    def __init__(self, limit: int = _RESOURCE_CACHE_LIMIT) -> None:
        self._entries: dict[tuple[tuple[str, str | int], ...], bytes] = {}
        self._limit = limit

    def encoded(self, service: ServiceIdentity) -> bytes:
        """The serialized Resource message for the identity's current attributes."""
        # Resource attributes may change over a process's life (metadata arrives
        # later), so the key is the attribute set, not the identity object.
        key = tuple(service.resource_attributes().items())
        cached = self._entries.get(key)
        if cached is None:
            if len(self._entries) >= self._limit:
                self._entries.clear()
            cached = Resource(attributes=[key_value(k, v) for k, v in key]).SerializeToString()
            self._entries[key] = cached
        return cached


def group_by_service(spans: Iterable[HttpSpan]) -> list[tuple[ServiceIdentity, list[HttpSpan]]]:
    """Spans grouped by identity object, in first-seen order."""
    groups: dict[int, tuple[ServiceIdentity, list[HttpSpan]]] = {}
    for span in spans:
        group = groups.get(id(span.service))
        if group is None:
            group = groups[id(span.service)] = (span.service, [])
        group[1].append(span)
    return list(groups.values())


def span_flags(span: HttpSpan) -> int:
    """W3C flags plus the is-remote bits: a server span's parent came over the wire."""
    flags = SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE
    if span.sampled:
        flags |= TRACE_FLAG_SAMPLED
    if span.parent_span_id:
        flags |= SPAN_FLAGS_CONTEXT_IS_REMOTE
    return flags


class TraceEncoder:
    """Reusable encoder: keeps Resource and attribute caches between batches."""

    def __init__(self, scope_name: str = SCOPE_NAME) -> None:
        scope = InstrumentationScope(name=scope_name).SerializeToString()
        self._scope_field = _delimited(_TAG_FIRST, scope)
        self._attributes = AttributeCache()
        self._resources = ResourceCache()

    def encode(self, spans: Sequence[HttpSpan]) -> ExportTraceServiceRequest:
        return ExportTraceServiceRequest.FromString(self.encode_bytes(spans))

    def encode_bytes(self, spans: Sequence[HttpSpan]) -> bytes:
        """The serialized ExportTraceServiceRequest, ready to send."""
        parts: list[bytes] = []
        for service, group in group_by_service(spans):
            scope_spans = self._scope_field + b"".join([self._span_field(s) for s in group])
            resource_spans = _delimited(_TAG_FIRST, self._resources.encoded(service)) + _delimited(
                _TAG_SPANS, scope_spans
            )
            parts.append(_delimited(_TAG_FIRST, resource_spans))
        return b"".join(parts)

    def _span_field(self, s: HttpSpan) -> bytes:
        body = [_delimited(_TAG_TRACE_ID, s.trace_id), _delimited(_TAG_SPAN_ID, s.span_id)]
        if s.parent_span_id:
            body.append(_delimited(_TAG_PARENT_SPAN_ID, s.parent_span_id))
        body.append(_delimited(_TAG_NAME, s.name.encode()))
        body.append(_TAG_KIND)
        body.append(varint(s.kind))
        body.append(_TAG_START)
        body.append(_FIXED64(s.start_ns))
        body.append(_TAG_END)
        body.append(_FIXED64(s.end_ns))
        body.extend(self._attributes.encode(s.attributes()))
        if s.is_error:
            body.append(_STATUS_ERROR)
        body.append(_TAG_FLAGS)
        body.append(_FIXED32(span_flags(s)))
        return _delimited(_TAG_SPANS, b"".join(body))


def encode_spans(spans: Sequence[HttpSpan]) -> ExportTraceServiceRequest:
    """One ExportTraceServiceRequest for the spans (use a TraceEncoder on hot paths)."""
    return TraceEncoder().encode(spans)
