"""Standalone mode: run one static RV32 Linux program on a `Core`, no cluster.

`python -m nodes.cpu run PROG.elf [--stats FILE.json] [-- ARGS...]` behaves
like `qemu-riscv32 PROG.elf ARGS...` for the programs of the guest SDK:
same stdout, same exit code. It drives the very `Core` the CPU node drives;
the only difference is who handles its stops. Here a built-in handler plays
the OS, speaking the guest Linux ABI of `protocol.linux_abi` as the OS node
does (docs/guest-abi.md):

- TLB miss inside a mapped region: install the page (identity ppn = vpn,
  one address space) and the region's permissions, then resume.
- `ecall`: every syscall the OS node serves. Those that need no device work
  as there: `read` (stdin), `write` (stdout, stderr), `exit`, `exit_group`,
  `getpid`, `brk`, `clock_gettime64`, `clock_nanosleep64`. Those of the disk
  and the NIC answer what the OS node answers with no disk and no NIC:
  `openat` -ENOENT, `socket` -EAFNOSUPPORT, the calls on file descriptors
  -EBADF (`close` of 0, 1, 2 succeeds). Anything else is -ENOSYS, a bad user
  pointer -EFAULT.
- anything else is a guest fault: one line on stderr with the cause, the
  address and the pc, and exit status 128 + the signal Linux would send.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from nodes.cpu.core import PAGE_MISS, QUANTUM, TRAP, Core
from nodes.elf import Program, load_elf
from protocol import linux_abi as abi
from protocol.riscv import ECALL_U, M32, PAGE_FAULT_ACCESS

QUANTUM_SIZE = 50_000_000


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
    """One process: a core, its address space and the guest Linux ABI."""

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
        self.segment_pages, images, self.brk_start, sp = abi.layout(program.segments, argv)
        self.pages: dict[int, bytearray] = {}
        for vpn, image in images.items():
            self._page(vpn)[:] = image
        self.brk = self.brk_start
        self.heap = Region(self.brk_start >> 12, self.brk_start >> 12, "rw")
        self.stack = Region((abi.STACK_TOP - abi.STACK_SIZE) >> 12, abi.STACK_TOP >> 12, "rw")
        self.core.pc = program.entry
        self.core.x[2] = sp
        self.syscalls: dict[int, Callable[..., int]] = {
            abi.SYS_READ: self._sys_read,
            abi.SYS_WRITE: self._sys_write,
            abi.SYS_EXIT: self._sys_exit,
            abi.SYS_EXIT_GROUP: self._sys_exit,
            abi.SYS_GETPID: lambda *_: os.getpid(),  # a process id of the host, as under qemu
            abi.SYS_BRK: self._sys_brk,
            abi.SYS_CLOCK_GETTIME64: self._sys_clock_gettime64,
            abi.SYS_CLOCK_NANOSLEEP64: self._sys_clock_nanosleep64,
            abi.SYS_OPENAT: self._sys_openat,
            abi.SYS_CLOSE: lambda fd, *_: abi.check_close(fd, is_open=False),
            # No file or socket can be open here (no disk, no NIC): what the
            # OS node answers for a descriptor it does not know.
            abi.SYS_PREAD64: lambda *_: -abi.EBADF,
            abi.SYS_PWRITE64: lambda *_: -abi.EBADF,
            abi.SYS_FSYNC: lambda *_: -abi.EBADF,
            abi.SYS_FDATASYNC: lambda *_: -abi.EBADF,
            abi.SYS_BIND: lambda *_: -abi.EBADF,
            abi.SYS_SENDTO: lambda *_: -abi.EBADF,
            abi.SYS_RECVFROM: lambda *_: -abi.EBADF,
            abi.SYS_SOCKET: lambda domain, type_, proto, *_: abi.check_socket(domain, type_, proto)
            or -abi.EAFNOSUPPORT,  # a valid request, but there is no network device
        }

    # ------------------------------------------------------------ memory

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
            page = self.pages[vpn] = bytearray(abi.PAGE_SIZE)
            self.core.install_page(vpn, page, writable=True)
        return page

    def _user(self, addr: int, size: int, perm: str) -> list[tuple[bytearray, int, int]] | None:
        """The pages behind a user buffer, or None if any part is not mapped with `perm`."""
        pieces = abi.user_pieces(addr, size, perm, self._perms)
        return None if pieces is None else [(self._page(vpn), off, n) for vpn, off, n in pieces]

    def copy_from_user(self, addr: int, size: int) -> bytes | None:
        """The bytes of a user buffer, or None (-EFAULT)."""
        pieces = self._user(addr, size, "r")
        return None if pieces is None else b"".join(page[off : off + n] for page, off, n in pieces)

    def copy_to_user(self, addr: int, data: bytes) -> bool:
        """Store `data` at a user address; False (-EFAULT) if any byte is not writable."""
        pieces = self._user(addr, len(data), "w")
        if pieces is None:
            return False
        pos = 0
        for page, off, n in pieces:
            page[off : off + n] = data[pos : pos + n]
            pos += n
        return True

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
                    raise GuestExit(128 + abi.SIGSEGV, f"core stopped: {stop.kind}")
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
        if stop.cause == ECALL_U:
            handler = self.syscalls.get(core.x[17])
            result = -abi.ENOSYS if handler is None else handler(*core.x[10:16])
            core.x[10] = result & M32
            core.pc = (stop.pc + 4) & M32
            return
        if stop.cause in PAGE_FAULT_ACCESS:
            vpn = stop.tval >> 12
            perms = self._perms(vpn)
            if perms is not None:
                # Mapped: the entry goes in with the page's rights, so an
                # access they forbid comes back as an access fault.
                self._page(vpn)
                core.tlb_write(0, vpn, vpn, perms)
                return
        report, signal = abi.fault_report(stop.cause, stop.tval, stop.pc)
        raise GuestExit(128 + signal, report)

    # ---------------------------------------------------------- syscalls

    def _sys_write(self, fd: int, buf: int, count: int, *_: int) -> int:
        error, count = abi.check_write(fd, count)
        if error:
            return error
        data = self.copy_from_user(buf, count)
        if data is None:
            return -abi.EFAULT
        if fd == abi.STDOUT:
            self.out += data
            if len(self.out) >= 1 << 16:  # bound the buffer for chatty programs
                self.flush()
        else:
            self.flush()
            sys.stderr.buffer.write(data)
            sys.stderr.buffer.flush()
        return count

    def _sys_read(self, fd: int, buf: int, count: int, *_: int) -> int:
        error, count = abi.check_read(fd, count)
        if error:
            return error
        if self._user(buf, count, "w") is None:
            return -abi.EFAULT
        if count == 0:
            return 0
        self.flush()  # an interactive prompt must be visible before we block
        data = self.stdin.read1(count) if hasattr(self.stdin, "read1") else self.stdin.read(count)
        self.copy_to_user(buf, data)
        return len(data)

    def _sys_exit(self, status: int, *_: int) -> int:
        raise GuestExit(status & 0xFF)

    def _sys_brk(self, addr: int, *_: int) -> int:
        new = abi.brk(addr, self.brk_start, self.brk)
        if new == self.brk:
            return new
        new_end = (new + abi.PAGE_SIZE - 1) >> 12
        if new_end < self.heap.end:
            # Shrinking: forget the pages so that growing again yields zeros.
            for vpn in range(new_end, self.heap.end):
                self.core.tlb_flush(0, vpn)
                if self.pages.pop(vpn, None) is not None:
                    self.core.evict_page(vpn)
        self.heap.end = new_end
        self.brk = new
        return new

    def _sys_clock_gettime64(self, clock: int, ts: int, *_: int) -> int:
        value = abi.clock_gettime(clock)
        if isinstance(value, int):
            return value
        return 0 if self.copy_to_user(ts, value) else -abi.EFAULT

    def _sys_clock_nanosleep64(self, clock: int, flags: int, req: int, rem: int, *_: int) -> int:
        raw = self.copy_from_user(req, abi.TIMESPEC64_SIZE)
        if raw is None:
            return -abi.EFAULT
        delay = abi.nanosleep_delay(clock, flags, raw)
        if delay < 0:
            return delay  # -EINVAL
        self.flush()  # what the guest printed before it sleeps is seen before
        time.sleep(delay / abi.NS)
        return 0

    def _sys_openat(self, dirfd: int, path: int, *_: int) -> int:
        name = abi.drive(abi.user_string(path), self.copy_from_user)
        return -abi.EFAULT if name is None else -abi.ENOENT  # no disk: no file exists

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
