"""tracefs: where classic tracepoints resolve their ids.

A fresh machine here has no tracefs mounted. obi mounts it when it has the
right (and unmounts what it mounted on exit), else it uses raw tracepoints,
which need no tracefs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")
DEBUGFS_TRACING = Path("/sys/kernel/debug/tracing")


def syscall_events_dir() -> Path | None:
    """The mounted tracefs syscalls event directory, if any."""
    for root in (TRACEFS, DEBUGFS_TRACING):
        events = root / "events" / "syscalls"
        try:
            if events.is_dir():
                return events
        except OSError:
            continue
    return None


@dataclass
class TracefsMount:
    """The outcome of trying to make tracefs available."""

    available: bool
    mounted_by_us: bool
    detail: str
    errno: int = 0  # why it is not available, when it is not

    def release(self) -> None:
        """Unmounts tracefs if obi mounted it (lazy: links may still be closing)."""
        if self.mounted_by_us:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            libc.umount2(str(TRACEFS).encode(), 2)  # MNT_DETACH
            self.mounted_by_us = False


def ensure_tracefs(allow_mount: bool = True) -> TracefsMount:
    """Finds tracefs, or mounts it at /sys/kernel/tracing when allowed and possible."""
    found = syscall_events_dir()
    if found is not None:
        return TracefsMount(True, False, f"tracefs mounted at {found.parents[1]}")
    if not allow_mount:
        return TracefsMount(False, False, "tracefs not mounted", errno.ENOENT)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    rc = libc.mount(b"tracefs", str(TRACEFS).encode(), b"tracefs", 0, None)
    if rc != 0:
        err = ctypes.get_errno()
        return TracefsMount(False, False, f"tracefs not mounted and mount failed: {os.strerror(err)}", err)
    if syscall_events_dir() is None:
        libc.umount2(str(TRACEFS).encode(), 2)
        return TracefsMount(False, False, "tracefs mounted but has no syscall events", errno.ENOENT)
    return TracefsMount(True, True, f"tracefs mounted by obi at {TRACEFS}")
