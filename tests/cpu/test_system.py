"""Traps, counters, fence.i, quantum accounting and state transfer."""

from __future__ import annotations

import msgpack

from nodes.cpu.core import Core

LOOP = """
_start:
    li a0, 0
    li a1, 1000
loop:
    addi a0, a0, 3
    xor a2, a0, a1
    addi a1, a1, -1
    bnez a1, loop
    ecall
"""


def test_ecall_traps_at_the_ecall_and_instret_counts_retired_only(run_asm):
    core, stop = run_asm("_start:\n li a7, 64\n nop\n ecall\n")
    assert (stop.kind, stop.cause, stop.pc) == ("trap", 8, 0x10008)
    assert core.pc == 0x10008 and core.instret == 2


def test_ebreak_and_illegal_instruction_causes(run_asm):
    _, stop = run_asm("_start:\n ebreak\n")
    assert (stop.cause, stop.pc) == (3, 0x10000)
    _, stop = run_asm("_start:\n nop\n .word 0xffffffff\n")
    assert (stop.cause, stop.tval, stop.pc) == (2, 0xFFFFFFFF, 0x10004)
    _, stop = run_asm("_start:\n .word 0xc0059573\n")  # csrrw a0, cycle, a1: read-only
    assert (stop.cause, stop.tval) == (2, 0xC0059573)
    _, stop = run_asm("_start:\n .word 0xc005a573\n")  # csrrs a0, cycle, a1: sets bits
    assert (stop.cause, stop.tval) == (2, 0xC005A573)
    _, stop = run_asm("_start:\n .word 0x30002573\n")  # csrrs a0, mstatus, x0: no such CSR
    assert (stop.cause, stop.tval) == (2, 0x30002573)


def test_counters_read_instret_exactly_and_time_from_the_source(tmp_path, cpu_helpers, mode):
    core = Core(time_source=lambda: 0x1_2345_6789, hot_threshold=0 if mode == "translated" else 4)
    cpu_helpers.load(core, cpu_helpers.assemble(tmp_path, """
_start:
    nop
    nop
    rdinstret a0
    rdcycle a1
    rdinstreth a2
    rdtime a3
    rdtimeh a4
    ecall
"""))
    stop = cpu_helpers.run_to_stop(core, stepped=mode == "stepped")
    assert stop.cause == 8
    assert core.x[10:15] == [2, 3, 0, 0x23456789, 1]


def test_quantum_stops_exactly_and_chunks_equal_one_run(tmp_path, cpu_helpers):
    elf = cpu_helpers.assemble(tmp_path, LOOP)
    whole = Core(hot_threshold=0)
    cpu_helpers.load(whole, elf)
    assert whole.run(10**6).cause == 8
    for chunk in (1, 3, 4, 7, 100):
        core = Core(hot_threshold=0)
        cpu_helpers.load(core, elf)
        _run_in_chunks(core, chunk)
        assert core.get_state() == whole.get_state()
    assert whole.instret == 2 + 4 * 1000


def test_fence_i_makes_rewritten_code_visible(run_asm):
    # The patched instruction sits in a loop so that it has been translated
    # (and cached) before it is rewritten.
    core, stop = run_asm("""
_start:
    li s0, 2
    li a1, 0
    la s1, patch
    lw s2, newinsn
again:
patch:
    li a0, 1
    add a1, a1, a0
    sw s2, 0(s1)
    fence.i
    addi s0, s0, -1
    bnez s0, again
    ecall
newinsn:
    li a0, 100
""", text_perms="rwx")
    assert stop.cause == 8
    assert core.x[11] == 101


def test_state_round_trips_through_msgpack():
    core = Core()
    core.x[5] = 0xDEADBEEF
    core.pc = 0x1234
    core.set_asid(3)
    state = msgpack.unpackb(msgpack.packb(core.get_state()))
    other = Core()
    other.set_state(state)
    assert other.get_state() == core.get_state()
    assert other.asid == 3 and other.x[5] == 0xDEADBEEF and other.x[0] == 0


# A loop with a branch inside and memory traffic across several pages: it
# becomes one multi-block region once hot.
MIXED = """
_start:
    li s0, 0x40000
    li s1, 0
    li s2, 600
    li s3, 0
loop:
    andi t0, s1, 7
    slli t0, t0, 12
    add t0, t0, s0
    lw t1, 16(t0)
    andi t2, s1, 1
    beqz t2, even
    addi t1, t1, 3
    j store
even:
    xori t1, t1, 0x55
store:
    sw t1, 16(t0)
    add s3, s3, t1
    addi s1, s1, 1
    blt s1, s2, loop
    ecall
"""


def _mixed_core(cpu_helpers, tmp_path, threshold):
    core = Core(hot_threshold=threshold)
    cpu_helpers.load(core, cpu_helpers.assemble(tmp_path, MIXED))
    return core


def test_regions_stop_exactly_on_every_quantum_size(tmp_path, cpu_helpers):
    whole = _mixed_core(cpu_helpers, tmp_path, 0)
    assert whole.run(10**6).cause == 8
    assert any(len(getattr(b, "starts", ())) > 1 for b in whole._blocks.values())
    for threshold in (0, 4):
        for chunk in (1, 2, 5, 9, 64, 1000):
            core = _mixed_core(cpu_helpers, tmp_path, threshold)
            stop = _run_in_chunks(core, chunk)
            assert stop.cause == 8
            assert core.get_state() == whole.get_state()


def _run_until_not_quantum(core, stepped):
    while True:
        stop = core.run(1 if stepped else 10**6)
        if stop.kind != "quantum":
            return stop


def test_page_miss_inside_a_hot_region_restarts_the_access(tmp_path, cpu_helpers, mode):
    stepped = mode == "stepped"
    whole = _mixed_core(cpu_helpers, tmp_path, 0)
    assert whole.run(10**6).cause == 8
    core = _mixed_core(cpu_helpers, tmp_path, 0 if mode == "translated" else 4)
    saved = core.evict_page(0x45)
    # The first visit to page 0x45 (iteration 5) misses on the load ...
    stop = _run_until_not_quantum(core, stepped)
    assert (stop.kind, stop.ppn, stop.write) == ("page_miss", 0x45, False)
    at_load = (core.instret, core.pc, list(core.x))
    core.install_page(0x45, bytearray(saved), writable=False)
    # ... then, the page being held read-only, on the store, with the load retired.
    stop = _run_until_not_quantum(core, stepped)
    assert (stop.kind, stop.ppn, stop.write) == ("page_miss", 0x45, True)
    assert core.pc == stop.pc and core.pc > at_load[1] and core.instret > at_load[0]
    core.install_page(0x45, bytearray(core.evict_page(0x45)), writable=True)
    assert _run_until_not_quantum(core, stepped).cause == 8
    assert core.get_state() == whole.get_state()
    assert core.evict_page(0x45) == whole.evict_page(0x45)


def test_halted_core_runs_nothing(tmp_path, cpu_helpers):
    core = Core()
    cpu_helpers.load(core, cpu_helpers.assemble(tmp_path, LOOP))
    assert core.run(5).kind == "quantum" and core.instret == 5
    core.halt()
    stop = core.run(100)
    assert (stop.kind, stop.pc, core.instret) == ("halt", core.pc, 5)


def test_budget_zero_is_an_empty_quantum(tmp_path, cpu_helpers):
    core = Core()
    cpu_helpers.load(core, cpu_helpers.assemble(tmp_path, LOOP))
    stop = core.run(0)
    assert (stop.kind, stop.pc, core.instret) == ("quantum", 0x10000, 0)


def _run_in_chunks(core, chunk: int):
    """Run ``core`` ``chunk`` instructions at a time until it stops for another reason than its
    quantum (each quantum retiring exactly ``chunk``); that stop."""
    while True:
        before = core.instret
        stop = core.run(chunk)
        if stop.kind != "quantum":
            return stop
        assert core.instret - before == chunk
