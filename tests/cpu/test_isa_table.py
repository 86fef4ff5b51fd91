"""isa.py is the single source: every table row decodes, executes and translates."""

from __future__ import annotations

import pytest

from nodes.cpu import isa
from nodes.cpu.core import Core
from nodes.cpu.isa import ENCODINGS, decode


def _word(mnemonic: str, fmt: str, opcode: int, f3, f7) -> int:
    if fmt == "SYS":
        return f7
    # rd = a0, rs1 = a1, rs2 = a2 and a non-zero immediate where the format has one.
    word = opcode | (10 << 7) | (11 << 15) | (12 << 20)
    if f3 is not None:
        word |= f3 << 12
    if f7 is not None:
        word = (word & ~(0x7F << 25)) | (f7 << 25)
    elif fmt in ("I", "S", "B", "J"):
        word |= 1 << 30  # a sizeable positive immediate
    return word


@pytest.mark.parametrize("row", ENCODINGS, ids=[row[0] for row in ENCODINGS])
def test_every_encoding_decodes_to_its_own_execute_function(row):
    insn = decode(_word(*row))
    assert insn is not None and insn.mnemonic == row[0]
    assert insn.execute is getattr(isa, f"execute_{row[0]}")


@pytest.mark.parametrize(
    "row", [r for r in ENCODINGS if r[0] not in isa.SERIALIZING], ids=lambda r: r[0]
)
def test_every_translatable_instruction_specialises(row):
    core = Core()
    texts, touched = core._translator._specialise(decode(_word(*row)), 0x10000)
    assert texts or row[0] == "fence"  # fence is a no-op
    assert "s.x" not in "".join(texts) and " i." not in "".join(texts)  # nothing left unspecialised


def test_words_outside_the_table_do_not_decode():
    # all zeros, a compressed-looking halfword, rv64 addiw, a csrrw, mret
    for word in (0x00000000, 0x00004501, 0x0015051B, 0xC0059573, 0x30200073):
        assert decode(word) is None
