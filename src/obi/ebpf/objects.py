"""BPF objects: a deterministic description (spec) and the live kernel objects.

`BpfObjectSpec` says what to load and how to configure it; it has no file
descriptors and is testable without root. `BpfCollection` owns the loaded
object and the links it attached, and releases them on `close()`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from obi.ebpf._libbpf import BpfError, check, check_ptr, ffi, install_libbpf_logging, lib

# Links detached at once (each tracepoint detach waits on the kernel, not on a CPU).
DETACH_THREADS = 8


def object_path(name: str) -> Path:
    """Path of a compiled CO-RE object shipped in the package (obi/ebpf/NAME.bpf.o)."""
    path = Path(str(resources.files("obi.ebpf").joinpath(f"{name}.bpf.o")))
    if not path.exists():
        raise FileNotFoundError(f"BPF object {path} is missing: the package was built without clang")
    return path


def u32(value: int) -> bytes:
    return struct.pack("=I", value)


def u64(value: int) -> bytes:
    return struct.pack("=Q", value)


@dataclass(frozen=True)
class MapStats:
    """A map as obi_bpf_map_entries_total and obi_bpf_map_max_entries_total show it."""

    map_id: int
    name: str
    type: str
    max_entries: int
    entries: int


# The map types obi's objects use that have entries to count (ring buffers and queues have none).
MAP_TYPES = {1: "Hash", 2: "Array", 5: "PerCPUHash", 6: "PerCPUArray", 9: "LRUHash", 10: "LRUCPUHash",
             15: "SockMap", 18: "SockHash"}
ARRAY_MAP_TYPES = frozenset({2, 6, 15})


@dataclass(frozen=True)
class BpfObjectSpec:
    """What to load: the object file, `const volatile` values, map sizes, programs."""

    path: Path
    rodata: Mapping[str, bytes] = field(default_factory=dict)
    max_entries: Mapping[str, int] = field(default_factory=dict)
    # Load only the programs whose function name starts with one of these; () loads all.
    program_prefixes: tuple[str, ...] = ()
    # Loaded programs that attach_all leaves alone (attached by hand, or run by user space).
    manual_programs: frozenset[str] = frozenset()
    # Expected attach types to set before load, by program name (BPF_TRACE_UPROBE_MULTI).
    attach_types: Mapping[str, int] = field(default_factory=dict)
    # Maps not created (only programs left unloaded use them, and creating them may need
    # a privilege obi lacks: a sockhash needs CAP_NET_ADMIN).
    skipped_maps: frozenset[str] = frozenset()


class BpfCollection:
    """A loaded BPF object and the links attached from it."""

    def __init__(self, spec: BpfObjectSpec, maps_of: BpfCollection | None = None) -> None:
        """Opens and loads the object; with `maps_of` (the same object, loaded already with other
        programs), its programs use that collection's maps, globals included: one capture
        whose programs are loaded in two steps."""
        self._log = structlog.get_logger().bind(component="ebpf")
        install_libbpf_logging()
        self.spec = spec
        self._links: list[Any] = []
        self._obj: Any = check_ptr(lib.bpf_object__open_file(str(spec.path).encode(), ffi.NULL),
                                   f"open {spec.path}")
        try:
            self._configure(spec)
            if maps_of is not None:
                self._reuse_maps(maps_of)
            check(lib.bpf_object__load(self._obj), f"load {spec.path.name}")
        except BaseException:
            lib.bpf_object__close(self._obj)
            self._obj = None
            raise

    def _configure(self, spec: BpfObjectSpec) -> None:
        for name, value in spec.rodata.items():
            check(lib.obi_set_rodata(self._obj, name.encode(), value, len(value)), f"set {name}")
        for name, entries in spec.max_entries.items():
            check(lib.bpf_map__set_max_entries(self._map(name), entries), f"size map {name}")
        for name in spec.skipped_maps:
            check(lib.bpf_map__set_autocreate(self._map(name), False), f"leave map {name} out")
        for prog_name, attach_type in spec.attach_types.items():
            check(lib.obi_set_attach_type(self.program(prog_name), attach_type),
                  f"attach type of {prog_name}")
        if spec.program_prefixes:
            selected = 0
            for prog_name, prog in self._programs():
                wanted = prog_name.startswith(spec.program_prefixes)
                selected += wanted
                check(lib.bpf_program__set_autoload(prog, wanted), f"autoload {prog_name}")
            if not selected:
                raise ValueError(f"{spec.path.name} has no program named {spec.program_prefixes}*")

    def _reuse_maps(self, other: BpfCollection) -> None:
        bpf_map = lib.bpf_object__next_map(self._obj, ffi.NULL)
        while bpf_map != ffi.NULL:
            name = ffi.string(lib.bpf_map__name(bpf_map)).decode()
            if name not in self.spec.skipped_maps:
                check(lib.bpf_map__reuse_fd(bpf_map, other.map_fd(name)), f"share map {name}")
            bpf_map = lib.bpf_object__next_map(self._obj, bpf_map)

    def _programs(self) -> Iterator[tuple[str, Any]]:
        prog = lib.bpf_object__next_program(self._obj, ffi.NULL)
        while prog != ffi.NULL:
            yield ffi.string(lib.bpf_program__name(prog)).decode(), prog
            prog = lib.bpf_object__next_program(self._obj, prog)

    def map_stats(self) -> list[MapStats]:
        """Every map of the object with its entries now: hash maps walked key by key (call it
        from a thread: a map of 65,536 entries takes tens of milliseconds), arrays full."""
        stats: list[MapStats] = []
        info = ffi.new("uint32_t[4]")
        bpf_map = lib.bpf_object__next_map(self._obj, ffi.NULL)
        while bpf_map != ffi.NULL:
            fd = lib.bpf_map__fd(bpf_map)
            if fd >= 0 and lib.obi_map_info(fd, info, info + 1, info + 2, info + 3) == 0:
                map_id, map_type, key_size, max_entries = info[0], info[1], info[2], info[3]
                type_name = MAP_TYPES.get(map_type)
                if type_name is not None:
                    if map_type in ARRAY_MAP_TYPES:
                        entries = max_entries
                    else:
                        entries = max(lib.obi_count_keys(fd, key_size, max_entries + 1024), 0)
                    name = ffi.string(lib.bpf_map__name(bpf_map)).decode()
                    stats.append(MapStats(map_id, name, type_name, max_entries, entries))
            bpf_map = lib.bpf_object__next_map(self._obj, bpf_map)
        return stats

    def _map(self, name: str) -> Any:
        return check_ptr(lib.bpf_object__find_map_by_name(self._obj, name.encode()), f"find map {name}")

    def map_fd(self, name: str) -> int:
        return check(lib.bpf_map__fd(self._map(name)), f"map {name} fd")

    def loaded_programs(self) -> list[str]:
        return [name for name, prog in self._programs() if lib.bpf_program__autoload(prog)]

    def program(self, name: str) -> Any:
        for prog_name, prog in self._programs():
            if prog_name == name:
                return prog
        raise KeyError(f"{self.spec.path.name} has no program {name}")

    def program_fd(self, name: str) -> int:
        return check(lib.bpf_program__fd(self.program(name)), f"program {name} fd")

    def section_names(self) -> dict[str, str]:
        """Section of every loaded program, by program name."""
        return {name: ffi.string(lib.bpf_program__section_name(prog)).decode()
                for name, prog in self._programs() if lib.bpf_program__autoload(prog)}

    def attach_all(self) -> int:
        """Attaches every loaded program by its section, but the manual ones; returns how many."""
        for name, prog in self._programs():
            if not lib.bpf_program__autoload(prog) or name in self.spec.manual_programs:
                continue
            link = lib.bpf_program__attach(prog)
            if link == ffi.NULL:
                raise BpfError(ffi.errno, f"attach {name}")
            self._links.append(link)
        self._log.debug("programs_attached", object=self.spec.path.name, links=len(self._links))
        return len(self._links)

    def attach_tracepoint(self, name: str, category: str, tracepoint: str) -> None:
        """Attaches a loaded program to one more classic tracepoint."""
        link = lib.bpf_program__attach_tracepoint(self.program(name), category.encode(), tracepoint.encode())
        if link == ffi.NULL:
            raise BpfError(ffi.errno, f"attach {name} to {category}/{tracepoint}")
        self._links.append(link)

    def attach_cgroup(self, name: str, cgroup: str) -> None:
        """Attaches a loaded program to a cgroup with a link: it goes when obi does, killed or not."""
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            link = lib.bpf_program__attach_cgroup(self.program(name), fd)
            if link == ffi.NULL:
                raise BpfError(ffi.errno, f"attach {name} to cgroup {cgroup}")
        finally:
            os.close(fd)
        self._links.append(link)

    def attach_to_map(self, name: str, map_name: str, attach_type: int) -> None:
        """Attaches a loaded program to a map (an sk_msg verdict on a sockhash): the map holds
        it, and both go when the object closes."""
        check(lib.bpf_prog_attach(self.program_fd(name), self.map_fd(map_name), attach_type, 0),
              f"attach {name} to map {map_name}")

    @property
    def link_count(self) -> int:
        return len(self._links)

    def link_ids(self) -> list[int]:
        """Kernel ids of the attached links (for leak checks in tests)."""
        ids = []
        for link in self._links:
            fd = lib.bpf_link__fd(link)
            info = Path(f"/proc/self/fdinfo/{fd}").read_text()
            for line in info.splitlines():
                if line.startswith("link_id:"):
                    ids.append(int(line.split()[1]))
        return ids

    def detach(self) -> None:
        """Detaches every link; the maps stay (idempotent). Each tracepoint detach waits for
        the kernel (about 60 ms here); a few at once, with the GIL released, halve the total."""
        links, self._links = self._links, []
        if len(links) <= 2:
            for link in links:
                lib.bpf_link__destroy(link)
            return
        with ThreadPoolExecutor(min(DETACH_THREADS, len(links)), thread_name_prefix="obi-detach") as pool:
            list(pool.map(lib.bpf_link__destroy, links))

    def close(self) -> None:
        """Detaches every link, then releases the object (idempotent)."""
        self.detach()
        if self._obj is not None:
            lib.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> BpfCollection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:  # backstop only; owners call close()
        if getattr(self, "_obj", None) is not None:
            self.close()
