"""Translated regions: loops run as Python loops, the fast paths of memory and branches.

Each program runs three ways that must agree exactly (registers, pc,
instret, memory, the stop): translated at once with a large budget,
interpreted one instruction at a time, and translated after warming up
with a small budget (regions then stop and restart mid-loop).
"""

from __future__ import annotations

import pytest

from nodes.cpu.core import Core

DATA_PAGES = 8


def _core(cpu_helpers, elf, threshold: int) -> Core:
    core = Core(hot_threshold=threshold)
    cpu_helpers.load(core, elf)
    return core


def _outcome(core: Core, budget: int):
    stop = None
    while True:
        before = core.instret
        stop = core.run(budget)
        if stop.kind != "quantum":
            break
        assert core.instret - before == budget  # quanta are exact
    memory = [core.page_bytes(vpn) for vpn in range(0x40, 0x40 + DATA_PAGES)]
    return (stop.kind, stop.cause, stop.tval, stop.pc), core.get_state(), memory


def _agree(cpu_helpers, tmp_path, source: str):
    elf = cpu_helpers.assemble(tmp_path, source)
    translated = _outcome(_core(cpu_helpers, elf, 0), 10**6)
    assert translated == _outcome(_core(cpu_helpers, elf, 10**9), 1)
    for budget in (3, 7, 50):
        assert translated == _outcome(_core(cpu_helpers, elf, 2), budget)
    return translated


# Every shape of signed comparison with zero (bltz, bgez, bgtz, blez, and
# blt/bge with x0 on either side, sltz, sgtz) over values around the sign bit.
SIGNED_ZERO = """
_start:
    li s0, 0x40000
    li t0, 0
    sw t0, 0(s0)
    li t0, 1
    sw t0, 4(s0)
    li t0, 0x7fffffff
    sw t0, 8(s0)
    li t0, 0x80000000
    sw t0, 12(s0)
    li t0, 0xffffffff
    sw t0, 16(s0)
    li t0, 0x40000000
    sw t0, 20(s0)
    li s1, 0            # index
    li s2, 6
    li a0, 0
loop:
    slli t1, s1, 2
    add t1, t1, s0
    lw t2, 0(t1)
    slli a0, a0, 1
    bltz t2, 1f
    addi a0, a0, 1
1:  slli a0, a0, 1
    bgez t2, 2f
    addi a0, a0, 1
2:  slli a0, a0, 1
    bgtz t2, 3f
    addi a0, a0, 1
3:  slli a0, a0, 1
    blez t2, 4f
    addi a0, a0, 1
4:  sltz t3, t2
    sgtz t4, t2
    slti t5, t2, 0
    add a1, a1, t3
    add a1, a1, t4
    add a1, a1, t5
    sw a0, 64(t1)
    addi s1, s1, 1
    blt s1, s2, loop
    ecall
"""


def test_signed_comparisons_with_zero_decide_on_the_sign_bit(tmp_path, cpu_helpers):
    stop, state, memory = _agree(cpu_helpers, tmp_path, SIGNED_ZERO)
    assert stop[1] == 8
    words = [int.from_bytes(memory[0][64 + 4 * i : 68 + 4 * i], "little") & 0xF for i in range(6)]
    # bits, high to low: bltz not taken, bgez not taken, bgtz not taken, blez not taken
    assert words == [0b1010, 0b1001, 0b1001, 0b0110, 0b0110, 0b1001]
    assert state["x"][11] == 2 + 3 + 2  # sltz on 2 negatives, sgtz on 3 positives, slti 0 on 2


# Addresses that leave [0, 2**32): base + offset wraps (the fast path's page
# key must miss, the slow path wraps). 0xFFFFF000 is mapped; page 0 is not.
WRAPS = """
_start:
    li s1, 20
    li a0, 0
loop:
    li t0, 0
    li t1, 0x12345678
    sw t1, -4(t0)           # 0xfffffffc
    lw t2, -4(t0)
    add a0, a0, t2
    li t3, 0xfffffff0
    lb t4, 12(t3)           # 0xfffffffc again, from above
    add a0, a0, t4
    addi s1, s1, -1
    bnez s1, loop
    li t3, 0xfffffff0
    lw t5, 20(t3)           # 0x00000004: not mapped, a page fault there
    ecall
"""


@pytest.mark.parametrize("threshold", [0, 10**9])
def test_an_address_that_wraps_past_2_32_goes_round(tmp_path, cpu_helpers, threshold):
    core = Core(hot_threshold=threshold)
    cpu_helpers.load(core, cpu_helpers.assemble(tmp_path, WRAPS))
    core.install_page(0xFFFFF, bytearray(4096), writable=True)
    core.tlb_write(0, 0xFFFFF, 0xFFFFF, "rw")
    stop = cpu_helpers.run_to_stop(core, stepped=threshold != 0)
    assert (stop.kind, stop.cause, stop.tval) == ("trap", 13, 4)
    assert core.x[10] == 20 * (0x12345678 + 0x78) & 0xFFFFFFFF
    assert core.page_bytes(0xFFFFF)[-4:] == (0x12345678).to_bytes(4, "little")


# A loop whose body branches, with a load in each arm that runs off the end
# of the mapped data on some iteration: the stop must name that load, with
# every instruction before it (and none after) retired.
FAULT_IN_LOOP = """
_start:
    li s0, 0x47f00          # near the end of the last data page
    li s1, 0
    li a0, 0
loop:
    andi t0, s1, 1
    addi s1, s1, 1
    beqz t0, even
    lw t1, 0(s0)            # odd iterations
    add a0, a0, t1
    j next
even:
    lbu t1, 1(s0)           # even iterations
    xor a0, a0, t1
next:
    addi s0, s0, 24
    mul a1, a0, s1
    j loop
"""


def test_a_fault_inside_a_loop_body_stops_at_the_faulting_access(tmp_path, cpu_helpers):
    stop, state, _ = _agree(cpu_helpers, tmp_path, FAULT_IN_LOOP)
    assert (stop[0], stop[1]) == ("trap", 13)
    assert stop[2] >= 0x48000 and stop[3] == state["pc"]
    assert state["instret"] > 80


# Nested loops with several paths through the inner body: every quantum
# size retires exactly its budget, and chunks add up to one run.
NESTED = """
_start:
    li s0, 0x40000
    li s1, 0                # i
    li s3, 0
outer:
    li s2, 0                # j
inner:
    add t0, s1, s2
    andi t0, t0, 3
    beqz t0, a
    addi t1, t0, -2
    bltz t1, b
    slli t2, s2, 2
    add t2, t2, s0
    lw t3, 0(t2)
    add t3, t3, s1
    sw t3, 0(t2)
    j c
a:  addi s3, s3, 7
    j c
b:  xori s3, s3, 0x55
c:  addi s2, s2, 1
    li t4, 13
    blt s2, t4, inner
    addi s1, s1, 1
    li t5, 9
    blt s1, t5, outer
    ecall
"""


def test_nested_loops_stop_exactly_on_every_quantum_size(tmp_path, cpu_helpers):
    elf = cpu_helpers.assemble(tmp_path, NESTED)
    whole = _outcome(_core(cpu_helpers, elf, 0), 10**6)
    assert whole[0][1] == 8
    assert whole == _outcome(_core(cpu_helpers, elf, 10**9), 1)
    for budget in [*range(2, 45), 97, 1000]:
        for threshold in (0, 3):
            assert _outcome(_core(cpu_helpers, elf, threshold), budget) == whole, (budget, threshold)
