"""Reading what the capture produced, for tests: records as dicts, the kernel's pid filter."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from obi.ebpf._libbpf import ffi, lib
from obi.ebpf.capture import Capture
from obi.ebpf.records import (
    EXCHANGE_FIELDS,
    EXCHANGE_LAYOUT,
    EXCHANGE_SIZE,
    PROCESS_FIELDS,
    PROCESS_LAYOUT,
    PROCESS_SIZE,
    RECORD_EXCHANGE,
    RECORD_PROCESS,
)

_LENGTH = struct.Struct("=I")


def split_records(batch: bytes) -> Iterator[bytes]:
    """The records of a drained batch, each as its own bytes (each follows its uint32 length)."""
    off, end = 0, len(batch)
    while off < end:
        (size,) = _LENGTH.unpack_from(batch, off)
        off += 4
        yield batch[off: off + size]
        off += size


def decode(batch: bytes) -> list[dict[str, Any]]:
    """Every record of a drained batch as a dict of its fields (plus `req`/`resp` or `path`)."""
    out: list[dict[str, Any]] = []
    for record in split_records(batch):
        kind = record[0]
        if kind == RECORD_EXCHANGE:
            rec = dict(zip(EXCHANGE_FIELDS, EXCHANGE_LAYOUT.unpack_from(record), strict=True))
            req_end = EXCHANGE_SIZE + rec["req_captured"]
            rec["req"] = record[EXCHANGE_SIZE:req_end]
            rec["resp"] = record[req_end: req_end + rec["resp_captured"]]
        elif kind == RECORD_PROCESS:
            rec = dict(zip(PROCESS_FIELDS, PROCESS_LAYOUT.unpack_from(record), strict=True))
            rec["path"] = record[PROCESS_SIZE: PROCESS_SIZE + rec["path_len"]].decode(errors="replace")
        else:
            rec = {"kind": kind, "raw": record}
        out.append(rec)
    return out


def traced_pids(capture: Capture) -> dict[int, int]:
    """Every pid in the kernel's filter, with its OBI_PID_* flags."""
    fd = capture.collection.map_fd("pid_filter")
    out: dict[int, int] = {}
    key, nxt = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    info = ffi.new("struct obi_pid_info *")
    prev = ffi.NULL
    while lib.bpf_map_get_next_key(fd, prev, nxt) == 0:
        key[0] = nxt[0]
        prev = key
        if lib.bpf_map_lookup_elem(fd, key, info) == 0:
            out[int(key[0])] = int(info.flags)
    return out
