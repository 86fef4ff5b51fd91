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
from typing import Any, Awaitable, Callable, Mapping, Protocol

from nodes.elf import ElfError, load_elf
from nodes.guest_os import io, syscalls
from nodes.guest_os.module import FrameAllocator, OutOfMemory
from nodes.recorder import Recorder
from protocol import linux_abi as abi
from protocol.constants import PAGE_SIZE as PAGE
from protocol.riscv import ECALL_U, INTERRUPT, M32, PAGE_FAULT_ACCESS

log = logging.getLogger("hwemu.os")

STACK_TOP = abi.STACK_TOP
STACK_PAGES = abi.STACK_SIZE // PAGE  # allocated on first touch
SIGKILL = abi.SIGKILL
CLOCK_STEP_NS = 128_000_000  # ntpd\'s step threshold: a smaller difference is tick latency, not the clock

READY, RUNNING, BLOCKED, EXITED = "ready", "running", "blocked", "exited"

SyscallHandler = Callable[..., Awaitable[int | None]]
# Linux RV32 number -> handler: each module declares its own calls, the kernel serves their union
SYSCALLS: Mapping[int, SyscallHandler] = {**syscalls.SYSCALLS, **io.SYSCALLS}


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
    # the user memory its trap carried ([[addr, bytes], ...], protocol/hw.py ``mem``): good
    # while the kernel serves that trap and has not written into the process
    carried: list | None = None
    # the kernel's writes into it not made yet ([gpn, offset, bytes], in order): they go with
    # its next cpu_resume (protocol/hw.py ``stores``), and stay in ``sent`` until it traps again
    # (a resume lost with a dead VMM is sent again with them: cpu_returned)
    stores: list = field(default_factory=list)
    stores_bytes: int = 0
    sent: list = field(default_factory=list)

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


# the most bytes of writes into a process that wait for its resume; more go through the memory
# controller at once (a large read's result: a resume is not a bulk transfer)
STORES_MAX = 64 * 1024


class KernelError(Exception):
    """A request the kernel refuses (bad ELF, out of memory ...): reason + message."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Kernel:
    """Process table, scheduler, trap handling. See the module docstring."""

    def __init__(self, name: str, frames: FrameAllocator, hw: Hardware,
                 syscall_table: Mapping[int, SyscallHandler] = SYSCALLS):
        self.name = name
        self.syscall_table = syscall_table
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
                         "exits": 0, "kills": 0, "stray_traps": 0, "machine_checks": 0,
                         "carried_reads": 0, "stores_flushed": 0}
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

    async def resume(self, proc: Process, again: bool = False) -> None:
        """Put ``proc`` on the CPU, with the kernel's writes into it that wait
        (``again``: a resume that was lost, sent again with the writes it carried)."""
        body = {"regs": [r & M32 for r in proc.regs], "pc": proc.pc & M32, "asid": proc.asid,
                "space": self.space, "peek": abi.TRAP_PEEK}
        if again:
            proc.stores[:0] = proc.sent
        if proc.stores:
            body["stores"] = proc.stores
            proc.sent = proc.stores
            proc.stores, proc.stores_bytes = [], 0
        await self.hw.priv("cpu_resume", body)

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
        proc.sent = []  # it ran: its last resume's stores are made
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
            proc.carried = body.get("mem")
            try:
                result = await self.syscall(proc)
            finally:
                proc.carried = None
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

    async def syscall(self, proc: Process) -> int | None:
        """Serve the ecall of ``proc`` (its registers are saved in ``proc.regs``): the
        value for a0, or None when the call decided what happens to the process
        (it blocked, or it exited)."""
        handler = self.syscall_table.get(proc.regs[17] & M32)
        if handler is None:
            return -abi.ENOSYS
        return await handler(self, proc, *(r & M32 for r in proc.regs[10:16]))

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
        proc.stores, proc.sent = [], []
        proc.code = code
        proc.reason = reason
        proc.wait = None
        for gpn, _ in proc.pages.values():
            self.frames.free(gpn)
        proc.pages.clear()
        await self.hw.priv("tlb_flush", {"asid": proc.asid})
        self.procs.pop(proc.pid, None)
        self.hw.process_exited(proc)

    async def machine_check(self, cpu: str, lost: set[int], on_cpu: bool = True) -> list[int]:
        """The CPU died (its process was killed and restarted): what only it held is gone.

        The process that was on it lost its registers; every process with a page
        in ``lost`` (guest pages whose newest bytes were in the dead CPU's cache)
        lost memory. Each dies with 128 + SIGBUS, as Linux kills a process on an
        uncorrectable memory error, rather than run on state that went back in
        time. The others go on, on the new CPU. Returns the pids killed.

        ``on_cpu`` False: under the VMM, this OS's context was not on the CPU
        (the VMM had saved it, and puts it back on the new CPU): its current
        process lost no registers, only pages in ``lost`` count.
        """
        victims = []
        for proc in sorted(self.procs.values(), key=lambda p: p.pid):
            pages = sum(1 for gpn, _ in proc.pages.values() if gpn in lost)
            if proc is self.current and on_cpu:
                why = f"its registers{f' and {pages} modified page(s)' if pages else ''} were in the CPU"
            elif pages:
                why = f"{pages} modified page(s) of it were in the CPU's cache"
            else:
                continue
            victims.append((proc, why))
        for proc, why in victims:
            self.counters["machine_checks"] += 1
            await self.kill(proc, 128 + abi.SIGBUS, f"machine check: {cpu} failed and was restarted; {why}")
        if on_cpu or self.current is None:
            # nothing runs on the new CPU (it starts halted) until the kernel resumes something; what
            # was sent to the dead one and not acknowledged is not sent again (Node.abandon_to)
            self.current = None
            await self.dispatch()
        return [p.pid for p, _ in victims]

    async def cpu_returned(self, cpu: dict[str, Any], context_lost: bool = False) -> str:
        """The VMM died holding the CPU for this OS (emergency devirtualization);
        ``cpu`` is the CPU's context now (``cpu_save``). Settle it without running
        an instruction twice or a system call twice:

        - ``context_lost``: another OS's context was on the CPU (the CPU was
          reset): the current process's registers were saved in the dead VMM;
          it is stopped as on a machine check (``"context_lost"``), the next
          ready one runs;

        - a trapped CPU whose trap this kernel handled (the instruction count
          of the last trap of the process its asid names, or a process gone
          since): the resume was lost with the VMM; send it again
          (``"resumed"``). The process may be another than the current one:
          the kernel handled its trap by switching processes, and the resume
          of the next one was lost (raised again, the trap was a stray one,
          and nothing ran again: demo seed 1057 of ``--faults kill``);
        - a trapped CPU whose trap this kernel never saw: ``"retrap"`` (the
          orchestrator has the CPU raise it again);
        - a halted CPU while a process is current: its resume was lost
          (``"resumed"``); with none current, the next ready one runs.
        """
        proc, state = self.current, cpu.get("cpu_state")
        if context_lost:
            if proc is not None and proc.state == RUNNING:
                self.counters["machine_checks"] += 1
                await self.kill(proc, 128 + abi.SIGBUS, "machine check: the VMM failed and was restarted; "
                                                        "its registers were in the VMM")
            self.current = None
            await self.dispatch()
            return "context_lost"
        trapped_in = next((p for p in self.procs.values() if p.asid == cpu.get("asid")), None)
        if state == "trapped" and trapped_in is not None and cpu.get("instret") != trapped_in.instret:
            return "retrap"
        if proc is not None and proc.state == RUNNING and state in ("halted", "trapped"):
            await self.resume(proc, again=True)
            return "resumed"
        await self.dispatch()
        if state == "trapped":  # a trap handled, nothing to run: the CPU halts (a stray trap does so)
            await self._halt_if_idle()
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

    def _carried(self, proc: Process, addr: int, size: int) -> bytes | None:
        """The ``size`` bytes at ``addr`` if the trap being served carried them."""
        for start, data in proc.carried or ():
            if start <= addr and addr + size <= start + len(data):
                self.counters["carried_reads"] += 1
                return bytes(data[addr - start:addr - start + size])
        return None

    async def flush_stores(self, proc: Process) -> None:
        """Make the writes into ``proc`` that wait for its resume now, through the memory
        controller (before the kernel reads it, or when too many wait)."""
        if proc.stores:
            ops = [[gpn * PAGE + off, data] for gpn, off, data in proc.stores]
            proc.stores, proc.stores_bytes = [], 0
            self.counters["stores_flushed"] += 1
            await self.hw.mem_batch(ops)

    async def copy_from_user(self, proc: Process, addr: int, size: int) -> bytes | None:
        pieces = self.user_pieces(proc, addr, size, "r")
        if pieces is None:
            return None
        await self.flush_stores(proc)
        carried = self._carried(proc, addr, size)
        if carried is not None:
            return carried
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
            await self.flush_stores(proc)
            carried = self._carried(proc, addr, size)
            if carried is not None:
                layouts.append([carried])
                continue
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
        return [b"".join(part if isinstance(part, bytes) else bytes(part) if isinstance(part, int)
                         else got[part[0]] for part in parts)
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
        proc.carried = None  # what the trap carried may be what this overwrites
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
                ops.append([entry[0], off, bytes(data[pos:pos + n])])
                pos += n
        # made by the CPU before the process runs again (its next cpu_resume carries them): the
        # memory controller need not recall the pages the CPU holds, nor the CPU fetch them back;
        # past STORES_MAX they go through the memory controller at once, in one request
        proc.stores += ops
        proc.stores_bytes += sum(len(op[2]) for op in ops)
        if proc.stores_bytes > STORES_MAX:
            await self.flush_stores(proc)
        return True

    def ps(self) -> list[dict[str, Any]]:
        return [p.view() for p in sorted(self.procs.values(), key=lambda p: p.pid)]

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "procs": len(self.procs), "ready": len(self.runq),
                "current": self.current.pid if self.current else None, "ticks": self.ticks,
                "free_frames": self.frames.free_count, "owned_frames": len(self.frames.owned),
                "pinned_frames": len(self.frames.pinned)}

