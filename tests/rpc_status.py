"""google.rpc.Status with RetryInfo in protobuf wire format, for test servers and retry tests.

Written here from the .proto definitions, apart from obi's encoder and parser.
"""

from __future__ import annotations

from obi.export.retry import RETRY_INFO_TYPE_URL


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_retry_info_status(code: int, message: str, delay_s: float) -> bytes:
    """A serialized google.rpc.Status{code, message, details: [Any{RetryInfo{retry_delay}}]}."""
    seconds = int(delay_s)
    nanos = round((delay_s - seconds) * 1e9)
    duration = b""
    if seconds:
        duration += _varint(1 << 3) + _varint(seconds)
    if nanos:
        duration += _varint(2 << 3) + _varint(nanos)
    retry_info = _delimited(1, duration)
    any_msg = _delimited(1, RETRY_INFO_TYPE_URL.encode()) + _delimited(2, retry_info)
    status = _varint(1 << 3) + _varint(code) if code else b""
    return status + _delimited(2, message.encode()) + _delimited(3, any_msg)
