"""Everything the built BPF object uses, checked against the oldest kernel obi claims.

Also the stack: until the private BPF stacks of recent kernels, the verifier allows 512
bytes for a program's deepest chain of calls, each frame rounded up to 32 (Debian's 6.1
refused the capture at 544 while this machine's 6.18 took it), so the chains are computed
here from the instructions as the verifier does.

The instructions of every program of capture.bpf.o are read back: each helper called, each
atomic operation, each program type (by section), and each map type and flag of the source,
with the Linux release that brought it (the kernel's own history: helpers are numbered in the
order they were added). What the oldest kernel lacks must be a feature user space turns on
only after a probe (OPTIONAL). A helper or map type not in these tables fails the test until
its release is added, so nothing newer slips in unnoticed.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from obi.ebpf.elf import ElfFile
from obi.ebpf.objects import object_path

ROOT = Path(__file__).resolve().parents[2]
# The oldest kernel obi claims (README, "Kernels"): atomic or/and/cmpxchg came last.
MIN_KERNEL = (5, 12)

# helper id -> (name, first release)
HELPERS: dict[int, tuple[str, tuple[int, int]]] = {
    1: ("map_lookup_elem", (3, 19)),
    2: ("map_update_elem", (3, 19)),
    3: ("map_delete_elem", (3, 19)),
    5: ("ktime_get_ns", (4, 1)),
    7: ("get_prandom_u32", (4, 1)),
    14: ("get_current_pid_tgid", (4, 2)),
    35: ("get_current_task", (4, 8)),
    59: ("sock_ops_cb_flags_set", (4, 16)),
    63: ("msg_pull_data", (4, 17)),
    70: ("sock_hash_update", (4, 18)),
    87: ("map_push_elem", (4, 20)),
    88: ("map_pop_elem", (4, 20)),
    90: ("msg_push_data", (4, 20)),
    91: ("msg_pop_data", (5, 0)),
    112: ("probe_read_user", (5, 5)),
    113: ("probe_read_kernel", (5, 5)),
    114: ("probe_read_user_str", (5, 5)),
    115: ("probe_read_kernel_str", (5, 5)),
    120: ("get_ns_current_pid_tgid", (5, 7)),
    130: ("ringbuf_output", (5, 8)),
    131: ("ringbuf_reserve", (5, 8)),
    132: ("ringbuf_submit", (5, 8)),
    133: ("ringbuf_discard", (5, 8)),
    134: ("ringbuf_query", (5, 8)),
    137: ("skc_to_tcp_sock", (5, 9)),
    142: ("load_hdr_opt", (5, 10)),
    143: ("store_hdr_opt", (5, 10)),
    144: ("reserve_hdr_opt", (5, 10)),
    174: ("get_attach_cookie", (5, 15)),
    181: ("loop", (5, 17)),
}
# What is newer than MIN_KERNEL, and what keeps it from the kernels that lack it.
OPTIONAL = {
    "loop": "HTTP/1.x framing in the kernel: use_bpf_loop (rodata) is set only when "
            "obi.ebpf.capture.bpf_loop_supported() says so, and the verifier skips the branch",
    "get_attach_cookie": "the Go uprobe programs (go_*): loaded only when "
                         "obi.ebpf.capture.attach_cookie_supported() says so",
}
# program section prefix -> first release
PROGRAM_TYPES = {
    "kprobe": (4, 1), "kretprobe": (4, 1), "uprobe": (4, 3), "uretprobe": (4, 3),
    "tracepoint": (4, 7), "sockops": (4, 13), "raw_tracepoint": (4, 17), "raw_tp": (4, 17),
    "sk_msg": (4, 17), "fentry": (5, 5), "fexit": (5, 5),
}
MAP_TYPES = {
    "HASH": (3, 19), "ARRAY": (3, 19), "PERCPU_ARRAY": (4, 6), "LRU_HASH": (4, 10),
    "SOCKHASH": (4, 18), "QUEUE": (4, 20), "RINGBUF": (5, 8),
}
MAP_FLAGS = {"BPF_F_NO_COMMON_LRU": (4, 10)}
# BPF_STX | BPF_ATOMIC | size, and the atomic operations by imm: add (XADD) is old; the
# rest (or, and, xor, their fetch forms, xchg, cmpxchg) came in 5.12.
ATOMIC_OPCODES = {0xC3, 0xDB}
ATOMIC_SINCE = {0x00: (3, 18)}
NEW_ATOMICS = (5, 12)
CALL = 0x85
JMP32_CLASS = 0x06  # the -mcpu=v3 jumps: 5.1


def program_sections() -> dict[str, bytes]:
    """Section name -> instructions, for every code section of the object."""
    with ElfFile(object_path("capture")) as elf:
        return {s.name: bytes(elf.section_bytes(s)) for s in elf.sections
                if s.kind == 1 and s.size and (s.name == ".text" or s.name.split("/")[0] in PROGRAM_TYPES)}


def instructions(code: bytes) -> list[tuple[int, int, int]]:
    """(opcode, src_reg, imm) of each instruction (the second half of a 16-byte load too)."""
    out = []
    for offset in range(0, len(code), 8):
        opcode, regs, _, imm = struct.unpack_from("<BBhi", code, offset)
        out.append((opcode, regs >> 4, imm))
    return out


def needs() -> dict[str, tuple[int, int]]:
    """Everything the object needs, each with the release that brought it."""
    found: dict[str, tuple[int, int]] = {}
    unknown: list[str] = []
    for section, code in program_sections().items():
        kind = section.split("/")[0]
        if kind in PROGRAM_TYPES:
            found[f"program type {kind}"] = PROGRAM_TYPES[kind]
        for opcode, src, imm in instructions(code):
            if opcode == CALL and src == 0:
                if imm not in HELPERS:
                    unknown.append(f"helper {imm} in {section}")
                    continue
                name, since = HELPERS[imm]
                found[f"helper {name}"] = since
            elif opcode in ATOMIC_OPCODES:
                found[f"atomic op {imm:#x}"] = ATOMIC_SINCE.get(imm, NEW_ATOMICS)
            elif opcode & 0x07 == JMP32_CLASS:
                found["32-bit jumps (-mcpu=v3)"] = (5, 1)
    source = "\n".join(p.read_text() for p in (ROOT / "bpf").glob("*.bpf.c"))
    for map_type in set(re.findall(r"__uint\(type, BPF_MAP_TYPE_(\w+)\)", source)):
        if map_type not in MAP_TYPES:
            unknown.append(f"map type {map_type}")
            continue
        found[f"map type {map_type}"] = MAP_TYPES[map_type]
    for flag in set(re.findall(r"__uint\(map_flags, (\w+)\)", source)):
        if flag not in MAP_FLAGS:
            unknown.append(f"map flag {flag}")
            continue
        found[f"map flag {flag}"] = MAP_FLAGS[flag]
    assert not unknown, f"add these with the Linux release that brought them: {unknown}"
    return found


def test_every_helper_map_and_program_type_is_in_the_oldest_claimed_kernel() -> None:
    found = needs()
    newer = {what: since for what, since in found.items()
             if since > MIN_KERNEL and what.removeprefix("helper ") not in OPTIONAL}
    assert not newer, f"newer than Linux {MIN_KERNEL}: {newer}"
    # the claim is not loose either: something needs exactly the oldest kernel
    assert max(since for what, since in found.items()
               if what.removeprefix("helper ") not in OPTIONAL) == MIN_KERNEL
    # what the object uses that is optional is what this test knows how it is gated
    optional = {what.removeprefix("helper ") for what in found} & set(OPTIONAL)
    assert optional == set(OPTIONAL)


def test_the_capture_needs_its_ring_buffer_and_atomics() -> None:
    found = needs()
    assert found["map type RINGBUF"] == (5, 8)
    assert found["helper ringbuf_output"] == (5, 8)
    assert any(what.startswith("atomic op") and since == NEW_ATOMICS for what, since in found.items())
    for hooks in ("tracepoint", "raw_tracepoint", "fentry", "fexit", "kprobe", "kretprobe"):
        assert f"program type {hooks}" in found


def test_the_readme_claims_the_same_oldest_kernel() -> None:
    readme = (ROOT / "README.md").read_text()
    assert f"Linux {MIN_KERNEL[0]}.{MIN_KERNEL[1]} or newer" in readme


MAX_COMBINED_STACK = 512  # MAX_BPF_STACK


def frames() -> tuple[dict[str, int], dict[str, set[str]], set[str]]:
    """(stack bytes each function touches, the functions each calls, the programs)."""
    with open(object_path("capture"), "rb") as f:
        elf = ELFFile(f)
        symtab: Any = elf.get_section_by_name(".symtab")
        sections = list(elf.iter_sections())
        code = {i: s.data() for i, s in enumerate(sections) if s["sh_type"] == "SHT_PROGBITS"
                and s["sh_flags"] & 4}
        functions = {(sym["st_shndx"], sym["st_value"]): (sym.name, sym["st_size"])
                     for sym in symtab.iter_symbols() if sym["st_info"]["type"] == "STT_FUNC"}
        relocated = {(s["sh_info"], r["r_offset"]): symtab.get_symbol(r["r_info_sym"])
                     for s in sections if isinstance(s, RelocationSection) for r in s.iter_relocations()}
        programs = {name for (index, _), (name, _) in functions.items() if sections[index].name != ".text"}
        depth: dict[str, int] = {}
        calls: dict[str, set[str]] = {}
        for (index, start), (name, size) in functions.items():
            depth[name], calls[name] = _frame(code[index], index, start, size, functions, relocated)
    return depth, calls, programs


def _frame(data: bytes, index: int, start: int, size: int, functions: dict[tuple[int, int], tuple[str, int]],
           relocated: dict[tuple[int, int], Any]) -> tuple[int, set[str]]:
    """The deepest stack byte one function touches (through r10, or a register set from it),
    and the functions it calls (bpf-to-bpf calls, resolved through their relocations)."""
    deepest, called, from_fp = 0, set(), set()
    offset = start
    while offset < start + size:
        opcode, regs, off, imm = struct.unpack_from("<BBhi", data, offset)
        dst, src = regs & 15, regs >> 4
        if opcode == 0x18:  # a 16-byte load of a 64-bit immediate
            # a function's address (a bpf_loop callback, relocated by libbpf into BPF_PSEUDO_FUNC):
            # the callback's frame comes below this one
            symbol = relocated.get((index, offset))
            if symbol is not None and symbol["st_info"]["type"] == "STT_FUNC":
                called.add(str(symbol.name))
            elif symbol is not None and (symbol["st_shndx"], symbol["st_value"] + imm) in functions:
                called.add(functions[(symbol["st_shndx"], symbol["st_value"] + imm)][0])
            offset += 16
            continue
        if opcode & 7 in (1, 2, 3) and 10 in (src, dst) and off < 0:  # loads and stores at r10-N
            deepest = max(deepest, -off)
        if opcode == 0xBF and src == 10:  # rX = r10
            from_fp.add(dst)
        elif opcode == 0x07 and dst in from_fp:  # rX += -N: a stack address
            deepest = max(deepest, -imm)
            from_fp.discard(dst)
        elif opcode & 7 in (0, 1, 4, 7):
            from_fp.discard(dst)
        if opcode == CALL and src == 1:
            called.add(_callee(index, offset, imm, functions, relocated))
        offset += 8
    return deepest, called


def _callee(index: int, offset: int, imm: int, functions: dict[tuple[int, int], tuple[str, int]],
            relocated: dict[tuple[int, int], Any]) -> str:
    """The function a call or a function address at `offset` names: its relocation's symbol, or
    the section symbol plus the instruction's offset, or (none) the offset from here."""
    symbol = relocated.get((index, offset))
    if symbol is not None and symbol["st_info"]["type"] == "STT_FUNC":
        return str(symbol.name)
    target = (imm + 1) * 8 + (offset if symbol is None else 0)
    return functions[(index if symbol is None else symbol["st_shndx"], target)][0]


def deepest_chain(name: str, depth: dict[str, int], calls: dict[str, set[str]],
                  seen: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    own = (max(depth[name], 1) + 31) // 32 * 32
    best = (own, [name])
    for callee in calls[name] - set(seen):
        below, chain = deepest_chain(callee, depth, calls, (*seen, name))
        if own + below > best[0]:
            best = (own + below, [name, *chain])
    return best


def test_no_program_needs_more_than_512_bytes_of_stack_through_its_calls() -> None:
    depth, calls, programs = frames()
    assert {"raw_sys_exit", "tp_exit", "fx_exit_read", "kp_exit_read", "handle_bytes"} <= set(depth)
    over = {}
    for program in programs:
        total, chain = deepest_chain(program, depth, calls)
        if total > MAX_COMBINED_STACK:
            over[program] = f"{total}: " + " -> ".join(f"{c}({depth[c]})" for c in chain)
    assert not over, over
    # the chain that Debian's 6.1 refused at 544 bytes, now within the limit
    assert deepest_chain("raw_sys_exit", depth, calls)[1][:2] == ["raw_sys_exit", "handle_bytes"]
