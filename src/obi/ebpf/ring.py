"""Ring buffer reader: drains a BPF ring buffer into one contiguous batch.

The C shim copies every pending record into a buffer owned here, each after
its length; Python then walks the batch with precompiled struct layouts.
There is no Python call per record and no wakeup per record (the kernel
side batches them).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from obi.ebpf._libbpf import BpfError, check, check_ptr, ffi, lib

_PRIMITIVES = {
    "uint8_t": "B", "uint16_t": "H", "uint32_t": "I", "uint64_t": "Q",
    "int8_t": "b", "int16_t": "h", "int32_t": "i", "int64_t": "q",
}


def struct_layout(ctype: str, skip: frozenset[str] = frozenset()) -> tuple[struct.Struct, tuple[str, ...]]:
    """A struct.Struct for a C struct, derived from its CFFI declaration.

    Fields named in `skip` become padding (read them by offset instead);
    byte arrays become `Ns`. Returns the Struct and the unpacked field names.
    """
    ctyp = ffi.typeof(ctype)
    fmt = ["="]
    names: list[str] = []
    pos = 0
    for name, fld in ctyp.fields:
        if fld.offset > pos:
            fmt.append(f"{fld.offset - pos}x")
        size = ffi.sizeof(fld.type)
        if name in skip:
            fmt.append(f"{size}x")
        elif fld.type.kind == "primitive":
            fmt.append(_PRIMITIVES[fld.type.cname])
            names.append(name)
        elif fld.type.kind == "array" and fld.type.item.cname in ("uint8_t", "char"):
            fmt.append(f"{fld.type.length}s")
            names.append(name)
        else:
            raise TypeError(f"{ctype}.{name}: unsupported field type {fld.type.cname}")
        pos = fld.offset + size
    total = ffi.sizeof(ctyp)
    if total > pos:
        fmt.append(f"{total - pos}x")
    layout = struct.Struct("".join(fmt))
    assert layout.size == total, (ctype, layout.size, total)
    return layout, tuple(names)


class RingReader:
    """Drains one BPF ring buffer into a reusable batch of length-prefixed records.

    In the batch every record is a native uint32 length followed by its bytes
    (see obi_shim.h); records are as long as the kernel made them.
    """

    def __init__(self, map_fd: int, max_record: int, batch_bytes: int = 1 << 22) -> None:
        self.max_record = max_record
        cap = max(batch_bytes, 4 * (max_record + 4))
        self._buf = ffi.new("uint8_t[]", cap)
        self._batch: Any = ffi.new("struct obi_batch *")
        self._batch.buf = self._buf
        self._batch.cap = cap
        self._batch.max_record = max_record
        self._view = ffi.buffer(self._buf)
        self._rb: Any = check_ptr(lib.obi_ring_new(map_fd, self._batch), "ring_buffer__new")

    @property
    def epoll_fd(self) -> int:
        """Readable when the kernel side asked for a wakeup (add it to the event loop)."""
        return check(lib.ring_buffer__epoll_fd(self._rb), "ring_buffer__epoll_fd")

    @property
    def oversized(self) -> int:
        """Records dropped because they were larger than max_record."""
        return int(self._batch.oversized)

    def drain_once(self) -> tuple[memoryview, int]:
        """One drain: a view of the records copied (valid until the next drain), and their count."""
        if self._rb is None:
            raise BpfError(9, "ring buffer is closed")
        n = lib.obi_ring_drain(self._rb, self._batch)
        if n < 0:
            raise BpfError(-n, "ring_buffer__consume")
        return memoryview(self._view)[: self._batch.used], n

    def drain(self) -> Iterator[tuple[bytes, int]]:
        """Copies of every pending batch with their record counts, until the ring is empty."""
        while True:
            view, count = self.drain_once()
            if count:
                yield view.tobytes(), count
            if not self._batch.full:
                return

    def close(self) -> None:
        if self._rb is not None:
            lib.ring_buffer__free(self._rb)
            self._rb = None

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
