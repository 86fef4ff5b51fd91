"""Every ALU and M-extension instruction against an independent reference.

The reference is written from the spec in a different style than isa.py
(explicit two's complement via Python ints and truncating division), so a
shared misreading is unlikely.
"""

from __future__ import annotations

import pytest

MASK = 0xFFFFFFFF
OPERANDS = [0, 1, 2, 31, 32, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE, 0x12345678, 0xDEADBEEF, 7]


def s32(v):
    return v - (1 << 32) if v & 0x80000000 else v


def trunc_div(a, b):
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


REFERENCE = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "sll": lambda a, b: a << (b % 32),
    "slt": lambda a, b: int(s32(a) < s32(b)),
    "sltu": lambda a, b: int(a < b),
    "xor": lambda a, b: a ^ b,
    "srl": lambda a, b: a >> (b % 32),
    "sra": lambda a, b: s32(a) >> (b % 32),
    "or": lambda a, b: a | b,
    "and": lambda a, b: a & b,
    "mul": lambda a, b: a * b,
    "mulh": lambda a, b: (s32(a) * s32(b)) >> 32,
    "mulhsu": lambda a, b: (s32(a) * b) >> 32,
    "mulhu": lambda a, b: (a * b) >> 32,
    "div": lambda a, b: -1 if b == 0 else (
        -(2**31) if (s32(a), s32(b)) == (-(2**31), -1) else trunc_div(s32(a), s32(b))),
    "divu": lambda a, b: MASK if b == 0 else a // b,
    "rem": lambda a, b: s32(a) if b == 0 else (
        0 if (s32(a), s32(b)) == (-(2**31), -1) else s32(a) - trunc_div(s32(a), s32(b)) * s32(b)),
    "remu": lambda a, b: a if b == 0 else a % b,
}

IMMEDIATES = [0, 1, -1, 5, 31, 2047, -2048, 0x7F0]
IMM_REFERENCE = {
    "addi": lambda a, i: a + i,
    "slti": lambda a, i: int(s32(a) < i),
    "sltiu": lambda a, i: int(a < (i & MASK)),
    "xori": lambda a, i: a ^ (i & MASK),
    "ori": lambda a, i: a | (i & MASK),
    "andi": lambda a, i: a & (i & MASK),
}
SHIFT_REFERENCE = {
    "slli": lambda a, sh: a << sh,
    "srli": lambda a, sh: a >> sh,
    "srai": lambda a, sh: s32(a) >> sh,
}


def _program(cases):
    lines = ["_start:", "    li s11, 0x40000"]
    for op, a, b in cases:
        lines.append(f"    li a1, {a}")
        if op in REFERENCE:
            lines += [f"    li a2, {b}", f"    {op} a0, a1, a2"]
        else:
            lines.append(f"    {op} a0, a1, {b}")
        lines += ["    sw a0, 0(s11)", "    addi s11, s11, 4"]
    lines.append("    ecall")
    return "\n".join(lines)


def _reference(op, a, b):
    table = REFERENCE.get(op) or IMM_REFERENCE.get(op) or SHIFT_REFERENCE[op]
    return table(a, b) & MASK


def _check(run_asm, cpu_helpers, cases):
    core, stop = run_asm(_program(cases))
    assert (stop.kind, stop.cause) == ("trap", 8)
    got = {(op, a, b): cpu_helpers.read_word(core, cpu_helpers.DATA + 4 * i) for i, (op, a, b) in enumerate(cases)}
    want = {(op, a, b): _reference(op, a, b) for op, a, b in cases}
    wrong = [k for k, v in got.items() if v != want[k]]
    assert {k: hex(got[k]) for k in wrong} == {k: hex(want[k]) for k in wrong}


@pytest.mark.parametrize("group", [["add", "sub", "sll", "slt", "sltu", "xor", "srl", "sra", "or", "and"],
                                   ["mul", "mulh", "mulhsu", "mulhu", "div", "divu", "rem", "remu"]])
def test_register_ops_match_reference_on_edge_operands(run_asm, cpu_helpers, group):
    cases = [(op, a, b) for op in group for a in OPERANDS for b in OPERANDS]
    _check(run_asm, cpu_helpers, cases)


def test_immediate_ops_match_reference(run_asm, cpu_helpers):
    cases = [(op, a, i) for op in IMM_REFERENCE for a in OPERANDS for i in IMMEDIATES]
    cases += [(op, a, sh) for op in SHIFT_REFERENCE for a in OPERANDS for sh in (0, 1, 15, 31)]
    _check(run_asm, cpu_helpers, cases)


def test_x0_ignores_writes_and_reads_zero(run_asm):
    core, stop = run_asm("""
_start:
    li x0, 5
    addi x0, x0, 7
    lui x0, 0x12345
    add a0, x0, x0
    addi a1, x0, -1
    ecall
""")
    assert stop.cause == 8
    assert core.x[0] == 0 and core.x[10] == 0 and core.x[11] == 0xFFFFFFFF


def test_lui_and_auipc(run_asm):
    core, _ = run_asm("""
_start:
    lui a0, 0xfffff
    auipc a1, 0x1
    auipc a2, 0
    ecall
""")
    assert core.x[10] == 0xFFFFF000
    assert core.x[11] == 0x10004 + 0x1000
    assert core.x[12] == 0x10008
