"""Where uprobes go in x86-64 code: emulated instructions that every call passes, or the entry."""

from __future__ import annotations

from pathlib import Path

from obi.ebpf.elf import ElfFile
from obi.ebpf.tls import ENTRY_REGISTERS, RETURN_REGISTERS, _placements
from obi.ebpf.x86 import Function

LIBSSL = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")


def asm(*parts: str) -> bytes:
    return bytes.fromhex("".join(parts))


SUB_RSP = "4883ec18"        # sub rsp, 0x18
MOV_RAX_FS = "64488b042528000000"  # mov rax, fs:0x28
XOR_EAX = "31c0"            # xor eax, eax
TEST_EDX = "85d2"           # test edx, edx
JS_PLUS2 = "7802"           # js +2
MOV_RCX_RSP = "4889e1"      # mov rcx, rsp
NOP2 = "6690"               # 2-byte nop
RET = "c3"
ADD_RSP = "4883c418"        # add rsp, 0x18
MOV_EAX_1 = "b801000000"    # mov eax, 1
CALL_0 = "e800000000"       # call next (rel 0)
PUSH_RBP = "55"
INT3 = "cc"


def test_entry_moves_to_the_first_emulated_instruction_before_arguments_change() -> None:
    code = asm(SUB_RSP, MOV_RAX_FS, XOR_EAX, TEST_EDX, JS_PLUS2, NOP2, RET)
    assert Function(code).entry_probe(["rdi", "rsi", "rcx"]) == 4 + 9 + 2 + 2  # the js
    # rax is written before the js: a program that reads rax stays on the entry
    assert Function(code).entry_probe(["rax"]) == 0


def test_entry_stays_when_a_branch_lands_before_the_candidate() -> None:
    # a loop whose head is the second instruction
    assert Function(asm(SUB_RSP, TEST_EDX, "75fc", RET)).entry_probe(["rdi"]) == 0  # jne to the test
    # a jump into the middle of an instruction (data, or code read wrong): no move either
    assert Function(asm(SUB_RSP, TEST_EDX, "75fa", RET)).entry_probe(["rdi"]) == 0
    # the same without the loop: the jne is the probe
    assert Function(asm(SUB_RSP, TEST_EDX, "7501", NOP2, RET)).entry_probe(["rdi"]) == 6
    assert Function(asm(PUSH_RBP, RET)).entry_probe(["rdi"]) == 0  # already emulated at the entry


def test_entry_stays_with_an_indirect_jump_in_the_function() -> None:
    code = asm(SUB_RSP, JS_PLUS2, "ffe0", NOP2, RET)  # jmp rax: targets unknown
    assert Function(code).entry_probe(["rdi"]) == 0
    assert Function(code).return_probes(["rax"]) is None


def test_return_moves_to_a_stack_check_whose_failure_never_returns() -> None:
    # mov eax, 1; jne fail; add rsp; ret; fail: call __stack_chk_fail; int3 padding
    code = asm(MOV_EAX_1, "7505", ADD_RSP, RET, CALL_0, INT3)
    assert Function(code).return_probes(["rax"]) == [5]


def test_return_stays_when_the_result_is_made_after_the_candidate_or_a_branch_enters() -> None:
    # the jne's other side returns too: not a probe for this RET
    assert Function(asm("7501", RET, MOV_EAX_1, RET)).return_probes(["rax"]) is None
    # rax written between the candidate and the RET
    assert Function(asm(NOP2, MOV_EAX_1, RET)).return_probes(["rax"]) is None
    assert Function(asm(NOP2, MOV_EAX_1, RET)).return_probes(["r14"]) == [0]
    # a jump into the straight line before the RET
    assert Function(asm(JS_PLUS2, NOP2, XOR_EAX, RET)).return_probes(["rdi"]) is None


def test_libssl_read_and_write_are_probed_off_their_entries() -> None:
    with ElfFile(LIBSSL) as elf:
        placed = _placements(elf)
        functions = elf.functions(placed)
    for name in ("SSL_read", "SSL_write"):
        entry, moved, returns = placed[name]
        assert moved > entry and returns, name
        with ElfFile(LIBSSL) as elf:
            code = bytes(elf.data[entry:entry + functions[name][1]])
        # what the programs read is untouched on the way, and the RET is the only one
        function = Function(code)
        assert function.entry_probe(ENTRY_REGISTERS) == moved - entry
        assert function.return_probes(RETURN_REGISTERS) == [r - entry for r in returns]
        assert code[moved - entry] in (0x0F, 0x70, 0x71, 0x72, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79,
                                       0x7C, 0x7D, 0x7E, 0x7F, 0xE8, 0xE9, 0xEB)  # a jump or call
