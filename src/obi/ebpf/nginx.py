"""nginx: which request an upstream call is made for.

nginx serves many requests on each worker thread, so the thread alone does not say which
request a proxied call belongs to. nginx exports its functions (for dynamic modules), and
every upstream module (proxy, fastcgi, uwsgi, scgi, grpc) writes its request with
`ngx_chain_writer(ctx, in)`, whose `ctx` names the upstream connection and, through it,
the request it is written for. The program of bpf/capture.bpf.c on its entry ties the
upstream connection's next request to the server exchange of that request's client
connection. Any executable that exports the function (nginx, OpenResty, Angie) is
instrumented; an entry probe only (on x86-64 the entry is a `push`, which the kernel
emulates: a cheap probe).
"""

from __future__ import annotations

from obi.ebpf.elf import ElfFile
from obi.ebpf.libraries import NotMine, ProgramSource
from obi.ebpf.uprobes import UprobeAttacher

CHAIN_WRITER = "ngx_chain_writer"
PROGRAM = "nginx_chain_writer"
NGINX_PROGRAMS = frozenset({PROGRAM})
REQUIRED = (CHAIN_WRITER, "ngx_http_upstream_init")  # an nginx with an HTTP upstream


class Nginx:
    """The nginx instrumenter (obi.ebpf.libraries.Instrumenter): the executable itself."""

    name = "nginx"
    attached_event = "nginx_binary_attached"

    def __init__(self, attacher: UprobeAttacher, programs: ProgramSource) -> None:
        self._attacher = attacher
        self._programs = programs

    def candidate(self, path: str, exe: str | None) -> bool:
        return path == exe

    def attach(self, path: str, shown: str) -> tuple[list[int], str, object]:
        with ElfFile(path) as elf:
            found = elf.functions(REQUIRED)
            entry = elf.offset_of(found[CHAIN_WRITER][0]) if found.keys() >= set(REQUIRED) else None
        if entry is None:
            raise NotMine(shown)
        links = self._attacher.attach(self._programs.program_fd(PROGRAM), path, [entry])
        return links, f"{CHAIN_WRITER} ({self._attacher.kind})", None

    def release(self, token: object) -> None:
        pass
