"""The VMM node (DESIGN.md §4 "VMM", the contract of ``protocol/vmm.py``).

Once the orchestrator has routed the CPU's traps (``trap:cpu0``), the
timer's interrupts (``irq:timer0``) and the OS's privileged operations
(``priv:<os>``) to it, the VMM:

- **reflects traps** to the OS whose context is on the CPU, on
  ``trap:vmm.<os>``, with the asid translated back (minus the OS's asid base);
- **forwards or emulates privileged operations**: an operation of the OS on
  the CPU goes to the CPU on ``priv:vmm`` (asids plus the base), in order; an
  operation of an OS that is not on the CPU updates that OS's *virtual CPU*
  (saved context, pending preemption, halt, virtual interrupt flag). TLB
  operations always reach the real TLB: the asid bases keep the instances'
  entries apart, so the real TLB is every OS's virtual TLB at once;
- **answers** an operation that carries ``ack`` itself, once done (the
  CPU is never asked to answer on the OS's behalf: its reply would reach
  the VMM), and ``cpu_save`` from the OS's virtual CPU: the real CPU's
  context when the OS is on it, the saved one when it is switched out;
  ``cpu_resume``'s TLB entries reach the real TLB with the asid base added;
- **delivers virtual interrupts** (``tick``/``alarm`` to every OS,
  ``uart_rx`` to the UART's owner) on ``irq:vmm.<os>``, queued while the OS's
  virtual interrupt flag masks them;
- **time-slices** the CPU among the instances (option ``slice_ticks``,
  default 5): it preempts the CPU itself, keeps the resulting interrupt trap
  (it is not the OS's), saves the context and resumes another OS's;
- drives devices for the instances (``vmm_device``, FIG. 5): console bytes
  of ``io:<os>.uart`` go out unchanged on ``io:vmm.<uart node>`` if routed
  (one UART per OS), else on ``io:vmm.uart``; ``uart_sync`` is relayed; the
  disk is shared by partition and the NIC by port (``nodes/vmm/io.py``).

Control (orchestrator → vmm, ``ok`` {data} or ``error``): ``vmm_init``
(writes an image header into its frames in space ``vmm`` when memctl has
it, else says why not; resource discovery), ``vmm_attach_os`` (with
``current``, the CPU is asked whether it runs at all), ``vmm_detach_os``
(``os_busy`` for an OS with work while another is attached),
``vmm_cpu_release`` (``more_than_one_os``; a switched-out context goes back
on the CPU, held virtual interrupts are delivered, then everything passes
straight through), ``vmm_device`` (body ``os`` names the owner), ``vmm_status``.

Options: ``cpu`` (default ``cpu0``), ``memctl`` (``memctl``), ``timer``
(``timer0``), ``slice_ticks`` (5), ``uarts`` ({uart node: os}, which OS owns
which UART; default ``uart0`` → the first OS attached).

Scheduling model: an OS is *runnable* while its virtual CPU has a context to
run (its last operation was ``cpu_resume``, or it was switched out by the
VMM) and *idle* after ``cpu_halt``. The OS kernel reacts to events only, so
an idle OS becomes runnable again when a virtual interrupt makes it resume a
process (its ``cpu_resume`` reaches the VMM).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import protocol.hw  # registers the kinds
import protocol.recovery  # noqa: F401  (registers peer_restarted)
import protocol.vmm  # noqa: F401
from nodes.errors import Refused
from nodes.options import Option, integer, mapping, optional, string
from nodes.runtime import Node, handles, main, spawned
from nodes.vmm.frames import FrameBroker
from nodes.vmm.io import SHARED_DEVICES, DeviceMux
from protocol.constants import DEFAULT_CPU, DEFAULT_MEMCTL, DEFAULT_TIMER, DEFAULT_UART, ORCHESTRATOR, PAGE_SIZE, VMM
from protocol.errors import ProtocolError, RemoteError, RequestTimeout
from protocol.hw import tlb_entry
from protocol.messages import Message
from protocol.riscv import TIMER_INTERRUPT

log = logging.getLogger("hwemu.vmm")

INTERRUPT_CAUSE = TIMER_INTERRUPT
PRIV_KINDS = ("cpu_resume", "tlb_write", "tlb_flush", "cpu_preempt", "cpu_halt", "irq_mask")
IMAGE_MAGIC = b"HWEMU-VMM\0"


@dataclass
class VirtualCpu:
    """What the VMM keeps per OS instance."""

    name: str
    asid_base: int
    regs: list[int] | None = None
    pc: int | None = None
    asid: int | None = None          # the CPU's asid (base included)
    runnable: bool = False           # has a context to run
    in_handler: bool = False         # a reflected trap is outstanding
    preempt: bool = False            # the OS asked for a preemption not delivered yet
    vif: bool = True                 # virtual interrupt flag: True = interrupts enabled
    queued: deque = field(default_factory=deque)   # virtual interrupts held while masked
    asids: set[int] = field(default_factory=set)   # CPU asids the OS used (for tlb_flush None)
    stores: list = field(default_factory=list)     # its resumes' kernel stores, held while it is off the CPU
    counts: dict[str, int] = field(default_factory=lambda: {
        "traps": 0, "forwarded": 0, "emulated": 0, "ticks": 0, "uart_rx": 0, "switched_in": 0,
        "switched_out": 0, "queued_irqs": 0})

    def view(self, current: bool) -> dict[str, Any]:
        return {"current": current, "vif": self.vif, "asid_base": self.asid_base, "runnable": self.runnable,
                "in_handler": self.in_handler, "preempt_pending": self.preempt, "queued": len(self.queued),
                **self.counts}


class VmmNode(FrameBroker, DeviceMux, Node):
    """The virtual machine monitor (``kind = "vmm"``). See the module docstring."""

    kind = "vmm"
    OPTIONS = {
        "cpu": Option(string(), DEFAULT_CPU),
        "memctl": Option(string(), DEFAULT_MEMCTL),
        "timer": Option(string(), DEFAULT_TIMER),
        "slice_ticks": Option(integer(min=1), 5),
        "uarts": Option(optional(mapping(string())), None),
    }

    def __init__(self, cfg):
        super().__init__(cfg)
        opts = self.options
        self.cpu_name = opts["cpu"]
        self.memctl_name = opts["memctl"]
        self.timer_name = opts["timer"]
        self.slice_ticks = opts["slice_ticks"]
        self.uart_owner: dict[str, str] = dict(opts["uarts"] or {})   # uart node -> os
        self.oses: dict[str, VirtualCpu] = {}
        self.current: str | None = None       # whose context is on the CPU (None: halted)
        self.own_preempt = False              # our cpu_preempt is pending in the CPU
        self.last_control = 0                 # fseq of our last cpu_resume or cpu_halt (on_trap)
        self.released = False                 # vmm_cpu_release done: pass everything through
        self.slice_left = self.slice_ticks
        self.devices: dict[str, dict[str, Any]] = {}   # uart node -> {"os", "mode"}
        self._init_devices()                           # the disks and NICs (nodes/vmm/io.py)
        self.resources: dict[str, Any] = {}
        self.counts = {"traps_in": 0, "traps_reflected": 0, "traps_kept": 0, "stray_traps": 0, "stale_traps": 0,
                       "priv_forwarded": 0, "priv_emulated": 0, "ticks_in": 0, "virtual_ticks": 0,
                       "uart_rx": 0, "switches": 0, "slices": 0, "uart_bytes": 0, "cpu_halts": 0, "virqs_unrouted": 0,
                       "cpu_resets": 0}
        self._init_frames()
        self.peer_incarnations: dict[str, int] = {}  # node -> the incarnation last reset after its restart

    # -- helpers -----------------------------------------------------------------

    def _managed(self) -> bool:
        return bool(self.oses) and not self.released

    def _os_of_flow(self, msg: Message) -> VirtualCpu:
        """The OS a message on ``priv:<os>`` / ``io:<os>.*`` comes from."""
        name = msg.src
        if msg.flow and ":" in msg.flow:
            name = msg.flow.split(":", 1)[1].split(".", 1)[0]
        vcpu = self.oses.get(name)
        if vcpu is None:
            raise ProtocolError("not_attached", f"{self.name} does not manage an OS named {name!r}", "flow")
        return vcpu

    async def _cpu(self, kind: str, body: dict[str, Any]) -> None:
        fseq = await self.emit("priv:vmm", kind, body)
        if kind in ("cpu_resume", "cpu_halt"):
            self.last_control = fseq  # a trap raised under an older resume is stale (on_trap)

    async def _virq(self, vcpu: VirtualCpu, kind: str, body: dict[str, Any]) -> None:
        """A virtual interrupt for ``vcpu``: delivered now, or queued while it masks interrupts."""
        if not vcpu.vif:
            vcpu.queued.append((kind, body))
            vcpu.counts["queued_irqs"] += 1
            return
        if self.routes.get(f"irq:vmm.{vcpu.name}") is None:
            self.counts["virqs_unrouted"] += 1  # attached before its flows exist: nobody to tell
            return
        await self.emit(f"irq:vmm.{vcpu.name}", kind, body)

    async def _flush_virqs(self, vcpu: VirtualCpu) -> int:
        n = 0
        while vcpu.queued:
            kind, body = vcpu.queued.popleft()
            await self.emit(f"irq:vmm.{vcpu.name}", kind, body)
            n += 1
        return n

    def _owner_of_asid(self, asid: int) -> VirtualCpu | None:
        """The OS whose asid range holds ``asid`` (the largest base not above it)."""
        best = None
        for v in self.oses.values():
            if v.asid_base <= asid and (best is None or v.asid_base > best.asid_base):
                best = v
        return best

    def _other_runnable(self) -> VirtualCpu | None:
        """The next runnable OS after the current one, round-robin by attach order."""
        names = list(self.oses)
        if not names:
            return None
        start = names.index(self.current) + 1 if self.current in names else 0
        for i in range(len(names)):
            v = self.oses[names[(start + i) % len(names)]]
            if v.name != self.current and v.runnable:
                return v
        return None

    async def _switch_in(self, vcpu: VirtualCpu) -> None:
        """Put ``vcpu``'s saved context on the CPU (with its address space and interrupt flag)."""
        prev = self.oses.get(self.current) if self.current else None
        if prev is not None and prev is not vcpu:
            prev.counts["switched_out"] += 1
        self.current = vcpu.name
        self.counts["switches"] += 1
        vcpu.counts["switched_in"] += 1
        self.slice_left = self.slice_ticks
        await self._cpu("irq_mask", {"masked": not vcpu.vif})
        body: dict[str, Any] = {"space": vcpu.name}
        if vcpu.regs is not None:
            body.update(regs=list(vcpu.regs), pc=vcpu.pc, asid=vcpu.asid)
        if vcpu.stores:  # the results of system calls it served while off the CPU: made before it runs
            body["stores"], vcpu.stores = vcpu.stores, []
        await self._cpu("cpu_resume", body)
        if vcpu.preempt:  # a preemption it asked for while off the CPU: taken now
            await self._cpu("cpu_preempt", {})

    # -- traps -----------------------------------------------------------------------

    async def on_trap(self, msg: Message) -> None:
        b = msg.body
        self.counts["traps_in"] += 1
        after = b.get("after")
        if (isinstance(after, list) and len(after) == 2 and after[0] == "priv:vmm" and isinstance(after[1], int)
                and after[1] < self.last_control):
            # raised by a context the CPU ran before our last resume or halt reached it, which
            # replaces it (docs/recovery.md: after a CPU's death the new CPU may run, briefly, a
            # context resumed just before its OS's machine check stopped that process): taken for
            # the context on the CPU now, it would be saved as that OS's and resumed later
            self.counts["stale_traps"] += 1
            log.info("%s: trap %#x raised under resume %d, before resume or halt %d: dropped",
                     self.name, b["cause"], after[1], self.last_control)
            return
        cur = self.oses.get(self.current) if self.current else None
        if cur is None:
            cur = self._owner_of_asid(b["asid"])  # the CPU ran without us seeing the resume
            if cur is not None:
                self.current = cur.name
        if cur is None:
            self.counts["stray_traps"] += 1
            log.warning("%s: trap %#x with no OS on the CPU; dropped", self.name, b["cause"])
            return
        cur.in_handler = False  # the CPU ran, so its last handler had resumed it
        if b["cause"] == INTERRUPT_CAUSE and self.own_preempt and self._managed():
            self.own_preempt = False
            other = self._other_runnable()
            if other is not None:
                self.counts["traps_kept"] += 1
                cur.regs, cur.pc, cur.asid = list(b["regs"]), b["pc"], b["asid"]
                cur.runnable = True
                await self._switch_in(other)
                return
            if not cur.preempt:
                self.counts["traps_kept"] += 1
                await self._cpu("cpu_resume", {})  # nobody else to run: carry on where it was
                return
        if b["cause"] == INTERRUPT_CAUSE:
            cur.preempt = False
        body = dict(b)
        body["asid"] = b["asid"] - cur.asid_base
        cur.in_handler = True
        cur.counts["traps"] += 1
        self.counts["traps_reflected"] += 1
        await self.emit(f"trap:vmm.{cur.name}", "trap", body)

    # -- privileged operations ----------------------------------------------------------

    @handles(*PRIV_KINDS)
    async def _priv(self, msg: Message) -> None:
        vcpu = self._os_of_flow(msg)
        ack = bool(msg.body.get("ack"))
        await self._priv_op(vcpu, msg.kind, msg.body)
        if ack:
            data: dict[str, Any] = {"virtual": True}
            if msg.kind == "irq_mask":
                data["masked"] = not vcpu.vif
            elif msg.kind == "cpu_resume":
                data.update(cpu_state="running" if self.current == vcpu.name else "runnable",
                            tlb_written=len(msg.body.get("tlb") or []))
            elif msg.kind == "cpu_halt":
                data["cpu_state"] = "halted"
            await self.party.reply(msg, "ok", {"data": data})

    async def _priv_op(self, vcpu: VirtualCpu, kind: str, body: dict[str, Any]) -> None:
        b = {k: v for k, v in body.items() if k != "ack"}
        base = vcpu.asid_base
        if kind in ("cpu_resume", "tlb_write", "tlb_flush") and b.get("asid") is not None:
            b["asid"] = b["asid"] + base
            vcpu.asids.add(b["asid"])
        if kind == "cpu_resume" and b.get("tlb"):
            entries = []
            for i, e in enumerate(b["tlb"]):
                asid, vpn, ppn, perms = tlb_entry(e, f"body.tlb[{i}]")
                entries.append([asid + base, vpn, ppn, perms])
                vcpu.asids.add(asid + base)
            b["tlb"] = entries
            if self._managed() and self.current != vcpu.name:
                # the real TLB holds every OS's entries apart by asid: they go in now, the context waits
                for asid, vpn, ppn, perms in entries:
                    await self._cpu("tlb_write", {"asid": asid, "vpn": vpn, "ppn": ppn, "perms": perms})
                del b["tlb"]
        if kind in ("tlb_write", "tlb_flush"):
            # the real TLB is partitioned by asid: every OS's entries go straight in
            vcpu.counts["forwarded"] += 1
            self.counts["priv_forwarded"] += 1
            if (kind == "tlb_flush" and b.get("asid") is None and self._managed()
                    and (base != 0 or len(self.oses) > 1)):
                for asid in sorted(vcpu.asids):
                    await self._cpu("tlb_flush", {"asid": asid, "vpn": b.get("vpn")})
                return
            await self._cpu(kind, b)
            return
        if not self._managed():
            await self._forward(vcpu, kind, b)
            return
        if kind == "cpu_resume":
            vcpu.in_handler = False
            vcpu.runnable = True
            if "regs" in b:
                vcpu.regs = list(b["regs"])
            if "pc" in b:
                vcpu.pc = b["pc"]
            if "asid" in b:
                vcpu.asid = b["asid"]
            if b.get("stores") and self.current != vcpu.name:  # they go with its context (_switch_in)
                vcpu.stores.extend(b.pop("stores"))
            if b.get("flush_tlb") and self.current != vcpu.name:
                for asid in sorted(vcpu.asids):  # its own entries only; the others' stay
                    await self._cpu("tlb_flush", {"asid": asid, "vpn": None})
            if self.current is None:  # the CPU is idle: this OS gets it
                self.counts["priv_emulated"] += 1
                vcpu.counts["emulated"] += 1
                await self._switch_in(vcpu)
                return
        elif kind == "cpu_halt":
            vcpu.in_handler = False
            vcpu.runnable = False
            if self.current == vcpu.name:
                other = self._other_runnable()
                self.counts["priv_emulated"] += 1
                vcpu.counts["emulated"] += 1
                if other is not None:
                    vcpu.counts["switched_out"] += 1
                    self.current = None
                    await self._switch_in(other)
                else:
                    self.current = None
                    self.counts["cpu_halts"] += 1
                    await self._cpu("cpu_halt", {})
                return
        elif kind == "cpu_preempt":
            vcpu.preempt = True
        elif kind == "irq_mask":
            vcpu.vif = not b["masked"]
            if vcpu.vif:
                await self._flush_virqs(vcpu)
        if self.current == vcpu.name:
            await self._forward(vcpu, kind, b)
        else:
            self.counts["priv_emulated"] += 1
            vcpu.counts["emulated"] += 1

    async def _forward(self, vcpu: VirtualCpu, kind: str, b: dict[str, Any]) -> None:
        if kind in ("cpu_resume", "cpu_halt"):
            vcpu.in_handler = False
        vcpu.counts["forwarded"] += 1
        self.counts["priv_forwarded"] += 1
        await self._cpu(kind, b)

    @spawned
    async def on_cpu_save(self, msg: Message) -> None:
        vcpu = self._os_of_flow(msg)
        if not self._managed() or self.current == vcpu.name:
            # its context is the real CPU's: ask it (refused, as natively, while it runs)
            try:
                reply = await self.emit_request("priv:vmm", "cpu_save", {})
            except RemoteError as exc:
                await self.party.reply(msg, "error", {"reason": exc.reason, "detail": exc.detail})
                return
            data = dict(reply.body["data"])
            data["asid"] = data["asid"] - vcpu.asid_base
        else:
            data = {"regs": list(vcpu.regs or [0] * 32), "pc": vcpu.pc or 0,
                    "asid": (vcpu.asid if vcpu.asid is not None else vcpu.asid_base) - vcpu.asid_base,
                    "space": vcpu.name, "cpu_state": "switched_out" if vcpu.runnable else "halted",
                    "instret": None}
        await self.party.reply(msg, "ok", {"data": {**data, "virtual": True}})

    # -- virtual interrupts ---------------------------------------------------------------

    async def on_tick(self, msg: Message) -> None:
        self.counts["ticks_in"] += 1
        for vcpu in list(self.oses.values()):
            vcpu.counts["ticks"] += 1
            self.counts["virtual_ticks"] += 1
            await self._virq(vcpu, "tick", dict(msg.body))
        if len(self.oses) >= 2 and not self.released and self.current is not None:
            self.slice_left -= 1
            if self.slice_left <= 0:
                self.slice_left = self.slice_ticks
                if not self.own_preempt and self._other_runnable() is not None:
                    self.own_preempt = True
                    self.counts["slices"] += 1
                    await self._cpu("cpu_preempt", {})

    async def on_alarm(self, msg: Message) -> None:
        for vcpu in list(self.oses.values()):
            await self._virq(vcpu, "alarm", dict(msg.body))

    async def on_uart_rx(self, msg: Message) -> None:
        uart = msg.flow.split(":", 1)[1] if msg.flow else msg.src
        owner = (self.devices.get(uart) or {}).get("os") or self.uart_owner.get(uart)
        if owner is None and self.oses:
            owner = next(iter(self.oses))
        if owner is None:
            log.warning("%s: uart_rx from %s and no OS owns it; dropped", self.name, uart)
            return
        self.counts["uart_rx"] += 1
        vcpu = self.oses.get(owner)
        if vcpu is None:  # device virtualized, CPU not: straight on
            await self.emit(f"irq:vmm.{owner}", "uart_rx", dict(msg.body))
            return
        vcpu.counts["uart_rx"] += 1
        await self._virq(vcpu, "uart_rx", dict(msg.body))

    # -- the VMM's native console driver (FIG. 5) ---------------------------------------------

    def _uart_flow(self, os_name: str) -> str:
        """The flow of the VMM's native driver for ``os_name``'s console: ``io:vmm.<node>`` when
        routed (one UART per OS), else ``io:vmm.uart`` (protocol/vmm.py)."""
        nodes = [u for u, o in self.uart_owner.items() if o == os_name]
        nodes += [u for u, d in self.devices.items() if d.get("os") == os_name and u not in nodes]
        for node in nodes:
            if self.routes.get(f"io:vmm.{node}") is not None:
                return f"io:vmm.{node}"
        if self.routes.get("io:vmm.uart") is not None:
            return "io:vmm.uart"
        raise ProtocolError("no_route", f"{self.name} has no route to a UART for {os_name} "
                                        f"(io:vmm.uart or io:vmm.<uart node>)", "flow")

    @staticmethod
    def _io_os(msg: Message) -> str:
        # io:<os>.uart: the device may be virtualized for an OS whose CPU is not (partial)
        return msg.flow.split(":", 1)[1].split(".", 1)[0] if msg.flow else msg.src

    async def on_uart_write(self, msg: Message) -> None:
        os_name = self._io_os(msg)
        self.counts["uart_bytes"] += len(msg.body["data"])
        # the console driver's stream position travels on: the UART logs each stream once (nodes/uart)
        await self.emit(self._uart_flow(os_name), "uart_write",
                        {k: v for k, v in msg.body.items() if k in ("data", "writer", "at", "resync")})

    @spawned
    async def on_uart_sync(self, msg: Message) -> None:
        reply = await self.emit_request(self._uart_flow(self._io_os(msg)), "uart_sync",
                                        {k: v for k, v in msg.body.items() if k == "writer"}, timeout=10.0)
        await self.party.reply(msg, "ok", {"data": reply.body.get("data") or {}})

    # -- control (orchestrator) -----------------------------------------------------------------

    @spawned
    async def on_vmm_init(self, msg: Message) -> None:
        frames = list(msg.body["frames"])
        image: dict[str, Any] = {"frames": len(frames)}
        if frames:
            header = IMAGE_MAGIC + f"{self.name} frames={frames[0]}+{len(frames)}\n".encode()
            try:
                await self.party.request(self.memctl_name, "mem_write",
                                         {"space": VMM, "addr": frames[0] * PAGE_SIZE, "data": header}, timeout=5.0)
                image["written"] = len(header)
            except (RemoteError, RequestTimeout) as exc:
                image["written"] = 0
                image["skipped"] = f"no image written: {exc}"
        cpu: dict[str, Any] = {}
        mem: dict[str, Any] = {}
        try:
            cpu = (await self.party.request(self.cpu_name, "stats", timeout=5.0)).body.get("stats", {})
        except (RemoteError, RequestTimeout) as exc:
            cpu = {"error": str(exc)}
        try:
            mem = (await self.party.request(self.memctl_name, "mem_info", timeout=5.0)).body.get("data", {})
        except (RemoteError, RequestTimeout) as exc:
            mem = {"error": str(exc)}
        keep = ("instret", "cpu_state", "quantum", "space", "mips")
        self.resources = {
            "frames": len(frames), "host": msg.body.get("host"), "image": image,
            "cpu": {"name": self.cpu_name, **{k: cpu[k] for k in keep if k in cpu}},
            "memctl": {"name": self.memctl_name, **{k: v for k, v in mem.items()
                                                     if not isinstance(v, (dict, list)) or k == "spaces"}},
            "devices": sorted(n for n in self.party.directory if n not in (self.name, ORCHESTRATOR)),
        }
        await self.party.reply(msg, "ok", {"data": self.resources})

    @spawned
    async def on_vmm_attach_os(self, msg: Message) -> None:
        b = msg.body
        name = b["os"]
        if name in self.oses:
            raise ProtocolError("already_attached", f"{self.name} already manages {name}", "body.os")
        if any(v.asid_base == b["asid_base"] for v in self.oses.values()):
            raise ProtocolError("bad_field", f"asid base {b['asid_base']} is taken", "body.asid_base")
        if b.get("current") and self.current is not None and self.current != name:
            raise ProtocolError("bad_field", f"{self.current} is already current", "body.current")
        cpu_state = None
        if b.get("current"):
            try:
                stats = await self.party.request(self.cpu_name, "stats", timeout=5.0)
                cpu_state = stats.body.get("stats", {}).get("cpu_state")
            except (RemoteError, RequestTimeout) as exc:
                log.warning("%s: cannot ask %s its state: %s", self.name, self.cpu_name, exc)
        if name in self.oses:
            raise ProtocolError("already_attached", f"{self.name} already manages {name}", "body.os")
        vcpu = VirtualCpu(name, b["asid_base"])
        if not self.oses:  # managing afresh (e.g. FIG. 3 after FIG. 7)
            self.own_preempt = False
            self.slice_left = self.slice_ticks
        self.oses[name] = vcpu
        if b.get("current") and cpu_state != "halted":
            # on the CPU (running, or trapped to it); a halted CPU runs nobody: the
            # OS gets it back with its next cpu_resume (or a trap names it by asid)
            self.current = name
            vcpu.runnable = True
        if not any(o == name for o in self.uart_owner.values()) and DEFAULT_UART not in self.uart_owner:
            self.uart_owner[DEFAULT_UART] = name
        self.released = False
        await self.party.reply(msg, "ok", {"data": vcpu.view(self.current == name)})

    async def on_vmm_detach_os(self, msg: Message) -> None:
        name = msg.body["os"]
        vcpu = self.oses.get(name)
        if vcpu is None:
            raise ProtocolError("not_attached", f"{self.name} does not manage {name}", "body.os")
        if len(self.oses) > 1 and (vcpu.runnable or vcpu.in_handler):
            # another OS would get the CPU and this one's context would be lost
            where = "is on the CPU" if self.current == name else "has a context saved in the VMM"
            raise ProtocolError("os_busy", f"{name} {where} (it is not idle); shut it down first", "body.os")
        if self.current == name:
            self.current = None
        del self.oses[name]
        await self.party.reply(msg, "ok", {"data": vcpu.view(False)})

    async def on_vmm_cpu_release(self, msg: Message) -> None:
        name = msg.body["os"]
        vcpu = self.oses.get(name)
        if vcpu is None:
            raise ProtocolError("not_attached", f"{self.name} does not manage {name}", "body.os")
        others = sorted(n for n in self.oses if n != name)
        if others:
            await self.party.reply(msg, "error", {"reason": "more_than_one_os", "ref": "vmm_cpu_release",
                                                  "detail": f"still attached besides {name}: {', '.join(others)}"})
            return
        held = 0
        if self.current != name and vcpu.runnable:
            # its context is saved here (switched out): put it back on the CPU, with its
            # pending preemption if it asked for one meanwhile
            await self._switch_in(vcpu)
            held += 1
        # virtual interrupts held while it masked them: natively the CPU's mask holds
        # back only preemption, so they are delivered now, in order
        held += await self._flush_virqs(vcpu)
        self.released = True
        await self.party.reply(msg, "ok", {"data": {"held": held, "current": self.current,
                                                    "own_preempt_pending": self.own_preempt}})

    @spawned
    async def on_vmm_device(self, msg: Message) -> None:
        b = msg.body
        if b["mode"] not in ("virtual", "native"):
            raise ProtocolError("bad_field", f"mode must be virtual or native, got {b['mode']!r}", "body.mode")
        node = b["node"]
        device = b["device"]
        if device in SHARED_DEVICES:
            os_name = b.get("os")
            if not os_name:
                raise ProtocolError("bad_field", f"vmm_device for a {device} must name the os it serves", "body.os")
            try:
                if b["mode"] == "virtual":
                    data = await self.take_shared(device, node, os_name, b.get("state"))
                else:
                    data = self.give_back_shared(device, node, os_name)
            except Refused as exc:
                raise ProtocolError("bad_field", exc.reason, "body.node") from None
            except (RemoteError, RequestTimeout) as exc:
                raise ProtocolError("device_unavailable", f"{node} did not describe itself: {exc}",
                                    "body.node") from None
            await self.party.reply(msg, "ok", {"data": {"node": node, "os": os_name, "mode": b["mode"], **data}})
            return
        os_name = b.get("os") or (device.split(".", 1)[0] if "." in device else self.uart_owner.get(node))
        if b["mode"] == "virtual":
            self.devices[node] = {"device": device, "os": os_name, "mode": "virtual"}
            if os_name:
                self.uart_owner[node] = os_name
        else:
            self.devices.pop(node, None)
        await self.party.reply(msg, "ok", {"data": {"node": node, "os": os_name, "mode": b["mode"]}})

    @spawned
    async def on_peer_restarted(self, msg: Message) -> None:
        """A node came back as a new incarnation (docs/recovery.md): a disk or NIC
        this VMM drives is reset by its driver here, as an OS's resets it natively
        (nodes/vmm/io.py); of anything else there is nothing the VMM holds."""
        b = msg.body
        node, inc = b["node"], b.get("incarnation")
        if inc is not None and inc <= self.peer_incarnations.get(node, 0):
            await self.party.reply(msg, "ok", {"data": {"node": node, "done": "already"}})
            return
        if inc is not None:
            self.peer_incarnations[node] = inc
        done: dict[str, Any] = {"node": node}
        if node == self.cpu_name and b["kind"] == "cpu" and "lost" in b:
            # what the dead CPU had not acknowledged died with it: sent again, a resume of the
            # context that died (or of one switched out since) would run on the new CPU
            done["abandoned"] = self.abandon_to(node)
            done.update(await self._cpu_lost())
            log.warning("%s: %s died: virtual CPUs reset: %s", self.name, node, done)
            await self.party.reply(msg, "ok", {"data": done})
            return
        if b["kind"] == "os" and node in self.oses and inc is None:
            done.update(await self._os_lost(node))
            log.warning("%s: %s died: its virtual CPU reset: %s", self.name, node, done)
            await self.party.reply(msg, "ok", {"data": done})
            return
        reset = await self.reset_shared(node, inc)
        if reset is not None:
            done.update(reset)
            log.warning("%s: %s (%s) restarted: %s", self.name, node, b["kind"], done)
        await self.party.reply(msg, "ok", {"data": done})

    async def _cpu_lost(self) -> dict[str, Any]:
        """The CPU died (a machine check, docs/recovery.md), before the new one runs.

        The context that was on it died with it: the OS it belonged to stops
        that process (the orchestrator tells it ``on_cpu``), so its virtual CPU
        has nothing to run until that OS resumes another one. The contexts
        this VMM had saved (switched out) did not die: they stay runnable. A
        preemption of ours pending in the dead CPU is gone with it. A saved
        context, if any, gets the new CPU at once (what is sent to the CPU
        now reaches its next incarnation, as the OSes' own operations do);
        else the first OS to resume a process gets it."""
        lost = self.current
        if lost is not None:
            vcpu = self.oses[lost]
            vcpu.regs = vcpu.pc = vcpu.asid = None
            vcpu.runnable = vcpu.in_handler = vcpu.preempt = False
        self.current = None
        self.own_preempt = False
        self.slice_left = self.slice_ticks
        self.counts["cpu_resets"] += 1
        nxt = self._other_runnable() if self._managed() else None
        if nxt is not None:
            await self._switch_in(nxt)
        return {"on_cpu": lost, "switched_in": nxt.name if nxt is not None else None,
                "saved": sorted(n for n, v in self.oses.items() if v.runnable and n != lost)}

    async def _os_lost(self, name: str) -> dict[str, Any]:
        """OS ``name`` died (before its next life boots): its context must never run again.

        Natively the orchestrator resets the CPU (``cpu_reset``); here the CPU
        is shared, so only this OS's part of it is reset: its saved context,
        pending preemption and held virtual interrupts are dropped, its TLB
        entries (by asid) flushed, and if its context is on the CPU another
        OS's saved context replaces it (else the CPU halts). The next life
        stays attached and starts from nothing, as after a boot."""
        vcpu = self.oses[name]
        vcpu.regs = vcpu.pc = vcpu.asid = None
        vcpu.runnable = vcpu.in_handler = vcpu.preempt = False
        vcpu.vif = True
        vcpu.queued.clear()
        for asid in sorted(vcpu.asids):
            await self._cpu("tlb_flush", {"asid": asid, "vpn": None})
        vcpu.asids.clear()
        on_cpu = self.current == name
        nxt = None
        if on_cpu:
            self.current = None
            self.own_preempt = False
            nxt = self._other_runnable() if self._managed() else None
            if nxt is not None:
                await self._switch_in(nxt)
            else:
                self.counts["cpu_halts"] += 1
                await self._cpu("cpu_halt", {})
        # what we had sent the dead life and it had not acknowledged (a trap we reflected, its
        # interrupts) is not its next life's: sent again, a trap of a dead process whose asid a new
        # process reuses is taken for that process's, which then resumes on its registers
        abandoned = self.abandon_to(name)
        return {"on_cpu": on_cpu, "switched_in": nxt.name if nxt is not None else None, "abandoned": abandoned}

    async def on_vmm_status(self, msg: Message) -> None:
        await self.party.reply(msg, "ok", {"data": self._status()})

    def _status(self) -> dict[str, Any]:
        return {"oses": {n: v.view(self.current == n) for n, v in self.oses.items()},
                "current": self.current, "released": self.released, "own_preempt": self.own_preempt,
                "slice_ticks": self.slice_ticks, "devices": self.devices, "resources": self.resources,
                "io": self.devices_status(), **self.frames_status(),
                **self.counts}

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s["vmm"] = self._status()
        return s


if __name__ == "__main__":
    main(VmmNode)
