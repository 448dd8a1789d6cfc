"""Go executables, read for uprobes: where functions and their RETs are, and struct field offsets.

Go needs its own reading. Go 1.17+ on amd64 passes arguments in registers by its own ABI, and
probes follow pointers into runtime and net/http structs whose layouts change between releases,
so field offsets are per binary. And uretprobes break Go programs (a uretprobe swaps the return
address on the stack for a trampoline's, which Go's stack copying and tracebacks do not expect),
so a return is probed with a plain uprobe on every RET instruction of the function instead.

Functions are found in .symtab, else in the runtime's own function table (.gopclntab), which
stripped binaries keep. Field offsets come from DWARF when the binary has it, else from
go_offsets.json, one row per Go release, derived from DWARF by tools/derive_go_offsets.py.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import IO, cast

from capstone import CS_ARCH_X86, CS_MODE_64, Cs  # type: ignore[import-untyped]
from capstone.x86_const import X86_INS_RET  # type: ignore[import-untyped]
from elftools.common.exceptions import DWARFError, ELFError, ELFParseError
from elftools.dwarf.die import DIE
from elftools.dwarf.dwarfinfo import DWARFInfo
from elftools.elf.elffile import ELFFile

from obi.ebpf.elf import ElfError, ElfFile, Section

OFFSETS_TABLE = Path(__file__).with_name("go_offsets.json")

_MIN_MINOR = 17  # the register ABI on amd64
_EM_X86_64 = 62
_MACHINES = {3: "386", 8: "mips", 21: "ppc64", 22: "s390x", 40: "arm", 183: "arm64", 243: "riscv64",
             258: "loong64"}
_VERSION = re.compile(r"go1\.(\d+)")
_BUILDINFO_MAGIC = b"\xff Go buildinf:"
_PCLNTAB_118 = (0xFFFFFFF0, 0xFFFFFFF1)  # Go 1.18-1.19, 1.20+: entries relative to moduledata.text
_PCLNTAB_116 = 0xFFFFFFFA  # Go 1.16-1.17: absolute entries
_MODULEDATA_TEXT = 176  # moduledata.text: after pcHeader, 6 slices, findfunctab, minpc, maxpc
_DW_AT_GO_KIND = 0x2900
_GO_KIND_STRUCT = 25


class GoError(ValueError):
    """A Go binary obi cannot instrument (or not a Go binary); the message is a one-line reason."""


@dataclass(frozen=True)
class GoFunction:
    name: str  # as the Go toolchain spells it: "net/http.(*conn).serve"
    entry: int  # file offset of the first instruction
    returns: tuple[int, ...]  # file offsets of every RET instruction in the function
    # bytes of code from the entry (stripped: up to the next function, alignment padding included)
    size: int = dataclass_field(default=0, compare=False)


@dataclass(frozen=True)
class GoBinary:
    version: str  # "go1.19.8", from the build info
    functions: dict[str, GoFunction]  # the requested functions that exist
    offsets: dict[str, int]  # "net/http.Request.Method" -> offset of the field in its struct
    offsets_from: str  # "dwarf", "table:go1.19" (the row used), or "dwarf+table:go1.19"


def go_version(path: str) -> str | None:
    """The Go version a binary was built with ("go1.19.8"), or None for a file that is not one."""
    try:
        with ElfFile(path) as elf:
            return _build_version(elf)
    except ElfError:
        return None


def inspect_go(path: str, functions: Iterable[str], fields: Iterable[str]) -> GoBinary:
    """What uprobes on a Go binary need: its functions' entries and RETs, and struct field offsets.

    Raises GoError for a file that is not an amd64 Go 1.17+ binary, or for a field whose offset
    is neither in the binary's DWARF nor in the offsets table."""
    try:
        elf = ElfFile(path)
    except ElfError as err:
        raise GoError(str(err)) from err
    with elf:
        version = _build_version(elf)
        if version is None:
            raise GoError("not a Go binary (no Go build info)")
        if elf.machine != _EM_X86_64:
            raise GoError(f"{_MACHINES.get(elf.machine, f'machine {elf.machine}')}: only amd64 Go binaries")
        minor = _minor(version)
        if minor is None:
            raise GoError(f"{version}: not a Go 1.x version")
        if minor < _MIN_MINOR:
            raise GoError(f"{version}: register ABI needs Go 1.{_MIN_MINOR}+")
        found = _functions(elf, list(dict.fromkeys(functions)))
        offsets, offsets_from = _field_offsets(elf, minor, list(dict.fromkeys(fields)))
        return GoBinary(version, found, offsets, offsets_from)


def _minor(version: str) -> int | None:
    match = _VERSION.search(version)
    return int(match.group(1)) if match else None


def _build_version(elf: ElfFile) -> str | None:
    """The version in the build info blob the linker writes to .go.buildinfo (Go 1.13+)."""
    section = elf.section(".go.buildinfo")
    if section is None:
        return None
    blob = elf.section_bytes(section)
    if not blob.startswith(_BUILDINFO_MAGIC) or len(blob) < 32:
        return None
    ptr_size, flags = blob[14], blob[15]
    if flags & 1:  # big-endian
        return None
    if flags & 2:  # Go 1.18+: the version string inline after the header, length-prefixed
        length, start = _uvarint(blob, 32)
        raw = blob[start:start + length]
    else:  # before: a pointer to a Go string header (data pointer, length)
        if ptr_size != 8:
            return None
        (header,) = struct.unpack_from("<Q", blob, 16)
        data, length = struct.unpack("<QQ", _read(elf, header, 16).ljust(16, b"\0"))
        raw = _read(elf, data, length)
    return raw.decode("utf-8", "replace") or None


def _uvarint(data: bytes, at: int) -> tuple[int, int]:
    """A varint (LEB128) at `at`: (value, offset after it)."""
    value = shift = 0
    while at < len(data):
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    return value, at


def _read(elf: ElfFile, vaddr: int, size: int) -> bytes:
    """`size` bytes at a virtual address (fewer, or none, if the file does not hold them)."""
    offset = elf.offset_of(vaddr)
    return b"" if offset is None else elf.data[offset:offset + size]


# Functions


def _functions(elf: ElfFile, names: list[str]) -> dict[str, GoFunction]:
    spans = {name: (address, address + size) for name, (address, size) in elf.functions(names).items()
             if size}
    missing = [name for name in names if name not in spans]
    if missing:
        spans.update(_pclntab_functions(elf, missing))
    disassembler = Cs(CS_ARCH_X86, CS_MODE_64)
    disassembler.skipdata = True  # past any byte that is not an instruction, to the function's end
    found: dict[str, GoFunction] = {}
    for name in names:
        if name not in spans:
            continue
        start, end = spans[name]
        entry = elf.offset_of(start)
        if entry is None:
            continue
        code = elf.data[entry:entry + end - start]
        returns = tuple(entry + insn.address for insn in disassembler.disasm(code, 0)
                        if insn.id == X86_INS_RET)
        found[name] = GoFunction(name, entry, returns, len(code))
    return found


def _pclntab_functions(elf: ElfFile, names: list[str]) -> dict[str, tuple[int, int]]:
    """name -> (start, end) addresses of the functions named, from the runtime's function table.

    The layout is runtime/symtab.go's pcHeader, then functab (entry, _func offset) pairs ending
    with the end of the last function, and _func records starting (entry, nameOff)."""
    section = elf.section(".gopclntab") or elf.section(".data.rel.ro.gopclntab")
    if section is None or section.size < 72:
        return {}
    table = elf.section_bytes(section)
    magic, pads, _, ptr_size = struct.unpack_from("<IHBB", table)
    if ptr_size != 8 or pads:
        return {}
    if magic in _PCLNTAB_118:
        nfunc, _, _, names_at, *tables_at = struct.unpack_from("<8Q", table, 8)
        word, pair = 4, struct.Struct("<II")
        text = _text_start(elf, section)
        if text is None:
            return {}
    elif magic == _PCLNTAB_116:
        nfunc, _, names_at, *tables_at = struct.unpack_from("<7Q", table, 8)
        word, pair, text = 8, struct.Struct("<QQ"), 0
    else:
        return {}
    funcs_at = tables_at[-1]
    names_end = min((at for at in tables_at if at > names_at), default=len(table))
    # the function name table offsets (_func.nameOff) of the names wanted
    by_name_offset: dict[int, str] = {}
    for name in names:
        needle = name.encode() + b"\0"
        at = table.find(needle, names_at, names_end)
        while at >= 0:
            if at == names_at or table[at - 1] == 0:
                by_name_offset[at - names_at] = name
            at = table.find(needle, at + 1, names_end)
    if not by_name_offset:
        return {}
    functab = table[funcs_at:funcs_at + (2 * nfunc + 1) * word]
    entries = list(pair.iter_unpack(functab[:2 * nfunc * word]))
    (etext,) = struct.unpack_from("<I" if word == 4 else "<Q", functab, 2 * nfunc * word)
    found: dict[str, tuple[int, int]] = {}
    wanted = len(set(by_name_offset.values()))
    for i, (entry, func_at) in enumerate(entries):
        (name_offset,) = struct.unpack_from("<i", table, funcs_at + func_at + word)
        function = by_name_offset.get(name_offset)
        if function is None or function in found:
            continue
        end = entries[i + 1][0] if i + 1 < len(entries) else etext
        found[function] = (text + entry, text + end)
        if len(found) == wanted:
            break
    return found


def _text_start(elf: ElfFile, pclntab: Section) -> int | None:
    """moduledata.text, which Go 1.18+ function entries are relative to.

    The runtime's moduledata starts with the address of the pclntab and holds text further on.
    .text's own address is the fallback: the same, unless an external linker put C code first
    (or the moduledata's pointers are left to dynamic relocations, as in PIE)."""
    text = elf.section(".text")
    needle = struct.pack("<Q", pclntab.addr)
    for name in (".go.module", ".noptrdata", ".data", ".data.rel.ro"):  # .go.module: newer Go
        section = elf.section(name)
        if section is None:
            continue
        data = elf.section_bytes(section)
        at = data.find(needle)
        while 0 <= at <= len(data) - _MODULEDATA_TEXT - 8:
            (start,) = struct.unpack_from("<Q", data, at + _MODULEDATA_TEXT)
            if (section.addr + at) % 8 == 0 and (text is None or text.addr <= start < text.addr + text.size):
                return int(start)
            at = data.find(needle, at + 1)
    return text.addr if text else None


# Struct field offsets


def _field_offsets(elf: ElfFile, minor: int, fields: list[str]) -> tuple[dict[str, int], str]:
    """The offsets of the fields, from DWARF for the structs it describes, else from the table."""
    dwarf = _dwarf(elf)
    members = _dwarf_structs(dwarf, {field.rpartition(".")[0] for field in fields}) if dwarf else {}
    offsets: dict[str, int] = {}
    rest: list[str] = []
    for field in fields:
        struct_name, _, member = field.rpartition(".")
        if struct_name not in members:
            rest.append(field)
        elif member in members[struct_name]:
            offsets[field] = members[struct_name][member]
        else:
            raise GoError(f"{field}: {struct_name} has no such field (DWARF)")
    if dwarf and not rest:
        return offsets, "dwarf"
    from_dwarf = bool(offsets)
    try:
        table = _load_table()
    except (OSError, ValueError) as err:
        field = rest[0] if rest else "offsets"
        raise GoError(f"{field}: not in DWARF, and no offsets table ({err})") from err
    row = _table_row(minor, table)
    for field in rest:
        if field not in table[row]:
            raise GoError(f"{field}: offset neither in DWARF nor in the offsets table (row {row})")
        offsets[field] = table[row][field]
    return offsets, f"dwarf+table:{row}" if from_dwarf else f"table:{row}"


def _load_table() -> dict[str, dict[str, int]]:
    table = json.loads(OFFSETS_TABLE.read_text())
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{OFFSETS_TABLE}: no rows")
    return cast(dict[str, dict[str, int]], table)


def _table_row(minor: int, table: Mapping[str, object]) -> str:
    """The table row for a Go minor release: its own, else the nearest older one, else the oldest."""
    known = sorted((_minor(row) or 0, row) for row in table)
    older = [row for row_minor, row in known if row_minor <= minor]
    return older[-1] if older else known[0][1]


def _dwarf(elf: ElfFile) -> DWARFInfo | None:
    try:
        elffile = ELFFile(cast(IO[bytes], elf.data))  # an mmap reads and seeks like a file
        if not elffile.has_dwarf_info():
            return None
        return elffile.get_dwarf_info(relocate_dwarf_sections=False)
    except (ELFError, DWARFError, zlib.error):
        return None


def _dwarf_structs(dwarf: DWARFInfo, names: set[str]) -> dict[str, dict[str, int]]:
    """struct name -> {member: offset} for the named structs the DWARF describes.

    Parsing every DIE of a Go binary takes seconds in pure Python. Go's linker writes a struct's
    name inline, right after the DIE's abbreviation code, so each struct is looked for where its
    name is in .debug_info. A name seen only where no struct DIE holds it sends the search
    through every compilation unit's top-level DIEs."""
    if dwarf.debug_info_sec is None:
        return {}
    stream = dwarf.debug_info_sec.stream
    stream.seek(0)
    info = stream.read()
    found: dict[str, dict[str, int]] = {}
    unresolved: set[str] = set()
    for name in names:
        needle = name.encode() + b"\0"
        at = info.find(needle)
        if at < 0:
            continue  # not in this binary
        while at > 0 and name not in found:
            die = _struct_die_at(dwarf, info, at, name)
            if die is not None:
                found[name] = _members(die)
            at = info.find(needle, at + 1)
        if name not in found:
            unresolved.add(name)
    if unresolved:
        for cu in dwarf.iter_CUs():
            for die in cu.get_top_DIE().iter_children():
                struct_name = _struct_name(die)
                if struct_name in unresolved:
                    found[struct_name] = _members(die)
                    unresolved.discard(struct_name)
                    if not unresolved:
                        return found
    return found


def _struct_die_at(dwarf: DWARFInfo, info: bytes, name_at: int, name: str) -> DIE | None:
    """The struct DIE whose inline name is at `name_at`, if one is: the name may also be the tail
    of another name ("*net/http.Request"), whose preceding byte can pass for an abbreviation code."""
    for code_size in (1, 2):  # the ULEB128 abbreviation code just before the name
        start = name_at - code_size
        if start < 0 or info[name_at - 1] & 0x80 or (code_size == 2 and not info[start] & 0x80):
            continue
        code, _ = _uvarint(info, start)
        try:
            cu = dwarf.get_CU_containing(start)
            spec = cu.get_abbrev_table().get_abbrev(code)
            first = spec["attr_spec"][0] if spec["attr_spec"] else None
            if spec["tag"] != "DW_TAG_structure_type" or first is None \
                    or (first.name, first.form) != ("DW_AT_name", "DW_FORM_string"):
                continue
            die = cu.get_DIE_from_refaddr(start)
            name_attr = die.attributes.get("DW_AT_name")
            kind = die.attributes.get(_DW_AT_GO_KIND)  # type: ignore[call-overload]
            size = die.attributes.get("DW_AT_byte_size")
            if name_attr is None or name_attr.offset != name_at or _struct_name(die) != name \
                    or (kind is not None and kind.value != _GO_KIND_STRUCT) or size is None:
                continue
            children = list(die.iter_children())
            if all(child.tag == "DW_TAG_member" and _location(child) is not None
                   and _location(child) <= size.value for child in children):
                return die
        except (DWARFError, ELFParseError, KeyError, IndexError, ValueError):
            continue
    return None


def _struct_name(die: DIE) -> str | None:
    if die.tag != "DW_TAG_structure_type":
        return None
    attr = die.attributes.get("DW_AT_name")
    if attr is None or not isinstance(attr.value, bytes):
        return None
    return attr.value.decode("utf-8", "replace")


def _members(die: DIE) -> dict[str, int]:
    members: dict[str, int] = {}
    for child in die.iter_children():
        name = child.attributes.get("DW_AT_name")
        location = _location(child)
        if child.tag == "DW_TAG_member" and name is not None and location is not None:
            members[name.value.decode("utf-8", "replace")] = location
    return members


def _location(member: DIE) -> int | None:
    """DW_AT_data_member_location as a constant (Go's form); None for an expression."""
    attr = member.attributes.get("DW_AT_data_member_location")
    return attr.value if attr is not None and isinstance(attr.value, int) else None
