"""Standalone mode: run one static RV32 Linux program on a `Core`, no cluster.

`python -m nodes.cpu run PROG.elf [--stats FILE.json] [-- ARGS...]` behaves
like `qemu-riscv32 PROG.elf ARGS...` for the programs of the guest SDK:
same stdout, same exit code. It drives the very `Core` the CPU node drives;
the only difference is who handles its stops. Here a built-in handler plays
the OS:

- TLB miss inside a mapped region: install the page (identity ppn = vpn,
  one address space) and the region's permissions, then resume.
- `ecall`: Linux RV32 syscalls `read`(63, stdin), `write`(64), `exit`(93),
  `exit_group`(94), `brk`(214); anything else returns -ENOSYS, a bad user
  pointer -EFAULT.
- anything else is a guest fault: one line on stderr with the cause, the
  address and the pc, and exit status 128 + the signal Linux would send.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

from nodes.cpu import isa
from nodes.cpu.core import PAGE_MISS, PAGE_SIZE, QUANTUM, TRAP, Core
from nodes.elf import Program, load_elf

STACK_TOP = 0x80000000
STACK_SIZE = 8 << 20
BRK_LIMIT = 0x40000000  # the heap may grow up to here
QUANTUM_SIZE = 50_000_000

SYS_READ, SYS_WRITE, SYS_EXIT, SYS_EXIT_GROUP, SYS_BRK = 63, 64, 93, 94, 214
EBADF, EFAULT, ENOSYS = 9, 14, 38
AT_NULL, AT_PAGESZ = 0, 6

SIGILL, SIGTRAP, SIGBUS, SIGSEGV = 4, 5, 7, 11
_FAULTS = {
    isa.INSTR_MISALIGNED: ("instruction address misaligned", SIGBUS),
    isa.INSTR_ACCESS_FAULT: ("instruction access fault", SIGSEGV),
    isa.ILLEGAL_INSTRUCTION: ("illegal instruction", SIGILL),
    isa.BREAKPOINT: ("breakpoint", SIGTRAP),
    isa.LOAD_ACCESS_FAULT: ("load access fault", SIGSEGV),
    isa.STORE_ACCESS_FAULT: ("store access fault", SIGSEGV),
    isa.INSTR_PAGE_FAULT: ("instruction fetch from unmapped address", SIGSEGV),
    isa.LOAD_PAGE_FAULT: ("load from unmapped address", SIGSEGV),
    isa.STORE_PAGE_FAULT: ("store to unmapped address", SIGSEGV),
}
_ACCESS = {isa.INSTR_PAGE_FAULT: "x", isa.LOAD_PAGE_FAULT: "r", isa.STORE_PAGE_FAULT: "w"}


class GuestExit(Exception):
    """The guest exited (status) or faulted (status 128 + signal, message)."""

    def __init__(self, status: int, message: str | None = None):
        super().__init__(message or f"exit {status}")
        self.status = status
        self.message = message


@dataclass
class Region:
    """A growable range of virtual pages [start, end) with permissions (heap, stack)."""

    start: int
    end: int
    perms: str


class Machine:
    """One process: a core, its address space and a tiny Linux personality."""

    def __init__(self, program: Program, argv: list[str], stdin=None, stdout=None):
        """Load `program` and build the initial stack for `argv`.

        Args:
            program: a validated ELF (`nodes.elf.load_elf`).
            argv: argv[0] is the program name.
            stdin: binary file for `read(0, ...)`; default sys.stdin.buffer.
            stdout: binary file for `write(1, ...)`; default sys.stdout.buffer.
        """
        self.core = Core()
        self.stdin = stdin if stdin is not None else sys.stdin.buffer
        self.stdout = stdout if stdout is not None else sys.stdout.buffer
        self.out = bytearray()  # buffered guest stdout, flushed at exit and before reads
        self.segment_pages: dict[int, str] = {}  # vpn -> perms of ELF segments
        self.pages: dict[int, bytearray] = {}
        end = 0
        for seg in program.segments:
            first, last = seg.vaddr >> 12, (seg.vaddr + seg.memsz + PAGE_SIZE - 1) >> 12
            self._map(first, last, seg.perms)
            self._copy_in(seg.vaddr, seg.data)
            end = max(end, seg.vaddr + seg.memsz)
        self.brk_start = self.brk = (end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        self.heap = Region(self.brk_start >> 12, self.brk_start >> 12, "rw")
        self.stack = Region((STACK_TOP - STACK_SIZE) >> 12, STACK_TOP >> 12, "rw")
        self.core.pc = program.entry
        self.core.x[2] = self._initial_stack(argv)

    # ------------------------------------------------------------ memory

    def _map(self, first: int, last: int, perms: str) -> None:
        for vpn in range(first, last):
            # Segments sharing a page: the page gets the union of their rights.
            old = self.segment_pages.get(vpn, "")
            self.segment_pages[vpn] = "".join(p for p in "rwx" if p in old + perms)

    def _perms(self, vpn: int) -> str | None:
        """Permissions of virtual page `vpn`, or None if it is not mapped."""
        perms = self.segment_pages.get(vpn)
        if perms is not None:
            return perms
        for region in (self.heap, self.stack):
            if region.start <= vpn < region.end:
                return region.perms
        return None

    def _page(self, vpn: int) -> bytearray:
        page = self.pages.get(vpn)
        if page is None:
            page = self.pages[vpn] = bytearray(PAGE_SIZE)
            self.core.install_page(vpn, page, writable=True)
        return page

    def _copy_in(self, addr: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            off = (addr + pos) & 4095
            n = min(len(data) - pos, PAGE_SIZE - off)
            self._page((addr + pos) >> 12)[off : off + n] = data[pos : pos + n]
            pos += n

    def _user_range(self, addr: int, size: int, perm: str) -> list[tuple[bytearray, int, int]] | None:
        """The pages behind a user buffer, or None if any part is not mapped with `perm`."""
        if size < 0 or addr + size > 1 << 32:
            return None
        pieces, pos = [], 0
        while pos < size:
            a = addr + pos
            perms = self._perms(a >> 12)
            if perms is None or perm not in perms:
                return None
            n = min(size - pos, PAGE_SIZE - (a & 4095))
            pieces.append((self._page(a >> 12), a & 4095, n))
            pos += n
        return pieces

    def _initial_stack(self, argv: list[str]) -> int:
        # Linux layout (what qemu-riscv32 gives a static binary): strings at
        # the top, then auxv, envp, argv pointers and argc at sp.
        strings, pointers = bytearray(), []
        top = STACK_TOP - 16
        for arg in argv:
            pointers.append(top - len(strings) - len(arg.encode()) - 1)
            strings[:0] = arg.encode() + b"\0"
        str_base = top - len(strings)
        words = [len(argv), *pointers, 0, 0, AT_PAGESZ, PAGE_SIZE, AT_NULL, 0]
        sp = (str_base - 4 * len(words)) & ~15
        self._copy_in(str_base, bytes(strings))
        self._copy_in(sp, b"".join(w.to_bytes(4, "little") for w in words))
        return sp

    # ---------------------------------------------------------- running

    def run(self) -> int:
        """Run to exit; return the exit status (128 + signal for a fault)."""
        try:
            while True:
                stop = self.core.run(QUANTUM_SIZE)
                if stop.kind == TRAP:
                    self._trap(stop)
                elif stop.kind == PAGE_MISS:
                    self._page(stop.ppn)  # identity-mapped: the frame is the page
                elif stop.kind != QUANTUM:
                    raise GuestExit(128 + SIGSEGV, f"core stopped: {stop.kind}")
        except GuestExit as done:
            self.flush()
            if done.message:
                sys.stderr.write(f"hwemu-cpu: {done.message}\n")
                sys.stderr.flush()
            return done.status

    def flush(self) -> None:
        """Write buffered guest stdout."""
        if self.out:
            self.stdout.write(self.out)
            self.out.clear()
        self.stdout.flush()

    def _trap(self, stop) -> None:
        core = self.core
        if stop.cause == isa.ECALL_U:
            core.x[10] = self._syscall(core.x[17], core.x[10:16]) & isa.M
            core.pc = (stop.pc + 4) & isa.M
            return
        if stop.cause in _ACCESS:
            vpn = stop.tval >> 12
            perms = self._perms(vpn)
            if perms is not None:
                self._page(vpn)
                core.tlb_write(0, vpn, vpn, perms)
                return
        what, signal = _FAULTS.get(stop.cause, (f"trap cause {stop.cause}", SIGSEGV))
        if stop.cause == isa.ILLEGAL_INSTRUCTION:
            where = f"instruction {stop.tval:#010x}"
        else:
            where = f"address {stop.tval:#010x}"
        raise GuestExit(128 + signal, f"{what}: {where} at pc {stop.pc:#010x}")

    # ---------------------------------------------------------- syscalls

    def _syscall(self, number: int, args: list[int]) -> int:
        if number == SYS_WRITE:
            return self._sys_write(*args[:3])
        if number == SYS_READ:
            return self._sys_read(*args[:3])
        if number in (SYS_EXIT, SYS_EXIT_GROUP):
            raise GuestExit(args[0] & 0xFF)
        if number == SYS_BRK:
            return self._sys_brk(args[0])
        return -ENOSYS

    def _sys_write(self, fd: int, buf: int, count: int) -> int:
        if fd not in (1, 2):
            return -EBADF
        pieces = self._user_range(buf, count, "r")
        if pieces is None:
            return -EFAULT
        data = b"".join(page[off : off + n] for page, off, n in pieces)
        if fd == 1:
            self.out += data
            if len(self.out) >= 1 << 16:  # bound the buffer for chatty programs
                self.flush()
        else:
            self.flush()
            sys.stderr.buffer.write(data)
            sys.stderr.buffer.flush()
        return count

    def _sys_read(self, fd: int, buf: int, count: int) -> int:
        if fd != 0:
            return -EBADF
        pieces = self._user_range(buf, count, "w")
        if pieces is None:
            return -EFAULT
        self.flush()  # an interactive prompt must be visible before we block
        data = self.stdin.read1(count) if hasattr(self.stdin, "read1") else self.stdin.read(count)
        pos = 0
        for page, off, n in pieces:
            chunk = data[pos : pos + n]
            page[off : off + len(chunk)] = chunk
            pos += len(chunk)
        return len(data)

    def _sys_brk(self, addr: int) -> int:
        if addr < self.brk_start or addr > BRK_LIMIT:
            return self.brk
        new_end = (addr + PAGE_SIZE - 1) >> 12
        if new_end < self.heap.end:
            # Shrinking: forget the pages so that growing again yields zeros.
            for vpn in range(new_end, self.heap.end):
                self.core.tlb_flush(0, vpn)
                if self.pages.pop(vpn, None) is not None:
                    self.core.evict_page(vpn)
        self.heap.end = new_end
        self.brk = addr
        return addr


def run_file(path: str, args: list[str], stats: str | None = None) -> int:
    """Load and run an ELF; print a one-line error for a bad file.

    Args:
        path: the ELF program.
        args: its arguments (argv[1:]).
        stats: if given, write {"instret", "seconds", "mips"} JSON there.

    Returns:
        The process exit status.
    """
    from nodes.elf import ElfError

    try:
        program = load_elf(path)
    except ElfError as exc:
        sys.stderr.write(f"hwemu-cpu: {exc}\n")
        return 2  # bad input, as the README's exit codes say
    except OSError as exc:
        sys.stderr.write(f"hwemu-cpu: {path}: {exc.strerror or exc}\n")
        return 2
    if stats:
        # refuse an unwritable --stats path before running, not after
        try:
            open(stats, "a").close()
        except OSError as exc:
            sys.stderr.write(f"hwemu-cpu: cannot write --stats file {stats}: {exc.strerror}\n")
            return 2
    machine = Machine(program, [path, *args])
    start = time.perf_counter()
    status = machine.run()
    seconds = time.perf_counter() - start
    if stats:
        instret = machine.core.instret
        with open(stats, "w") as f:
            json.dump(
                {"instret": instret, "seconds": seconds, "mips": instret / seconds / 1e6 if seconds else 0.0},
                f,
            )
    return status


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m nodes.cpu`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m nodes.cpu", description="Run RV32IM programs.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a static RV32 Linux ELF like qemu-riscv32")
    run.add_argument("program", help="the ELF file")
    run.add_argument("--stats", metavar="FILE.json", help="write instret, seconds and mips as JSON")
    run.add_argument("args", nargs="*", help="guest arguments (after --)")
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" belongs to the guest, even if it looks like an option.
    guest = argv[argv.index("--") + 1 :] if "--" in argv else []
    ns = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    status = run_file(ns.program, ns.args + guest, ns.stats)
    sys.exit(status)
