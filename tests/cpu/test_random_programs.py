"""Differential: random programs give the same result translated and interpreted.

The translator rewrites isa.py's execute functions (AST inlining, constant
folding, signed-compare rewriting, region dispatch); the interpreter calls
them as written. Random instruction words from the encoding table, run both
ways, must leave identical registers, memory and stop. Seeded: the same
programs every run.
"""

from __future__ import annotations

import random

import pytest

from nodes.cpu import isa
from nodes.cpu.core import Core

TEXT_VPN, DATA_VPN, DATA_PAGES = 0x10, 0x40, 4
EDGES = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE, 31, 32]
# Opcodes of everything but the serializing instructions and jalr.
OPCODES = [0b0110111, 0b0010111, 0b1100011, 0b1101111, 0b0000011, 0b0100011, 0b0010011, 0b0110011, 0b0001111]


def _branch(funct3: int, rs1: int, rs2: int, offset: int) -> int:
    imm = offset & 0x1FFF
    return (
        ((imm >> 12) & 1) << 31 | ((imm >> 5) & 0x3F) << 25 | rs2 << 20 | rs1 << 15 | funct3 << 12
        | ((imm >> 1) & 0xF) << 8 | ((imm >> 11) & 1) << 7 | 0b1100011
    )


def _jal(rd: int, offset: int) -> int:
    imm = offset & 0x1FFFFF
    return (
        ((imm >> 20) & 1) << 31 | ((imm >> 1) & 0x3FF) << 21 | ((imm >> 11) & 1) << 20
        | ((imm >> 12) & 0xFF) << 12 | rd << 7 | 0b1101111
    )


def _random_word(rng: random.Random, index: int, length: int) -> int:
    while True:
        opcode = rng.choice(OPCODES)
        word = (rng.getrandbits(25) << 7) | opcode
        if opcode == 0b1100011:
            # Mostly short hops inside the program, forward and backward.
            target = rng.randrange(0, length)
            word = _branch(rng.choice([0, 1, 4, 5, 6, 7]), rng.randrange(32), rng.randrange(32), 4 * (target - index))
        if opcode == 0b1101111:
            word = _jal(rng.choice([0, 1, 5]), 4 * (rng.randrange(0, length) - index) + rng.choice([0, 0, 0, 2]))
        if opcode in (0b0000011, 0b0100011) and rng.random() < 0.8:
            word = (word & ~(31 << 15)) | (rng.choice([8, 9, 18, 19]) << 15)  # a data pointer
        insn = isa.decode(word)
        if insn is not None and insn.mnemonic not in isa.SERIALIZING:
            return word


def _machine(words: list[int], regs: list[int], threshold: int) -> Core:
    core = Core(hot_threshold=threshold)
    code = bytearray(4096)
    for i, word in enumerate(words):
        code[4 * i : 4 * i + 4] = word.to_bytes(4, "little")
    core.install_page(TEXT_VPN, code, writable=False)
    core.tlb_write(0, TEXT_VPN, TEXT_VPN, "rx")
    for vpn in range(DATA_VPN, DATA_VPN + DATA_PAGES):
        core.install_page(vpn, bytearray(bytes(range(256)) * 16), writable=True)
        core.tlb_write(0, vpn, vpn, "rw")
    core.set_state({"x": regs, "pc": TEXT_VPN << 12, "asid": 0})
    return core


def _outcome(core: Core, budget: int, total: int = 3000):
    # Random backward branches make endless loops: every mode stops after
    # exactly `total` instructions, which exact quanta make comparable. A
    # trap (mostly wild addresses) is recorded and the instruction skipped,
    # as a handler would, so that the rest of the program runs too.
    stops = []
    while core.instret < total and len(stops) < 300:
        stop = core.run(min(budget, total - core.instret))
        if stop.kind == "trap":
            stops.append((stop.cause, stop.tval, stop.pc, core.instret))
            core.pc = (stop.pc + 4) & 0xFFFFFFFF
            if core.pc >> 12 != TEXT_VPN or stop.cause == 8:
                break
    memory = [core.evict_page(vpn) for vpn in range(DATA_VPN, DATA_VPN + DATA_PAGES)]
    return stops, core.get_state(), memory


@pytest.mark.parametrize("seed", range(40))
def test_translated_and_interpreted_runs_agree(seed):
    rng = random.Random(seed)
    length = 120
    words = [_random_word(rng, i, length) for i in range(length)] + [0x00000073]  # ecall
    regs = [0] + [
        rng.choice([rng.choice(EDGES), rng.getrandbits(32), (DATA_VPN << 12) + 0x800 + rng.randrange(0x1800)])
        for _ in range(31)
    ]
    for r in (8, 9, 18, 19):
        regs[r] = (DATA_VPN << 12) + 0x800 + rng.randrange(0x2000)
    translated = _outcome(_machine(words, regs, threshold=0), budget=10**6)
    interpreted = _outcome(_machine(words, regs, threshold=10**9), budget=1)
    chunked = _outcome(_machine(words, regs, threshold=2), budget=7)
    assert translated == interpreted
    assert chunked == interpreted
