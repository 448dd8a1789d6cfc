"""Where functions are in an ELF file: file offsets of symbols, for uprobes.

A uprobe is placed at a file offset. A symbol's value is a virtual address;
the PT_LOAD segment that contains it turns it into an offset. Only 64-bit
little-endian files (x86-64, arm64) are read. Symbol tables are scanned with
struct, not parsed symbol by symbol: a Node.js binary exports some 100,000
symbols, and obi looks for a handful.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_PT_LOAD = 1
_SHT_SYMTAB, _SHT_DYNSYM = 2, 11
_STT_FUNC = 2
_STT_GNU_IFUNC = 10


class ElfError(ValueError):
    """Not an ELF file obi can read."""


@dataclass(frozen=True)
class Section:
    name: str
    kind: int
    addr: int
    offset: int
    size: int
    link: int


class ElfFile:
    """A read-only view of an ELF file (mmap'd; close() or use as a context manager)."""

    def __init__(self, path: str | Path) -> None:
        with open(path, "rb") as f:
            try:
                self._map = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
            except ValueError as err:  # an empty file
                raise ElfError(f"{path}: empty") from err
        try:
            self._parse(str(path))
        except BaseException:
            self._map.close()
            raise

    def _parse(self, path: str) -> None:
        if len(self._map) < _EHDR.size or self._map[:4] != b"\x7fELF":
            raise ElfError(f"{path}: not an ELF file")
        if self._map[4] != 2 or self._map[5] != 1:
            raise ElfError(f"{path}: not a 64-bit little-endian ELF file")
        (_, _, self.machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
         shstrndx) = _EHDR.unpack_from(self._map, 0)
        self.loads: list[tuple[int, int, int]] = []  # (vaddr, filesz, offset)
        for i in range(phnum):
            p_type, _, offset, vaddr, _, filesz, _, _ = _PHDR.unpack_from(self._map, phoff + i * phentsize)
            if p_type == _PT_LOAD:
                self.loads.append((vaddr, filesz, offset))
        raw = [_SHDR.unpack_from(self._map, shoff + i * shentsize) for i in range(shnum)] if shoff else []
        names = raw[shstrndx] if shstrndx < len(raw) else None
        self.sections: list[Section] = [
            Section(self._string(names[4], sh_name) if names else "", sh_type, addr, offset, size, link)
            for sh_name, sh_type, _, addr, offset, size, link, _, _, _ in raw]

    def _string(self, table_offset: int, index: int) -> str:
        start = table_offset + index
        end = self._map.find(b"\0", start)
        return self._map[start:end].decode("utf-8", "replace")

    @property
    def data(self) -> mmap.mmap:
        """The whole file, mapped read-only; also a file object (read, seek) for other readers (DWARF)."""
        return self._map

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def section_bytes(self, section: Section) -> bytes:
        return self._map[section.offset:section.offset + section.size]

    def offset_of(self, vaddr: int) -> int | None:
        """The file offset of a virtual address, through the PT_LOAD segment that holds it."""
        for start, size, offset in self.loads:
            if start <= vaddr < start + size:
                return vaddr - start + offset
        return None

    def functions(self, names: Iterable[str]) -> dict[str, tuple[int, int]]:
        """name -> (address, size) of the defined functions among `names` (.dynsym, then .symtab)."""
        wanted = set(names)
        found: dict[str, tuple[int, int]] = {}
        for kind in (_SHT_DYNSYM, _SHT_SYMTAB):
            for table in (s for s in self.sections if s.kind == kind):
                if table.link >= len(self.sections) or not wanted - found.keys():
                    continue
                strtab = self.sections[table.link]
                strings = self._map[strtab.offset:strtab.offset + strtab.size]
                # the string table offsets of the names wanted; a name may be the tail of another
                by_index: dict[int, str] = {}
                for name in wanted - found.keys():
                    needle = b"\0" + name.encode() + b"\0"
                    at = strings.find(needle)
                    while at >= 0:
                        by_index[at + 1] = name
                        at = strings.find(needle, at + 1)
                if not by_index:
                    continue
                end = table.offset + table.size - table.size % _SYM.size
                for st_name, info, _, shndx, value, size in _SYM.iter_unpack(self._map[table.offset:end]):
                    symbol = by_index.get(st_name)
                    if symbol is None or symbol in found or shndx == 0 or not value:
                        continue
                    if info & 0xF in (_STT_FUNC, _STT_GNU_IFUNC):
                        found[symbol] = (value, size)
        return found

    def function_offsets(self, names: Iterable[str]) -> dict[str, int]:
        """name -> file offset of the defined functions among `names` (the uprobe targets)."""
        out = {}
        for name, (address, _) in self.functions(names).items():
            offset = self.offset_of(address)
            if offset is not None:
                out[name] = offset
        return out

    def close(self) -> None:
        self._map.close()

    def __enter__(self) -> ElfFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
