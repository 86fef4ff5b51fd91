"""The CPU node (DESIGN.md §3, "CPU"): a :class:`Core` driven by messages.

Options: ``quantum`` (the most instructions run between two yields to the
node's other tasks, default 20000), ``slice`` (instructions per
``core.run``, default min(1000, quantum): between two slices the run loop
looks at the inbox and yields at once if a message came, so a message
waits for the end of a slice, ~0.2 ms, not of a quantum, ~4 ms), ``tlb``
(TLB capacity, default 1024).

- Starts halted. ``cpu_resume`` {regs, pc, asid, space, flush_tlb} loads the
  fields present and runs. ``space`` is the OS address space named in
  ``mem_acquire``; when it changes, every cached page is written back
  (``mem_release``, with data when held modified) and dropped first.
- The run loop (a task of :meth:`work`) runs quanta; between quanta, and
  after any slice that a message arrived during, it yields so the inbox runs
  (recalls, privileged operations, preemption, a route change's drain).
- ``TRAP`` → ``trap`` on ``trap:<name>``, then wait (``trapped``) for a
  ``cpu_resume``. A pending ``cpu_preempt`` (unless ``irq_mask`` masks it)
  becomes an interrupt trap, cause 0x80000005, at the next quantum boundary.
- ``PAGE_MISS`` → ``mem_acquire`` {space, gpn, write} to the node of route
  ``mem:<name>`` (``waiting_mem``); retried while the controller is down or
  recovering. A refused page (``mem_fault``: the OS mapped a page outside
  its space) becomes an access-fault trap (store access fault for a write,
  else load access fault) with ``tval`` = the page's first address.
- ``mem_recall`` {frame, mode} is answered inline, whatever the run state.
  ``frame`` -1 (memctl recovery after a restart) means "every frame": each
  cached page is released (with data if modified) and dropped, then the
  reply ``mem_recalled`` {frame: -1, data: None} follows on the same link.
- Privileged operations on ``priv:<os>`` (``cpu_resume`` = load context,
  ``cpu_save``, ``tlb_write``/``tlb_flush``, ``irq_mask``, ``cpu_preempt``,
  ``cpu_halt``) are answered ``ok`` {data} when they carry ``ack: true``,
  after they took effect, and with an ``error`` naming the field when they are
  malformed; ``cpu_save`` (the register file, pc, asid and space of a trapped
  or halted CPU) is always answered. The trap vector is the route
  ``trap:<name>`` (set by the route authority, FIG. 3 step 304), not a
  register an OS writes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

import protocol.hw  # noqa: F401  (registers the kinds)
import protocol.recovery  # noqa: F401  (registers cpu_retrap, cpu_reset)
from nodes.cpu import isa
from nodes.cpu.core import HALT, PAGE_MISS, PAGE_SIZE, QUANTUM, TRAP, Core
from nodes.errors import OptionError
from nodes.options import Option, integer, optional
from nodes.runtime import Node, main
from protocol.errors import ProtocolError, RemoteError, RequestTimeout
from protocol.hw import PEEK_MAX, peek_table, store_entry, tlb_entry
from protocol.messages import Message
from protocol.riscv import ECALL_U, TIMER_INTERRUPT

log = logging.getLogger("hwemu.cpu")

INTERRUPT_CAUSE = TIMER_INTERRUPT
RECALL_ALL = -1
ACQUIRE_TIMEOUT = 3.0
RETRY_DELAY = 0.05
PROGRESS_EVERY_NS = 5_000_000


def _others_runnable():
    """A call that says whether another task of this trio run waits to run.

    trio's public way (``current_statistics().tasks_runnable``) costs 5 µs
    a call, 2.5 % of a slice; its run queue itself (a deque, the same object
    for the whole run, in trio 0.35 as pinned) costs 30 ns to look at. If a
    later trio moves it, the public call is used."""
    try:
        runq = trio._core._run.GLOBAL_RUN_CONTEXT.runner.runq
    except AttributeError:
        stats = trio.lowlevel.current_statistics
        return lambda: stats().tasks_runnable > 0
    return runq.__len__


class CpuNode(Node):
    kind = "cpu"
    short_slice = False  # the kernel's slice: it computes for as long as its guest does (protocol/sched.py)

    OPTIONS = {
        "quantum": Option(integer(min=1), 20000),
        "slice": Option(optional(integer(min=1)), None),  # default: 1000, or the quantum if smaller
        "tlb": Option(integer(min=1), 1024),
    }

    @classmethod
    def settle_options(cls, name: str, options: dict[str, Any]) -> dict[str, Any]:
        quantum, slice_ = options["quantum"], options["slice"]
        if slice_ is None:
            return {**options, "slice": min(1000, quantum)}
        if slice_ > quantum:
            raise OptionError(cls.kind, name, "slice", slice_, f"1..quantum ({quantum})")
        return options

    def __init__(self, cfg):
        super().__init__(cfg)  # the options are checked before the inbox is bound: a bad one binds nothing
        self.quantum = self.options["quantum"]
        self.slice = self.options["slice"]
        self.core = Core(tlb_capacity=self.options["tlb"])
        self.cpu_state = "halted"
        self.space: str | None = None
        self.frame_gpn: dict[int, int] = {}   # machine frame -> guest page cached
        self.gpn_frame: dict[int, int] = {}
        self.modified: set[int] = set()       # gpns held writable
        self.preempt_pending = False
        self.masked = False
        self._go = trio.Event()
        self._acquiring = False
        self._early: dict[int, str] = {}      # recalls that overtook our own grant
        self._last_trap: dict[str, Any] | None = None  # the trap we wait in (cpu_retrap raises it again)
        self._resumed_by: list | None = None  # [flow, fseq] of the cpu_resume that set the context running
        self._peek: dict[str, tuple[list, dict]] = {}  # space -> (cpu_resume's peek as sent, its table)
        self._stores: list[tuple[int, int, bytes]] = []  # a resume's stores not made yet (pages to acquire)
        self.counts = {"traps": 0, "page_misses": 0, "recalls": 0, "preempts": 0, "mem_retries": 0,
                       "releases": 0, "peeked": 0, "peek_misses": 0, "stores": 0, "stores_acquired": 0,
                       "stores_posted": 0}
        self._mips = 0.0
        self._last_mem_error: str | None = None
        self._window = (time.monotonic(), 0)
        self._progress_at = 0  # monotonic ns of the last ("cpu", "progress") event

    # -- the run loop --------------------------------------------------------------

    def _set_running(self) -> None:
        self.cpu_state = "running"
        self._go.set()

    async def work(self, nursery: trio.Nursery) -> None:
        core = self.core
        signalled = self.party.inbox_signalled
        waiting = _others_runnable()
        while True:
            if self.cpu_state != "running":
                self._go = trio.Event()
                await self._go.wait()
                continue
            if self._stores:  # the kernel's stores of the resume come before any instruction or trap
                await self._make_stores()
                continue
            if self.preempt_pending and not self.masked:
                self.preempt_pending = False
                self.counts["preempts"] += 1
                await self._trap(INTERRUPT_CAUSE, 0)
                continue
            # slices until the quantum is used up, the core stops, a message
            # came or another task of the node can run (a reply woke it): a
            # drain, a privileged operation or an interrupt waits for the end
            # of a slice here, not of a whole quantum
            left = self.quantum
            while True:
                stop = core.run(min(self.slice, left))
                left -= self.slice
                if stop.kind != QUANTUM or left <= 0 or waiting() or signalled():
                    break
            self._measure()
            if self.recorder.on:
                self._progress()
            if stop.kind == QUANTUM:
                await trio.lowlevel.checkpoint()  # let the inbox run: recalls, privileged ops, preempt
            elif stop.kind == TRAP:
                insn = stop.tval if stop.cause == isa.ILLEGAL_INSTRUCTION else None
                await self._trap(stop.cause, stop.tval, insn)
            elif stop.kind == PAGE_MISS:
                await self._page_miss(stop.ppn, stop.write)
            elif stop.kind == HALT:
                self.cpu_state = "halted"

    def _measure(self) -> None:
        now = time.monotonic()
        t0, i0 = self._window
        if now - t0 >= 0.5:
            self._mips = (self.core.instret - i0) / (now - t0) / 1e6
            self._window = (now, self.core.instret)

    def _progress(self) -> None:
        """The guest's instructions retired, for the trace's counter track: at
        most one event per PROGRESS_EVERY_NS (a slice is ~1 ms; one event
        each would fill the ring with progress alone)."""
        now = time.monotonic_ns()
        if now - self._progress_at >= PROGRESS_EVERY_NS:
            self._progress_at = now
            self.recorder("cpu", "progress", instret=self.core.instret)

    async def _trap(self, cause: int, tval: int, insn: int | None = None) -> None:
        # trapped before emitting: the resume may be handled while the send awaits
        self.cpu_state = "trapped"
        self.counts["traps"] += 1
        st = self.core.get_state()
        if self.recorder.on:
            self.recorder("trap", "raise", cause=cause, pc=st["pc"], instret=st["instret"])
        body = {"cause": cause, "tval": tval & 0xFFFFFFFF, "pc": st["pc"], "regs": st["x"],
                "asid": st["asid"], "instret": st["instret"]}
        if insn is not None:
            body["insn"] = insn
        if cause == ECALL_U and self.space in self._peek:
            mem = self._peeked(st["x"])
            if mem:
                body["mem"] = mem
        if self._resumed_by is not None:
            body["after"] = self._resumed_by
        self._last_trap = body
        try:
            await self.emit(f"trap:{self.name}", "trap", body)
        except ProtocolError as exc:  # no trap handler routed: nobody can resume us
            log.error("%s: cannot deliver trap (cause %#x at pc %#x): %s; halting", self.name, cause, st["pc"], exc)
            self.cpu_state = "halted"

    def _holds_writable(self, gpn: int) -> bool:
        return gpn in self.modified and self.core.has_page(gpn)

    def _take_stores(self, stores: list) -> None:
        """A resume's stores: made at once in pages held writable, in order; from the first
        one that needs its page acquired on, left to the run loop (:meth:`_make_stores`)."""
        for i, entry in enumerate(stores):
            gpn, off, data = store_entry(entry, f"body.stores[{i}]")
            self.counts["stores"] += 1
            if not self._stores and self._holds_writable(gpn):
                self.core.poke(gpn, off, data)
            else:
                self._stores.append((gpn, off, data))

    async def _make_stores(self) -> None:
        """Make the stores left by a resume, acquiring each page writable as a store of the
        guest would; a page the memory controller refuses drops its store (the access
        fault trap that :meth:`_page_miss` raised tells the OS)."""
        while self._stores and self.cpu_state == "running":
            gpn, off, data = self._stores[0]
            if self._holds_writable(gpn):
                self.core.poke(gpn, off, data)
                self._stores.pop(0)
                continue
            self.counts["stores_acquired"] += 1
            await self._page_miss(gpn, True)
            if self.cpu_state == "trapped":
                log.error("%s: a kernel store to page %#x of %s failed (%s): dropped", self.name, gpn, self.space,
                          self._last_mem_error)
                self._stores.pop(0)

    def _post_stores(self, space: str) -> None:
        """Stores of ``space`` not made when the CPU leaves it for another (the VMM switched
        OS before this one ran): written through the memory controller instead, in order
        on our link to it, before anything we send it later."""
        for gpn, off, data in self._stores:
            self.counts["stores_posted"] += 1
            answer = self.party.start_request(self.routes.lookup(f"mem:{self.name}"), "mem_write",
                                              {"space": space, "addr": gpn * PAGE_SIZE + off, "data": data})
            self.nursery.start_soon(self._posted, answer, gpn, space)
        self._stores.clear()

    async def _posted(self, answer, gpn: int, space: str) -> None:
        try:
            await answer()
        except (RemoteError, RequestTimeout, ProtocolError) as exc:
            log.error("%s: a kernel store to page %#x of %s failed: %s", self.name, gpn, space, exc)

    def _peeked(self, x: list[int]) -> list[list[Any]]:
        """The user memory the ecall in ``x`` reads, per the space's peek table: [[addr,
        bytes], ...] of the ranges every byte of which this CPU holds readable."""
        mem = []
        for ptr, length_reg, fixed in self._peek[self.space][1].get(x[17], ()):
            n = x[length_reg] if length_reg else fixed
            data = self.core.peek(x[ptr], n) if n <= PEEK_MAX else None
            if data is None:
                self.counts["peek_misses"] += 1
            else:
                self.counts["peeked"] += 1
                mem.append([x[ptr], data])
        return mem

    async def _page_miss(self, gpn: int, write: bool) -> None:
        self.counts["page_misses"] += 1
        self.cpu_state = "waiting_mem"
        space = self.space
        try:
            while True:
                if space is None:
                    raise RemoteError("cpu", "mem_fault", "no address space loaded (cpu_resume without space)")
                try:
                    self._acquiring = True
                    self._early.clear()
                    reply = await self.party.request(self.routes.lookup(f"mem:{self.name}"), "mem_acquire",
                                                     {"space": space, "gpn": gpn, "write": write},
                                                     timeout=ACQUIRE_TIMEOUT)
                except RequestTimeout:
                    self.counts["mem_retries"] += 1  # memctl down or restarting: ask again
                    continue
                except RemoteError as exc:
                    if exc.reason == "recovering":
                        self.counts["mem_retries"] += 1
                        await trio.sleep(RETRY_DELAY)
                        continue
                    raise
                finally:
                    self._acquiring = False
                b = reply.body
                frame = b["frame"]
                if self.space != space:
                    # the address space changed while we waited: this page is not ours to keep
                    await self._send_mem("mem_release", {"frame": frame, "data": None})
                    return
                early = self._early.pop(frame, None)
                if early == "invalidate":
                    self.counts["mem_retries"] += 1
                    continue  # recalled before we could install it: ask again
                writable = b["writable"] and early != "downgrade"
                if b["data"]:
                    self.core.install_page(gpn, bytearray(b["data"]), writable)
                elif self.core.has_page(gpn):
                    self.core.install_page(gpn, bytearray(self.core.downgrade_page(gpn)), writable)
                else:  # memctl thinks we hold it modified but we do not: start over clean
                    await self._send_mem("mem_release", {"frame": frame, "data": None})
                    continue
                old = self.gpn_frame.get(gpn)
                if old is not None and old != frame:
                    self.frame_gpn.pop(old, None)
                self.frame_gpn[frame] = gpn
                self.gpn_frame[gpn] = frame
                if writable:
                    self.modified.add(gpn)
                else:
                    self.modified.discard(gpn)
                return
        except (RemoteError, ProtocolError) as exc:
            reason = getattr(exc, "reason", "")
            if self.cpu_state == "waiting_mem":
                self.cpu_state = "running"
            cause = isa.STORE_ACCESS_FAULT if write else isa.LOAD_ACCESS_FAULT
            self._last_mem_error = f"{reason}: {exc}"
            await self._trap(cause, gpn * PAGE_SIZE)
            return
        finally:
            if self.cpu_state == "waiting_mem":
                self.cpu_state = "running"

    async def _send_mem(self, kind: str, body: dict[str, Any], dst: str | None = None) -> None:
        if kind == "mem_release":
            self.counts["releases"] += 1
        await self.party.send(dst or self.routes.lookup(f"mem:{self.name}"), kind, body)

    async def _drop_all(self, dst: str | None = None) -> None:
        """Write back (modified) and drop every cached page."""
        for frame, gpn in list(self.frame_gpn.items()):
            data = self.core.evict_page(gpn) if self.core.has_page(gpn) else None
            await self._send_mem("mem_release", {"frame": frame, "data": data if gpn in self.modified else None},
                                 dst)
        self.frame_gpn.clear()
        self.gpn_frame.clear()
        self.modified.clear()

    # -- coherence ---------------------------------------------------------------------

    async def on_mem_recall(self, msg: Message) -> None:
        frame, mode = msg.body["frame"], msg.body["mode"]
        if mode not in ("invalidate", "downgrade", "snapshot"):
            raise ProtocolError("bad_field", f"mem_recall mode must be invalidate, downgrade or snapshot, "
                                             f"got {mode!r}", "body.mode")
        self.counts["recalls"] += 1
        if frame == RECALL_ALL:
            await self._drop_all(msg.src)
            await self.party.reply(msg, "mem_recalled", {"frame": frame, "data": None})
            return
        gpn = self.frame_gpn.get(frame)
        data = None
        if mode == "snapshot":  # an uncached read of a page this CPU writes: its bytes, the copy kept
            if gpn is not None and self.core.has_page(gpn) and gpn in self.modified:
                data = self.core.page_bytes(gpn)
        elif gpn is None or not self.core.has_page(gpn):
            if self._acquiring:
                self._early[frame] = mode
        elif mode == "invalidate":
            page = self.core.evict_page(gpn)
            data = page if gpn in self.modified else None
            del self.frame_gpn[frame]
            del self.gpn_frame[gpn]
            self.modified.discard(gpn)
        else:
            data = self.core.downgrade_page(gpn)
            self.modified.discard(gpn)
        await self.party.reply(msg, "mem_recalled", {"frame": frame, "data": data})

    # -- privileged operations -----------------------------------------------------------

    async def _answer(self, msg: Message, data: dict[str, Any] | None = None) -> None:
        if msg.body.get("ack"):
            await self.party.reply(msg, "ok", {"data": data or {}})

    async def on_cpu_resume(self, msg: Message) -> None:
        b = msg.body
        if "regs" in b and len(b["regs"]) != 32:
            raise ProtocolError("bad_field", f"cpu_resume regs must be 32 ints, got {len(b['regs'])}", "body.regs")
        entries = [tlb_entry(e, f"body.tlb[{i}]") for i, e in enumerate(b.get("tlb") or [])]
        peek = b.get("peek")
        space = b.get("space", self.space)
        if peek is not None and space is not None:
            known = self._peek.get(space)
            if known is None or known[0] != peek:
                self._peek[space] = (peek, peek_table(peek))
        if "space" in b and b["space"] != self.space:
            if self.space is not None:
                await self._drop_all()
                if self._stores:
                    self._post_stores(self.space)
            self.space = b["space"]
        if b.get("stores"):
            self._take_stores(b["stores"])
        if b.get("flush_tlb"):
            self.core.tlb_flush()
        for entry in entries:
            self.core.tlb_write(*entry)
        st = self.core.get_state()
        self.core.set_state({"x": b.get("regs", st["x"]), "pc": b.get("pc", st["pc"]),
                             "asid": b.get("asid", st["asid"])})
        self.core.halted = False
        self._resumed_by = [msg.flow, msg.fseq] if msg.flow is not None else None
        if self.recorder.on:
            self.recorder("trap", "resume", pc=b.get("pc", st["pc"]), space=self.space)
        if self.cpu_state != "waiting_mem":
            self._set_running()
        await self._answer(msg, {"cpu_state": self.cpu_state, "tlb_written": len(entries)})

    async def on_cpu_retrap(self, msg: Message) -> None:
        """The orchestrator says the receiver of our last trap died with it (the VMM):
        raise it again, to whoever ``trap:<name>`` names now. Only while trapped."""
        if msg.src != self.cfg.orchestrator:
            raise ProtocolError("forbidden", f"cpu_retrap is for the orchestrator, not {msg.src}", "src")
        again = self.cpu_state == "trapped" and self._last_trap is not None
        if again:
            trap = dict(self._last_trap)
            trap.pop("after", None)  # it named a resume of the VMM that died: no handler now can judge it
            trap.pop("mem", None)  # bytes of then: the OS may have written the process since (a read's result)
            # the VMM that died had tagged the OS's asids with a base: its OS knows them untagged
            trap["asid"] = trap["asid"] - min(trap["asid"], int(msg.body.get("asid_base") or 0))
            await self.emit(f"trap:{self.name}", "trap", trap)
        await self.party.reply(msg, "ok", {"data": {"retrapped": again, "cpu_state": self.cpu_state}})

    async def on_cpu_reset(self, msg: Message) -> None:
        """The OS this CPU traps to died (the orchestrator, before the OS's next
        life starts): stop running its process (halted), forget its translations
        and its pending trap, and drop the link to it, so that a trap queued for
        the dead OS never reaches the next one, which numbers its processes
        (and asids) from 1 again and would take it for its own."""
        if msg.src != self.cfg.orchestrator:
            raise ProtocolError("forbidden", f"cpu_reset is for the orchestrator, not {msg.src}", "src")
        self.cpu_state = "halted"
        self.preempt_pending = False
        self._last_trap = None
        self._stores.clear()  # the dead OS's
        self.core.tlb_flush()
        gone = self.routes.get(f"trap:{self.name}")
        self.abandon(f"trap:{self.name}")  # not sent again to the next life either
        if gone is not None:
            self.party.forget(gone)
        await self.party.reply(msg, "ok", {"data": {"cpu_state": self.cpu_state, "forgot": gone}})

    async def on_cpu_save(self, msg: Message) -> None:
        if self.cpu_state == "running":
            raise ProtocolError("cpu_running", f"{self.name} is running: cpu_save needs it trapped or halted "
                                "(cpu_halt, or a trap), else the context changes under the copy", "kind")
        st = self.core.get_state()
        await self.party.reply(msg, "ok", {"data": {"regs": st["x"], "pc": st["pc"], "asid": st["asid"],
                                                    "space": self.space, "cpu_state": self.cpu_state,
                                                    "instret": st["instret"]}})

    async def on_tlb_write(self, msg: Message) -> None:
        b = msg.body
        self.core.tlb_write(*tlb_entry([b["asid"], b["vpn"], b["ppn"], b["perms"]], "body"))
        await self._answer(msg)

    async def on_tlb_flush(self, msg: Message) -> None:
        self.core.tlb_flush(msg.body.get("asid"), msg.body.get("vpn"))
        await self._answer(msg)

    async def on_cpu_preempt(self, msg: Message) -> None:
        self.preempt_pending = True
        await self._answer(msg)

    async def on_cpu_halt(self, msg: Message) -> None:
        # a pending preempt stays pending (taken after the next cpu_resume, unless masked)
        self.cpu_state = "halted"
        await self._answer(msg, {"cpu_state": self.cpu_state})

    async def on_irq_mask(self, msg: Message) -> None:
        self.masked = msg.body["masked"]
        await self._answer(msg, {"masked": self.masked})

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update(self.counts)
        s.update({"cpu_state": self.cpu_state, "instret": self.core.instret, "mips": round(self._mips, 3),
                  "quantum": self.quantum, "space": self.space, "pages": len(self.frame_gpn),
                  "modified": len(self.modified), "preempt_pending": self.preempt_pending,
                  "masked": self.masked, "last_mem_error": self._last_mem_error})
        return s


if __name__ == "__main__":
    main(CpuNode)
