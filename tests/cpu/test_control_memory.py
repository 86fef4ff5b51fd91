"""Branches, jumps, loads and stores (aligned, misaligned, page-crossing)."""

from __future__ import annotations


def test_branches_take_signed_and_unsigned_decisions(run_asm):
    # Each branch that should be taken skips an `addi a0, a0, 1`; a0 counts
    # the wrongly decided ones, a1 the correctly taken ones.
    cases = [
        ("beq", 5, 5, True), ("beq", 5, 6, False),
        ("bne", 5, 6, True), ("bne", 5, 5, False),
        ("blt", -1, 0, True), ("blt", 0, -1, False), ("blt", 3, 3, False),
        ("bge", 0, -1, True), ("bge", 3, 3, True), ("bge", -1, 0, False),
        ("bltu", 0, -1, True), ("bltu", -1, 0, False),
        ("bgeu", -1, 0, True), ("bgeu", 0, -1, False), ("bgeu", 7, 7, True),
    ]
    lines = ["_start:", "li a0, 0", "li a1, 0"]
    for n, (op, a, b, taken) in enumerate(cases):
        lines += [f"li t0, {a}", f"li t1, {b}", f"{op} t0, t1, L{n}"]
        if taken:
            lines += ["addi a0, a0, 1", f"L{n}:", "addi a1, a1, 1"]
        else:
            lines += ["addi a1, a1, 1", f"j M{n}", f"L{n}:", "addi a0, a0, 1", f"M{n}:"]
    lines.append("ecall")
    core, stop = run_asm("\n".join(lines))
    assert stop.cause == 8
    assert core.x[10] == 0 and core.x[11] == len(cases)


def test_jal_and_jalr_link_and_clear_bit_zero(run_asm):
    core, stop = run_asm("""
_start:
    jal ra, f
back:
    la t0, g
    addi t0, t0, 1          # jalr clears bit 0 of the target
    jalr s1, 0(t0)
    ecall
f:  mv s0, ra
    ret
g:  li a0, 42
    jr s1
""")
    assert stop.cause == 8
    assert core.x[8] == 0x10004  # return address of jal
    assert core.x[10] == 42


def test_misaligned_jump_target_traps_at_the_jump_without_linking(run_asm):
    core, stop = run_asm("""
_start:
    li ra, 77
    la t0, target
    addi t0, t0, 2
    jalr ra, 0(t0)
target:
    ecall
""")
    assert (stop.kind, stop.cause) == ("trap", 0)
    assert stop.tval == core.x[5] and stop.tval & 3 == 2
    assert core.x[1] == 77  # rd not written
    assert core.pc == stop.pc


def test_loads_sign_and_zero_extend_and_misaligned_accesses_work(run_asm, cpu_helpers):
    core, stop = run_asm("""
_start:
    li s0, 0x40000
    li t0, 0x8281f0f1
    sw t0, 0(s0)
    lb a0, 0(s0)
    lbu a1, 0(s0)
    lh a2, 2(s0)
    lhu a3, 2(s0)
    li t1, 0x11223344
    sw t1, 5(s0)            # misaligned word
    lw a4, 5(s0)
    lh a5, 3(s0)            # misaligned halfword: bytes 3 (0x82) and 4 (0)
    li t2, 0xabcd
    li s1, 0x40fff
    sh t2, 0(s1)            # misaligned halfword across a page boundary
    lhu a6, 0(s1)
    li t3, 0xcafef00d
    sw t3, -1(s1)           # word at 0x40ffe: crosses into the next page
    lw a7, -1(s1)
    lbu s2, -1(s1)
    ecall
""")
    assert stop.cause == 8
    x = core.x
    assert x[10] == 0xFFFFFFF1 and x[11] == 0xF1
    assert x[12] == 0xFFFF8281 and x[13] == 0x8281
    assert x[14] == 0x11223344
    assert x[15] == 0x0082  # byte 3 is 0x82, byte 4 was never written
    assert x[16] == 0xABCD
    assert x[17] == 0xCAFEF00D and x[18] == 0x0D
    assert cpu_helpers.read_word(core, 0x41000) & 0xFFFF == 0xCAFE


def test_store_crossing_into_an_unmapped_page_traps_before_writing(run_asm, cpu_helpers):
    # DATA has 8 mapped pages; the word at the end of the last one crosses out.
    core, stop = run_asm("""
_start:
    li s0, 0x47ffe
    li t0, 0x01020304
    sw t0, 0(s0)
    ecall
""")
    assert (stop.kind, stop.cause, stop.tval) == ("trap", 15, 0x48000)
    assert cpu_helpers.read_word(core, 0x47FFC) == 0  # the first page is untouched
    assert core.pc == stop.pc and core.x[8] == 0x47FFE


def test_load_from_unmapped_and_fetch_from_unmapped_are_page_faults(run_asm):
    core, stop = run_asm("""
_start:
    li s0, 0x900000
    lw a0, 4(s0)
    ecall
""")
    assert (stop.cause, stop.tval, core.pc) == (13, 0x900004, 0x10004)  # li is one lui
    _, stop = run_asm("""
_start:
    li s0, 0x900000
    jr s0
""")
    assert (stop.cause, stop.tval, stop.pc) == (12, 0x900000, 0x900000)
