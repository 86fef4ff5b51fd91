"""Software TLB, address spaces, access faults and the local page cache."""

from __future__ import annotations

import pytest

from nodes.cpu.core import Core
from nodes.cpu.tlb import TLB

SUM_PAGES = """
_start:
    li s0, 0x40000
    li a0, 0
    li t0, 8
1:  lw t1, 0(s0)
    add a0, a0, t1
    li t2, 4096
    add s0, s0, t2
    addi t0, t0, -1
    bnez t0, 1b
    ecall
"""


def test_tlb_replaces_first_in_first_out_and_flushes_by_asid_or_vpn():
    tlb = TLB(capacity=2)
    tlb.write(1, 10, 100, "r")
    tlb.write(1, 11, 101, "rw")
    assert tlb.write(2, 10, 200, "xr") == [(1, 10)]  # oldest goes
    assert tlb.lookup(2, 10) == (200, "rx") and tlb.lookup(1, 10) is None
    assert tlb.write(1, 11, 102, "r") == [(1, 11)]  # replacing reports the old key
    assert tlb.flush(vpn=10) == [(2, 10)]
    assert tlb.flush(asid=1) == [(1, 11)] and len(tlb) == 0
    with pytest.raises(ValueError):
        tlb.write(1, 1, 1, "rq")


def test_address_spaces_see_their_own_pages(tmp_path, cpu_helpers):
    core = Core(hot_threshold=0)
    cpu_helpers.load(core, cpu_helpers.assemble(tmp_path, "_start:\n li s0, 0x900000\n lw a0, 0(s0)\n ecall\n"))
    for asid, value in ((1, 111), (2, 222)):
        ppn = 0x500 + asid
        core.install_page(ppn, bytearray(value.to_bytes(4, "little") + bytes(4092)), writable=False)
        core.tlb_write(asid, 0x900, ppn, "r")
        for vpn in (0x10,):
            core.tlb_write(asid, vpn, vpn, "rx")
    for asid, value in ((1, 111), (2, 222), (1, 111)):
        core.set_asid(asid)
        core.pc = 0x10000
        assert core.run(100).cause == 8
        assert core.x[10] == value


@pytest.mark.parametrize(
    ("source", "perms", "cause"),
    [
        ("sw a0, 0(s0)", "r", 7),  # store to a read-only page
        ("lw a0, 0(s0)", "x", 5),  # load from an execute-only page
        ("jr s0", "rw", 1),        # fetch from a non-executable page
    ],
)
def test_forbidden_access_is_an_access_fault_at_the_address(tmp_path, cpu_helpers, mode, source, perms, cause):
    core = Core(hot_threshold=0 if mode == "translated" else 4)
    cpu_helpers.load(core, cpu_helpers.assemble(tmp_path, f"_start:\n li s0, 0x40010\n {source}\n ecall\n"))
    core.tlb_write(0, 0x40, 0x40, perms)
    stop = cpu_helpers.run_to_stop(core, stepped=mode == "stepped")
    assert (stop.kind, stop.cause, stop.tval) == ("trap", cause, 0x40010)


def test_missing_page_stops_before_the_load_and_the_load_restarts(tmp_path, cpu_helpers, mode):
    core = Core(hot_threshold=0 if mode == "translated" else 4)
    cpu_helpers.load(core, cpu_helpers.assemble(tmp_path,
                                                "_start:\n li s0, 0x900008\n li a0, 5\n lw a0, 0(s0)\n ecall\n"))
    core.tlb_write(0, 0x900, 0x777, "rw")
    stop = cpu_helpers.run_to_stop(core, stepped=mode == "stepped")
    assert (stop.kind, stop.ppn, stop.write, stop.pc) == ("page_miss", 0x777, False, 0x1000C)
    assert core.x[10] == 5 and core.instret == 3 and core.pc == 0x1000C
    core.install_page(0x777, bytearray(8) + (42).to_bytes(4, "little") + bytearray(4084), writable=False)
    stop = cpu_helpers.run_to_stop(core, stepped=mode == "stepped")
    assert stop.cause == 8 and core.x[10] == 42 and core.instret == 4


def test_store_to_a_page_held_read_only_stops_with_write_and_leaves_memory(tmp_path, cpu_helpers, mode):
    core = Core(hot_threshold=0 if mode == "translated" else 4)
    cpu_helpers.load(core, cpu_helpers.assemble(tmp_path, """
_start:
    li s0, 0x900ffe
    li a0, 0x11223344
    sw a0, 0(s0)            # spans page 0x900 (held writable) and 0x901 (read-only)
    ecall
"""))
    core.tlb_write(0, 0x900, 0x700, "rw")
    core.tlb_write(0, 0x901, 0x701, "rw")
    core.install_page(0x700, bytearray(4096), writable=True)
    core.install_page(0x701, bytearray(4096), writable=False)
    stop = cpu_helpers.run_to_stop(core, stepped=mode == "stepped")
    assert (stop.kind, stop.ppn, stop.write) == ("page_miss", 0x701, True)
    assert core.downgrade_page(0x700) == bytes(4096)  # first half not written
    core.install_page(0x700, bytearray(core.evict_page(0x700)), writable=True)
    core.install_page(0x701, bytearray(core.evict_page(0x701)), writable=True)
    stop = cpu_helpers.run_to_stop(core, stepped=mode == "stepped")
    assert stop.cause == 8
    assert core.evict_page(0x700)[-2:] == bytes([0x44, 0x33])
    assert core.evict_page(0x701)[:2] == bytes([0x22, 0x11])


def test_tiny_tlb_refilled_by_a_handler_still_computes_the_right_sum(tmp_path, cpu_helpers, mode):
    core = Core(tlb_capacity=2, hot_threshold=0 if mode == "translated" else 4)
    cpu_helpers.load(core, cpu_helpers.assemble(tmp_path, SUM_PAGES))
    mapping = {0x10: "rx", **{0x40 + i: "rw" for i in range(8)}}
    for i in range(8):
        page = core._pages[0x40 + i]
        page[0:4] = (i + 1).to_bytes(4, "little")
    core.tlb_flush()
    misses = 0
    while True:
        stop = core.run(1 if mode == "stepped" else 10_000)
        if stop.kind == "quantum":
            continue
        if stop.cause in (12, 13):
            misses += 1
            vpn = stop.tval >> 12
            core.tlb_write(0, vpn, vpn, mapping[vpn])
            continue
        break
    assert stop.cause == 8 and core.x[10] == 36
    assert misses > 8  # the code page itself was evicted and refilled too


def test_evicting_a_code_page_drops_its_translations(tmp_path, cpu_helpers):
    core = Core(hot_threshold=0)
    cpu_helpers.load(core, cpu_helpers.assemble(tmp_path, "_start:\n li a0, 1\n ecall\n"))
    assert core.run(10).cause == 8 and core.x[10] == 1
    old = core.evict_page(0x10)
    other = cpu_helpers.assemble(tmp_path, "_start:\n li a0, 2\n ecall\n", name="other")
    fresh = Core()
    cpu_helpers.load(fresh, other)
    core.install_page(0x10, bytearray(fresh._pages[0x10]), writable=False)
    core.pc = 0x10000
    assert core.run(10).cause == 8 and core.x[10] == 2
    assert old != bytes(fresh._pages[0x10])


def test_remapping_a_code_page_drops_its_translations(tmp_path, cpu_helpers):
    core = Core(hot_threshold=0)
    cpu_helpers.load(core, cpu_helpers.assemble(tmp_path, "_start:\n li a0, 1\n ecall\n"))
    assert core.run(10).cause == 8
    fresh = Core()
    cpu_helpers.load(fresh, cpu_helpers.assemble(tmp_path, "_start:\n li a0, 3\n ecall\n", name="other"))
    core.install_page(0x600, bytearray(fresh._pages[0x10]), writable=False)
    core.tlb_write(0, 0x10, 0x600, "rx")
    core.pc = 0x10000
    assert core.run(10).cause == 8 and core.x[10] == 3


def test_peek_reads_only_what_the_tlb_and_the_cache_give_and_poke_writes_in_place():
    """What a syscall trap carries (``Core.peek``) and a resume's stores (``Core.poke``):
    a range across two pages is read only if both are mapped readable and cached; nothing
    else changes (no trap, no page miss)."""
    core = Core()
    core.set_asid(3)
    first, second = bytearray(b"a" * 4096), bytearray(b"b" * 4096)
    core.install_page(40, first, writable=True)
    core.install_page(41, second, writable=False)
    core.tlb_write(3, 0x100, 40, "rw")
    core.tlb_write(3, 0x101, 41, "r")
    core.tlb_write(3, 0x102, 42, "r")  # mapped, not cached
    core.tlb_write(3, 0x103, 41, "w")  # cached, not readable
    assert core.peek(0x100FFE, 4) == b"aabb"
    assert core.peek(0x101FFF, 2) is None  # its second byte's page is not here
    assert core.peek(0x103000, 1) is None and core.peek(0x104000, 1) is None
    assert core.peek(0x100000, 0) == b""
    assert core.stop is None
    core.poke(40, 4094, b"xy")
    assert core.peek(0x100FFD, 4) == b"axyb" and first[4094:] == b"xy"
