"""The VMM's native drivers for the disk and the NIC (DESIGN.md §4 "VMM",
FIG. 5 / FIG. 6): one real device shared by the OS instances' virtual-mode
drivers (flows in :mod:`protocol.vmm`).

- **disk, multiplexed by partition.** Each OS sees its partition (the disk's
  ``partitions`` option, learned with ``disk_info`` {os}; the whole device if
  it has none) as the device, from block 0. The VMM bounds-checks every
  command against it and refuses what falls outside with the errno the disk
  gives natively (``-EINVAL`` for a malformed count or a negative block,
  ``-EIO`` outside the partition, ``-EFAULT`` for DMA into another space),
  then forwards it on ``io:vmm.<disk>`` with the block translated to the
  device's numbering (the VMM is a whole-device issuer). The DMA address and
  space are the OS's own: the disk reaches the OS's bounce frame through the
  memory controller's map of that space, whether the VMM or the OS manages it.
- **NIC, multiplexed by port.** A port bound by an OS belongs to that OS: the
  VMM forwards the OS's commands on ``io:vmm.<nic>`` naming it (``os``), so the
  NIC keeps the OS as the owner (and enforces it); a received datagram
  (``nic_rx`` on ``irq:<nic>``) goes to the OS that bound its port. The OS's
  receive buffers (``nic_rx_post``) are forwarded the same way: the NIC writes
  a datagram straight into the frames of the OS that owns the port, through
  the memory controller's map of that OS's space.
- **completions** (``disk_done`` / ``nic_done`` on ``irq:<device>``, routed to
  the VMM while virtualized) are reflected on ``irq:vmm.<os>`` as virtual
  interrupts. Commands keep the OS's own ids, so a completion that reaches the
  OS directly because the route moved under it (FIG. 6) is still right; a
  completion the VMM did not forward belongs to the device's *native owner*
  (the OS whose interrupt route the VMM took, FIG. 5), as does a datagram for
  a port the VMM does not know yet (bound natively during the switch).

The VMM keeps at most the disk's ``queue_depth`` commands outstanding and
answers ``-EAGAIN`` itself beyond, so the disk never completes out of order
(it answers a full queue at once) and completions match their commands.

**A device restarted under the VMM** (``peer_restarted``, docs/recovery.md)
is reset by the VMM, as the OS's driver resets it natively: the restarted NIC
gets every served OS's receive buffers posted again and every port an OS
bound through the VMM (or natively before FIG. 5) bound again for it; the
restarted disk gets the commands the dead process had consumed and not
completed issued again, each once (what it had not consumed comes again on
the flow, from its retransmit window). The OS's own driver does nothing
then: its device is the VMM.
"""

from __future__ import annotations

import errno
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from nodes.errors import Refused
from nodes.runtime import handles
from protocol.messages import Message

log = logging.getLogger("hwemu.vmm.io")

SHARED_DEVICES = ("disk", "nic")


@dataclass
class SharedDevice:
    """A disk or NIC node the VMM drives for one or more OS instances."""

    node: str
    device: str
    native_owner: str
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    """os -> {"partition": [first, count]} (disk), {"state": the driver's export}."""
    inflight: dict[int, deque] = field(default_factory=dict)
    """command id -> issuers in command order (ids are the OSes' own: two may coincide); each
    [os, command, body sent, fseq on io:vmm.<node>] (the nic's: [os, command, port, fseq])."""
    rx: dict[str, set[int]] = field(default_factory=dict)  # nic: os -> the receive buffers it posted
    resets: int = 0  # restarts of the device the VMM reset it after
    ports: dict[int, str] = field(default_factory=dict)   # nic: guest port -> owner OS
    info: dict[str, Any] = field(default_factory=dict)    # disk: disk_info of the device
    counts: dict[str, int] = field(default_factory=lambda: {
        "commands": 0, "refused": 0, "completions": 0, "native_completions": 0, "rx": 0, "rx_native": 0,
        "stale_acks": 0, "reissued": 0})

    def outstanding(self) -> int:
        return sum(len(q) for q in self.inflight.values())

    def issued(self, cid: int, entry: Any) -> None:
        self.inflight.setdefault(cid, deque()).append(entry)

    def completed(self, cid: int) -> Any:
        q = self.inflight.get(cid)
        if not q:
            return None
        entry = q.popleft()
        if not q:
            del self.inflight[cid]
        return entry

    def forget(self, os_name: str) -> None:
        self.users.pop(os_name, None)
        for cid in list(self.inflight):
            kept = deque(e for e in self.inflight[cid] if _os_of(e) != os_name)
            if kept:
                self.inflight[cid] = kept
            else:
                del self.inflight[cid]
        self.ports = {p: o for p, o in self.ports.items() if o != os_name}
        self.rx.pop(os_name, None)

    def view(self) -> dict[str, Any]:
        return {"device": self.device, "native_owner": self.native_owner,
                "users": {o: {k: v for k, v in u.items() if k != "state"} for o, u in self.users.items()},
                "outstanding": self.outstanding(), "ports": {str(p): o for p, o in sorted(self.ports.items())},
                "resets": self.resets, **self.counts}


def _os_of(entry: Any) -> str:
    return entry[0] if isinstance(entry, (tuple, list)) else entry


class DeviceMux:
    """Mixin of the VMM node: the disk and NIC handlers (see the module docstring).

    Needs from the node: ``name``, ``party``, ``routes``, ``emit``, ``oses``,
    ``_virq`` and ``_io_os``.
    """

    def _init_devices(self) -> None:
        self.shared: dict[str, SharedDevice] = {}     # device node -> its state
        self.served: dict[tuple[str, str], str] = {}  # (os, "disk" | "nic") -> device node
        self.io_counts = {"unrouted_completions": 0, "unserved": 0}

    # -- taking and giving back (vmm_device) -----------------------------------------------

    async def take_shared(self, device: str, node: str, os_name: str, state: dict[str, Any] | None) -> dict:
        """The VMM's native driver for ``node`` starts serving ``os_name``."""
        dev = self.shared.get(node)
        if dev is not None and dev.device != device:
            raise Refused(errno.EINVAL, f"{node} is driven as a {dev.device}, not a {device}")
        user: dict[str, Any] = {"state": state or {}}
        if device == "disk":
            info = (await self.party.request(node, "disk_info", {"os": os_name}, timeout=10.0)).body["data"]
            part = info.get("partition")
            user["partition"] = list(part) if part else [0, int(info["blocks"])]
        if device == "disk" and not part and dev is not None and set(dev.users) - {os_name}:
            # a second OS on the whole device would see the first one's blocks
            raise Refused(errno.EACCES, f"{node} has no partition for {os_name} and already serves "
                                         f"{', '.join(sorted(dev.users))}")
        if dev is None:
            dev = self.shared[node] = SharedDevice(node, device, native_owner=os_name)
        if device == "disk":
            dev.info = info
        else:
            stats = (await self.party.request(node, "stats", timeout=10.0)).body["stats"]
            for port, p in (stats.get("ports") or {}).items():
                if p.get("owner") == os_name:  # bound natively before the switch: still the OS's
                    dev.ports[int(port)] = os_name
            user["ports"] = sorted(p for p, o in dev.ports.items() if o == os_name)
            posted = (state or {}).get("rx_buffers")
            if posted:  # posted natively before the switch: the NIC holds them as the OS's
                dev.rx[os_name] = set(posted)
        dev.users[os_name] = user
        self.served[(os_name, device)] = node
        return {k: v for k, v in user.items() if k != "state"}

    def give_back_shared(self, device: str, node: str, os_name: str) -> dict:
        """The VMM stops serving ``os_name`` on ``node`` (its driver is native again)."""
        dev = self.shared.get(node)
        self.served.pop((os_name, device), None)
        if dev is None:
            return {}
        dev.forget(os_name)
        if not dev.users:
            del self.shared[node]
        return {"users": sorted(dev.users)}

    # -- helpers ------------------------------------------------------------------------

    def _shared_for(self, os_name: str, device: str) -> SharedDevice:
        node = self.served.get((os_name, device))
        dev = self.shared.get(node) if node else None
        if dev is None or os_name not in dev.users:
            self.io_counts["unserved"] += 1
            raise Refused(errno.ENODEV, f"{self.name} does not serve a {device} for {os_name}")
        return dev

    async def _reflect(self, os_name: str, kind: str, body: dict[str, Any]) -> None:
        """A device interrupt for ``os_name``: a virtual interrupt on ``irq:vmm.<os>``."""
        vcpu = self.oses.get(os_name)
        if vcpu is not None:
            await self._virq(vcpu, kind, body)
            return
        if self.routes.get(f"irq:vmm.{os_name}") is None:  # device virtualized, CPU not: straight on
            self.io_counts["unrouted_completions"] += 1
            log.warning("%s: %s for %s and no route irq:vmm.%s; dropped", self.name, kind, os_name, os_name)
            return
        await self.emit(f"irq:vmm.{os_name}", kind, body)

    async def _answer(self, msg: Message, os_name: str, kind: str, body: dict[str, Any]) -> None:
        if msg.flow is None:  # a direct request (a tool): answered as the device answers one
            await self.party.reply(msg, kind, body)
        else:
            await self._reflect(os_name, kind, body)

    # -- disk ---------------------------------------------------------------------------------

    @handles("disk_read", "disk_write", "disk_flush")
    async def _disk_command(self, msg: Message) -> None:
        os_name = self._io_os(msg)
        b = msg.body
        dev: SharedDevice | None = None
        try:
            dev = self._shared_for(os_name, "disk")
            body = dict(b)
            if msg.kind != "disk_flush":
                body["block"] = self._translate(dev, os_name, b)
            if dev.outstanding() >= int(dev.info.get("queue_depth", 64)):
                raise Refused(errno.EAGAIN, f"{dev.node}'s command queue is full "
                                             f"({dev.outstanding()} outstanding)")
        except Refused as exc:
            if dev is not None:
                dev.counts["refused"] += 1
            await self._answer(msg, os_name, "disk_done",
                               {"id": b["id"], "status": exc.status, "count": 0, "reason": exc.reason})
            return
        dev.counts["commands"] += 1
        entry = [os_name, msg, body, 0]
        dev.issued(b["id"], entry)
        entry[3] = await self.emit(f"io:{self.name}.{dev.node}", msg.kind, body)

    @staticmethod
    def _translate(dev: SharedDevice, os_name: str, b: dict[str, Any]) -> int:
        """The device block of the OS's ``block``; refused as the disk refuses natively."""
        first, n = dev.users[os_name]["partition"]
        block, count = b["block"], b["count"]
        top = int(dev.info.get("max_blocks", count))
        if count < 1 or count > top:
            raise Refused(errno.EINVAL, f"count {count}: expected 1..{top} blocks")
        if block < 0:
            raise Refused(errno.EINVAL, f"block {block} is negative")
        if block + count > n:
            raise Refused(errno.EIO, f"blocks [{block}, {block + count}) outside {os_name}'s partition "
                                      f"of {n} blocks")
        if b["space"] != os_name:
            raise Refused(errno.EFAULT, f"{os_name} may only DMA into its own address space, not {b['space']!r}")
        return first + block

    def _irq_device(self, msg: Message) -> SharedDevice | None:
        """The device an interrupt on ``irq:<node>`` comes from (None: not one the VMM drives)."""
        dev = self.shared.get(msg.flow.split(":", 1)[1] if msg.flow else msg.src)
        if dev is None:
            self.io_counts["unrouted_completions"] += 1
            log.warning("%s: %s from %s, which it does not drive; dropped", self.name, msg.kind, msg.src)
        return dev

    async def on_disk_done(self, msg: Message) -> None:
        dev = self._irq_device(msg)
        if dev is None:
            return
        entry = dev.completed(msg.body["id"])
        if entry is None:  # issued natively before FIG. 5 moved the interrupt here
            dev.counts["native_completions"] += 1
            await self._reflect(dev.native_owner, "disk_done", dict(msg.body))
            return
        dev.counts["completions"] += 1
        os_name, cmd = entry[0], entry[1]
        await self._answer(cmd, os_name, "disk_done", dict(msg.body))

    async def on_disk_info(self, msg: Message) -> None:
        """The OS's virtual-mode driver asks its geometry: its partition is its device."""
        os_name = msg.body.get("os") or msg.src
        try:
            dev = self._shared_for(os_name, "disk")
        except Refused as exc:
            await self.party.reply(msg, "error", {"reason": "not_served", "detail": exc.reason, "ref": "disk_info"})
            return
        first, n = dev.users[os_name]["partition"]
        info = {k: dev.info[k] for k in ("block_size", "write_back", "queue_depth", "max_blocks") if k in dev.info}
        await self.party.reply(msg, "ok", {"data": {**info, "blocks": n, "partition": None, "served_by": self.name}})

    # -- NIC ----------------------------------------------------------------------------------

    async def on_nic_bind(self, msg: Message) -> None:
        await self._nic_command(msg, msg.body["port"])

    async def on_nic_send(self, msg: Message) -> None:
        await self._nic_command(msg, msg.body["src_port"])

    async def on_nic_close(self, msg: Message) -> None:
        await self._nic_command(msg, msg.body["port"])

    async def _nic_command(self, msg: Message, port: int) -> None:
        os_name = self._io_os(msg)
        try:
            dev = self._shared_for(os_name, "nic")
        except Refused as exc:
            await self._answer(msg, os_name, "nic_done", {"id": msg.body["id"], "status": exc.status,
                                                          "reason": exc.reason})
            return
        dev.counts["commands"] += 1
        entry = [os_name, msg, port, 0]
        dev.issued(msg.body["id"], entry)
        # the NIC checks the port's owner itself (the OS named here): one authority for ownership
        entry[3] = await self.emit(f"io:{self.name}.{dev.node}", msg.kind, {**msg.body, "os": os_name})

    async def on_nic_rx_ack(self, msg: Message) -> None:
        os_name = self._io_os(msg)
        try:
            dev = self._shared_for(os_name, "nic")
        except Refused:
            return  # nothing to hand back to: counted as unserved
        if dev.ports.get(msg.body["port"], dev.native_owner) != os_name:
            dev.counts["stale_acks"] += 1  # closed meanwhile, or not its port
            return
        await self.emit(f"io:{self.name}.{dev.node}", "nic_rx_ack", {**msg.body, "os": os_name})

    async def on_nic_rx_post(self, msg: Message) -> None:
        """Receive buffers of the OS: the NIC keeps them as the OS's (it checks the space)."""
        os_name = self._io_os(msg)
        try:
            dev = self._shared_for(os_name, "nic")
        except Refused as exc:  # counted as unserved: its datagrams cannot arrive either
            if msg.flow is None:
                await self.party.reply(msg, "error", {"reason": "not_served", "detail": exc.reason,
                                                      "ref": "nic_rx_post"})
            return
        posted = dev.rx.setdefault(os_name, set())
        if msg.body.get("reset"):
            posted.clear()
        posted.update(msg.body["buffers"])  # (a buffer handed back after a datagram is posted again)
        await self.emit(f"io:{self.name}.{dev.node}", "nic_rx_post", {**msg.body, "os": os_name})
        if msg.flow is None:  # the driver's first post (a request): ordered before what it sends next
            await self.party.reply(msg, "ok")

    async def on_nic_done(self, msg: Message) -> None:
        dev = self._irq_device(msg)
        if dev is None:
            return
        b = msg.body
        entry = dev.completed(b["id"])
        if entry is None:
            dev.counts["native_completions"] += 1
            await self._reflect(dev.native_owner, "nic_done", dict(b))
            return
        dev.counts["completions"] += 1
        os_name, cmd, port = entry[:3]
        if b.get("status", 0) == 0:
            if cmd.kind == "nic_bind":
                dev.ports[int(b.get("port", port))] = os_name
            elif cmd.kind == "nic_close":
                dev.ports.pop(port, None)
        await self._answer(cmd, os_name, "nic_done", dict(b))

    async def on_nic_rx(self, msg: Message) -> None:
        dev = self._irq_device(msg)
        if dev is None:
            return
        owner = dev.ports.get(msg.body["port"])
        if owner is None:  # bound natively while FIG. 5 switched: the native owner's
            owner = dev.native_owner
            dev.counts["rx_native"] += 1
        dev.counts["rx"] += 1
        await self._reflect(owner, "nic_rx", dict(msg.body))

    # -- a device restarted (docs/recovery.md) --------------------------------------------------

    async def reset_shared(self, node: str, incarnation: int | None) -> dict[str, Any] | None:
        """``node`` restarted as ``incarnation``: reset it as the OSes' drivers would
        (the module docstring); None if the VMM does not drive it. What it restored."""
        dev = self.shared.get(node)
        if dev is None:
            return None
        dev.resets += 1
        flow = f"io:{self.name}.{node}"
        out = self.out_flows.get(flow)
        # what the dead process consumed: the flow's acknowledgements up to its death (a later
        # life's acknowledgements may have come since: the flow layer noted where the old ones stood)
        mark = self.receiver_restarts.get(flow)
        consumed = mark[2] if mark is not None and mark[:2] == (node, incarnation) else (out.acked if out else 0)
        if dev.device == "disk":
            again = [e for q in dev.inflight.values() for e in q if 0 < e[3] <= consumed]
            for entry in sorted(again, key=lambda e: e[3]):  # in the order they were first issued
                entry[3] = await self.emit(flow, entry[1].kind, entry[2])
            dev.counts["reissued"] += len(again)
            return {"reissued": len(again)}
        # the NIC: the commands it consumed died with it (each driver re-issues its own after its timeout)
        for cid in list(dev.inflight):
            kept = deque(e for e in dev.inflight[cid] if not 0 < e[3] <= consumed)
            if kept:
                dev.inflight[cid] = kept
            else:
                del dev.inflight[cid]
        posted, bound, failed = {}, [], {}
        for os_name in sorted(dev.users):
            buffers = sorted(dev.rx.get(os_name, ()))
            try:
                if buffers:  # a direct request: the bind that follows must find them
                    await self.party.request(node, "nic_rx_post", {"buffers": buffers, "space": os_name,
                                                                   "reset": True, "os": os_name}, timeout=5.0)
                    posted[os_name] = len(buffers)
                for port in sorted(p for p, o in dev.ports.items() if o == os_name):
                    done = (await self.party.request(node, "nic_bind", {"id": 0, "port": port, "os": os_name},
                                                     timeout=5.0)).body
                    if done.get("status", 0) == 0:
                        bound.append(port)
                    else:
                        failed[str(port)] = done.get("reason", done.get("status"))
            except Exception as exc:  # the NIC is away again: its next restart resets it again
                failed[os_name] = str(exc)
        if failed:
            log.error("%s: %s not all restored after it restarted: %s", self.name, node, failed)
        return {"posted": posted, "bound": bound, "failed": failed}

    def devices_status(self) -> dict[str, Any]:
        return {"shared": {n: d.view() for n, d in sorted(self.shared.items())}, **self.io_counts}

