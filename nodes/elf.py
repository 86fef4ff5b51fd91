"""ELF loader shared by the standalone CPU runner and the OS node (DESIGN.md §4).

It only reads and validates: `load_elf` returns the entry point and the
loadable segments; mapping them into an address space is the caller's job
(the standalone runner maps them directly, the OS through its frame
allocator). Deliberately free of any CPU-specific import.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError as _PyElfError
from elftools.elf.elffile import ELFFile

EM_RISCV = 243
PF_X, PF_W, PF_R = 1, 2, 4


class ElfError(Exception):
    """The file is not an ELF program this machine can run; the message says why."""


@dataclass(frozen=True)
class Segment:
    """One PT_LOAD segment.

    Attributes:
        vaddr: virtual address of the first byte.
        memsz: size in memory; bytes past `len(data)` are zero (bss).
        data: the bytes from the file (`filesz` of them).
        flags: ELF p_flags (PF_R | PF_W | PF_X bits).
    """

    vaddr: int
    memsz: int
    data: bytes
    flags: int

    @property
    def perms(self) -> str:
        """The flags as a subset of "rwx"."""
        return "".join(c for c, bit in (("r", PF_R), ("w", PF_W), ("x", PF_X)) if self.flags & bit)


@dataclass(frozen=True)
class Program:
    """A validated RV32 executable: entry point and loadable segments."""

    entry: int
    segments: tuple[Segment, ...]


def load_elf(source: str | Path | bytes) -> Program:
    """Read and validate a 32-bit RISC-V executable.

    Args:
        source: a path, or the file's bytes.

    Returns:
        The entry point and the PT_LOAD segments, in file order.

    Raises:
        ElfError: with a precise reason (not an ELF / truncated, 64-bit,
            not RISC-V, not an executable, no loadable segment, entry outside
            every executable segment, segment data beyond the end of file).
        OSError: the path cannot be read.
    """
    if isinstance(source, (bytes, bytearray)):
        raw, name = bytes(source), "<bytes>"
    else:
        raw, name = Path(source).read_bytes(), str(source)
    if len(raw) < 4 or raw[:4] != b"\x7fELF":
        raise ElfError(f"{name}: not an ELF file (bad magic)")
    if len(raw) < 52:
        raise ElfError(f"{name}: truncated ELF header ({len(raw)} bytes)")
    if raw[4] == 2:
        raise ElfError(f"{name}: 64-bit ELF; this machine runs RV32 (ELFCLASS32) programs")
    if raw[4] != 1:
        raise ElfError(f"{name}: unknown ELF class {raw[4]}")
    try:
        elf = ELFFile(io.BytesIO(raw))
        header = elf.header
        if header["e_machine"] != "EM_RISCV":
            raise ElfError(f"{name}: not a RISC-V program (e_machine = {header['e_machine']})")
        if header["e_type"] != "ET_EXEC":
            raise ElfError(f"{name}: not an executable (e_type = {header['e_type']})")
        segments = []
        for index in range(elf.num_segments()):
            ph = elf._get_segment_header(index)
            if ph["p_type"] != "PT_LOAD":
                continue
            end = ph["p_offset"] + ph["p_filesz"]
            if end > len(raw):
                raise ElfError(
                    f"{name}: segment {index} data [{ph['p_offset']:#x}, {end:#x}) "
                    f"is beyond the end of the file ({len(raw):#x} bytes)"
                )
            if ph["p_filesz"] > ph["p_memsz"]:
                raise ElfError(f"{name}: segment {index} has filesz > memsz")
            segments.append(
                Segment(ph["p_vaddr"], ph["p_memsz"], raw[ph["p_offset"] : end], ph["p_flags"])
            )
    except (_PyElfError, ValueError, KeyError) as exc:
        raise ElfError(f"{name}: truncated or malformed ELF ({exc})") from None
    if not segments:
        raise ElfError(f"{name}: no loadable (PT_LOAD) segment")
    entry = header["e_entry"]
    if not any(s.flags & PF_X and s.vaddr <= entry < s.vaddr + s.memsz for s in segments):
        raise ElfError(f"{name}: entry point {entry:#x} is outside every executable segment")
    return Program(entry, tuple(segments))
