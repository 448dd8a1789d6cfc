"""The only module that imports the compiled CFFI `lib`; errors and logging for it."""

from __future__ import annotations

import errno as errno_mod
import os
from typing import Any

import structlog

from obi.ebpf._libbpf_cffi import ffi, lib

__all__ = ["BpfError", "NotSupportedError", "check", "check_ptr", "ffi", "install_libbpf_logging", "lib"]


class BpfError(OSError):
    """A libbpf or bpf(2) call failed; carries the errno and libbpf's message."""

    def __init__(self, err: int, what: str) -> None:
        super().__init__(err, f"{what}: {strerror(err)}")
        self.what = what

    def __str__(self) -> str:
        return str(self.strerror)


class NotSupportedError(BpfError):
    """The kernel here lacks a feature obi asked for (named in `feature`)."""

    def __init__(self, err: int, feature: str) -> None:
        super().__init__(err, f"{feature} is not supported on this kernel")
        self.feature = feature


def strerror(err: int) -> str:
    buf = ffi.new("char[]", 256)
    if lib.libbpf_strerror(err, buf, 256) == 0:
        return str(ffi.string(buf).decode(errors="replace"))
    return os.strerror(err)


def check(ret: int, what: str) -> int:
    """Returns ret, or raises BpfError for a negative libbpf return."""
    if ret < 0:
        raise BpfError(-ret, what)
    return ret


def check_ptr(ptr: Any, what: str) -> Any:
    """Returns ptr, or raises BpfError with errno when libbpf returned NULL."""
    if ptr == ffi.NULL:
        raise BpfError(ffi.errno or errno_mod.EINVAL, what)
    return ptr


def install_libbpf_logging() -> None:
    """Routes libbpf's messages into structlog (component=libbpf).

    libbpf's debug level is very chatty (one line per relocation), so it is
    logged at debug; warnings at warning.
    """
    log = structlog.get_logger().bind(component="libbpf")

    @ffi.def_extern()  # type: ignore[untyped-decorator]
    def obi_libbpf_log(level: int, msg: Any) -> None:
        text = ffi.string(msg).decode(errors="replace").rstrip()
        if level == 0:
            log.warning("libbpf_message", message=text)
        elif level == 1:
            log.info("libbpf_message", message=text)
        else:
            log.debug("libbpf_message", message=text)

    lib.obi_install_print()
