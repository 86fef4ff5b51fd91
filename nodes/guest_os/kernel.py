"""The kernel proper: processes, address spaces, the scheduler and trap
handling (DESIGN.md §4). No I/O of its own: it reaches the hardware through a
:class:`Hardware` object (the OS node in a cluster, a fake in unit tests):

- ``mem_read(addr, n)`` / ``mem_write(addr, data)``: uncached accesses to
  guest-physical memory (gpn * 4096 + offset) through the memory controller;
- ``priv(kind, body)``: a privileged operation for the CPU (``cpu_resume``,
  ``tlb_write``, ``tlb_flush``, ``cpu_preempt``, ``cpu_halt``), in order;
- ``console``: the dual-mode UART driver (``write``, ``sync``);
- ``process_exited(proc)``: tell whoever asked for the process (after its
  console output has reached the UART).

Every kernel method runs in the node's single kernel task, one event at a
time, so the kernel needs no locks.

Processes: an asid each, a page table vpn -> (gpn, perms) filled with the
ELF segments at load and lazily (zero pages) for the heap (brk) and the stack,
the Linux initial stack for argv. exec installs the TLB entries of the pages it
loaded (one trap round trip fewer per page); other TLB misses install the page table's entry
with ``tlb_write``; a miss outside every mapped region, an access the page
does not allow, an illegal instruction or an ebreak kills the process (exit
status 128 + signal) and only it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from nodes.elf import ElfError, load_elf
from nodes.guest_os import syscalls
from nodes.guest_os.module import FrameAllocator, OutOfMemory
from nodes.recorder import Recorder
from protocol import linux_abi as abi
from protocol.riscv import ECALL_U, INTERRUPT, M32, PAGE_FAULT_ACCESS

log = logging.getLogger("hwemu.os")

PAGE = abi.PAGE_SIZE
STACK_TOP = abi.STACK_TOP
STACK_PAGES = abi.STACK_SIZE // PAGE  # allocated on first touch
SIGKILL = abi.SIGKILL
CLOCK_STEP_NS = 128_000_000  # ntpd\'s step threshold: a smaller difference is tick latency, not the clock

READY, RUNNING, BLOCKED, EXITED = "ready", "running", "blocked", "exited"


class Console(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def sync(self, timeout: float = 10.0) -> int: ...


class Hardware(Protocol):
    console: Console

    async def mem_read(self, addr: int, length: int) -> bytes: ...

    async def mem_write(self, addr: int, data: bytes) -> None: ...

    async def mem_batch(self, ops: list[list[Any]]) -> list[bytes]: ...

    async def priv(self, kind: str, body: dict[str, Any]) -> None: ...

    def process_exited(self, proc: "Process") -> None: ...


@dataclass
class Process:
    pid: int
    asid: int
    name: str
    argv: list[str]
    entry: int
    regs: list[int] = field(default_factory=lambda: [0] * 32)
    pc: int = 0
    state: str = READY
    pages: dict[int, tuple[int, str]] = field(default_factory=dict)  # vpn -> (gpn, perms)
    segments: dict[int, str] = field(default_factory=dict)  # vpn -> perms of ELF segment pages
    brk_start: int = 0
    brk: int = 0
    heap_end: int = 0  # first vpn past the heap
    stack_lo: int = (STACK_TOP >> 12) - STACK_PAGES
    stack_hi: int = STACK_TOP >> 12
    wait: tuple | None = None  # ("read", buf, count) | ("sleep", deadline_ns)
    stdin: bytearray | None = None  # fd 0 from these bytes then EOF; None: from the console
    kill_pending: tuple[int, str] | None = None  # (status, why): dies at its next trap
    owner: str | None = None  # who asked for it (os_exec src)
    notify: bool = False
    ref: Any = None  # the node's handle for the requester (e.g. the os_exec message)
    code: int | None = None
    reason: str | None = None
    started: float = field(default_factory=time.monotonic)
    traps: int = 0
    syscalls: int = 0
    instret: int = 0

    def region_perms(self, vpn: int) -> str | None:
        """The rights of virtual page ``vpn``, or None if it is not part of the process."""
        perms = self.segments.get(vpn)
        if perms is not None:
            return perms
        if self.brk_start >> 12 <= vpn < self.heap_end or self.stack_lo <= vpn < self.stack_hi:
            return "rw"
        return None

    def view(self) -> dict[str, Any]:
        return {"pid": self.pid, "asid": self.asid, "name": self.name, "argv": self.argv,
                "state": self.state, "pages": len(self.pages), "pc": self.pc,
                "wait": self.wait[0] if self.wait else None, "syscalls": self.syscalls,
                "traps": self.traps, "instret": self.instret, "owner": self.owner}


class KernelError(Exception):
    """A request the kernel refuses (bad ELF, out of memory ...): reason + message."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Kernel:
    """Process table, scheduler, trap handling. See the module docstring."""

    def __init__(self, name: str, frames: FrameAllocator, hw: Hardware):
        self.name = name
        self.space = name
        self.frames = frames
        self.hw = hw
        self.procs: dict[int, Process] = {}
        self.current: Process | None = None
        self.runq: deque[Process] = deque()
        self.readers: deque[Process] = deque()
        self.sleepers: list[Process] = []
        self.rx = bytearray()
        self.next_pid = 1
        self.next_asid = 1
        self.ticks = 0
        self.wall_offset_ns = 0  # CLOCK_REALTIME minus the host's: the timer's clock, stepped as NTP steps
        self.counters = {"traps": 0, "syscalls": 0, "tlb_misses": 0, "preempts": 0, "switches": 0,
                         "exits": 0, "kills": 0, "stray_traps": 0, "machine_checks": 0}
        self.recorder = Recorder(name)  # the node's own, once the node is built (syscalls, when tracing)

    # ---------------------------------------------------------------- helpers

    def console_line(self, text: str) -> bytes:
        return f"[{self.name}] {text}\n".encode()

    async def _zero_page(self, gpn: int) -> None:
        await self.hw.mem_write(gpn * PAGE, bytes(PAGE))

    async def _alloc_zero(self, proc: Process, vpn: int) -> int:
        gpn = self.frames.alloc()
        await self._zero_page(gpn)
        proc.pages[vpn] = (gpn, proc.region_perms(vpn) or "rw")
        return gpn

    # ------------------------------------------------------------------ exec

    async def exec(self, elf: bytes, argv: list[str], owner: str | None = None,
                   notify: bool = False, ref: Any = None, name: str | None = None,
                   stdin: bytes | None = None) -> Process:
        """Load an ELF into a new process and make it runnable.

        Raises:
            KernelError: bad ELF (``bad_elf``) or not enough frames (``out_of_memory``).
        """
        try:
            program = load_elf(elf)
        except ElfError as exc:
            what = name or (argv[0] if argv else "program")
            raise KernelError("bad_elf", str(exc).replace("<bytes>", what, 1)) from None
        argv = list(argv) or [name or "a.out"]
        perms, images, brk_start, sp = abi.layout(program.segments, argv)
        if len(images) > self.frames.free_count:
            raise KernelError("out_of_memory", f"{len(images)} frames needed, {self.frames.free_count} free")
        pid = self.next_pid
        self.next_pid += 1
        asid = self.next_asid
        self.next_asid = self.next_asid % 0xFFFF + 1
        proc = Process(pid=pid, asid=asid, name=name or argv[0].rsplit("/", 1)[-1], argv=argv,
                       entry=program.entry, owner=owner, notify=notify, ref=ref)
        proc.segments = perms
        proc.stdin = bytearray(stdin) if stdin is not None else None
        proc.brk_start = proc.brk = brk_start
        proc.heap_end = brk_start >> 12
        proc.pc = program.entry
        proc.regs[2] = sp
        try:
            for vpn in sorted(images):
                proc.pages[vpn] = (self.frames.alloc(), proc.region_perms(vpn) or "rw")
            # write the images, one request per run of consecutive frames
            run: list[tuple[int, bytearray]] = []
            for vpn in sorted(images, key=lambda v: proc.pages[v][0]):
                gpn = proc.pages[vpn][0]
                if run and run[-1][0] + 1 != gpn:
                    await self._write_run(run)
                    run = []
                run.append((gpn, images[vpn]))
            if run:
                await self._write_run(run)
        except BaseException:
            for gpn, _ in proc.pages.values():
                self.frames.free(gpn)
            raise
        await self.hw.priv("tlb_flush", {"asid": asid})  # an asid used before may have stale entries
        await self._prefill_tlb(proc)
        self.procs[pid] = proc
        self.runq.append(proc)
        await self.dispatch()
        return proc

    async def _prefill_tlb(self, proc: Process) -> None:
        """Install the TLB entries of the pages exec loaded (the ELF segments
        and the initial stack) before the first resume.

        The kernel knows them already: without this, each one costs a
        TLB-miss trap round trip (CPU -> OS -> CPU) on first touch. Privileged
        operations are one-way and ordered, so they all reach the CPU before
        its ``cpu_resume``. Pages touched later (heap, deeper stack) still
        fault in lazily.
        """
        for vpn, (gpn, perms) in sorted(proc.pages.items()):
            await self.hw.priv("tlb_write", {"asid": proc.asid, "vpn": vpn, "ppn": gpn, "perms": perms})

    async def _write_run(self, run: list[tuple[int, bytearray]]) -> None:
        # bounded messages: at most 64 pages per write
        for i in range(0, len(run), 64):
            part = run[i:i + 64]
            await self.hw.mem_write(part[0][0] * PAGE, b"".join(bytes(img) for _, img in part))

    # -------------------------------------------------------------- scheduler

    async def dispatch(self) -> None:
        """If the CPU is idle, run the next ready process."""
        while self.current is None and self.runq:
            proc = self.runq.popleft()
            if proc.state != READY:
                continue
            await self._run(proc)

    async def _run(self, proc: Process) -> None:
        proc.state = RUNNING
        self.current = proc
        self.counters["switches"] += 1
        await self.resume(proc)

    async def resume(self, proc: Process) -> None:
        await self.hw.priv("cpu_resume", {"regs": [r & M32 for r in proc.regs], "pc": proc.pc & M32,
                                          "asid": proc.asid, "space": self.space})

    def make_ready(self, proc: Process) -> None:
        proc.wait = None
        proc.state = READY
        self.runq.append(proc)

    def block(self, proc: Process, wait: tuple) -> None:
        """Take the current process off the CPU until ``wait`` is satisfied."""
        proc.state = BLOCKED
        proc.wait = wait
        if self.current is proc:
            self.current = None
        if wait[0] == "read":
            self.readers.append(proc)
        elif wait[0] == "sleep":
            self.sleepers.append(proc)

    async def tick(self, n: int = 0, time_ns: int | None = None) -> None:
        """A timer interrupt: follow the timer's wall clock, wake sleepers, preempt if
        someone else is waiting."""
        self.ticks += 1
        if isinstance(time_ns, int):
            # the interrupt's own latency (sub-ms to a few ms) is no clock error: like ntpd,
            # follow the device's clock only when it is off by more than the step threshold
            offset = time_ns - time.time_ns()
            if abs(offset - self.wall_offset_ns) > CLOCK_STEP_NS:
                self.wall_offset_ns = offset
        if self.sleepers:
            now = time.monotonic_ns()
            due = [p for p in self.sleepers if p.wait and p.wait[1] <= now]
            for p in due:
                self.sleepers.remove(p)
                p.regs[10] = 0
                self.make_ready(p)
        if self.current is not None and self.runq:
            self.counters["preempts"] += 1
            await self.hw.priv("cpu_preempt", {})
        else:
            await self.dispatch()

    # ------------------------------------------------------------------- traps

    async def trap(self, body: dict[str, Any]) -> None:
        proc = self.current
        self.counters["traps"] += 1
        if proc is None or body.get("asid") != proc.asid:
            # not ours (a trap of a process already killed): nothing to resume
            self.counters["stray_traps"] += 1
            log.warning("%s: stray trap %s (current %s)", self.name, body.get("cause"),
                        proc.pid if proc else None)
            await self.dispatch()
            await self._halt_if_idle()
            return
        proc.traps += 1
        proc.regs = list(body["regs"])
        proc.pc = body["pc"]
        proc.instret = body.get("instret", proc.instret)
        cause = body["cause"]
        if proc.kill_pending is not None:
            await self.kill(proc, *proc.kill_pending)
        elif cause == ECALL_U:
            self.counters["syscalls"] += 1
            proc.syscalls += 1
            proc.pc = (proc.pc + 4) & M32
            if self.recorder.on:
                self.recorder("syscall", "enter", nr=proc.regs[17] & M32, pid=proc.pid)
            result = await syscalls.syscall(self, proc)
            if self.recorder.on:
                self.recorder("syscall", "exit", nr=proc.regs[17] & M32, pid=proc.pid, result=result)
            if result is not None:
                proc.regs[10] = result & M32
        elif cause & INTERRUPT:
            if self.runq:
                proc.state = READY
                self.current = None
                self.runq.append(proc)
        elif cause in PAGE_FAULT_ACCESS:
            await self.page_fault(proc, cause, body["tval"])
        else:
            await self.fault(proc, cause, body["tval"])
        if self.current is proc and proc.state == RUNNING:
            await self.resume(proc)
        else:
            await self.dispatch()
            await self._halt_if_idle()

    async def _halt_if_idle(self) -> None:
        # the CPU trapped to us and nothing is left to run: say so (cpu_halt), so
        # that a VMM knows this instance is idle and can give the CPU to another
        if self.current is None:
            await self.hw.priv("cpu_halt", {})

    async def page_fault(self, proc: Process, cause: int, vaddr: int) -> None:
        self.counters["tlb_misses"] += 1
        vpn = (vaddr & M32) >> 12
        perms = proc.region_perms(vpn)
        if perms is None or PAGE_FAULT_ACCESS[cause] not in perms:
            await self.fault(proc, cause, vaddr)
            return
        entry = proc.pages.get(vpn)
        if entry is None:
            try:
                await self._alloc_zero(proc, vpn)
            except OutOfMemory:
                await self.kill(proc, 128 + SIGKILL, f"out of memory at {vaddr:#010x} pc={proc.pc:#010x}")
                return
            entry = proc.pages[vpn]
        await self.hw.priv("tlb_write", {"asid": proc.asid, "vpn": vpn, "ppn": entry[0], "perms": entry[1]})

    async def fault(self, proc: Process, cause: int, tval: int) -> None:
        report, signal = abi.fault_report(cause, tval, proc.pc)
        await self.kill(proc, 128 + signal, report)

    async def kill_request(self, pid: int, signal: int = SIGKILL, by: str | None = None) -> None:
        """Kill a process from outside (``os_kill``): at once if it is off the
        CPU, else at its next trap (a preemption is requested)."""
        proc = self.procs.get(pid)
        if proc is None or proc.state == EXITED:
            raise KernelError("no_such_process", f"no process {pid} on {self.name}")
        why = f"signal {signal}" + (f" from {by}" if by else "")
        if proc is self.current:
            proc.kill_pending = (128 + signal, why)
            await self.hw.priv("cpu_preempt", {})
        else:
            await self.kill(proc, 128 + signal, why)
            await self.dispatch()

    async def kill(self, proc: Process, code: int, why: str) -> None:
        self.counters["kills"] += 1
        await self.hw.console.write(self.console_line(f"pid {proc.pid} ({proc.name}) killed: {why}"))
        await self.exit(proc, code, f"killed: {why}")

    async def exit(self, proc: Process, code: int, reason: str = "exit") -> None:
        """The process is gone: free its frames and TLB entries, tell its owner."""
        if proc.state == EXITED:
            return
        self.counters["exits"] += 1
        if self.current is proc:
            self.current = None
        if proc in self.runq:
            self.runq.remove(proc)
        if proc in self.readers:
            self.readers.remove(proc)
        if proc in self.sleepers:
            self.sleepers.remove(proc)
        proc.state = EXITED
        proc.code = code
        proc.reason = reason
        proc.wait = None
        for gpn, _ in proc.pages.values():
            self.frames.free(gpn)
        proc.pages.clear()
        await self.hw.priv("tlb_flush", {"asid": proc.asid})
        self.procs.pop(proc.pid, None)
        self.hw.process_exited(proc)

    async def machine_check(self, cpu: str, lost: set[int]) -> list[int]:
        """The CPU died (its process was killed and restarted): what only it held is gone.

        The process that was on it lost its registers; every process with a page
        in ``lost`` (guest pages whose newest bytes were in the dead CPU's cache)
        lost memory. Each dies with 128 + SIGBUS, as Linux kills a process on an
        uncorrectable memory error, rather than run on state that went back in
        time. The others go on, on the new CPU. Returns the pids killed.
        """
        victims = []
        for proc in sorted(self.procs.values(), key=lambda p: p.pid):
            pages = sum(1 for gpn, _ in proc.pages.values() if gpn in lost)
            if proc is self.current:
                why = f"its registers{f' and {pages} modified page(s)' if pages else ''} were in the CPU"
            elif pages:
                why = f"{pages} modified page(s) of it were in the CPU's cache"
            else:
                continue
            victims.append((proc, why))
        for proc, why in victims:
            self.counters["machine_checks"] += 1
            await self.kill(proc, 128 + abi.SIGBUS, f"machine check: {cpu} failed and was restarted; {why}")
        self.current = None  # nothing runs on the new CPU until the kernel resumes something
        await self.dispatch()
        return [p.pid for p, _ in victims]

    async def cpu_returned(self, cpu: dict[str, Any]) -> str:
        """The VMM died holding the CPU for this OS (emergency devirtualization);
        ``cpu`` is the CPU's context now (``cpu_save``). Settle it without running
        an instruction twice or a system call twice:

        - a trapped CPU whose trap this kernel handled (same asid, same
          instruction count as the last trap of the current process): the
          resume was lost with the VMM; send it again (``"resumed"``);
        - a trapped CPU whose trap this kernel never saw: ``"retrap"`` (the
          orchestrator has the CPU raise it again);
        - a halted CPU while a process is current: its resume was lost
          (``"resumed"``); with none current, the next ready one runs.
        """
        proc, state = self.current, cpu.get("cpu_state")
        if proc is not None and proc.state == RUNNING:
            handled = cpu.get("asid") == proc.asid and cpu.get("instret") == proc.instret
            if state == "halted" or (state == "trapped" and handled):
                await self.resume(proc)
                return "resumed"
        if state == "trapped":
            return "retrap"
        await self.dispatch()
        return "dispatched" if self.current is not None else state or "unknown"

    # --------------------------------------------------------------- devices

    async def uart_rx(self, data: bytes) -> None:
        self.rx += data
        while self.readers and self.rx:
            proc = self.readers.popleft()
            await syscalls.complete_read(self, proc)
        await self.dispatch()

    # ----------------------------------------------------------- user memory

    def user_pieces(self, proc: Process, addr: int, size: int, perm: str) -> list[tuple[int, int, int]] | None:
        """(vpn, offset, n) pieces of a user buffer, or None if any byte is
        outside the process or lacks ``perm``."""
        return abi.user_pieces(addr, size, perm, proc.region_perms)

    async def copy_from_user(self, proc: Process, addr: int, size: int) -> bytes | None:
        pieces = self.user_pieces(proc, addr, size, "r")
        if pieces is None:
            return None
        out = bytearray()
        run_start = run_len = None
        for vpn, off, n in pieces:
            entry = proc.pages.get(vpn)
            if entry is None:  # never touched: reads as zeros
                if run_start is not None:
                    out += await self.hw.mem_read(run_start, run_len)
                    run_start = None
                out += bytes(n)
                continue
            ga = entry[0] * PAGE + off
            if run_start is not None and run_start + run_len == ga:
                run_len += n
                continue
            if run_start is not None:
                out += await self.hw.mem_read(run_start, run_len)
            run_start, run_len = ga, n
        if run_start is not None:
            out += await self.hw.mem_read(run_start, run_len)
        return bytes(out)

    async def copy_to_user(self, proc: Process, addr: int, data: bytes) -> bool:
        """``data`` into the process at ``addr`` (every page in one memory request)."""
        return await self.copy_to_user_many(proc, [(addr, data)])

    async def copy_from_user_many(self, proc: Process, ranges: list[tuple[int, int]]) -> list[bytes] | None:
        """Several user buffers ((addr, size) each) read in one memory request, as
        a syscall that takes an address and a buffer needs them; None if any byte
        of any is outside the process or not readable (then nothing was read)."""
        ops: list[list[int]] = []
        layouts = []  # per range: its parts, an int (that many zero bytes: never touched) or [op index]
        for addr, size in ranges:
            pieces = self.user_pieces(proc, addr, size, "r")
            if pieces is None:
                return None
            parts: list[Any] = []
            for vpn, off, n in pieces:
                entry = proc.pages.get(vpn)
                if entry is None:
                    parts.append(n)
                    continue
                ga = entry[0] * PAGE + off
                if parts and isinstance(parts[-1], list) and sum(ops[parts[-1][0]]) == ga:
                    ops[parts[-1][0]][1] += n  # the next page is the next frame: one run
                else:
                    ops.append([ga, n])
                    parts.append([len(ops) - 1])
            layouts.append(parts)
        got = await self.hw.mem_batch(ops) if ops else []
        return [b"".join(bytes(part) if isinstance(part, int) else got[part[0]] for part in parts)
                for parts in layouts]

    async def copy_to_user_many(self, proc: Process, writes: list[tuple[int, bytes]]) -> bool:
        """Several user buffers ((addr, data) each) written in one memory request,
        in order (a syscall's result, the source address, its length); False if
        any byte of any is outside the process or not writable (then nothing was
        written), or a page could not be allocated."""
        checked = []
        for addr, data in writes:
            pieces = self.user_pieces(proc, addr, len(data), "w")
            if pieces is None:
                return False
            checked.append((pieces, data))
        ops = []
        for pieces, data in checked:
            pos = 0
            for vpn, off, n in pieces:
                entry = proc.pages.get(vpn)
                if entry is None:
                    try:
                        await self._alloc_zero(proc, vpn)
                    except OutOfMemory:
                        return False
                    entry = proc.pages[vpn]
                ops.append([entry[0] * PAGE + off, bytes(data[pos:pos + n])])
                pos += n
        if ops:
            await self.hw.mem_batch(ops)
        return True

    def ps(self) -> list[dict[str, Any]]:
        return [p.view() for p in sorted(self.procs.values(), key=lambda p: p.pid)]

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "procs": len(self.procs), "ready": len(self.runq),
                "current": self.current.pid if self.current else None, "ticks": self.ticks,
                "free_frames": self.frames.free_count, "owned_frames": len(self.frames.owned),
                "pinned_frames": len(self.frames.pinned)}


# ======================================================================= node

import math  # noqa: E402
from itertools import filterfalse  # noqa: E402

import trio  # noqa: E402

import protocol.hw  # noqa: E402  (registers the message kinds)
import protocol.recovery  # noqa: E402  (registers peer_restarted)
import protocol.vmm  # noqa: E402,F401  (mem_pin)
from nodes.guest_os.drivers import TimerDriver, UartDriver  # noqa: E402
from nodes.guest_os.io import Io  # noqa: E402  (disk + NIC drivers, file/socket syscalls)
from nodes.guest_os.module import BelowFloor, FrameError, KernelModule  # noqa: E402
from nodes.runtime import Node, NodeConfig  # noqa: E402
from protocol.errors import ProtocolError, RemoteError, RequestTimeout  # noqa: E402
from protocol.frames import body_frames, to_runs  # noqa: E402
from protocol.messages import Message  # noqa: E402

TICK_SILENCE = 100  # periods without a tick before the timer driver programs the timer again
TICK_SILENCE_MIN_S = 2.0
MEM_TRY_S = 3.0  # s for one memory request before it is asked again
MEM_DEADLINE_S = 60.0  # s before a memory request fails (the process that needed it dies)


def _memory_option(value: Any) -> tuple[int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise ValueError(f"option 'memory': expected [first_frame, count], got {value!r}")
    return value[0], value[1]


def _boot_frames_option(value: Any) -> list[int] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(set(value)) != len(value)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise ValueError(f"option 'boot_frames': expected a list of distinct frame numbers, got {value!r}")
    return value


class OsNode(Node):
    """An OS instance (``kind = "os"``). Options: ``memory`` = [first_frame,
    count] (its partition), ``boot_frames`` (the firmware's boot memory map
    as a frame list, replacing ``memory``: an instance booted on borrowed
    frames, ¶49), ``lend_floor`` (frames its kernel module always keeps
    free, ¶39; default 0), ``cpu``, ``memctl``, ``uart``, ``timer`` (device
    node names), ``tick_ms`` (default 10).

    Messages: ``os_exec`` {elf, argv, notify} -> ok {data: {pid}} (bad ELF:
    ``error`` bad_elf); ``proc_exit`` {pid, code, reason} to the requester if
    ``notify``; ``os_ps`` -> ok {data: {procs}}; ``mod_alloc_pin`` {n, min},
    ``mod_add`` {runs}, ``mod_give_back`` {runs} -> ok {data: {runs,
    free}} (frames as runs, protocol/frames.py, or a ``frames`` list;
    plus ``lend_floor`` for ``mod_alloc_pin``; a refusal below the
    floor: ``error`` below_floor); ``os_driver_mode`` {device, mode} -> ok {data: state}. Takes
    ``trap`` (trap:<cpu>), ``tick``/``alarm`` (irq:<timer>), ``uart_rx``
    (irq:<uart>), ``disk_done`` (irq:<disk>), ``nic_done``/``nic_rx``
    (irq:<nic>); sends privileged operations on ``priv:<name>``, console
    output on ``io:<name>.uart``, ``timer_set`` on ``io:<name>.timer``, disk
    and NIC commands on ``io:<name>.disk`` / ``io:<name>.nic`` (drivers and
    the file/socket syscalls: :mod:`nodes.guest_os.io`; ``os_driver_mode``
    takes device uart, timer, disk or nic).
    """

    kind = "os"

    def __init__(self, cfg: NodeConfig):
        super().__init__(cfg)
        opts = cfg.options
        first, count = _memory_option(opts.get("memory", [0, 0]))
        boot_frames = _boot_frames_option(opts.get("boot_frames"))
        self.cpu_name = opts.get("cpu", "cpu0")
        self.memctl_name = opts.get("memctl", "memctl")
        self.uart_name = opts.get("uart", "uart0")
        self.timer_name = opts.get("timer", "timer0")
        tick = opts.get("tick_ms", 10)
        if isinstance(tick, bool) or not isinstance(tick, (int, float)) or not math.isfinite(tick) or tick <= 0:
            raise ValueError(f"option 'tick_ms': expected a positive number, got {tick!r}")
        self.tick_ms = float(tick)
        self.priv_flow = f"priv:{self.name}"
        self.mem_flow = f"mem:{self.name}"
        self.frames = FrameAllocator(first, count, boot_frames)
        self.module = KernelModule(self.frames, opts.get("lend_floor", 0))
        self.console = UartDriver(self, self.name, writer=f"{self.name}:{self.party.incarnation}")
        self.timer = TimerDriver(self, self.name)
        self.kernel = Kernel(self.name, self.frames, self)
        self.kernel.recorder = self.recorder
        self.io = Io(self)
        self._events_in, self._events = trio.open_memory_channel(math.inf)
        self.exited: deque[dict[str, Any]] = deque(maxlen=64)
        self.mem_ops = 0
        self.mem_retries = 0
        self.peer_incarnations: dict[str, int] = {}  # node -> the incarnation whose restart was handled
        self.resets: dict[str, int] = {}  # node -> restarts of it this OS reset its driver for
        self.last_tick = time.monotonic()
        self.timer_rearms = 0

    async def emit_request(self, flow: str, kind: str, body: dict[str, Any], *, timeout: float = 5.0) -> Message:
        """A request on a flow, but never past messages a route change holds
        back: it would overtake them (and they would arrive as duplicates)."""
        out = self.out_flows.get(flow)
        while out is not None and (out.paused or out.flushing):
            await out.resumed.wait()
        return await super().emit_request(flow, kind, body, timeout=timeout)

    # -- Hardware interface for the kernel ------------------------------------------

    async def _mem(self, kind: str, body: dict[str, Any]) -> Message:
        """One memory request, asked again while the memory controller is away
        (a request lost with a controller that died, or refused ``recovering``
        while a restarted one rebuilds its directory): a guest sees a delay,
        not a killed process. Safe to repeat: a read reads again, a write
        writes the same bytes again, a pin pins what is pinned; the kernel
        task issues one at a time, so a repeat never overtakes a later one."""
        self.mem_ops += 1
        deadline = trio.current_time() + MEM_DEADLINE_S
        while True:
            try:
                if self.routes.get(self.mem_flow) is not None:
                    return await self.emit_request(self.mem_flow, kind, body, timeout=MEM_TRY_S)
                return await self.party.request(self.memctl_name, kind, body, timeout=MEM_TRY_S)
            except RequestTimeout:
                if trio.current_time() >= deadline:
                    raise
            except RemoteError as exc:
                if exc.reason != "recovering" or trio.current_time() >= deadline:
                    raise
                await trio.sleep(0.05)
            self.mem_retries += 1

    async def mem_read(self, addr: int, length: int) -> bytes:
        reply = await self._mem("mem_read", {"space": self.name, "addr": addr, "length": length})
        return reply.body["data"]

    async def mem_write(self, addr: int, data: bytes) -> None:
        await self._mem("mem_write", {"space": self.name, "addr": addr, "data": bytes(data)})

    async def mem_batch(self, ops: list[list[Any]]) -> list[bytes]:
        reply = await self._mem("mem_batch", {"space": self.name, "ops": ops})
        return reply.body["data"]["reads"]

    async def priv(self, kind: str, body: dict[str, Any]) -> None:
        await self.emit(self.priv_flow, kind, body)

    def process_exited(self, proc: Process) -> None:
        self.exited.append({"pid": proc.pid, "name": proc.name, "code": proc.code, "reason": proc.reason})
        if proc.notify and proc.owner:
            self.nursery.start_soon(self._notify_exit, proc)
        self.nursery.start_soon(self.io.process_gone, proc.pid)

    async def _notify_exit(self, proc: Process) -> None:
        try:
            await self.console.sync()  # its output is in the console log before anyone hears of the exit
        except Exception as exc:  # still tell the owner
            log.warning("%s: console sync before proc_exit failed: %s", self.name, exc)
        try:
            await self.party.send(proc.owner, "proc_exit",
                                  {"pid": proc.pid, "code": proc.code, "reason": proc.reason or "exit"})
        except ProtocolError as exc:
            log.warning("%s: cannot tell %s that pid %d exited: %s", self.name, proc.owner, proc.pid, exc)

    # -- life cycle --------------------------------------------------------------------

    async def work(self, nursery: trio.Nursery) -> None:
        await self.io.boot()  # before the kernel hands out frames (nodes/guest_os/io.py)
        nursery.start_soon(self._kernel_loop)
        if self.routes.get(self.timer.flow) is not None:
            await self.timer.set_period(self.tick_ms)
            nursery.start_soon(self._tick_watchdog)

    async def _tick_watchdog(self) -> None:
        """The driver's own way to notice a timer that came back from a reset
        without its period (if no restart notice reached it): no tick for
        TICK_SILENCE periods (and at least TICK_SILENCE_MIN_S), and the period
        is programmed again. Harmless if the ticks were only late."""
        while True:
            silence = max(TICK_SILENCE_MIN_S, TICK_SILENCE * self.timer.period_ms / 1000)
            await trio.sleep(silence / 2)
            if self.timer.period_ms > 0 and time.monotonic() - self.last_tick > silence:
                self.timer_rearms += 1
                log.warning("%s: no tick for %.1f s: programming the timer again", self.name, silence)
                await self.timer.after_switch()
                self.last_tick = time.monotonic()

    async def _kernel_loop(self) -> None:
        async for event in self._events:
            kind, payload = event
            try:
                await self._handle(kind, payload)
            except Exception as exc:  # one bad event must not stop the kernel
                log.exception("%s: kernel failed on %s", self.name, kind)
                if kind == "trap":
                    await self._abandon_current(exc)
                elif isinstance(payload, Message) and payload.src in self.party.directory and kind != "uart_rx":
                    await self.party.reply(payload, "error", {"reason": "kernel_error", "detail": str(exc)})

    async def _abandon_current(self, exc: Exception) -> None:
        """A trap the kernel could not serve (memory controller down ...): the
        CPU waits for a resume that will not come, so that process dies, not
        the machine."""
        k = self.kernel
        proc = k.current
        if proc is None:
            return
        try:
            await k.kill(proc, 128 + SIGKILL, f"kernel could not serve its trap ({exc}) pc={proc.pc & M32:#010x}")
            await k.dispatch()
        except Exception:
            log.exception("%s: could not even kill pid %d", self.name, proc.pid)
            if k.current is proc:
                k.current = None

    async def _handle(self, kind: str, payload: Any) -> None:
        k = self.kernel
        if kind == "trap":
            await k.trap(payload.body)
        elif kind == "tick":
            await k.tick(time_ns=payload.body.get("time_ns"))
        elif kind == "uart_rx":
            await k.uart_rx(payload.body["data"])
        elif kind == "io_done":
            await self.io.io_done(k, payload)
        elif kind == "nic_rx":
            await self.io.nic_rx(k, payload.body)
        elif kind == "os_exec":
            msg = payload
            try:
                proc = await k.exec(msg.body["elf"], msg.body["argv"], owner=msg.src,
                                    notify=bool(msg.body.get("notify")), ref=None, name=msg.body.get("name"),
                                    stdin=msg.body.get("stdin"))
            except KernelError as exc:
                await self.party.reply(msg, "error", {"reason": exc.reason, "detail": exc.detail, "ref": "os_exec"})
                return
            await self.party.reply(msg, "ok", {"data": {"pid": proc.pid}})
        elif kind == "peer_restarted":
            await self._peer_restarted(payload)
        elif kind.startswith("mod_"):
            await self._module_request(kind, payload)
        elif kind == "os_kill":
            msg = payload
            signal = msg.body.get("signal", SIGKILL)
            if not isinstance(signal, int) or not 1 <= signal <= 64:
                raise ProtocolError("bad_field", f"expected a signal number 1..64, got {signal!r}", "body.signal")
            try:
                await k.kill_request(msg.body["pid"], signal, by=msg.src)
            except KernelError as exc:
                await self.party.reply(msg, "error", {"reason": exc.reason, "detail": exc.detail, "ref": "os_kill"})
                return
            await self.party.reply(msg, "ok", {"data": {"pid": msg.body["pid"]}})
        elif kind == "os_driver_mode":
            msg = payload
            driver = {"uart": self.console, "timer": self.timer, "disk": self.io.disk,
                      "nic": self.io.nic}.get(msg.body.get("device"))
            if driver is None:
                raise ProtocolError("bad_field", f"no driver {msg.body.get('device')!r} (uart, timer, disk, nic)",
                                    "body.device")
            state = await driver.set_mode(msg.body.get("mode"))
            await self.party.reply(msg, "ok", {"data": state})

    async def _peer_restarted(self, msg: Message) -> None:
        """A node came back as a new incarnation (docs/recovery.md); in the kernel
        task, so it is ordered with the traps and interrupts around it.

        Our CPU: the machine check (before the new CPU runs anything). A device
        of ours: its driver resets it, as an OS resets a device after a reset:
        the timer gets its period again, the NIC our receive buffers and bound
        ports, the disk our commands in flight (re-issued at once)."""
        b = msg.body
        node, inc = b["node"], b.get("incarnation")
        if inc is not None and inc <= self.peer_incarnations.get(node, 0):
            await self.party.reply(msg, "ok", {"data": {"node": node, "done": "already"}})
            return  # an old or repeated notice: that incarnation was reset already
        if inc is not None:
            self.peer_incarnations[node] = inc
        done: dict[str, Any] = {"node": node}
        if node == self.cpu_name and b["kind"] == "cpu":
            if "lost" not in b:  # the new CPU is up: the machine check was done before it started
                await self.party.reply(msg, "ok", {"data": done})
                return
            lost = set((b.get("lost") or {}).get(self.name, ()))
            done["killed"] = await self.kernel.machine_check(node, lost)
        elif b["kind"] == "vmm" and "cpu" in b:  # the VMM died: the CPU is ours again, natively
            done["cpu"] = await self.kernel.cpu_returned(b["cpu"])
        elif node == self.uart_name and self.routes.get(self.console.native_flow) == node:
            done["console"] = await self.console.reset()
        elif node == self.timer_name and self.routes.get(self.timer.native_flow) == node:
            await self.timer.after_switch()
            done["period_ms"] = self.timer.period_ms
        elif self.routes.get(self.io.nic.native_flow) == node:
            done["nic"] = await self.io.nic.reset()
        elif self.routes.get(self.io.disk.native_flow) == node:
            done["reissued"] = self.io.disk.reissue()
        self.resets[node] = self.resets.get(node, 0) + 1
        log.warning("%s: %s (%s) restarted: %s", self.name, node, b["kind"], done)
        await self.party.reply(msg, "ok", {"data": done})

    async def _module_request(self, kind: str, msg: Message) -> None:
        """The kernel module's messages (DESIGN.md §4-5: FIG. 4, ¶39), frames as runs.

        The module pins with the memory controller itself, once: what
        ``mod_alloc_pin`` allocates, and what ``mod_give_back`` lets go of
        that was free here (frames it allocated are pinned already). Only
        pinned frames may change owner, so nobody else needs to pin them.
        """
        pin: list[int] = []
        try:
            if kind == "mod_alloc_pin":
                frames = pin = self.module.alloc_pin(msg.body["n"], msg.body.get("min"))
            elif kind == "mod_add":
                frames = self.module.add_frames(body_frames(msg.body))
                await self.kernel.dispatch()
            else:
                asked = body_frames(msg.body)
                was_pinned = self.frames.pinned.intersection(asked)
                frames = self.module.give_back(asked)
                pin = list(filterfalse(was_pinned.__contains__, frames))
        except (OutOfMemory, FrameError, ProtocolError) as exc:
            reason = ("below_floor" if isinstance(exc, BelowFloor) else
                      "out_of_memory" if isinstance(exc, OutOfMemory) else
                      exc.reason if isinstance(exc, ProtocolError) else "bad_frames")
            await self.party.reply(msg, "error", {"reason": reason, "detail": str(exc), "ref": kind})
            return
        if pin:
            try:
                await self._mem("mem_pin", {"runs": to_runs(pin)})
            except (RemoteError, RequestTimeout, ProtocolError) as exc:
                # not pinned after all: the frames stay the OS's, as they were
                if kind == "mod_alloc_pin":  # back on the free list
                    self.module.give_back(frames)
                    self.module.add_frames(frames)
                else:  # back in the OS, those the module had pinned pinned again
                    self.module.add_frames(frames)
                    kept = [f for f in frames if f in was_pinned]
                    self.frames.take(kept)
                    self.frames.pinned.update(kept)
                await self.party.reply(msg, "error", {"reason": "pin_failed", "ref": kind,
                                                      "detail": f"the memory controller did not pin them: {exc}"})
                return
        data = {"runs": to_runs(frames), "free": self.frames.free_count}
        if kind == "mod_alloc_pin":  # the caller can say why a grant was partial
            data["lend_floor"] = self.module.lend_floor
        await self.party.reply(msg, "ok", {"data": data})

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update(kernel={**self.kernel.stats(), **self.module.stats()}, uart=self.console.stats(),
                 timer=self.timer.stats(), mem_ops=self.mem_ops, mem_retries=self.mem_retries,
                 procs=self.kernel.ps(), io=self.io.stats(), resets=self.resets, timer_rearms=self.timer_rearms)
        return s

    # -- handlers: everything goes through the one kernel task, in arrival order ------------

    def _queue(self, kind: str, msg: Message) -> None:
        self._events_in.send_nowait((kind, msg))

    async def on_trap(self, msg: Message) -> None:
        self._queue("trap", msg)

    async def on_tick(self, msg: Message) -> None:
        self.last_tick = time.monotonic()
        self._queue("tick", msg)

    async def on_alarm(self, msg: Message) -> None:
        self._queue("tick", msg)

    async def on_uart_rx(self, msg: Message) -> None:
        self._queue("uart_rx", msg)

    async def on_disk_done(self, msg: Message) -> None:
        self.io.disk.complete(msg.body)

    async def on_nic_done(self, msg: Message) -> None:
        self.io.nic.complete(msg.body)

    async def on_nic_rx(self, msg: Message) -> None:
        self._queue("nic_rx", msg)

    async def on_os_exec(self, msg: Message) -> None:
        self._queue("os_exec", msg)

    async def on_mod_alloc_pin(self, msg: Message) -> None:
        self._queue("mod_alloc_pin", msg)

    async def on_mod_add(self, msg: Message) -> None:
        self._queue("mod_add", msg)

    async def on_mod_give_back(self, msg: Message) -> None:
        self._queue("mod_give_back", msg)

    async def on_os_kill(self, msg: Message) -> None:
        self._queue("os_kill", msg)

    async def on_os_driver_mode(self, msg: Message) -> None:
        self._queue("os_driver_mode", msg)

    async def on_peer_restarted(self, msg: Message) -> None:
        self._queue("peer_restarted", msg)

    async def on_os_ps(self, msg: Message) -> None:
        await self.party.reply(msg, "ok", {"data": {"procs": self.kernel.ps(), "exited": list(self.exited),
                                                    "free_frames": self.frames.free_count}})

    async def on_proc_exit(self, msg: Message) -> None:
        """Not ours to handle (someone routed it here); ignore."""
