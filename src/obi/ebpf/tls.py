"""OpenSSL's plaintext: which files have it, and the uprobes on them.

OpenSSL (libssl 3 and 1.1, and the copy linked into Node.js) has one API for
plaintext: SSL_read / SSL_write and their _ex forms. The programs of
bpf/capture.bpf.c on those functions feed the plaintext into the same
exchanges as the syscalls' bytes; the ciphertext on the socket is skipped.
SSL_do_handshake and SSL_shutdown carry no plaintext, but the syscalls they
make tell which socket an SSL object uses; SSL_free forgets the object.
"""

from __future__ import annotations

import re

from obi.ebpf.elf import ElfFile
from obi.ebpf.libraries import NotMine, ProgramSource
from obi.ebpf.uprobes import UprobeAttacher, detach

# Function -> the program on its entry; every one but SSL_free also returns through tls_return.
OPENSSL_ENTRIES: tuple[tuple[str, str], ...] = (
    ("SSL_read", "tls_read_enter"),
    ("SSL_read_ex", "tls_read_ex_enter"),
    ("SSL_write", "tls_write_enter"),
    ("SSL_write_ex", "tls_write_ex_enter"),
    ("SSL_do_handshake", "tls_handshake_enter"),
    ("SSL_shutdown", "tls_handshake_enter"),
    ("SSL_free", "tls_free"),
)
OPENSSL_RETURN = "tls_return"
NO_RETURN = frozenset({"SSL_free"})
OPENSSL_FUNCTIONS = tuple(name for name, _ in OPENSSL_ENTRIES)
REQUIRED = frozenset({"SSL_read", "SSL_write"})  # without these a file is not an OpenSSL


# What the programs read: the entries SSL *, buf and the _ex count pointer; the return, rax.
ENTRY_REGISTERS = ("rdi", "rsi", "rdx", "rcx")
RETURN_REGISTERS = ("rax",)
_EM_X86_64 = 62


def _placements(elf: ElfFile) -> dict[str, tuple[int, int, list[int] | None]]:
    """function -> (entry, entry probe, return probes or None for a uretprobe at the entry),
    as file offsets (obi.ebpf.x86). The entry probe moves off the entry only when the returns
    do too, or the function has no return probe: a uretprobe and an entry probe at the entry
    share one trap."""
    from obi.ebpf.x86 import Function  # capstone loads only once a process needs it

    placed: dict[str, tuple[int, int, list[int] | None]] = {}
    for name, (address, size) in elf.functions(OPENSSL_FUNCTIONS).items():
        entry = elf.offset_of(address)
        if entry is None:
            continue
        if elf.machine != _EM_X86_64 or not size:
            placed[name] = (entry, entry, None)
            continue
        function = Function(bytes(elf.data[entry:entry + size]))
        returns = None if name in NO_RETURN else function.return_probes(RETURN_REGISTERS)
        moved = function.entry_probe(ENTRY_REGISTERS) if returns is not None or name in NO_RETURN else 0
        placed[name] = (entry, entry + moved, [entry + r for r in returns] if returns is not None else None)
    return placed


_BUNDLED_LIBSSL = re.compile(r"libssl-[0-9a-f]{8}\.so")


def is_tls_candidate(path: str, exe: str | None) -> bool:
    """A file worth reading for OpenSSL's functions: a libssl (also as Python wheels bundle
    it, renamed libssl-<hash>.so.3 by auditwheel: psycopg-binary's), or the executable itself
    (Node.js and other binaries link OpenSSL statically)."""
    name = path.rsplit("/", 1)[-1]
    return name.startswith("libssl.so") or _BUNDLED_LIBSSL.match(name) is not None or path == exe


class OpenSsl:
    """The OpenSSL instrumenter (obi.ebpf.libraries.Instrumenter)."""

    name = "openssl"
    attached_event = "tls_library_attached"

    def __init__(self, attacher: UprobeAttacher, programs: ProgramSource) -> None:
        self._attacher = attacher
        self._programs = programs

    def candidate(self, path: str, exe: str | None) -> bool:
        return is_tls_candidate(path, exe)

    def attach(self, path: str, shown: str) -> tuple[list[int], str, object]:
        with ElfFile(path) as elf:
            placed = _placements(elf)
        if not placed.keys() >= REQUIRED:
            raise NotMine(shown)
        by_program: dict[str, list[int]] = {}
        retprobes: list[int] = []  # uretprobes, at the entry
        returns: list[int] = []  # plain uprobes on the last emulated instruction before a RET
        for function, program in OPENSSL_ENTRIES:
            if function not in placed:
                continue
            entry, moved, at_returns = placed[function]
            by_program.setdefault(program, []).append(moved)
            if function not in NO_RETURN:
                if at_returns is None:
                    retprobes.append(entry)
                else:
                    returns += at_returns
        links: list[int] = []
        try:
            for program, at in by_program.items():
                links += self._attacher.attach(self._programs.program_fd(program), path, at)
            return_fd = self._programs.program_fd(OPENSSL_RETURN)
            if retprobes:
                links += self._attacher.attach(return_fd, path, retprobes, retprobe=True)
            if returns:
                links += self._attacher.attach(return_fd, path, returns)
        except BaseException:
            detach(links)
            raise
        cheap = sorted(f for f, (entry, moved, at) in placed.items() if at is not None or moved != entry)
        return links, (f"{', '.join(sorted(placed))}; off the entry: {', '.join(cheap) or 'none'} "
                       f"({self._attacher.kind})"), None

    def release(self, token: object) -> None:
        pass
