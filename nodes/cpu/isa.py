"""RV32IM user-level ISA: one table of encodings, one `execute_<mnemonic>` each.

This is the single source of the CPU's semantics (STYLE.md, pydgin). The
interpreter in `core.py` calls these functions directly; the block translator
in `translate.py` reads their source and inlines it into generated Python, so
a fix made here reaches both paths.

Conventions every `execute_<mnemonic>(s, i)` follows (the translator relies on
them):

- `s.x[i.rs1]`, `s.x[i.rd] = ...`: the register file, unsigned 32-bit ints.
  A write to x0 is discarded by the caller.
- `s.pc` is the address of the instruction being executed.
- `i.rd`, `i.rs1`, `i.rs2`, `i.imm` (unsigned 32-bit), `i.simm` (signed),
  `i.shamt`, `i.csr`, `i.word` are the decoded fields.
- `s.load(addr, size)` returns the zero-extended value; `s.store(addr, size,
  value)` takes a value already masked to `size` bytes. Both may stop the core
  (trap or page miss) before any side effect, which is why every register
  write comes after the memory access.
- `s.trap(cause, tval)` stops the core with a trap at this instruction.
- A control-transfer instruction returns the next pc; others return None
  (fall through to pc + 4). `return` is always the last statement of its
  branch.
"""

from __future__ import annotations

from protocol.riscv import (  # noqa: F401  (the causes are part of this table's vocabulary)
    BREAKPOINT,
    ECALL_U,
    ILLEGAL_INSTRUCTION,
    INSTR_ACCESS_FAULT,
    INSTR_MISALIGNED,
    INSTR_PAGE_FAULT,
    LOAD_ACCESS_FAULT,
    LOAD_PAGE_FAULT,
    STORE_ACCESS_FAULT,
    STORE_PAGE_FAULT,
    signed,
)
from protocol.riscv import M32 as M  # every register value is kept in [0, 2**32)

# Zicntr counters, readable with csrrs rd, csr, x0.
CSR_CYCLE, CSR_TIME, CSR_INSTRET = 0xC00, 0xC01, 0xC02
CSR_CYCLEH, CSR_TIMEH, CSR_INSTRETH = 0xC80, 0xC81, 0xC82


# --------------------------------------------------------------------------
# The encoding table. One row per instruction:
#   mnemonic, format, opcode, funct3 (None: any), funct7 / full word
# For format "SYS" the last column is the whole 32-bit word.
# Formats name which fields `decode` extracts (RISC-V spec, chapter 2.3).
# --------------------------------------------------------------------------
ENCODINGS: list[tuple[str, str, int, int | None, int | None]] = [
    # mnemonic  fmt    opcode     f3    f7 / word
    ("lui",     "U",   0b0110111, None, None),
    ("auipc",   "U",   0b0010111, None, None),
    ("jal",     "J",   0b1101111, None, None),
    ("jalr",    "I",   0b1100111, 0b000, None),
    ("beq",     "B",   0b1100011, 0b000, None),
    ("bne",     "B",   0b1100011, 0b001, None),
    ("blt",     "B",   0b1100011, 0b100, None),
    ("bge",     "B",   0b1100011, 0b101, None),
    ("bltu",    "B",   0b1100011, 0b110, None),
    ("bgeu",    "B",   0b1100011, 0b111, None),
    ("lb",      "I",   0b0000011, 0b000, None),
    ("lh",      "I",   0b0000011, 0b001, None),
    ("lw",      "I",   0b0000011, 0b010, None),
    ("lbu",     "I",   0b0000011, 0b100, None),
    ("lhu",     "I",   0b0000011, 0b101, None),
    ("sb",      "S",   0b0100011, 0b000, None),
    ("sh",      "S",   0b0100011, 0b001, None),
    ("sw",      "S",   0b0100011, 0b010, None),
    ("addi",    "I",   0b0010011, 0b000, None),
    ("slti",    "I",   0b0010011, 0b010, None),
    ("sltiu",   "I",   0b0010011, 0b011, None),
    ("xori",    "I",   0b0010011, 0b100, None),
    ("ori",     "I",   0b0010011, 0b110, None),
    ("andi",    "I",   0b0010011, 0b111, None),
    ("slli",    "Ish", 0b0010011, 0b001, 0b0000000),
    ("srli",    "Ish", 0b0010011, 0b101, 0b0000000),
    ("srai",    "Ish", 0b0010011, 0b101, 0b0100000),
    ("add",     "R",   0b0110011, 0b000, 0b0000000),
    ("sub",     "R",   0b0110011, 0b000, 0b0100000),
    ("sll",     "R",   0b0110011, 0b001, 0b0000000),
    ("slt",     "R",   0b0110011, 0b010, 0b0000000),
    ("sltu",    "R",   0b0110011, 0b011, 0b0000000),
    ("xor",     "R",   0b0110011, 0b100, 0b0000000),
    ("srl",     "R",   0b0110011, 0b101, 0b0000000),
    ("sra",     "R",   0b0110011, 0b101, 0b0100000),
    ("or",      "R",   0b0110011, 0b110, 0b0000000),
    ("and",     "R",   0b0110011, 0b111, 0b0000000),
    ("mul",     "R",   0b0110011, 0b000, 0b0000001),
    ("mulh",    "R",   0b0110011, 0b001, 0b0000001),
    ("mulhsu",  "R",   0b0110011, 0b010, 0b0000001),
    ("mulhu",   "R",   0b0110011, 0b011, 0b0000001),
    ("div",     "R",   0b0110011, 0b100, 0b0000001),
    ("divu",    "R",   0b0110011, 0b101, 0b0000001),
    ("rem",     "R",   0b0110011, 0b110, 0b0000001),
    ("remu",    "R",   0b0110011, 0b111, 0b0000001),
    ("fence",   "I",   0b0001111, 0b000, None),
    ("fence_i", "I",   0b0001111, 0b001, None),
    ("ecall",   "SYS", 0b1110011, None, 0x00000073),
    ("ebreak",  "SYS", 0b1110011, None, 0x00100073),
    ("csrrs",   "CSR", 0b1110011, 0b010, None),
]

# Instructions the translator never puts inside a block: they read core state
# the block does not keep current (instret), trap unconditionally, or flush
# the block cache itself. The interpreter executes them one at a time.
SERIALIZING = frozenset({"fence_i", "ecall", "ebreak", "csrrs"})
# Instructions that end a block because they choose the next pc.
CONTROL = frozenset({"jal", "jalr", "beq", "bne", "blt", "bge", "bltu", "bgeu"})


class Insn:
    """One decoded instruction: its mnemonic, execute function and fields."""

    __slots__ = ("csr", "execute", "imm", "mnemonic", "rd", "rs1", "rs2", "shamt", "simm", "word")

    def __init__(self, mnemonic: str, word: int, rd=0, rs1=0, rs2=0, simm=0, shamt=0, csr=0):
        self.mnemonic = mnemonic
        self.execute = globals()["execute_" + mnemonic]
        self.word = word
        self.rd, self.rs1, self.rs2 = rd, rs1, rs2
        self.simm = simm
        self.imm = simm & M
        self.shamt = shamt
        self.csr = csr

    def __repr__(self) -> str:
        return f"Insn({self.mnemonic}, word={self.word:#010x})"


def _sext(value: int, bits: int) -> int:
    sign = 1 << (bits - 1)
    return (value ^ sign) - sign


def _fields(fmt: str, w: int) -> dict[str, int]:
    """Extract the operand fields of format `fmt` from instruction word `w`."""
    rd, rs1, rs2 = (w >> 7) & 31, (w >> 15) & 31, (w >> 20) & 31
    if fmt == "R":
        return {"rd": rd, "rs1": rs1, "rs2": rs2}
    if fmt == "I":
        return {"rd": rd, "rs1": rs1, "simm": _sext(w >> 20, 12)}
    if fmt == "Ish":
        return {"rd": rd, "rs1": rs1, "shamt": rs2}
    if fmt == "S":
        return {"rs1": rs1, "rs2": rs2, "simm": _sext(((w >> 25) << 5) | rd, 12)}
    if fmt == "B":
        imm = (((w >> 31) & 1) << 12) | (((w >> 7) & 1) << 11) | (((w >> 25) & 0x3F) << 5) | (((w >> 8) & 0xF) << 1)
        return {"rs1": rs1, "rs2": rs2, "simm": _sext(imm, 13)}
    if fmt == "U":
        return {"rd": rd, "simm": _sext(w & 0xFFFFF000, 32)}
    if fmt == "J":
        imm = (((w >> 31) & 1) << 20) | (((w >> 12) & 0xFF) << 12)
        imm |= (((w >> 20) & 1) << 11) | (((w >> 21) & 0x3FF) << 1)
        return {"rd": rd, "simm": _sext(imm, 21)}
    if fmt == "CSR":
        return {"rd": rd, "rs1": rs1, "csr": w >> 20}
    return {}  # SYS: no operands


def _mask_match(fmt: str, opcode: int, f3: int | None, f7: int | None) -> tuple[int, int]:
    if fmt == "SYS":
        return 0xFFFFFFFF, f7
    mask, match = 0x7F, opcode
    if f3 is not None:
        mask |= 0x7 << 12
        match |= f3 << 12
    if f7 is not None:
        mask |= 0x7F << 25
        match |= f7 << 25
    return mask, match


# Rows grouped by opcode so decoding scans only a handful of candidates.
_BY_OPCODE: dict[int, list[tuple[int, int, str, str]]] = {}
for _mn, _fmt, _op, _f3, _f7 in ENCODINGS:
    _mask, _match = _mask_match(_fmt, _op, _f3, _f7)
    _BY_OPCODE.setdefault(_op, []).append((_mask, _match, _mn, _fmt))


def decode(word: int) -> Insn | None:
    """Decode a 32-bit instruction word.

    Args:
        word: the instruction bits, little-endian already assembled.

    Returns:
        The decoded `Insn`, or None if the word is not an RV32IM instruction
        this core implements (the caller raises illegal instruction).
    """
    for mask, match, mnemonic, fmt in _BY_OPCODE.get(word & 0x7F, ()):
        if word & mask == match:
            return Insn(mnemonic, word, **_fields(fmt, word))
    return None


# --------------------------------------------------------------------------
# Semantics, in table order. Read each against the RISC-V unprivileged spec.
# --------------------------------------------------------------------------

def execute_lui(s, i):
    s.x[i.rd] = i.imm


def execute_auipc(s, i):
    s.x[i.rd] = (s.pc + i.imm) & M


def execute_jal(s, i):
    t = (s.pc + i.imm) & M
    if t & 3:
        s.trap(INSTR_MISALIGNED, t)
    s.x[i.rd] = (s.pc + 4) & M
    return t


def execute_jalr(s, i):
    t = (s.x[i.rs1] + i.imm) & 0xFFFFFFFE
    if t & 3:
        s.trap(INSTR_MISALIGNED, t)
    s.x[i.rd] = (s.pc + 4) & M
    return t


def execute_beq(s, i):
    if s.x[i.rs1] == s.x[i.rs2]:
        t = (s.pc + i.imm) & M
        if t & 3:
            s.trap(INSTR_MISALIGNED, t)
        return t


def execute_bne(s, i):
    if s.x[i.rs1] != s.x[i.rs2]:
        t = (s.pc + i.imm) & M
        if t & 3:
            s.trap(INSTR_MISALIGNED, t)
        return t


def execute_blt(s, i):
    if signed(s.x[i.rs1]) < signed(s.x[i.rs2]):
        t = (s.pc + i.imm) & M
        if t & 3:
            s.trap(INSTR_MISALIGNED, t)
        return t


def execute_bge(s, i):
    if signed(s.x[i.rs1]) >= signed(s.x[i.rs2]):
        t = (s.pc + i.imm) & M
        if t & 3:
            s.trap(INSTR_MISALIGNED, t)
        return t


def execute_bltu(s, i):
    if s.x[i.rs1] < s.x[i.rs2]:
        t = (s.pc + i.imm) & M
        if t & 3:
            s.trap(INSTR_MISALIGNED, t)
        return t


def execute_bgeu(s, i):
    if s.x[i.rs1] >= s.x[i.rs2]:
        t = (s.pc + i.imm) & M
        if t & 3:
            s.trap(INSTR_MISALIGNED, t)
        return t


def execute_lb(s, i):
    s.x[i.rd] = ((s.load((s.x[i.rs1] + i.simm) & M, 1) ^ 0x80) - 0x80) & M


def execute_lh(s, i):
    s.x[i.rd] = ((s.load((s.x[i.rs1] + i.simm) & M, 2) ^ 0x8000) - 0x8000) & M


def execute_lw(s, i):
    s.x[i.rd] = s.load((s.x[i.rs1] + i.simm) & M, 4)


def execute_lbu(s, i):
    s.x[i.rd] = s.load((s.x[i.rs1] + i.simm) & M, 1)


def execute_lhu(s, i):
    s.x[i.rd] = s.load((s.x[i.rs1] + i.simm) & M, 2)


def execute_sb(s, i):
    s.store((s.x[i.rs1] + i.simm) & M, 1, s.x[i.rs2] & 0xFF)


def execute_sh(s, i):
    s.store((s.x[i.rs1] + i.simm) & M, 2, s.x[i.rs2] & 0xFFFF)


def execute_sw(s, i):
    s.store((s.x[i.rs1] + i.simm) & M, 4, s.x[i.rs2])


def execute_addi(s, i):
    s.x[i.rd] = (s.x[i.rs1] + i.simm) & M  # simm: small ints add faster than 2**32 - 1


def execute_slti(s, i):
    s.x[i.rd] = 1 if signed(s.x[i.rs1]) < i.simm else 0


def execute_sltiu(s, i):
    s.x[i.rd] = 1 if s.x[i.rs1] < i.imm else 0


def execute_xori(s, i):
    s.x[i.rd] = s.x[i.rs1] ^ i.imm


def execute_ori(s, i):
    s.x[i.rd] = s.x[i.rs1] | i.imm


def execute_andi(s, i):
    s.x[i.rd] = s.x[i.rs1] & i.imm


def execute_slli(s, i):
    s.x[i.rd] = (s.x[i.rs1] << i.shamt) & M


def execute_srli(s, i):
    s.x[i.rd] = s.x[i.rs1] >> i.shamt


def execute_srai(s, i):
    s.x[i.rd] = (signed(s.x[i.rs1]) >> i.shamt) & M


def execute_add(s, i):
    s.x[i.rd] = (s.x[i.rs1] + s.x[i.rs2]) & M


def execute_sub(s, i):
    s.x[i.rd] = (s.x[i.rs1] - s.x[i.rs2]) & M


def execute_sll(s, i):
    s.x[i.rd] = (s.x[i.rs1] << (s.x[i.rs2] & 31)) & M


def execute_slt(s, i):
    s.x[i.rd] = 1 if signed(s.x[i.rs1]) < signed(s.x[i.rs2]) else 0


def execute_sltu(s, i):
    s.x[i.rd] = 1 if s.x[i.rs1] < s.x[i.rs2] else 0


def execute_xor(s, i):
    s.x[i.rd] = s.x[i.rs1] ^ s.x[i.rs2]


def execute_srl(s, i):
    s.x[i.rd] = s.x[i.rs1] >> (s.x[i.rs2] & 31)


def execute_sra(s, i):
    s.x[i.rd] = (signed(s.x[i.rs1]) >> (s.x[i.rs2] & 31)) & M


def execute_or(s, i):
    s.x[i.rd] = s.x[i.rs1] | s.x[i.rs2]


def execute_and(s, i):
    s.x[i.rd] = s.x[i.rs1] & s.x[i.rs2]


def execute_mul(s, i):
    s.x[i.rd] = (s.x[i.rs1] * s.x[i.rs2]) & M


def execute_mulh(s, i):
    s.x[i.rd] = ((signed(s.x[i.rs1]) * signed(s.x[i.rs2])) >> 32) & M


def execute_mulhsu(s, i):
    s.x[i.rd] = ((signed(s.x[i.rs1]) * s.x[i.rs2]) >> 32) & M


def execute_mulhu(s, i):
    s.x[i.rd] = (s.x[i.rs1] * s.x[i.rs2]) >> 32


def execute_div(s, i):
    a = signed(s.x[i.rs1])
    b = signed(s.x[i.rs2])
    if b == 0:
        q = -1  # division by zero yields all ones
    else:
        q = abs(a) // abs(b)  # RISC-V rounds toward zero, Python floors
        if (a < 0) != (b < 0):
            q = -q
    s.x[i.rd] = q & M  # INT_MIN / -1 = 2**31 wraps back to INT_MIN


def execute_divu(s, i):
    b = s.x[i.rs2]
    s.x[i.rd] = s.x[i.rs1] // b if b else M


def execute_rem(s, i):
    a = signed(s.x[i.rs1])
    b = signed(s.x[i.rs2])
    if b == 0:
        r = a  # remainder by zero yields the dividend
    else:
        r = abs(a) % abs(b)  # sign follows the dividend; INT_MIN % -1 = 0
        if a < 0:
            r = -r
    s.x[i.rd] = r & M


def execute_remu(s, i):
    b = s.x[i.rs2]
    s.x[i.rd] = s.x[i.rs1] % b if b else s.x[i.rs1]


def execute_fence(s, i):
    pass  # one hart, memory is sequentially consistent already


def execute_fence_i(s, i):
    s.flush_code()


def execute_ecall(s, i):
    s.trap(ECALL_U, 0)


def execute_ebreak(s, i):
    s.trap(BREAKPOINT, s.pc)


def execute_csrrs(s, i):
    # Only the read-only Zicntr counters exist; setting bits in them (rs1 !=
    # x0) is an attempt to write a read-only CSR, hence illegal.
    if i.rs1 != 0 or not s.counter_exists(i.csr):
        s.trap(ILLEGAL_INSTRUCTION, i.word)
    s.x[i.rd] = s.read_counter(i.csr)
