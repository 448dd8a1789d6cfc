"""nginx: which request an upstream call is made for.

nginx serves many requests on each worker thread, so the thread alone does not say which
request a proxied call belongs to. nginx exports its functions (for dynamic modules), and
`ngx_http_upstream_init(r)` starts the upstream of request `r`: the programs of
bpf/capture.bpf.c on its entry and return tie the upstream connection and request to the
server exchange of `r`'s client connection. Any executable that exports the function
(nginx, OpenResty, Angie) is instrumented.
"""

from __future__ import annotations

from obi.ebpf.elf import ElfFile
from obi.ebpf.libraries import NotMine, ProgramSource
from obi.ebpf.uprobes import UprobeAttacher, detach

UPSTREAM_INIT = "ngx_http_upstream_init"
ENTRY_PROGRAM, RETURN_PROGRAM = "nginx_upstream_init", "nginx_upstream_init_ret"
NGINX_PROGRAMS = frozenset({ENTRY_PROGRAM, RETURN_PROGRAM})
ENTRY_REGISTERS = ("rdi",)  # r
_EM_X86_64 = 62


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
        from obi.ebpf.x86 import Function  # capstone loads only once a process needs it

        with ElfFile(path) as elf:
            found = elf.functions((UPSTREAM_INIT,)).get(UPSTREAM_INIT)
            entry = elf.offset_of(found[0]) if found else None
            if entry is None or found is None:
                raise NotMine(shown)
            returns: list[int] | None = None
            moved = entry
            if elf.machine == _EM_X86_64 and found[1]:
                function = Function(bytes(elf.data[entry:entry + found[1]]))
                at = function.return_probes(())
                if at is not None:  # probes off the entry are cheap only if the return's are too
                    returns = [entry + r for r in at]
                    moved = entry + function.entry_probe(ENTRY_REGISTERS)
        links: list[int] = []
        try:
            links += self._attacher.attach(self._programs.program_fd(ENTRY_PROGRAM), path, [moved])
            if returns is None:
                links += self._attacher.attach(self._programs.program_fd(RETURN_PROGRAM), path, [entry],
                                               retprobe=True)
            else:
                links += self._attacher.attach(self._programs.program_fd(RETURN_PROGRAM), path, returns)
        except BaseException:
            detach(links)
            raise
        where = "off the entry" if returns is not None else "entry and uretprobe"
        return links, f"{UPSTREAM_INIT} ({where}, {self._attacher.kind})", None

    def release(self, token: object) -> None:
        pass
