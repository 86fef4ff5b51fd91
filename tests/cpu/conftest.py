"""Fixtures for CPU unit tests: assemble RV32 snippets and run them on a Core.

Programs are assembled on the fly with riscv64-unknown-elf-gcc into the
test's tmp_path, so the tests need nothing from guest/.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from nodes.cpu.core import PAGE_MISS, QUANTUM, TRAP, Core
from nodes.elf import load_elf

GCC = "riscv64-unknown-elf-gcc"
TEXT = 0x10000
DATA = 0x40000  # results / scratch: DATA_PAGES rw pages, mapped by `load`
DATA_PAGES = 8


def assemble(tmp_path: Path, source: str, name: str = "prog", extra: tuple[str, ...] = ()) -> Path:
    """Assemble `source` (with a _start) into a static rv32im ELF at TEXT."""
    src = tmp_path / f"{name}.S"
    elf = tmp_path / f"{name}.elf"
    src.write_text(".globl _start\n" + source + "\n")
    done = subprocess.run(
        [GCC, "-march=rv32im_zicsr_zifencei", "-mabi=ilp32", "-nostdlib", "-static", f"-Wl,-Ttext={TEXT:#x}",
         "-Wl,--no-warn-rwx-segments", "-Wl,--build-id=none", *extra, "-o", str(elf), str(src)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode:
        raise AssertionError(f"assembling {src} failed:\n{done.stderr}")
    return elf


def load(core: Core, elf: Path, asid: int = 0, text_perms: str | None = None) -> None:
    """Map the ELF's segments (identity ppn = vpn) and DATA pages into `core`."""
    program = load_elf(elf)
    for seg in program.segments:
        for vpn in range(seg.vaddr >> 12, (seg.vaddr + seg.memsz + 4095) >> 12):
            if not core.has_page(vpn):
                core.install_page(vpn, bytearray(4096), writable=True)
            core.tlb_write(asid, vpn, vpn, text_perms or seg.perms)
        for i, byte in enumerate(seg.data):
            addr = seg.vaddr + i
            page = core._pages[addr >> 12]
            page[addr & 4095] = byte
    for vpn in range(DATA >> 12, (DATA >> 12) + DATA_PAGES):
        core.install_page(vpn, bytearray(4096), writable=True)
        core.tlb_write(asid, vpn, vpn, "rw")
    core.pc = program.entry


def read_word(core: Core, addr: int) -> int:
    """Read a word of physical = virtual memory directly from the page cache."""
    page = core._pages[addr >> 12]
    return int.from_bytes(page[addr & 4095 : (addr & 4095) + 4], "little")


def run_to_stop(core: Core, stepped: bool = False, limit: int = 10_000_000):
    """Run until something other than QUANTUM; `stepped` uses a budget of 1."""
    budget = 1 if stepped else limit
    for _ in range(limit):
        stop = core.run(budget)
        if stop.kind != QUANTUM:
            return stop
    raise AssertionError("program did not stop")


@pytest.fixture(params=["translated", "stepped"])
def mode(request):
    """Run every program both as translated blocks and one instruction at a time."""
    return request.param


@pytest.fixture
def run_asm(tmp_path, mode):
    """Assemble, load and run a snippet to its first stop; returns (core, stop)."""

    def _run(source: str, core: Core | None = None, text_perms: str | None = None):
        core = core or Core(hot_threshold=0 if mode == "translated" else 4)
        load(core, assemble(tmp_path, source), text_perms=text_perms)
        stop = run_to_stop(core, stepped=mode == "stepped")
        return core, stop

    return _run


__all__ = ["DATA", "PAGE_MISS", "QUANTUM", "TRAP", "assemble", "load", "read_word", "run_to_stop"]


@pytest.fixture
def cpu_helpers():
    """This module's helpers (tests cannot import conftest under importlib mode)."""
    import sys

    return sys.modules[__name__]
