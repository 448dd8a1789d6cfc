"""HPACK (RFC 7541) header blocks, decoded by a context that knows what it does not know.

Each direction of an HTTP/2 connection has one decoding context: the static table and a
dynamic table that every header block may add to. A decoder that missed a block (obi
joined the connection mid-way, or a capture lost a frame) no longer knows what the block
added, nor where the entries it held now sit: it forgets them. It still learns the
entries added after, in order, at the front of the table: references to those decode;
references past them decode to UNKNOWN, and the header they name is reported as not known,
never as another one.

The Huffman code and the static table come from the hpack package (python-hyper); the
decoding of instructions and the table's knowledge are ours.
"""

from __future__ import annotations

from collections import deque

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from obi.protocols.errors import ParseError

__all__ = ["UNKNOWN", "HpackContext"]

UNKNOWN = b"\0unknown"  # the name or value of a header obi cannot know
_STATIC = HeaderTable.STATIC_TABLE
_STATIC_COUNT = len(_STATIC)
_ENTRY_OVERHEAD = 32  # RFC 7541 4.1: an entry's size is its name, its value and 32
DEFAULT_TABLE_SIZE = 4096
MAX_TABLE_SIZE = 1 << 20  # larger size updates are refused (a peer's SETTINGS allows more, no one uses it)
MAX_STRING = 64 * 1024
Header = tuple[bytes, bytes]


def _integer(data: bytes, at: int, prefix_bits: int) -> tuple[int, int]:
    """An HPACK integer with an N-bit prefix at `at`; (value, the next position)."""
    if at >= len(data):
        raise ParseError("HPACK block ends inside an integer")
    mask = (1 << prefix_bits) - 1
    value = data[at] & mask
    at += 1
    if value < mask:
        return value, at
    shift = 0
    while True:
        if at >= len(data):
            raise ParseError("HPACK block ends inside an integer")
        byte = data[at]
        at += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 28:
            raise ParseError("HPACK integer too large")


def _string(data: bytes, at: int) -> tuple[bytes, int]:
    if at >= len(data):
        raise ParseError("HPACK block ends before a string")
    huffman = data[at] & 0x80
    length, at = _integer(data, at, 7)
    if length > MAX_STRING or at + length > len(data):
        raise ParseError("HPACK string past the block's end")
    raw = data[at:at + length]
    if huffman:
        try:
            raw = decode_huffman(raw)
        except HPACKDecodingError:
            raise ParseError("HPACK string with a bad Huffman code") from None
    return raw, at + length


class HpackContext:
    """One direction's decoding context (see the module docstring)."""

    __slots__ = ("_entries", "_known_size", "complete", "max_size")

    def __init__(self, complete: bool = True) -> None:
        """`complete`: every block of the direction will be seen from its first (False for a
        connection obi joined mid-way)."""
        self._entries: deque[Header] = deque()  # newest first: dynamic index 1 is [0]
        self._known_size = 0  # of the entries held, UNKNOWN ones counted at the least they can be
        self.max_size = DEFAULT_TABLE_SIZE
        self.complete = complete  # False: older entries than those held may exist, unknown

    def missed(self) -> None:
        """A header block of this direction was not seen: what it added is unknown, and so is
        how far it pushed the entries held back: they are dropped."""
        self.complete = False
        self._entries.clear()
        self._known_size = 0

    def decode(self, block: bytes) -> list[Header]:
        """The headers of one whole header block, in order; a name or value obi cannot know is
        UNKNOWN. A block that is not HPACK raises ParseError, and then the context has missed
        whatever the block added after the error."""
        headers: list[Header] = []
        at, size = 0, len(block)
        try:
            while at < size:
                first = block[at]
                if first & 0x80:  # indexed header field
                    index, at = _integer(block, at, 7)
                    headers.append(self._lookup(index))
                elif first & 0x40:  # literal with incremental indexing
                    header, at = self._literal(block, at, 6)
                    self._add(header)
                    headers.append(header)
                elif first & 0x20:  # dynamic table size update
                    new_size, at = _integer(block, at, 5)
                    if new_size > MAX_TABLE_SIZE:
                        raise ParseError("HPACK table size update too large")
                    self.max_size = new_size
                    self._evict()
                else:  # literal without indexing, or never indexed
                    header, at = self._literal(block, at, 4)
                    headers.append(header)
        except ParseError:
            self.missed()
            raise
        return headers

    def _literal(self, block: bytes, at: int, prefix_bits: int) -> tuple[Header, int]:
        index, at = _integer(block, at, prefix_bits)
        if index:
            name = self._lookup(index)[0]
        else:
            name, at = _string(block, at)
        value, at = _string(block, at)
        return (name, value), at

    def _lookup(self, index: int) -> Header:
        if index == 0:
            raise ParseError("HPACK index 0")
        if index <= _STATIC_COUNT:
            return _STATIC[index - 1]
        position = index - _STATIC_COUNT - 1
        if position < len(self._entries):
            return self._entries[position]
        if self.complete:
            raise ParseError("HPACK index past the dynamic table")
        return UNKNOWN, UNKNOWN

    def _add(self, header: Header) -> None:
        name, value = header
        size = _ENTRY_OVERHEAD + (0 if name is UNKNOWN else len(name)) + len(value)
        self._entries.appendleft(header)
        self._known_size += size
        self._evict()

    def _evict(self) -> None:
        entries = self._entries
        while entries and self._known_size > self.max_size:
            name, value = entries.pop()
            self._known_size -= _ENTRY_OVERHEAD + (0 if name is UNKNOWN else len(name)) + len(value)
