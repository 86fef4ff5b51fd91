"""The OS node (DESIGN.md §4): the :class:`~nodes.guest_os.kernel.Kernel`
on the cluster. It is the kernel's hardware (memory through the memory
controller, privileged operations to its CPU, the console), its drivers
(:mod:`nodes.guest_os.drivers`, :mod:`nodes.guest_os.io`) and its kernel
module (:mod:`nodes.guest_os.module`), and it feeds the kernel its events.

Every message the kernel must see (traps, interrupts, requests) runs in the
node's one kernel task, in arrival order (:func:`in_kernel_task`), so that
the kernel needs no locks; the rest is served where it arrives.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import deque
from itertools import filterfalse
from typing import Any, Awaitable, Callable

import trio

import protocol.hw  # noqa: F401  (registers the message kinds)
import protocol.recovery  # noqa: F401  (registers peer_restarted)
import protocol.vmm  # noqa: F401  (registers mem_pin)
from nodes.guest_os.drivers import TimerDriver, UartDriver
from nodes.guest_os.io import Io
from nodes.guest_os.kernel import SIGKILL, Kernel, KernelError, Process
from nodes.guest_os.module import BelowFloor, FrameAllocator, FrameError, KernelModule, OutOfMemory
from nodes.options import Option, integer, list_of, number, optional, pair, string
from nodes.runtime import Node, NodeConfig, handles
from protocol.constants import DEFAULT_CPU, DEFAULT_MEMCTL, DEFAULT_TIMER, DEFAULT_UART
from protocol.errors import ProtocolError, RemoteError, RequestTimeout
from protocol.frames import body_frames, to_runs
from protocol.linux_abi import SIGBUS
from protocol.messages import Message
from protocol.riscv import M32

log = logging.getLogger("hwemu.os")

TICK_SILENCE = 100  # periods without a tick before the timer driver programs the timer again
TICK_SILENCE_MIN_S = 2.0
MEM_TRY_S = 3.0  # s for one memory request before it is asked again
MEM_DEADLINE_S = 60.0  # s before a memory request fails (the process that needed it dies)


def in_kernel_task(handler: Callable[["OsNode", Message], Awaitable[None]]
                   ) -> Callable[["OsNode", Message], Awaitable[None]]:
    """Mark a message handler to run in the node's kernel task, in arrival
    order with the kernel's other events, rather than where the message
    arrives: the kernel handles one event at a time."""

    @functools.wraps(handler)
    async def enqueue(self: "OsNode", msg: Message) -> None:
        self.kernel_event(functools.partial(handler, self), msg)

    return enqueue


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
    OPTIONS = {
        "memory": Option(pair(integer(min=0), "first_frame, count"), [0, 0]),
        "boot_frames": Option(optional(list_of(integer(min=0), distinct=True)), None),
        "lend_floor": Option(integer(min=0), 0),
        "cpu": Option(string(), DEFAULT_CPU),
        "memctl": Option(string(), DEFAULT_MEMCTL),
        "uart": Option(string(), DEFAULT_UART),
        "timer": Option(string(), DEFAULT_TIMER),
        "tick_ms": Option(number(above=0), 10),
    }

    def __init__(self, cfg: NodeConfig):
        super().__init__(cfg)
        opts = self.options
        first, count = opts["memory"]
        self.cpu_name = opts["cpu"]
        self.memctl_name = opts["memctl"]
        self.uart_name = opts["uart"]
        self.timer_name = opts["timer"]
        self.tick_ms = float(opts["tick_ms"])
        self.priv_flow = f"priv:{self.name}"
        self.mem_flow = f"mem:{self.name}"
        self.frames = FrameAllocator(first, count, opts["boot_frames"])
        self.module = KernelModule(self.frames, opts["lend_floor"])
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

    def kernel_event(self, handler: Callable[[Any], Awaitable[None]], payload: Any) -> None:
        """Have the kernel task run ``handler(payload)`` after the events before it."""
        self._events_in.send_nowait((handler, payload))

    async def _kernel_loop(self) -> None:
        async for handler, payload in self._events:
            try:
                await handler(payload)
            except Exception as exc:  # one bad event must not stop the kernel
                kind = payload.kind if isinstance(payload, Message) else getattr(handler, "func", handler).__name__
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
        code, why = 128 + SIGKILL, f"kernel could not serve its trap ({exc}) pc={proc.pc & M32:#010x}"
        if isinstance(exc, RemoteError) and exc.reason == "frame_lost":
            # its memory went back in time (the CPU that held its newest bytes died): a machine check,
            # rather than serve the system call with older bytes (docs/recovery.md)
            code, why = 128 + SIGBUS, f"machine check: {exc.detail}"
        try:
            await k.kill(proc, code, why)
            await k.dispatch()
        except Exception:
            log.exception("%s: could not even kill pid %d", self.name, proc.pid)
            if k.current is proc:
                k.current = None

    # -- handlers: what the kernel sees goes through the one kernel task, in arrival order ----

    @in_kernel_task
    async def on_trap(self, msg: Message) -> None:
        await self.kernel.trap(msg.body)

    async def on_tick(self, msg: Message) -> None:
        self.last_tick = time.monotonic()  # when it arrived, for the tick watchdog
        await self.on_alarm(msg)

    @in_kernel_task
    async def on_alarm(self, msg: Message) -> None:
        await self.kernel.tick(time_ns=msg.body.get("time_ns"))

    @in_kernel_task
    async def on_uart_rx(self, msg: Message) -> None:
        await self.kernel.uart_rx(msg.body["data"])

    async def on_disk_done(self, msg: Message) -> None:
        self.io.disk.complete(msg.body)

    async def on_nic_done(self, msg: Message) -> None:
        self.io.nic.complete(msg.body)

    @in_kernel_task
    async def on_nic_rx(self, msg: Message) -> None:
        await self.io.nic_rx(self.kernel, msg.body)

    @in_kernel_task
    async def on_os_exec(self, msg: Message) -> None:
        try:
            proc = await self.kernel.exec(msg.body["elf"], msg.body["argv"], owner=msg.src,
                                          notify=bool(msg.body.get("notify")), ref=None, name=msg.body.get("name"),
                                          stdin=msg.body.get("stdin"))
        except KernelError as exc:
            await self.party.reply(msg, "error", {"reason": exc.reason, "detail": exc.detail, "ref": "os_exec"})
            return
        await self.party.reply(msg, "ok", {"data": {"pid": proc.pid}})

    @in_kernel_task
    async def on_os_kill(self, msg: Message) -> None:
        signal = msg.body.get("signal", SIGKILL)
        if not isinstance(signal, int) or not 1 <= signal <= 64:
            raise ProtocolError("bad_field", f"expected a signal number 1..64, got {signal!r}", "body.signal")
        try:
            await self.kernel.kill_request(msg.body["pid"], signal, by=msg.src)
        except KernelError as exc:
            await self.party.reply(msg, "error", {"reason": exc.reason, "detail": exc.detail, "ref": "os_kill"})
            return
        await self.party.reply(msg, "ok", {"data": {"pid": msg.body["pid"]}})

    @in_kernel_task
    async def on_os_driver_mode(self, msg: Message) -> None:
        driver = {"uart": self.console, "timer": self.timer, "disk": self.io.disk,
                  "nic": self.io.nic}.get(msg.body.get("device"))
        if driver is None:
            raise ProtocolError("bad_field", f"no driver {msg.body.get('device')!r} (uart, timer, disk, nic)",
                                "body.device")
        state = await driver.set_mode(msg.body.get("mode"))
        await self.party.reply(msg, "ok", {"data": state})

    async def on_os_ps(self, msg: Message) -> None:
        await self.party.reply(msg, "ok", {"data": {"procs": self.kernel.ps(), "exited": list(self.exited),
                                                    "free_frames": self.frames.free_count}})

    async def on_proc_exit(self, msg: Message) -> None:
        """Not ours to handle (someone routed it here); ignore."""

    @in_kernel_task
    async def on_peer_restarted(self, msg: Message) -> None:
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
            # natively our privileged operations went to the dead CPU: what it had not acknowledged
            # died with it (a resume of the context the machine check stops must not run on the new one)
            done["abandoned"] = self.abandon_to(node)
            done["killed"] = await self.kernel.machine_check(node, lost, b.get("on_cpu", True))
        elif b["kind"] == "vmm" and ("cpu" in b or b.get("io")):  # the VMM died: the machine is ours again
            if "cpu" in b:  # natively
                done["cpu"] = await self.kernel.cpu_returned(b["cpu"], bool(b.get("context_lost")))
            done["io"] = await self._devices_after_vmm()
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

    async def _devices_after_vmm(self) -> dict[str, Any]:
        """The VMM died while our device traffic went through it: what it had not
        consumed, its senders gave up (``abandon`` at the route change back to
        native, orchestrator/recovery.py), and what it had taken and not passed on
        died with it. Each driver makes up for it natively, as after a reset of its
        device (docs/recovery.md, "vmm"): the disk's and the NIC's commands still
        waiting are issued again (idempotent), the console sends what the UART's
        log lacks of our stream, the timer gets its period again. A datagram or a
        tick in flight is lost; nothing is done twice that a guest could see."""
        done: dict[str, Any] = {"reissued": self.io.disk.reissue() + self.io.nic.reissue()}
        try:
            if self.routes.get(self.console.flow) == self.uart_name:
                done["console"] = await self.console.resend()
            if self.routes.get(self.timer.flow) == self.timer_name:
                await self.timer.after_switch()
                done["period_ms"] = self.timer.period_ms
        except (RemoteError, RequestTimeout, ProtocolError) as exc:  # the device is away: its restart resets it
            done["error"] = str(exc)
        return done

    @handles("mod_alloc_pin", "mod_add", "mod_give_back")
    @in_kernel_task
    async def _module_request(self, msg: Message) -> None:
        """The kernel module's messages (DESIGN.md §4-5: FIG. 4, ¶39), frames as runs.

        The module pins with the memory controller itself, once: what
        ``mod_alloc_pin`` allocates, and what ``mod_give_back`` lets go of
        that was free here (frames it allocated are pinned already). Only
        pinned frames may change owner, so nobody else needs to pin them.
        """
        kind = msg.kind
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
