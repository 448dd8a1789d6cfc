"""HPACK decoding against hpack's encoder: exact when every block is seen; after missed
blocks, each header either right or UNKNOWN, never another one."""

from __future__ import annotations

import contextlib

import pytest
from hpack import Encoder
from hypothesis import given, settings
from hypothesis import strategies as st

from obi.protocols.errors import ParseError
from obi.protocols.hpack_context import UNKNOWN, HpackContext

NAMES = [b":method", b":path", b":authority", b":status", b"content-type", b"grpc-status", b"traceparent",
         b"x-custom", b"user-agent", b"te"]
VALUES = [b"GET", b"POST", b"/pkg.Service/Method", b"/", b"example:50051", b"200", b"application/grpc",
          b"0", b"14", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", b"trailers", b"x" * 300]
header = st.tuples(st.sampled_from(NAMES), st.one_of(st.sampled_from(VALUES), st.binary(max_size=40)))
blocks = st.lists(st.lists(header, min_size=1, max_size=8), min_size=1, max_size=12)


def encode_all(block_list: list[list[tuple[bytes, bytes]]], huffman: bool, table_size: int) -> list[bytes]:
    encoder = Encoder()
    encoder.header_table_size = table_size
    return [encoder.encode(block, huffman=huffman) for block in block_list]


@settings(max_examples=300, deadline=None)
@given(block_list=blocks, huffman=st.booleans(), table_size=st.sampled_from([4096, 256, 0]))
def test_every_block_seen_decodes_exactly(block_list: list[list[tuple[bytes, bytes]]], huffman: bool,
                                          table_size: int) -> None:
    context = HpackContext()
    for block, encoded in zip(block_list, encode_all(block_list, huffman, table_size), strict=True):
        assert context.decode(encoded) == block


@settings(max_examples=300, deadline=None)
@given(block_list=blocks, huffman=st.booleans(), data=st.data())
def test_missed_blocks_give_unknown_never_wrong(block_list: list[list[tuple[bytes, bytes]]], huffman: bool,
                                                data: st.DataObject) -> None:
    encoded = encode_all(block_list, huffman, 4096)
    skipped = data.draw(st.sets(st.integers(0, len(encoded) - 1)))
    context = HpackContext(complete=0 not in skipped)
    for i, (block, raw) in enumerate(zip(block_list, encoded, strict=True)):
        if i in skipped:
            context.missed()
            continue
        for (name, value), (got_name, got_value) in zip(block, context.decode(raw), strict=True):
            assert got_name in (name, UNKNOWN)
            assert got_value in (value, UNKNOWN)


def test_unknown_entries_after_joining_mid_way() -> None:
    encoder = Encoder()
    encoder.encode([(b"x-custom", b"first")])  # adds x-custom: first, unseen
    second = encoder.encode([(b"x-custom", b"first"), (b"x-other", b"second")])
    context = HpackContext(complete=False)
    assert context.decode(second) == [(UNKNOWN, UNKNOWN), (b"x-other", b"second")]
    with pytest.raises(ParseError):  # a complete context refuses a reference past its table
        HpackContext().decode(second)


@settings(max_examples=500, deadline=None)
@given(raw=st.binary(max_size=100))
def test_arbitrary_bytes_are_a_parse_error_or_headers(raw: bytes) -> None:
    for complete in (True, False):
        with contextlib.suppress(ParseError):
            HpackContext(complete).decode(raw)
