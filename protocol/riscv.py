"""RISC-V facts every party shares: trap causes and 32-bit two's complement.

The CPU raises these causes (``nodes/cpu/isa.py``), a ``trap`` message carries
one (``protocol/hw.py``), and whoever serves the trap (the OS node, the VMM,
the standalone runner) decides on it. One table, so that the names cannot
drift apart. Numbers from the RISC-V privileged spec, table 3.6 (scause).
"""

from __future__ import annotations

M32 = 0xFFFFFFFF  # register values are kept in [0, 2**32)

INSTR_MISALIGNED = 0
INSTR_ACCESS_FAULT = 1
ILLEGAL_INSTRUCTION = 2
BREAKPOINT = 3
LOAD_ACCESS_FAULT = 5
STORE_ACCESS_FAULT = 7
ECALL_U = 8
INSTR_PAGE_FAULT = 12
LOAD_PAGE_FAULT = 13
STORE_PAGE_FAULT = 15

INTERRUPT = 0x80000000  # the interrupt bit of scause
TIMER_INTERRUPT = INTERRUPT | 5  # supervisor timer interrupt: preemption

# A page fault's access kind ("x" fetch, "r" load, "w" store), as TLB perms spell it.
PAGE_FAULT_ACCESS = {INSTR_PAGE_FAULT: "x", LOAD_PAGE_FAULT: "r", STORE_PAGE_FAULT: "w"}


def signed(v: int) -> int:
    """Reinterpret a 32-bit value (any int; the low 32 bits count) as two's complement."""
    return ((v & M32) ^ 0x80000000) - 0x80000000
