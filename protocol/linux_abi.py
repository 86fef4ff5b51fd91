"""The guest Linux ABI (RV32): numbers, structures, errno, argument checks.

A guest program of the SDK is a static Linux RV32 binary that also runs under
``qemu-riscv32``. Two parties serve its system calls: the OS node
(``nodes/guest_os``, with devices behind messages) and the standalone runner
(``hwemu cpu run``, ``nodes/cpu/standalone.py``, one process, no devices). Both
take from here everything a guest can observe that does not depend on who
serves it: syscall numbers, errno values, the process image (where segments,
heap, stack and the initial stack go), the layout of ``struct timespec64``
and ``struct sockaddr_in``, and the checks of arguments in the order Linux
makes them. What differs (how bytes reach user memory, how a process
blocks, whether there is a disk) stays with each party.

This module is pure data and functions of their arguments (plus the host's
clocks): it imports nothing of ours but ``protocol``, so every node kind may
use it (tests/test_layering.py).

Conventions: a7 holds the number, a0..a5 the arguments; the result goes to
a0, ``-errno`` on failure. A bad user pointer is ``-EFAULT``, checked before
anything happens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable
from typing import Protocol

from protocol import riscv
from protocol.constants import PAGE_SHIFT, PAGE_SIZE
from protocol.riscv import M32, signed

# -- system call numbers (asm-generic/unistd.h, as riscv32 uses them) ---------------------
SYS_OPENAT = 56
SYS_CLOSE = 57
SYS_READ = 63
SYS_WRITE = 64
SYS_PREAD64 = 67
SYS_PWRITE64 = 68
SYS_FSYNC = 82
SYS_FDATASYNC = 83
SYS_EXIT = 93
SYS_EXIT_GROUP = 94
SYS_GETPID = 172
SYS_SOCKET = 198
SYS_BIND = 200
SYS_SENDTO = 206
SYS_RECVFROM = 207
SYS_BRK = 214
SYS_CLOCK_GETTIME64 = 403
SYS_CLOCK_NANOSLEEP64 = 407

SYSCALL_NAMES = {
    number: name.removeprefix("SYS_").lower()
    for name, number in dict(globals()).items()
    if name.startswith("SYS_")
}

# -- errno (asm-generic/errno-base.h, errno.h): the guest's numbers, whatever the host's ---
EPERM, ENOENT, EIO, EBADF, EAGAIN, ENOMEM, EFAULT, ENODEV = 1, 2, 5, 9, 11, 12, 14, 19
EINVAL, ENOSPC, ENOSYS = 22, 28, 38
ENOTSOCK, EDESTADDRREQ, EMSGSIZE, EPROTONOSUPPORT, EAFNOSUPPORT = 88, 89, 90, 93, 97
EADDRINUSE, EADDRNOTAVAIL, ENETUNREACH, ETIMEDOUT = 98, 99, 101, 110

# -- signals a fault kills with (the exit status is 128 + the signal) ----------------------
SIGILL, SIGTRAP, SIGBUS, SIGKILL, SIGSEGV = 4, 5, 7, 9, 11

# What each trap cause means to a user process, and the signal Linux sends.
FAULTS = {
    riscv.INSTR_MISALIGNED: ("misaligned jump target", SIGBUS),
    riscv.INSTR_ACCESS_FAULT: ("segmentation fault (fetch from a non-executable page)", SIGSEGV),
    riscv.ILLEGAL_INSTRUCTION: ("illegal instruction", SIGILL),
    riscv.BREAKPOINT: ("breakpoint", SIGTRAP),
    riscv.LOAD_ACCESS_FAULT: ("segmentation fault (load from a non-readable page)", SIGSEGV),
    riscv.STORE_ACCESS_FAULT: ("segmentation fault (store to a read-only page)", SIGSEGV),
    riscv.INSTR_PAGE_FAULT: ("segmentation fault (fetch from an unmapped address)", SIGSEGV),
    riscv.LOAD_PAGE_FAULT: ("segmentation fault (load from an unmapped address)", SIGSEGV),
    riscv.STORE_PAGE_FAULT: ("segmentation fault (store to an unmapped address)", SIGSEGV),
}


def fault_report(cause: int, tval: int, pc: int) -> tuple[str, int]:
    """The one-line report of a fatal trap and the signal that kills the process.

    Example: ``("segmentation fault (store to an unmapped address) at 0x00000ff0
    pc=0x000100a4", 11)``.
    """
    what, signal = FAULTS.get(cause, (f"trap cause {cause:#x}", SIGSEGV))
    where = f"{tval & M32:#010x}" if cause == riscv.ILLEGAL_INSTRUCTION else f"at {tval & M32:#010x}"
    return f"{what} {where} pc={pc & M32:#010x}", signal


# -- the process image ---------------------------------------------------------------------
STACK_TOP = 0x80000000
STACK_SIZE = 8 << 20  # allocated on first touch
BRK_LIMIT = 0x40000000  # the heap may grow up to here
AT_NULL, AT_PAGESZ = 0, 6
RW_MAX = 1 << 20  # bytes one read/write/pread64/pwrite64 moves; more is a short count, as Linux may
PATH_MAX = 4096


class Segment(Protocol):
    """What `layout` needs of an ELF segment (``nodes.elf.Segment`` has it)."""

    vaddr: int
    memsz: int
    data: bytes
    perms: str


def initial_stack(argv: list[str], top: int = STACK_TOP) -> tuple[int, bytes]:
    """The Linux initial stack of a static binary, as qemu-riscv32 builds it.

    Strings at the top, then argc, the argv pointers, NULL, an empty envp
    (NULL) and the auxiliary vector (AT_PAGESZ, AT_NULL) at sp.

    Returns:
        (sp, the bytes from sp up to ``top``).
    """
    strings, pointers = bytearray(), []
    end = top - 16
    for arg in argv:
        raw = arg.encode()
        pointers.append(end - len(strings) - len(raw) - 1)
        strings[:0] = raw + b"\0"
    str_base = end - len(strings)
    words = [len(argv), *pointers, 0, 0, AT_PAGESZ, PAGE_SIZE, AT_NULL, 0]
    sp = (str_base - 4 * len(words)) & ~15
    image = bytearray(top - sp)
    image[0 : 4 * len(words)] = b"".join((w & M32).to_bytes(4, "little") for w in words)
    image[str_base - sp : str_base - sp + len(strings)] = strings
    return sp, bytes(image)


def layout(segments: Iterable[Segment], argv: list[str]) -> tuple[dict[int, str], dict[int, bytearray], int, int]:
    """Where a program's pages go.

    Returns:
        (perms per vpn of the segments (pages shared by two segments get the
        union), initial page images per vpn (segments and initial stack), the
        initial brk (the page after the last segment), the initial sp).
    """
    perms: dict[int, str] = {}
    images: dict[int, bytearray] = {}
    end = 0
    for seg in segments:
        first, last = seg.vaddr >> PAGE_SHIFT, (seg.vaddr + seg.memsz + PAGE_SIZE - 1) >> PAGE_SHIFT
        for vpn in range(first, last):
            old = perms.get(vpn, "")
            perms[vpn] = "".join(c for c in "rwx" if c in old or c in seg.perms)
            images.setdefault(vpn, bytearray(PAGE_SIZE))
        _copy_into(images, seg.vaddr, seg.data)
        end = max(end, seg.vaddr + seg.memsz)
    brk_start = (end + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    sp, stack = initial_stack(argv)
    _copy_into(images, sp, stack)
    return perms, images, brk_start, sp


def _copy_into(images: dict[int, bytearray], addr: int, data: bytes) -> None:
    pos = 0
    while pos < len(data):
        a = addr + pos
        off = a & (PAGE_SIZE - 1)
        n = min(len(data) - pos, PAGE_SIZE - off)
        images.setdefault(a >> PAGE_SHIFT, bytearray(PAGE_SIZE))[off : off + n] = data[pos : pos + n]
        pos += n


def user_pieces(
    addr: int, size: int, perm: str, perms_of: Callable[[int], str | None]
) -> list[tuple[int, int, int]] | None:
    """The (vpn, offset, n) pieces of a user buffer, or None (-EFAULT).

    None if any byte lies outside the 32-bit space or on a page that
    ``perms_of(vpn)`` says is unmapped (None) or lacks ``perm``.
    """
    if size < 0 or addr < 0 or addr + size > 1 << 32:
        return None
    pieces, pos = [], 0
    while pos < size:
        a = addr + pos
        vpn, off = a >> PAGE_SHIFT, a & (PAGE_SIZE - 1)
        perms = perms_of(vpn)
        if perms is None or perm not in perms:
            return None
        n = min(size - pos, PAGE_SIZE - off)
        pieces.append((vpn, off, n))
        pos += n
    return pieces


def user_string(addr: int, limit: int = PATH_MAX) -> Generator[tuple[int, int], bytes | None, bytes | None]:
    """Read a NUL-terminated user string, page by page, without doing the reads.

    A generator (sans I/O): it yields (address, length) reads, is sent back
    each read's bytes (None for -EFAULT) and returns the string without its
    NUL, or None if a read failed or no NUL came within ``limit`` bytes. It
    never reads past the page that holds the NUL, so a string that ends just
    before an unmapped page is fine. Drive it with `drive`, or by hand with
    an ``await`` between the steps.
    """
    out = bytearray()
    while len(out) < limit:
        n = min(PAGE_SIZE - (addr & (PAGE_SIZE - 1)), limit - len(out))
        chunk = yield addr, n
        if chunk is None:
            return None
        end = chunk.find(0)
        if end >= 0:
            return bytes(out + chunk[:end])
        out += chunk
        addr += n
    return None


def drive(steps: Generator, read: Callable):
    """Run a sans-I/O reader such as `user_string` with a synchronous ``read(addr, n)``."""
    try:
        request = next(steps)
        while True:
            request = steps.send(read(*request))
    except StopIteration as done:
        return done.value


# -- argument checks, in the order Linux makes them ---------------------------------------
STDIN, STDOUT, STDERR = 0, 1, 2


def check_write(fd: int, count: int) -> tuple[int, int]:
    """write(fd, buf, count) before the buffer is read: (-errno or 0, the count to move).

    Only fds 1 and 2 are writable consoles; a count over RW_MAX is cut short.
    """
    return (0 if fd in (STDOUT, STDERR) else -EBADF), min(count, RW_MAX)


def check_read(fd: int, count: int) -> tuple[int, int]:
    """read(fd, buf, count) before the buffer is checked: (-errno or 0, the count to move)."""
    return (0 if fd == STDIN else -EBADF), min(count, RW_MAX)


def check_close(fd: int, is_open: bool) -> int:
    """close(fd): 0 for an open fd and for the standard ones, else -EBADF."""
    return 0 if is_open or signed(fd) in (STDIN, STDOUT, STDERR) else -EBADF


def brk(addr: int, brk_start: int, current: int) -> int:
    """The break after brk(addr): ``addr`` if it lies in [brk_start, BRK_LIMIT], else unchanged.

    brk(0) and any refused request return the current break (the kernel's
    brk never fails with an errno; the C library compares).
    """
    return addr if brk_start <= addr <= BRK_LIMIT else current


# -- time ----------------------------------------------------------------------------------
CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
MAX_CLOCK = 16  # clock ids above this are -EINVAL
TIMER_ABSTIME = 1
TIMESPEC64_SIZE = 16  # struct __kernel_timespec: s64 tv_sec, s64 tv_nsec
NS = 1_000_000_000


def now_ns(clock: int, realtime_offset: int = 0) -> int:
    """The host clock a guest clock id reads: CLOCK_REALTIME wall time (plus
    ``realtime_offset``: an OS node follows its timer device's wall clock),
    any other monotonic."""
    return time.time_ns() + realtime_offset if clock == CLOCK_REALTIME else time.monotonic_ns()


def clock_gettime(clock: int, realtime_offset: int = 0) -> bytes | int:
    """clock_gettime64(clock): the timespec64 to store at the user's pointer, or -EINVAL."""
    if clock > MAX_CLOCK:
        return -EINVAL
    now = now_ns(clock, realtime_offset)
    return (now // NS).to_bytes(8, "little", signed=True) + (now % NS).to_bytes(8, "little")


def nanosleep_delay(clock: int, flags: int, request: bytes, realtime_offset: int = 0) -> int:
    """clock_nanosleep64(clock, flags, request): ns to sleep (0: return at once), or -EINVAL.

    Args:
        clock: the clock id.
        flags: TIMER_ABSTIME makes the request an absolute time on ``clock``.
        request: the TIMESPEC64_SIZE bytes of the user's timespec64.
        realtime_offset: added to the host's CLOCK_REALTIME (see :func:`now_ns`).
    """
    sec = int.from_bytes(request[:8], "little", signed=True)
    nsec = int.from_bytes(request[8:16], "little", signed=True)
    if sec < 0 or not 0 <= nsec < NS or clock > MAX_CLOCK:
        return -EINVAL
    want = sec * NS + nsec
    return max(0, want - now_ns(clock, realtime_offset) if flags & TIMER_ABSTIME else want)


# -- sockets (UDP over IPv4 only) ----------------------------------------------------------
AF_INET, SOCK_DGRAM, IPPROTO_UDP = 2, 2, 17
SOCK_TYPE_MASK = 0xF  # the socket type without SOCK_NONBLOCK / SOCK_CLOEXEC
SOCKADDR_IN_SIZE = 16
MAX_DATAGRAM = 65507


def check_socket(domain: int, type_: int, proto: int) -> int:
    """socket(domain, type, proto) before a device is looked for: -errno or 0."""
    if domain != AF_INET:
        return -EAFNOSUPPORT
    if type_ & SOCK_TYPE_MASK != SOCK_DGRAM or proto not in (0, IPPROTO_UDP):
        return -EPROTONOSUPPORT
    return 0


def sockaddr_in(ip: bytes, port: int) -> bytes:
    """struct sockaddr_in for a 4-byte IPv4 address and a port."""
    return AF_INET.to_bytes(2, "little") + port.to_bytes(2, "big") + ip + bytes(8)


def parse_sockaddr_in(raw: bytes) -> tuple[bytes, int] | int:
    """(4-byte address, port) of a struct sockaddr_in, or -EAFNOSUPPORT for another family."""
    if int.from_bytes(raw[:2], "little") != AF_INET:
        return -EAFNOSUPPORT
    return bytes(raw[4:8]), int.from_bytes(raw[2:4], "big")


# -- what a syscall's trap carries (protocol/hw.py ``peek``) --------------------------------
# The user memory a call reads, named by its registers, so that the CPU can send the bytes
# with the trap from the pages it holds and the OS need not ask the memory controller for
# them (with the CPU's copy of a page it just wrote recalled on the way): [nr, pointer
# register, length register (0: the fixed length instead), fixed length]. Registers are
# x10..x15 = a0..a5. Only what the OS serves reads here; a call not listed carries nothing.
TRAP_PEEK = [
    [SYS_WRITE, 11, 12, 0],                       # write(fd, buf, count)
    [SYS_PWRITE64, 11, 12, 0],                    # pwrite64(fd, buf, count, ...)
    [SYS_SENDTO, 11, 12, 0],                      # sendto(fd, buf, len, flags, addr, addrlen)
    [SYS_SENDTO, 14, 0, SOCKADDR_IN_SIZE],        # ... its destination
    [SYS_RECVFROM, 15, 0, 4],                     # recvfrom(..., addr, addrlen *): the length
    [SYS_BIND, 11, 0, SOCKADDR_IN_SIZE],          # bind(fd, addr, addrlen)
    [SYS_CLOCK_NANOSLEEP64, 12, 0, TIMESPEC64_SIZE],  # clock_nanosleep(clock, flags, req, rem)
]
