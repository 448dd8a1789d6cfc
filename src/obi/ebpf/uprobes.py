"""Attaching uprobe programs: uprobe_multi links where the kernel has them, else perf events.

A uprobe_multi link (Linux 6.6+) puts one program at any number of offsets of
one file and needs only CAP_BPF and CAP_PERFMON. A uprobe perf event puts it
at one offset and, since "perf: Revert to requiring CAP_SYS_ADMIN for uprobes"
(2025, stable kernels included), needs CAP_SYS_ADMIN. The mode is chosen once,
before the programs load: a uprobe_multi program is loaded for that attach type.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from obi.ebpf._libbpf import BpfError, ffi, lib
from obi.preflight import PERF_UPROBE_CAUSE, probe_uprobe_modes

UprobeKind = Literal["uprobe_multi", "perf_event"]
_PMU = Path("/sys/bus/event_source/devices/uprobe")


@dataclass(frozen=True)
class UprobeMode:
    """How uprobes attach here, or why they cannot (kind None)."""

    kind: UprobeKind | None
    detail: str


def choose_uprobe_mode(wanted: str = "auto") -> UprobeMode:
    """Tries both ways on libc's getpid and keeps the first that works (or the one `wanted`)."""
    multi, perf = probe_uprobe_modes()
    if multi.ok and wanted in ("auto", "uprobe_multi"):
        return UprobeMode("uprobe_multi", "uprobe_multi links (Linux 6.6+)")
    if perf.ok and wanted in ("auto", "perf_event"):
        return UprobeMode("perf_event", f"uprobe perf events ({multi.detail})")
    cause = f" ({PERF_UPROBE_CAUSE}; grant CAP_SYS_ADMIN)" if perf.errno == errno.EACCES else ""
    return UprobeMode(None, f"{perf.detail}{cause}; {multi.detail}")


def _retprobe_bit() -> int:
    """The config bit of a return probe, from the PMU's format ("config:0")."""
    try:
        return int((_PMU / "format" / "retprobe").read_text().strip().split(":")[1])
    except (OSError, ValueError, IndexError):
        return 0


class UprobeAttacher:
    """Makes uprobe links (plain fds, closed to detach) in the chosen mode."""

    def __init__(self, kind: UprobeKind) -> None:
        self.kind = kind
        self._pmu = 0
        self._retbit = 0
        if kind == "perf_event":
            try:
                self._pmu = int((_PMU / "type").read_text())
            except (OSError, ValueError) as err:
                raise BpfError(errno.ENOENT, f"no uprobe PMU ({_PMU}/type)") from err
            self._retbit = _retprobe_bit()

    def attach(self, prog_fd: int, path: str, offsets: Sequence[int], retprobe: bool = False,
               cookie: int = 0) -> list[int]:
        """Links prog at every offset of path, each with `cookie` (bpf_get_attach_cookie);
        all or none (raises BpfError)."""
        encoded = path.encode()
        if self.kind == "uprobe_multi":
            array = ffi.new("uint64_t[]", list(offsets))
            cookies = ffi.new("uint64_t[]", [cookie] * len(offsets)) if cookie else ffi.NULL
            fd = lib.obi_uprobe_multi(prog_fd, encoded, array, cookies, len(offsets), int(retprobe))
            if fd < 0:
                raise BpfError(-fd, f"uprobe_multi link on {path}")
            return [fd]
        fds: list[int] = []
        for offset in offsets:
            fd = lib.obi_uprobe_perf(prog_fd, self._pmu, encoded, offset, self._retbit if retprobe else -1,
                                     cookie)
            if fd < 0:
                detach(fds)
                raise BpfError(-fd, f"uprobe perf event on {path}+{offset:#x}")
            fds.append(fd)
        return fds


def detach(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
