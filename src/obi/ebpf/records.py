"""The records of the capture's ring buffer, as Python sees them.

Layouts come from the CFFI declarations of bpf/capture.h (never restated
here); the per-event path (obi.traces.records) unpacks headers in place.
"""

from __future__ import annotations

from obi.ebpf._libbpf import lib
from obi.ebpf.ring import struct_layout

EXCHANGE_LAYOUT, EXCHANGE_FIELDS = struct_layout("struct obi_exchange")
PROCESS_LAYOUT, PROCESS_FIELDS = struct_layout("struct obi_process")
EXCHANGE_SIZE = EXCHANGE_LAYOUT.size
PROCESS_SIZE = PROCESS_LAYOUT.size
RECORD_EXCHANGE: int = lib.OBI_RECORD_EXCHANGE
RECORD_PROCESS: int = lib.OBI_RECORD_PROCESS
H2_LAYOUT, H2_FIELDS = struct_layout("struct obi_h2")
H2_SIZE = H2_LAYOUT.size
RECORD_H2: int = lib.OBI_RECORD_H2
