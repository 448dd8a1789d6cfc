"""OpenSSL's plaintext: which files have it, and the uprobes on them.

OpenSSL (libssl 3 and 1.1, and the copy linked into Node.js) has one API for
plaintext: SSL_read / SSL_write and their _ex forms. The programs of
bpf/capture.bpf.c on those functions feed the plaintext into the same
exchanges as the syscalls' bytes; the ciphertext on the socket is skipped.
SSL_do_handshake and SSL_shutdown carry no plaintext, but the syscalls they
make tell which socket an SSL object uses; SSL_free forgets the object.
"""

from __future__ import annotations

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


def is_tls_candidate(path: str, exe: str | None) -> bool:
    """A file worth reading for OpenSSL's functions: a libssl, or the executable itself
    (Node.js and other binaries link OpenSSL statically)."""
    name = path.rsplit("/", 1)[-1]
    return name.startswith("libssl.so") or path == exe


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
            offsets = elf.function_offsets(OPENSSL_FUNCTIONS)
        if not offsets.keys() >= REQUIRED:
            raise NotMine(shown)
        by_program: dict[str, list[int]] = {}
        for function, program in OPENSSL_ENTRIES:
            if function in offsets:
                by_program.setdefault(program, []).append(offsets[function])
        returns = [offsets[f] for f, _ in OPENSSL_ENTRIES if f in offsets and f not in NO_RETURN]
        links: list[int] = []
        try:
            for program, at in by_program.items():
                links += self._attacher.attach(self._programs.program_fd(program), path, at)
            links += self._attacher.attach(self._programs.program_fd(OPENSSL_RETURN), path, returns,
                                           retprobe=True)
        except BaseException:
            detach(links)
            raise
        return links, f"{', '.join(sorted(offsets))} ({self._attacher.kind})", None

    def release(self, token: object) -> None:
        pass
