"""System calls with Linux RV32 numbers (DESIGN.md §4), so that a binary of
the guest SDK behaves as under ``qemu-riscv32``. Numbers, errno, structures
and argument checks come from :mod:`protocol.linux_abi`, which the standalone
runner (``hwemu cpu run``) uses too; this module adds what needs the cluster
(user memory through the memory controller, blocking, the console).

a7 = number, a0..a5 = arguments, the result in a0 (``-errno`` on failure).
A user pointer is checked page by page against the process's mapped
regions: a bad one is ``-EFAULT``, never the kernel's problem.

A handler returns the value for a0, or ``None`` when the call has already
decided what happens to the process (it blocked, or it exited). The kernel
serves :data:`SYSCALLS` together with the file and socket calls of
:mod:`nodes.guest_os.io` (:data:`nodes.guest_os.kernel.SYSCALLS`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Awaitable, Callable

from protocol import linux_abi as abi

if TYPE_CHECKING:  # pragma: no cover
    from nodes.guest_os.kernel import Kernel, Process


async def sys_write(k: "Kernel", p: "Process", fd: int, buf: int, count: int, *_: int) -> int | None:
    error, count = abi.check_write(fd, count)
    if error:
        return error
    if count == 0:
        return 0
    data = await k.copy_from_user(p, buf, count)
    if data is None:
        return -abi.EFAULT
    await k.hw.console.write(data)
    return count


async def sys_read(k: "Kernel", p: "Process", fd: int, buf: int, count: int, *_: int) -> int | None:
    error, count = abi.check_read(fd, count)
    if error:
        return error
    if k.user_pieces(p, buf, count, "w") is None:
        return -abi.EFAULT
    if count == 0:
        return 0
    if p.stdin is not None:  # its own input, then EOF
        n = min(count, len(p.stdin))
        if n and not await k.copy_to_user(p, buf, bytes(p.stdin[:n])):
            return -abi.EFAULT
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
        return -abi.EFAULT
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
    addr = abi.brk(addr, p.brk_start, p.brk)
    if addr == p.brk:
        return addr
    new_end = (addr + abi.PAGE_SIZE - 1) >> 12
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


async def sys_clock_gettime64(k: "Kernel", p: "Process", clock: int, ts: int, *_: int) -> int:
    # CLOCK_REALTIME is the timer device's wall clock, followed on its ticks
    value = abi.clock_gettime(clock, k.wall_offset_ns)
    if isinstance(value, int):
        return value
    return 0 if await k.copy_to_user(p, ts, value) else -abi.EFAULT


async def sys_clock_nanosleep64(k: "Kernel", p: "Process", clock: int, flags: int, req: int, rem: int,
                                *_: int) -> int | None:
    raw = await k.copy_from_user(p, req, abi.TIMESPEC64_SIZE)
    if raw is None:
        return -abi.EFAULT
    delay = abi.nanosleep_delay(clock, flags, raw, k.wall_offset_ns)
    if delay <= 0:
        return delay  # 0: the time has come; or -EINVAL
    k.block(p, ("sleep", time.monotonic_ns() + delay))
    return None


SYSCALLS: dict[int, Callable[..., Awaitable[int | None]]] = {
    abi.SYS_READ: sys_read,
    abi.SYS_WRITE: sys_write,
    abi.SYS_EXIT: sys_exit,
    abi.SYS_EXIT_GROUP: sys_exit,
    abi.SYS_GETPID: sys_getpid,
    abi.SYS_BRK: sys_brk,
    abi.SYS_CLOCK_GETTIME64: sys_clock_gettime64,
    abi.SYS_CLOCK_NANOSLEEP64: sys_clock_nanosleep64,
}

