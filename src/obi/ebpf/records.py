"""The records of the capture's ring buffer, as Python sees them.

Layouts come from the CFFI declarations of bpf/capture.h (never restated
here). The per-event path unpacks headers with EXCHANGE_LAYOUT in place;
`decode` turns a batch into dicts for tests and tools.
"""

from __future__ import annotations

from typing import Any

from obi.ebpf._libbpf import lib
from obi.ebpf.ring import split_records, struct_layout

EXCHANGE_LAYOUT, EXCHANGE_FIELDS = struct_layout("struct obi_exchange")
PROCESS_LAYOUT, PROCESS_FIELDS = struct_layout("struct obi_process")
EXCHANGE_SIZE = EXCHANGE_LAYOUT.size
PROCESS_SIZE = PROCESS_LAYOUT.size
RECORD_EXCHANGE: int = lib.OBI_RECORD_EXCHANGE
RECORD_PROCESS: int = lib.OBI_RECORD_PROCESS


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
