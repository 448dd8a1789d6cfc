"""Where in a function a uprobe costs least: on an instruction the kernel emulates.

A uprobe replaces an instruction with a breakpoint. When it fires, the kernel
either emulates the original instruction (relative jumps, calls and
conditional jumps, push, nop) or copies it out of line and single-steps it, a
second trap: measured on the development VM, 0.5 us for an emulated
instruction against 18.5 us single-stepped (bare metal is faster, the ratio
similar). Function prologues rarely start with an emulated instruction, and
a uretprobe must sit on the first one (it rewrites the return address there).

So obi probes, when it is safe, a later instruction than the entry, and
instead of a uretprobe the last emulated instruction before each RET:
- entry: the first emulated instruction that every call reaches once (no
  branch before it, no branch into the instructions up to it) with the
  argument registers the program reads still as the caller passed them;
- return: for each RET, the nearest instruction before it, with nothing but
  straight-line code in between that leaves the result registers alone and
  that no branch enters; either a push or nop, or a conditional jump whose
  taken side never returns (the stack protector's call to
  __stack_chk_fail at the end of the function).
When any of that cannot be shown from the code, the entry and a uretprobe
(or the RET itself) are used, as before. Only x86-64 is analysed.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Any

from capstone import CS_ARCH_X86, CS_GRP_CALL, CS_GRP_JUMP, CS_GRP_RET, CS_MODE_64, Cs  # type: ignore[import-untyped]
from capstone.x86_const import (  # type: ignore[import-untyped]
    X86_INS_CALL,
    X86_INS_INT3,
    X86_INS_JMP,
    X86_INS_NOP,
    X86_INS_PUSH,
    X86_INS_UD2,
    X86_OP_IMM,
    X86_OP_REG,
)

# 64-bit register -> the names of its parts, as capstone reports what an instruction writes.
_PARTS: dict[str, tuple[str, ...]] = {
    "rax": ("rax", "eax", "ax", "al", "ah"), "rbx": ("rbx", "ebx", "bx", "bl", "bh"),
    "rcx": ("rcx", "ecx", "cx", "cl", "ch"), "rdx": ("rdx", "edx", "dx", "dl", "dh"),
    "rsi": ("rsi", "esi", "si", "sil"), "rdi": ("rdi", "edi", "di", "dil"),
    **{f"r{n}": (f"r{n}", f"r{n}d", f"r{n}w", f"r{n}b") for n in range(8, 16)},
}
_MAX_ENTRY_INSTRUCTIONS = 16  # how far into a function an entry probe may move

_disassembler: Any = None


def _disasm(code: bytes) -> list[Any]:
    global _disassembler
    if _disassembler is None:
        _disassembler = Cs(CS_ARCH_X86, CS_MODE_64)
        _disassembler.detail = True
        _disassembler.skipdata = True
    return list(_disassembler.disasm(code, 0))


def _names(registers: Iterable[str]) -> frozenset[str]:
    return frozenset(part for reg in registers for part in _PARTS[reg])


def _is_branch(insn: Any) -> bool:
    return bool(insn.group(CS_GRP_JUMP) or insn.group(CS_GRP_CALL) or insn.group(CS_GRP_RET)
                or insn.id in (X86_INS_INT3, X86_INS_UD2))


def _direct_target(insn: Any) -> int | None:
    if (insn.group(CS_GRP_JUMP) or insn.group(CS_GRP_CALL)) and len(insn.operands) == 1 \
            and insn.operands[0].type == X86_OP_IMM:
        return int(insn.operands[0].imm)
    return None


def _emulated(insn: Any) -> bool:
    """Instructions arch/x86/kernel/uprobes.c emulates: relative jmp/call/jcc, push reg, nop."""
    if insn.id == X86_INS_NOP or (insn.id == X86_INS_PUSH and insn.operands[0].type == X86_OP_REG):
        return True
    return _direct_target(insn) is not None


def _writes(insn: Any, registers: frozenset[str]) -> bool:
    _, written = insn.regs_access()
    return any(insn.reg_name(r) in registers for r in written)


class Function:
    """One function's instructions, its branch targets, and whether all of them are known."""

    def __init__(self, code: bytes) -> None:
        self.size = len(code)
        self.insns = _disasm(code)
        self.targets: set[int] = set()
        self.closed = True  # every branch target inside the function is known
        for insn in self.insns:
            target = _direct_target(insn)
            if target is not None:
                self.targets.add(target)
            elif insn.group(CS_GRP_JUMP):
                self.closed = False  # an indirect jump (a jump table): targets unknown
        self._sorted_targets = sorted(self.targets)

    def _entered(self, after: int, upto: int) -> bool:
        """Whether a branch lands in (after, upto], on an instruction or inside one."""
        i = bisect.bisect_right(self._sorted_targets, after)
        return i < len(self._sorted_targets) and self._sorted_targets[i] <= upto

    def entry_probe(self, preserve: Iterable[str]) -> int:
        """Offset of the cheapest instruction for an entry probe reading `preserve` (0: the entry)."""
        registers = _names(preserve)
        if not self.closed:
            return 0
        for insn in self.insns[:_MAX_ENTRY_INSTRUCTIONS]:
            if self._entered(0, insn.address + insn.size - 1):
                return 0  # a branch lands up to here: reached more than once per call
            if _emulated(insn):
                return int(insn.address)
            if _is_branch(insn) or _writes(insn, registers):
                return 0
        return 0

    def return_probes(self, preserve: Iterable[str]) -> list[int] | None:
        """For each RET, the offset of a cheap instruction that every return through it passes
        last, with `preserve` holding the results; None when some RET has none."""
        registers = _names(preserve)
        if not self.closed:
            return None
        by_address = {insn.address: i for i, insn in enumerate(self.insns)}
        probes = []
        for i, insn in enumerate(self.insns):
            if not insn.group(CS_GRP_RET):
                continue
            found = None
            j = i - 1
            while j >= 0:
                before = self.insns[j]
                if self._entered(before.address, insn.address):
                    break  # a branch enters between here and the RET
                if before.id in (X86_INS_NOP, X86_INS_PUSH) and _emulated(before):
                    found = before.address
                    break
                target = _direct_target(before)
                if target is not None and before.id not in (X86_INS_JMP, X86_INS_CALL) \
                        and self._never_returns(target, by_address):
                    found = before.address
                    break
                if _is_branch(before) or _writes(before, registers):
                    break
                j -= 1
            if found is None:
                return None
            probes.append(int(found))
        return probes or None

    def _never_returns(self, target: int, by_address: dict[int, int]) -> bool:
        """Whether code at `target` is a call with nothing after it in the function but padding."""
        k = by_address.get(target)
        if k is None or self.insns[k].id != X86_INS_CALL:
            return False
        return all(insn.id in (X86_INS_NOP, X86_INS_INT3, X86_INS_UD2) for insn in self.insns[k + 1:])


def cheap_probes(code: bytes, entry_preserve: Sequence[str],
                 return_preserve: Sequence[str] | None) -> tuple[int, list[int] | None]:
    """(entry offset, return offsets or None) for a function's code (see the module docstring)."""
    function = Function(code)
    return function.entry_probe(entry_preserve), (
        function.return_probes(return_preserve) if return_preserve is not None else None)
