"""Go programs: net/http (server and client) and goroutine births, through uprobes.

A Go binary says it is one in its build info; its functions are found in its
symbol table, or in .gopclntab when it is stripped, and their RET instructions
by disassembly (obi.ebpf.golang). The programs of bpf/capture.bpf.c read the
program's own structures, at offsets from its DWARF or, stripped, from a table
per Go version; each binary's offsets go to one slot of the `go_offsets` map,
whose index is every probe's cookie.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from obi.ebpf._libbpf import BpfError, check, ffi, lib
from obi.ebpf.libraries import NotMine, ProgramSource
from obi.ebpf.uprobes import UprobeAttacher, detach

if TYPE_CHECKING:
    from obi.ebpf.golang import GoBinary, GoFunction

# Go function -> (program at its entry, program at each of its RET instructions)
GO_HTTP_FUNCTIONS: dict[str, tuple[str, str | None]] = {
    "net/http.serverHandler.ServeHTTP": ("go_serve_http", "go_serve_http_ret"),
    "net/http.(*conn).serve": ("go_conn_serve", "go_conn_serve_ret"),
    "net/http.(*response).WriteHeader": ("go_write_header", None),
    # HTTP/2: bundled in net/http up to Go 1.26, its own package from 1.27
    "net/http.(*http2responseWriter).WriteHeader": ("go_write_header", None),
    "net/http/internal/http2.(*responseWriter).WriteHeader": ("go_write_header", None),
    # ... whose interface wrapper (a pointer-shaped struct: the same pointer) inlines it
    "net/http.http2ResponseWriter.WriteHeader": ("go_write_header", None),
    "net/http.(*Transport).roundTrip": ("go_round_trip", "go_round_trip_ret"),
    # an HTTP/1 request written on its connection's goroutine: the call it is (thread_ids)
    "net/http.(*Request).write": ("go_request_write", None),
    "runtime.newproc1": ("go_newproc1", "go_newproc1_ret"),
}
# Without one of these a Go binary has no HTTP for obi to see.
NET_HTTP = frozenset({"net/http.serverHandler.ServeHTTP", "net/http.(*Transport).roundTrip"})
# crypto/tls: the plaintext of every Go TLS connection but the ones net/http serves (their
# requests come from the functions above), into the same exchanges as syscall bytes.
GO_TLS_FUNCTIONS: dict[str, tuple[str, str | None]] = {
    "crypto/tls.(*Conn).Read": ("go_tls_read", "go_tls_ret"),
    "crypto/tls.(*Conn).Write": ("go_tls_write", "go_tls_ret"),
}
# struct obi_go_offsets field -> the Go struct field whose offset it holds
GO_FIELDS: dict[str, str] = {
    "req_method": "net/http.Request.Method",
    "req_url": "net/http.Request.URL",
    "req_proto_major": "net/http.Request.ProtoMajor",
    "req_content_length": "net/http.Request.ContentLength",
    "req_host": "net/http.Request.Host",
    "url_scheme": "net/url.URL.Scheme",
    "url_host": "net/url.URL.Host",
    "url_path": "net/url.URL.Path",
    "resp_status_code": "net/http.Response.StatusCode",
    "resp_content_length": "net/http.Response.ContentLength",
    "response_written": "net/http.response.written",
    "conn_rwc": "net/http.conn.rwc",
    "conn_tls_state": "net/http.conn.tlsState",
    "tls_conn_conn": "crypto/tls.Conn.conn",
    "tcp_conn_fd": "net.conn.fd",
    "netfd_pfd": "net.netFD.pfd",
    "pfd_sysfd": "internal/poll.FD.Sysfd",
}
# The HTTP/2 server's response writer (h2_rws, h2_wrote_bytes), by the WriteHeader the binary has.
H2_FIELDS: dict[str, tuple[str, str]] = {
    "net/http.(*http2responseWriter).WriteHeader": (
        "net/http.http2responseWriter.rws", "net/http.http2responseWriterState.wroteBytes"),
    "net/http/internal/http2.(*responseWriter).WriteHeader": (
        "net/http/internal/http2.responseWriter.rws",
        "net/http/internal/http2.responseWriterState.wroteBytes"),
}
GO_PROGRAMS = frozenset(p for functions in (GO_HTTP_FUNCTIONS, GO_TLS_FUNCTIONS)
                        for pair in functions.values() for p in pair if p)


# Go's register ABI: the argument registers and the goroutine (r14) the entry programs read;
# the results (rax) and the goroutine the return programs read.
ENTRY_REGISTERS = ("rax", "rbx", "rcx", "rdi", "rsi", "r8", "r9", "r10", "r11", "r14")
RETURN_REGISTERS = ("rax", "r14")


def _placements(path: str, functions: Iterable[GoFunction]) -> dict[str, tuple[int, list[int]]]:
    """name -> (entry probe, return probes) as file offsets: on instructions the kernel
    emulates where that is safe (obi.ebpf.x86), else the entry and every RET."""
    from obi.ebpf.x86 import Function

    placed = {}
    with open(path, "rb") as f:
        for function in functions:
            f.seek(function.entry)
            code = Function(f.read(function.size)) if function.size else None
            moved = code.entry_probe(ENTRY_REGISTERS) if code else 0
            returns = code.return_probes(RETURN_REGISTERS) if code and function.returns else None
            placed[function.name] = (function.entry + moved, [function.entry + r for r in returns]
                                     if returns is not None else list(function.returns))
    return placed


ALL_GO_FUNCTIONS = {**GO_HTTP_FUNCTIONS, **GO_TLS_FUNCTIONS}
_READ_CACHE = 8  # Go binaries whose reading is kept (each instrumenter of a file asks once)


@dataclass(frozen=True)
class GoRead:
    """What obi needs of one Go binary: its functions, struct offsets, where to probe."""

    binary: GoBinary
    offsets: bytes  # a struct obi_go_offsets
    placed: dict[str, tuple[int, list[int]]]  # function -> (entry probe, return probes)


class GoOffsetSlots:
    """The `go_offsets` map (one slot of struct offsets per attached Go binary and family), and
    the reading of Go binaries, done once per file for every instrumenter that asks."""

    def __init__(self, programs: ProgramSource) -> None:
        self._fd = programs.map_fd("go_offsets")
        self._free = list(range(int(lib.OBI_GO_OFFSET_SLOTS) - 1, -1, -1))
        self._read: dict[tuple[int, int, int], GoRead | str | None] = {}

    def read(self, path: str, shown: str) -> GoRead:
        """The file at path as a Go binary; NotMine when it is not one, ValueError when obi
        cannot instrument it."""
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, st.st_mtime_ns)
        if key not in self._read:
            if len(self._read) >= _READ_CACHE:
                del self._read[next(iter(self._read))]
            self._read[key] = _read_go(path)
        found = self._read[key]
        if found is None:
            raise NotMine(shown)
        if isinstance(found, str):
            raise ValueError(f"Go binary not instrumented: {found}")
        return found

    def take(self, offsets: bytes) -> int:
        if not self._free:
            raise BpfError(errno.ENOSPC, f"more than {lib.OBI_GO_OFFSET_SLOTS} Go binaries at once")
        slot = self._free.pop()
        check(lib.bpf_map_update_elem(self._fd, ffi.new("uint32_t *", slot), offsets, 0), "set Go offsets")
        return slot

    def give(self, slot: int) -> None:
        self._free.append(slot)


def _read_go(path: str) -> GoRead | str | None:
    """A Go binary read for every instrumenter; None: not Go; a string: why not instrumentable."""
    # capstone and pyelftools load only once a process needs them
    from obi.ebpf.golang import GoError, go_version, inspect_go

    try:
        if go_version(path) is None:
            return None
        binary = inspect_go(path, ALL_GO_FUNCTIONS, GO_FIELDS.values())
        h2 = next((H2_FIELDS[name] for name in H2_FIELDS if name in binary.functions), None)
        h2_offsets = inspect_go(path, (), h2).offsets if h2 else {}
    except GoError as err:
        return str(err)
    offsets = ffi.new("struct obi_go_offsets *")
    for field, go_field in GO_FIELDS.items():
        setattr(offsets, field, binary.offsets[go_field])
    if h2:
        offsets.h2_rws, offsets.h2_wrote_bytes = (h2_offsets[name] for name in h2)
    return GoRead(binary, bytes(ffi.buffer(offsets)), _placements(path, binary.functions.values()))


class _GoProbes:
    """A Go instrumenter (obi.ebpf.libraries.Instrumenter) for the executable of a Go program."""

    name: str
    attached_event: str
    functions: dict[str, tuple[str, str | None]]
    required: frozenset[str]  # the binary has none of these: not for this instrumenter

    def __init__(self, attacher: UprobeAttacher, programs: ProgramSource, slots: GoOffsetSlots) -> None:
        self._attacher = attacher
        self._programs = programs
        self._slots = slots

    def candidate(self, path: str, exe: str | None) -> bool:
        return path == exe

    def attach(self, path: str, shown: str) -> tuple[list[int], str, object]:
        read = self._slots.read(path, shown)
        binary = read.binary
        mine = [name for name in binary.functions if name in self.functions]
        if not self.required & set(mine):
            raise NotMine(shown)
        slot = self._slots.take(read.offsets)
        links: list[int] = []
        try:
            for name in mine:
                entry_at, returns_at = read.placed[name]
                entry, ret = self.functions[name]
                links += self._attacher.attach(self._programs.program_fd(entry), path, [entry_at],
                                               cookie=slot)
                if ret and returns_at:
                    links += self._attacher.attach(self._programs.program_fd(ret), path, returns_at,
                                                   cookie=slot)
        except BaseException:
            detach(links)
            self._slots.give(slot)
            raise
        cheap = sum(read.placed[name][0] != binary.functions[name].entry for name in mine)
        what = (f"{binary.version}, offsets from {binary.offsets_from}: {', '.join(sorted(mine))}; "
                f"{cheap} of {len(mine)} entries off the entry ({self._attacher.kind})")
        return links, what, slot

    def release(self, token: object) -> None:
        if isinstance(token, int):
            self._slots.give(token)


class GoHttp(_GoProbes):
    """net/http servers and clients, and goroutine births (for parents)."""

    name = "go_http"
    attached_event = "go_binary_attached"
    functions = GO_HTTP_FUNCTIONS
    required = NET_HTTP


class GoTls(_GoProbes):
    """crypto/tls plaintext of the connections net/http does not serve."""

    name = "go_tls"
    attached_event = "go_tls_attached"
    functions = GO_TLS_FUNCTIONS
    required = frozenset(GO_TLS_FUNCTIONS)
