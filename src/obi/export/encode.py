"""Span batches -> OTLP ExportTraceServiceRequest (opentelemetry-proto schema).

Spans are grouped by their shared ServiceIdentity into one ResourceSpans each.
Resource and scope are built with the opentelemetry-proto classes and encoded
once; per-span fields are written straight in protobuf wire format, with the
bytes that repeat across a service's requests (name, status, most attributes)
cached per distinct set of values, which is many times cheaper in Python than
building one message object per span and per attribute. Tests compare the
result byte for byte with the official classes' serialization.

Encoding is in two steps: ``encode_spans`` when spans are queued for export
(EncodedSpans: a service's spans in wire format, the queue's unit and its bytes
bound), ``assemble`` when a batch goes out (the resource and scope around them).
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Iterable, Sequence
from typing import Final, NamedTuple

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from obi.traces.model import AttributeValue, ServiceIdentity, Span, SpanShape

SCOPE_NAME: Final = "go.opentelemetry.io/obi"

# W3C trace flags live in the low byte of Span.flags; bits 8-9 say whether the
# parent is known to be remote (Span.SpanFlags in trace.proto).
TRACE_FLAG_SAMPLED: Final = 0x01
SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE: Final = 0x100
SPAN_FLAGS_CONTEXT_IS_REMOTE: Final = 0x200

# Bounds of the encoder's caches; a full cache is cleared and refills from live traffic.
SPAN_SHAPE_CACHE_LIMIT = 4096
VALUE_CACHE_LIMIT = 4096  # per attribute key
_RESOURCE_CACHE_LIMIT = 1024

# Wire-format tags (field number << 3 | wire type) of the fields written by hand.
_TAG_TRACE_ID: Final = b"\x0a"  # Span.trace_id = 1
_TAG_SPAN_ID: Final = b"\x12"  # Span.span_id = 2
_TAG_PARENT_SPAN_ID: Final = b"\x22"  # Span.parent_span_id = 4
_TAG_NAME: Final = b"\x2a"  # Span.name = 5
_TAG_KIND: Final = b"\x30"  # Span.kind = 6, varint
_TAG_START: Final = b"\x39"  # Span.start_time_unix_nano = 7, fixed64
_TAG_END: Final = b"\x41"  # Span.end_time_unix_nano = 8, fixed64
_TAG_ATTRIBUTE: Final = b"\x4a"  # Span.attributes = 9
_STATUS_ERROR: Final = b"\x7a\x02\x18\x02"  # Span.status = 15 {code = 3: STATUS_CODE_ERROR}
_TAG_FLAGS: Final = b"\x85\x01"  # Span.flags = 16, fixed32
_TAG_SPANS: Final = b"\x12"  # ScopeSpans.spans = 2 / ResourceSpans.scope_spans = 2
_TAG_FIRST: Final = b"\x0a"  # field 1, length-delimited (resource, scope, key, string_value, ...)
_TAG_KV_VALUE: Final = b"\x12"  # KeyValue.value = 2
_TAG_INT_VALUE: Final = b"\x18"  # AnyValue.int_value = 3
_FIXED64: Final = struct.Struct("<Q").pack
_FIXED32: Final = struct.Struct("<I").pack
_TIMES: Final = struct.Struct("<BQBQ").pack  # start and end tags, each followed by its fixed64
_TRACE_ID_16: Final = b"\x0a\x10"  # trace_id tag and length of a 16-byte id
_SPAN_ID_8: Final = b"\x12\x08"  # span_id tag and length of an 8-byte id
_PARENT_SPAN_ID_8: Final = b"\x22\x08"  # parent_span_id tag and length of an 8-byte id
_SMALL_VARINTS: Final = tuple(bytes((i,)) for i in range(128))


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


def _length(size: int) -> bytes:
    """The varint of a length, inlined for the one- and two-byte cases."""
    if size < 128:
        return _SMALL_VARINTS[size]
    if size < 16384:
        return bytes(((size & 0x7F) | 0x80, size >> 7))
    return varint(size)


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


def group_by_service(spans: Iterable[Span]) -> list[tuple[ServiceIdentity, list[Span]]]:
    """Spans grouped by identity object, in first-seen order."""
    groups: dict[int, tuple[ServiceIdentity, list[Span]]] = {}
    for span in spans:
        group = groups.get(id(span.service))
        if group is None:
            group = groups[id(span.service)] = (span.service, [])
        group[1].append(span)
    return list(groups.values())


def span_flags(span: Span) -> int:
    """W3C flags plus the is-remote bits: a span's parent, when it has one, came over the wire."""
    flags = SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE
    if span.sampled:
        flags |= TRACE_FLAG_SAMPLED
    if span.parent_span_id:
        flags |= SPAN_FLAGS_CONTEXT_IS_REMOTE
    return flags


# The flags field for [has parent * 2 + sampled], as span_flags computes it.
_FLAGS_FIELDS: Final = tuple(
    _TAG_FLAGS + _FIXED32(SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE | remote | sampled)
    for remote in (0, SPAN_FLAGS_CONTEXT_IS_REMOTE)
    for sampled in (0, TRACE_FLAG_SAMPLED)
)


class EncodedShape(NamedTuple):
    """Encoded pieces of a span shared by every span with the same shape key; in wire
    order they surround the varying fields: ids, ``name_kind``, times, ``attributes``,
    the varying attributes, ``status``, flags. ``varying`` pairs each varying attribute's
    key with the cache of its encoded values."""

    name_kind: bytes
    attributes: bytes
    status: bytes
    varying: tuple[tuple[str, dict[AttributeValue, bytes]], ...]


def encode_shape(shape: SpanShape, value_caches: dict[str, dict[AttributeValue, bytes]]) -> EncodedShape:
    """The wire pieces of a shape, attribute by attribute in the model's order."""
    return EncodedShape(
        name_kind=_delimited(_TAG_NAME, shape.name.encode()) + _TAG_KIND + varint(shape.kind),
        attributes=b"".join(attribute_field(key, value) for key, value in shape.attributes),
        status=_STATUS_ERROR if shape.is_error else b"",
        varying=tuple((key, value_caches.setdefault(key, {})) for key in shape.varying),
    )


class EncodedSpans(NamedTuple):
    """Spans of one service in wire format: the ``spans`` entries of a ScopeSpans."""

    service: ServiceIdentity
    data: bytes
    span_count: int


def skip_spans(data: bytes, count: int) -> int:
    """The offset in EncodedSpans.data past its first ``count`` spans."""
    pos = 0
    for _ in range(count):
        pos += 1  # the tag
        size = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        pos += size
    return pos


class TraceEncoder:
    """Reusable encoder: keeps Resource, span-shape and attribute caches between batches.

    A span costs one lookup of its shape (name, kind, status and the attributes
    that repeat across a service's requests: see obi.traces.model), one lookup
    per varying attribute, and the bytes of its ids, times and flags.
    """

    def __init__(self, scope_name: str = SCOPE_NAME) -> None:
        scope = InstrumentationScope(name=scope_name).SerializeToString()
        self._scope_field = _delimited(_TAG_FIRST, scope)
        self._resources = ResourceCache()
        self._shapes: dict[type, dict[Hashable, EncodedShape]] = {}
        self._values: dict[str, dict[AttributeValue, bytes]] = {}

    def encode(self, spans: Sequence[Span]) -> ExportTraceServiceRequest:
        return ExportTraceServiceRequest.FromString(self.encode_bytes(spans))

    def encode_bytes(self, spans: Sequence[Span]) -> bytes:
        """The serialized ExportTraceServiceRequest, ready to send."""
        return self.assemble(self.encode_spans(spans, max(len(spans), 1)))

    def encode_spans(self, spans: Sequence[Span], max_spans: int) -> list[EncodedSpans]:
        """The spans in wire format, by service, in pieces of at most ``max_spans``."""
        out: list[EncodedSpans] = []
        for service, group in group_by_service(spans):
            if len(group) <= max_spans:
                out.append(EncodedSpans(service, self._span_fields(group), len(group)))
                continue
            for start in range(0, len(group), max_spans):
                part = group[start:start + max_spans]
                out.append(EncodedSpans(service, self._span_fields(part), len(part)))
        return out

    def assemble(self, pieces: Iterable[EncodedSpans]) -> bytes:
        """One ExportTraceServiceRequest of encoded spans: a ResourceSpans per service (its
        resource as it is now: metadata may have come since the spans were encoded)."""
        groups: dict[int, tuple[ServiceIdentity, list[bytes]]] = {}
        for piece in pieces:
            group = groups.get(id(piece.service))
            if group is None:
                group = groups[id(piece.service)] = (piece.service, [])
            group[1].append(piece.data)
        parts: list[bytes] = []
        for service, datas in groups.values():
            scope_spans = self._scope_field + b"".join(datas)
            resource_spans = _delimited(_TAG_FIRST, self._resources.encoded(service)) + _delimited(
                _TAG_SPANS, scope_spans
            )
            parts.append(_delimited(_TAG_FIRST, resource_spans))
        return b"".join(parts)

    def _span_fields(self, spans: list[Span]) -> bytes:
        """The ``spans`` entries of a ScopeSpans, one length-delimited Span each."""
        flags_fields, times, length = _FLAGS_FIELDS, _TIMES, _length
        out: list[bytes] = []
        append = out.append
        last_cls: type | None = None
        shapes: dict[Hashable, EncodedShape] = {}
        for s in spans:
            cls = type(s)
            if cls is not last_cls:  # one shape table per span class
                last_cls, shapes = cls, self._shapes.setdefault(cls, {})
            key = s.shape_key()
            shape = shapes.get(key)
            if shape is None:
                if len(shapes) >= SPAN_SHAPE_CACHE_LIMIT:
                    shapes.clear()
                shape = shapes[key] = encode_shape(cls.shape_of(key), self._values)
            trace_id, span_id, parent_id = s.trace_id, s.span_id, s.parent_span_id
            if len(trace_id) == 16 and len(span_id) == 8 and len(parent_id) in (0, 8):
                ids = _TRACE_ID_16 + trace_id + _SPAN_ID_8 + span_id
                if parent_id:
                    ids += _PARENT_SPAN_ID_8 + parent_id
            else:
                ids = _ids_field(trace_id, span_id, parent_id)
            parts = [ids, shape.name_kind, times(0x39, s.start_ns, 0x41, s.end_ns), shape.attributes]
            for (name, cache), v in zip(shape.varying, s.varying_values()):  # noqa: B905 (hot loop)
                encoded = cache.get(v)
                if encoded is None:
                    if len(cache) >= VALUE_CACHE_LIMIT:
                        cache.clear()
                    encoded = cache[v] = attribute_field(name, v)
                parts.append(encoded)
            parts.append(shape.status)
            parts.append(flags_fields[(2 if parent_id else 0) + (1 if s.sampled else 0)])
            body = b"".join(parts)
            append(_TAG_SPANS)
            append(length(len(body)))
            append(body)
        return b"".join(out)


def _ids_field(trace_id: bytes, span_id: bytes, parent_span_id: bytes) -> bytes:
    """The id fields of a span whatever the ids' lengths."""
    ids = _delimited(_TAG_TRACE_ID, trace_id) + _delimited(_TAG_SPAN_ID, span_id)
    if parent_span_id:
        ids += _delimited(_TAG_PARENT_SPAN_ID, parent_span_id)
    return ids
