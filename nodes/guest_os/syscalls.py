"""System calls with Linux RV32 numbers (DESIGN.md §4), so that a binary of
the guest SDK behaves as under ``qemu-riscv32``.

a7 = number, a0..a5 = arguments, the result in a0 (``-errno`` on failure).
A user pointer is checked page by page against the process's mapped
regions: a bad one is ``-EFAULT``, never the kernel's problem.

:func:`syscall` returns the value for a0, or ``None`` when the call has
already decided what happens to the process (it blocked, or it exited).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Awaitable, Callable

if TYPE_CHECKING:  # pragma: no cover
    from nodes.guest_os.kernel import Kernel, Process

SYS_READ, SYS_WRITE = 63, 64
SYS_EXIT, SYS_EXIT_GROUP = 93, 94
SYS_GETPID = 172
SYS_BRK = 214
SYS_CLOCK_GETTIME64 = 403
SYS_CLOCK_NANOSLEEP64 = 407

EBADF, EFAULT, EINVAL, ENOSYS = 9, 14, 22, 38
CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
TIMER_ABSTIME = 1
WRITE_MAX = 1 << 20  # bytes one write() moves; more returns a short count, as Linux may
PAGE = 4096
BRK_LIMIT = 0x40000000


def _signed(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


async def sys_write(k: "Kernel", p: "Process", fd: int, buf: int, count: int, *_: int) -> int | None:
    if fd not in (1, 2):
        return -EBADF
    count = min(count, WRITE_MAX)
    if count == 0:
        return 0
    data = await k.copy_from_user(p, buf, count)
    if data is None:
        return -EFAULT
    await k.hw.console.write(data)
    return count


async def sys_read(k: "Kernel", p: "Process", fd: int, buf: int, count: int, *_: int) -> int | None:
    if fd != 0:
        return -EBADF
    count = min(count, WRITE_MAX)
    if k.user_pieces(p, buf, count, "w") is None:
        return -EFAULT
    if count == 0:
        return 0
    if p.stdin is not None:  # its own input, then EOF
        n = min(count, len(p.stdin))
        if n and not await k.copy_to_user(p, buf, bytes(p.stdin[:n])):
            return -EFAULT
        del p.stdin[:n]
        return n
    if k.rx and not k.readers:
        return await _copy_rx(k, p, buf, count)
    k.block(p, ("read", buf, count))
    return None


async def _copy_rx(k: "Kernel", p: "Process", buf: int, count: int) -> int:
    n = min(count, len(k.rx))
    data = bytes(k.rx[:n])
    if not await k.copy_to_user(p, buf, data):
        return -EFAULT
    del k.rx[:n]
    return n


async def complete_read(k: "Kernel", p: "Process") -> None:
    """Bytes arrived for a process blocked in read(0): finish its call."""
    _, buf, count = p.wait
    p.regs[10] = (await _copy_rx(k, p, buf, count)) & 0xFFFFFFFF
    k.make_ready(p)


async def sys_exit(k: "Kernel", p: "Process", code: int, *_: int) -> int | None:
    await k.exit(p, code & 0xFF, "exit")
    return None


async def sys_getpid(k: "Kernel", p: "Process", *_: int) -> int:
    return p.pid


async def sys_brk(k: "Kernel", p: "Process", addr: int, *_: int) -> int:
    if addr < p.brk_start or addr > BRK_LIMIT:
        return p.brk
    new_end = (addr + PAGE - 1) >> 12
    if new_end < p.heap_end:
        # shrinking: the pages go, so growing again yields zeros
        for vpn in range(new_end, p.heap_end):
            entry = p.pages.pop(vpn, None)
            if entry is not None:
                await k.hw.priv("tlb_flush", {"asid": p.asid, "vpn": vpn})
                k.frames.free(entry[0])
    p.heap_end = new_end
    p.brk = addr
    return addr


def _now_ns(k: "Kernel", clock: int) -> int:
    """CLOCK_REALTIME is the timer device's wall clock (followed on its ticks), the rest monotonic."""
    return time.time_ns() + k.wall_offset_ns if clock == CLOCK_REALTIME else time.monotonic_ns()


async def sys_clock_gettime64(k: "Kernel", p: "Process", clock: int, ts: int, *_: int) -> int:
    if clock > 16:
        return -EINVAL
    now = _now_ns(k, clock)
    data = (now // 1_000_000_000).to_bytes(8, "little", signed=True) + (now % 1_000_000_000).to_bytes(8, "little")
    return 0 if await k.copy_to_user(p, ts, data) else -EFAULT


async def sys_clock_nanosleep64(k: "Kernel", p: "Process", clock: int, flags: int, req: int, rem: int,
                                *_: int) -> int | None:
    raw = await k.copy_from_user(p, req, 16)
    if raw is None:
        return -EFAULT
    sec = int.from_bytes(raw[:8], "little", signed=True)
    nsec = int.from_bytes(raw[8:], "little", signed=True)
    if sec < 0 or not 0 <= nsec < 1_000_000_000 or clock > 16:
        return -EINVAL
    want = sec * 1_000_000_000 + nsec
    if flags & TIMER_ABSTIME:
        delay = want - _now_ns(k, clock)
    else:
        delay = want
    if delay <= 0:
        return 0
    k.block(p, ("sleep", time.monotonic_ns() + delay))
    return None


SYSCALLS: dict[int, Callable[..., Awaitable[int | None]]] = {
    SYS_READ: sys_read,
    SYS_WRITE: sys_write,
    SYS_EXIT: sys_exit,
    SYS_EXIT_GROUP: sys_exit,
    SYS_GETPID: sys_getpid,
    SYS_BRK: sys_brk,
    SYS_CLOCK_GETTIME64: sys_clock_gettime64,
    SYS_CLOCK_NANOSLEEP64: sys_clock_nanosleep64,
}


async def syscall(k: "Kernel", p: "Process") -> int | None:
    """Serve the ecall of process ``p`` (its registers are saved in ``p.regs``)."""
    number = p.regs[17] & 0xFFFFFFFF
    handler = SYSCALLS.get(number)
    if handler is None:
        return -ENOSYS
    args = [r & 0xFFFFFFFF for r in p.regs[10:16]]
    return await handler(k, p, *args)
